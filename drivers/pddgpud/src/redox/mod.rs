//! The Redox side of pddgpud: everything that only exists on Redox, kept
//! small and at the edge.
//!
//! - [`pcid`]: the PCI hand-off from pcid (channel, messages, framing);
//! - [`bars`]: which BARs are mapped, validated, with which caching;
//! - `physmap` (Redox only): mapping a BAR through `/scheme/memory/physical@…`;
//! - `device` (Redox only): the PCI function opened and mapped;
//! - `backend` (Redox only): the driver core on that function (the
//!   `--backend pcid` device backend);
//! - `serve` (Redox only): daemon start-up, scheme registration, sandbox
//!   and the request loop.
//!
//! [`pcid`] and [`bars`] are plain data and are also compiled for the host
//! tests; the rest is type-checked for `x86_64-unknown-redox` by
//! `scripts/check-redox` (it cannot be linked or run here).

pub mod bars;
pub mod pcid;

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
