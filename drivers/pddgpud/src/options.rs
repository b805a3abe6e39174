//! Command-line options of `pddgpud`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use pddgpu_ipc::size::parse_size;

/// Which device the daemon drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The simulated PDDGPU: registers in memory, VRAM and GTT in memfds.
    Sim,
    /// A PCI GPU through Linux sysfs (`resource0` VRAM BAR, `resource2` MMIO).
    #[cfg(target_os = "linux")]
    LinuxPci,
    /// The PCI function pcid-spawner hands over on Redox (channel in
    /// `PCID_CLIENT_CHANNEL`; BAR0 VRAM and BAR2 registers mapped through
    /// the memory scheme).
    #[cfg(target_os = "redox")]
    Pcid,
}

/// `pddgpud` options.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pddgpud",
    version,
    about = "The PDDGPU driver server: serves the pddgpu: scheme to client processes"
)]
pub struct Options {
    /// Device backend.
    #[arg(long, value_enum, default_value = "sim")]
    pub backend: BackendKind,
    /// VRAM size of the simulated device (e.g. 256M, 1G).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub vram_size: u64,
    /// CPU-visible part of the simulated VRAM (default: all of it).
    #[arg(long, value_parser = parse_size)]
    pub visible_size: Option<u64>,
    /// GTT aperture size of the simulated device.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub gtt_size: u64,
    /// PCI function directory for `--backend linux-pci`
    /// (e.g. /sys/bus/pci/devices/0000:00:02.0); default: search.
    #[arg(long)]
    pub pci_device: Option<PathBuf>,
    /// Socket to listen on (host transport). Default: $PDDGPU_SOCKET,
    /// $XDG_RUNTIME_DIR/pddgpu.sock or /run/pddgpu/pddgpu.sock.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Permissions of the socket (octal); clients need write access.
    #[arg(long, value_parser = parse_mode, default_value = "666")]
    pub socket_mode: u32,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Milliseconds between periodic ticks (leak monitor).
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
    /// User allowed to write control and config files besides root
    /// (default: the user running pddgpud).
    #[arg(long)]
    pub admin_uid: Option<u32>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal mode like 666 or 660"))
}

impl Options {
    /// Options for a simulated device of the given sizes with everything
    /// else at its default (benchmarks and in-process tests).
    pub fn for_sim(vram_size: u64, gtt_size: u64) -> Options {
        Options {
            backend: BackendKind::Sim,
            vram_size,
            visible_size: None,
            gtt_size,
            pci_device: None,
            socket: None,
            socket_mode: 0o666,
            log_level: log::LevelFilter::Warn,
            tick_ms: 100,
            admin_uid: None,
        }
    }

    /// The socket path to use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(pddgpu_ipc::default_socket_path)
    }
}
