//! # pddgpu-scheme — the `pddgpu:` scheme
//!
//! [`PddgpuScheme`] serves the driver core as a Redox scheme
//! (`redox_scheme::scheme::SchemeSync`): the same implementation runs under
//! the Redox kernel and over the host transport of `pddgpu-ipc`.
//!
//! - [`path`]: the namespace (which path names what).
//! - [`owners`]: clients as owners, ended by their last handle.
//! - [`format`]: the text and JSON files.
//! - [`errno`]: driver errors as errnos.
//! - [`backing`]: what clients map.
#![deny(missing_docs)]

pub mod backing;
pub mod errno;
pub mod format;
pub mod owners;
pub mod path;
mod scheme;

pub use backing::{Backing, Region};
pub use scheme::{FaultInjector, PddgpuScheme, SchemeOptions, ROOT_ID};
