//! Device backends: where the daemon gets its device from. Each backend
//! produces an [`OpenedDevice`]: the driver core running on the device, and
//! the backing memory clients map.
//!
//! - [`sim`]: the simulated PDDGPU, with VRAM and GTT in memfds (default).
//! - [`linux_pci`] (Linux): a PCI GPU through its sysfs BAR files.
//! - `pcid` (Redox): the PCI function pcid-spawner hands over, its BARs
//!   mapped through the memory scheme: `crate::redox::backend`.
//!
//! To add a backend: a module here with an `open(&Options) ->
//! Result<OpenedDevice, String>`, a variant of [`BackendKind`] and an arm in
//! [`open`].

#[cfg(target_os = "linux")]
pub mod linux_pci;
pub mod sim;

use std::sync::Arc;

use pddgpu::driver::Driver;
use pddgpu_scheme::{Backing, FaultInjector, PddgpuScheme, SchemeOptions};

use crate::options::{BackendKind, Options};

/// A device ready to be served.
pub struct OpenedDevice {
    /// The driver core, running on the device.
    pub driver: Arc<Driver>,
    /// VRAM and GTT backing as clients map it.
    pub backing: Backing,
    /// Fault injection, when the device supports it (the simulator).
    pub faults: Option<Box<dyn FaultInjector>>,
    /// One line for the log.
    pub description: String,
}

impl OpenedDevice {
    /// Wraps the device in the `pddgpu:` scheme.
    pub fn into_scheme(self, opts: &Options) -> PddgpuScheme {
        let admin_uid = opts.admin_uid.or_else(current_uid);
        let options = SchemeOptions {
            admin_uid,
            max_bos_per_uid: opts.limits.max_bos_per_uid,
        };
        let mut scheme = PddgpuScheme::new(self.driver, self.backing, options);
        scheme.set_user_limits(opts.limits.user_limits());
        if let Some(f) = self.faults {
            scheme.set_fault_injector(f);
        }
        scheme
    }
}

pub(crate) fn current_uid() -> Option<u32> {
    #[cfg(not(target_os = "redox"))]
    {
        Some(rustix::process::getuid().as_raw())
    }
    #[cfg(target_os = "redox")]
    {
        None
    }
}

/// Opens the device the options ask for.
pub fn open(opts: &Options) -> Result<OpenedDevice, String> {
    match opts.backend {
        BackendKind::Sim => sim::open(opts),
        #[cfg(target_os = "linux")]
        BackendKind::LinuxPci => linux_pci::open(opts),
        #[cfg(target_os = "redox")]
        BackendKind::Pcid => crate::redox::backend::open(opts),
    }
}
