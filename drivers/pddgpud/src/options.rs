//! Command-line options of `pddgpud`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use pddgpu_ipc::size::parse_size;
use pddgpu_scheme::{SchemeOptions, UserLimits};

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
    /// What clients may make the server spend (host transport).
    #[command(flatten)]
    pub limits: LimitOptions,
}

/// Per-user and time limits (see the README's errors-and-permissions
/// section for the errno of each). All but `max_bos_per_uid` are the host
/// transport's; that one is the scheme's, on every transport.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitOptions {
    /// Connections open at once, all users together (ENFILE beyond).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections one user may have open at once (EMFILE beyond).
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_uid: usize,
    /// Handles one user may hold open over all its connections (EMFILE
    /// beyond).
    #[arg(long, default_value_t = 4096)]
    pub max_handles_per_uid: usize,
    /// BOs one user's clients may hold at once, created or imported
    /// (EDQUOT beyond).
    #[arg(long, default_value_t = SchemeOptions::DEFAULT_MAX_BOS_PER_UID)]
    pub max_bos_per_uid: usize,
    /// BOs one user's clients may have mapped at once; each keeps a
    /// descriptor open in the server (EDQUOT beyond; host transport). The
    /// daemon lowers it to a quarter of what its descriptor limit allows.
    #[arg(long, default_value_t = UserLimits::DEFAULT_MAPPED_BOS_PER_UID)]
    pub max_mapped_bos_per_uid: usize,
    /// Segments one user's clients may have mapped at once; each is a
    /// kernel mapping in the server (EDQUOT beyond; host transport).
    #[arg(long, default_value_t = UserLimits::DEFAULT_MAPPED_SEGMENTS_PER_UID)]
    pub max_mapped_segments_per_uid: usize,
    /// Bytes of read snapshots of generated files (vram.map, …) one
    /// user's handles may hold at once (ENOBUFS beyond; every transport).
    #[arg(long, value_parser = parse_usize_size,
          default_value_t = UserLimits::DEFAULT_SNAPSHOT_BYTES_PER_UID)]
    pub max_snapshot_bytes_per_uid: usize,
    /// The same, all users together; root and --admin-uid are exempt
    /// (ENOBUFS beyond; every transport).
    #[arg(long, value_parser = parse_usize_size,
          default_value_t = UserLimits::DEFAULT_SNAPSHOT_BYTES_TOTAL)]
    pub max_snapshot_bytes: usize,
    /// Bytes the answers of one user's reads may hold while being sent;
    /// past it, reads are answered short (host transport).
    #[arg(long, value_parser = parse_usize_size, default_value_t = 64 << 20)]
    pub max_answer_bytes_per_uid: usize,
    /// The same, all users together (host transport).
    #[arg(long, value_parser = parse_usize_size, default_value_t = 512 << 20)]
    pub max_answer_bytes: usize,
    /// Bytes the receive buffers of one user's frames in flight may hold
    /// (beyond 16 KiB a connection); a frame past it gets ENOBUFS (host
    /// transport).
    #[arg(long, value_parser = parse_usize_size, default_value_t = 64 << 20)]
    pub max_frame_bytes_per_uid: usize,
    /// The same, all users together (ENOBUFS beyond; host transport).
    #[arg(long, value_parser = parse_usize_size, default_value_t = 512 << 20)]
    pub max_frame_bytes: usize,
    /// Of --max-connections, how many only root and --admin-uid may use.
    #[arg(long, default_value_t = 8)]
    pub admin_connections: usize,
    /// New connections one user (not the admin) may open a second
    /// (EAGAIN beyond; host transport).
    #[arg(long, default_value_t = 1000)]
    pub max_connects_per_second_per_uid: u32,
    /// A connection holding no handle is closed after this many quiet ms.
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this many ms of its first byte,
    /// or the connection is dropped.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// ms a client may take to read an answer whole before its connection
    /// is closed.
    #[arg(long, default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// At shutdown, ms connections get to finish their request before they
    /// are cut off.
    #[arg(long, default_value_t = 2_000)]
    pub shutdown_grace_ms: u64,
}

impl Default for LimitOptions {
    fn default() -> Self {
        LimitOptions {
            max_connections: 1024,
            max_connections_per_uid: 64,
            max_handles_per_uid: 4096,
            max_bos_per_uid: SchemeOptions::DEFAULT_MAX_BOS_PER_UID,
            max_mapped_bos_per_uid: UserLimits::DEFAULT_MAPPED_BOS_PER_UID,
            max_mapped_segments_per_uid: UserLimits::DEFAULT_MAPPED_SEGMENTS_PER_UID,
            max_snapshot_bytes_per_uid: UserLimits::DEFAULT_SNAPSHOT_BYTES_PER_UID,
            max_snapshot_bytes: UserLimits::DEFAULT_SNAPSHOT_BYTES_TOTAL,
            max_answer_bytes_per_uid: 64 << 20,
            max_answer_bytes: 512 << 20,
            max_frame_bytes_per_uid: 64 << 20,
            max_frame_bytes: 512 << 20,
            admin_connections: 8,
            max_connects_per_second_per_uid: 1000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 10_000,
            send_timeout_ms: 10_000,
            shutdown_grace_ms: 2_000,
        }
    }
}

fn parse_usize_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

impl LimitOptions {
    /// What one user may make the server hold, as asked for.
    pub fn user_limits(&self) -> UserLimits {
        UserLimits {
            mapped_bos_per_uid: self.max_mapped_bos_per_uid,
            mapped_segments_per_uid: self.max_mapped_segments_per_uid,
            snapshot_bytes_per_uid: self.max_snapshot_bytes_per_uid,
            snapshot_bytes_total: self.max_snapshot_bytes,
        }
    }
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
            limits: LimitOptions::default(),
        }
    }

    /// The socket path to use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(pddgpu_ipc::default_socket_path)
    }
}
