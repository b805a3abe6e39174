//! The Redox side of pddgpud: everything that only exists on Redox, kept
//! small and at the edge.
//!
//! - [`pcid`]: the PCI hand-off from pcid (channel, messages, framing);
//! - [`ready`]: the readiness handshake with init / pcid-spawner;
//! - [`bars`]: which BARs are mapped, validated, with which caching;
//! - `physmap` (Redox only): mapping a BAR through `/scheme/memory/physical@…`;
//! - `device` (Redox only): the PCI function opened and mapped;
//! - `backend` (Redox only): the driver core on that function (the
//!   `--backend pcid` device backend);
//! - `serve` (Redox only): start-up, scheme registration, readiness,
//!   sandbox and the request loop.
//!
//! [`pcid`], [`ready`] and [`bars`] are plain data and are also compiled
//! for the host tests; the rest only exists in the `x86_64-unknown-redox`
//! build (linked against relibc and booted by `pddgpu-image redox-boot`).

pub mod bars;
pub mod pcid;
pub mod ready;

#[cfg(target_os = "redox")]
pub mod backend;
#[cfg(target_os = "redox")]
mod device;
#[cfg(target_os = "redox")]
pub mod physmap;
#[cfg(target_os = "redox")]
mod serve;

#[cfg(target_os = "redox")]
pub use device::{open_pci_device, PciDevice};
#[cfg(target_os = "redox")]
pub use serve::{serve, SCHEME_NAME};
