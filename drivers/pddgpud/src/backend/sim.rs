//! The simulated PDDGPU backend. On Linux its VRAM and GTT live in two
//! memfds that the daemon maps once: the driver core copies through the
//! mapping, and a client maps a BO through a memfd of that BO's own pages,
//! which the scheme's backing carves out of the domain's mapping (the host
//! transport passes it with `SCM_RIGHTS`). On Redox the
//! backing is page-aligned memory of the daemon, which the kernel shares
//! into clients through `mmap_prep`. With the `fault-injection` feature,
//! faults can be injected through `pddgpu:control` (`fault …`), which sets
//! the simulated device's registers exactly as hardware would.

#[cfg(not(target_os = "redox"))]
use std::os::fd::OwnedFd;
use std::sync::Arc;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::Driver;
use pddgpu_scheme::{Backing, Region};

use super::OpenedDevice;
use crate::entropy::OsRandom;
use crate::options::Options;

/// A memfd of `len` bytes mapped shared into this process. The mapping is
/// never unmapped: the device's memory lives as long as the process (the
/// driver core may hold references to it until the very end).
#[cfg(not(target_os = "redox"))]
struct SharedMemory {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

#[cfg(not(target_os = "redox"))]
impl SharedMemory {
    fn create(name: &str, len: u64) -> Result<Self, String> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        let fail = |what: &str, e: rustix::io::Errno| format!("{name}: {what}: {e}");
        let len_usize =
            usize::try_from(len).map_err(|_| format!("{name}: size {len} too large"))?;
        let fd = memfd_create(name, MemfdFlags::CLOEXEC).map_err(|e| fail("memfd_create", e))?;
        ftruncate(&fd, len).map_err(|e| fail("ftruncate", e))?;
        // SAFETY: a fresh shared mapping of the whole memfd; the kernel picks
        // the address, and nothing else in this process uses that range.
        let ptr = unsafe {
            mmap(
                core::ptr::null_mut(),
                len_usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| fail("mmap", e))?;
        Ok(SharedMemory {
            fd,
            ptr: ptr.cast(),
            len: len_usize,
        })
    }

    fn region(&self) -> Result<pddgpu::device::MemoryRegion, String> {
        // SAFETY: the mapping is never unmapped (see the type's docs), is
        // readable and writable, and the core accesses it only through
        // `MemoryRegion`'s atomic copies; clients write it concurrently
        // through their own mappings, which that contract allows.
        unsafe { pddgpu::device::MemoryRegion::new(self.ptr, self.len) }
            .map_err(|e| format!("backing: {e}"))
    }
}

/// Fault injection into the simulated device.
#[cfg(feature = "fault-injection")]
struct SimFaults(SimDevice);

#[cfg(feature = "fault-injection")]
impl pddgpu_scheme::FaultInjector for SimFaults {
    fn inject(&self, args: &[&str]) -> Result<String, String> {
        use pddgpu::device::Domain;
        let domain = |w: Option<&&str>| match w.copied() {
            Some("vram") => Ok(Domain::Vram),
            Some("gtt") => Ok(Domain::Gtt),
            _ => Err("expected vram or gtt".to_string()),
        };
        let number = |w: Option<&&str>| {
            w.and_then(|s| pddgpu_ipc::size::parse_size(s).ok())
                .ok_or_else(|| "expected a number".to_string())
        };
        match args {
            ["error"] => {
                self.0.inject_error();
                Ok("device error raised".into())
            }
            ["corrupt", _] => {
                let d = domain(args.get(1))?;
                self.0.corrupt_manager(d);
                Ok(format!("{} manager corruption requested", d.name()))
            }
            ["fail-alloc", _] => {
                let n = number(args.get(1))?;
                let n = u32::try_from(n).map_err(|_| "count too large".to_string())?;
                self.0.fail_next_allocations(n);
                Ok(format!("next {n} allocations fail"))
            }
            ["bad-range", _, _] => {
                let start = number(args.get(1))?;
                let len = number(args.get(2))?;
                self.0
                    .report_bad_vram_range(start, len)
                    .map_err(|e| e.to_string())?;
                Ok(format!("VRAM {start:#x}+{len:#x} reported bad"))
            }
            _ => Err(
                "fault error | corrupt vram|gtt | fail-alloc N | bad-range START LEN".to_string(),
            ),
        }
    }
}

/// The device on shared memfds, and their descriptors for clients.
#[cfg(not(target_os = "redox"))]
fn device_and_backing(config: SimConfig) -> Result<(SimDevice, Backing), String> {
    let vram = SharedMemory::create("pddgpu-vram", config.vram_size)?;
    let gtt = SharedMemory::create("pddgpu-gtt", config.gtt_size)?;
    let device = SimDevice::with_backing(config, vram.region()?, gtt.region()?)
        .map_err(|e| format!("simulated device: {e}"))?;
    // Each mapped BO gets its own memory carved out of these (see
    // `pddgpu_scheme::backing`): a client never holds a descriptor of a
    // whole domain.
    let backing = Backing::new(
        Region::per_bo(vram.ptr as usize, vram.fd, vram.len),
        Region::per_bo(gtt.ptr as usize, gtt.fd, gtt.len),
    );
    Ok((device, backing))
}

/// The device on its own page-aligned memory, mapped into clients by the
/// kernel through `mmap_prep`.
#[cfg(target_os = "redox")]
fn device_and_backing(config: SimConfig) -> Result<(SimDevice, Backing), String> {
    let device = SimDevice::new(config).map_err(|e| format!("simulated device: {e}"))?;
    let backing = Backing::new(
        Region::kernel_mapped(device.vram().as_ptr() as usize),
        Region::kernel_mapped(device.gtt().as_ptr() as usize),
    );
    Ok((device, backing))
}

/// Opens a simulated PDDGPU with the sizes from the options.
pub fn open(opts: &Options) -> Result<OpenedDevice, String> {
    let config = SimConfig {
        vram_size: opts.vram_size,
        visible_size: opts.visible_size.unwrap_or(opts.vram_size),
        gtt_size: opts.gtt_size,
    };
    config
        .validate()
        .map_err(|e| format!("simulated device: {e}"))?;
    let (device, backing) = device_and_backing(config)?;
    let driver = Driver::with_options(device.resources(), OsRandom::driver_options()?, 0)
        .map_err(|e| format!("driver: {e}"))?;
    let place = if cfg!(target_os = "redox") {
        "daemon memory"
    } else {
        "memfds"
    };
    let description = format!(
        "simulated PDDGPU: {} VRAM ({} visible), {} GTT, backing in {place}",
        pddgpu_ipc::size::format_size(config.vram_size),
        pddgpu_ipc::size::format_size(config.visible_size),
        pddgpu_ipc::size::format_size(config.gtt_size),
    );
    Ok(OpenedDevice {
        driver: Arc::new(driver),
        backing,
        #[cfg(feature = "fault-injection")]
        faults: Some(Box::new(SimFaults(device))),
        #[cfg(not(feature = "fault-injection"))]
        faults: {
            drop(device);
            None
        },
        description,
    })
}
