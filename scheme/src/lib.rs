//! # pddgpu-scheme — the `pddgpu:` scheme
//!
//! [`PddgpuScheme`] serves the driver core as a Redox scheme
//! (`redox_scheme::scheme::SchemeSync`): the same implementation runs under
//! the Redox kernel and over the host transport of `pddgpu-ipc`.
//!
//! - [`path`]: the namespace (which path names what).
//! - [`callers`]: callers as core owners, ended by their last handle.
//! - `handles`: what each handle names; opening and closing as core calls.
//! - `control`: the administrator's `control` commands.
//! - `convert`: wire types to core types and back.
//! - [`format`]: the text and JSON files.
//! - `snapshots`: what handles on them read, rendered once per state.
//! - [`errno`]: driver errors as errnos.
//! - [`backing`]: what clients map.
//! - [`budget`]: what one user may make the server hold.
#![deny(missing_docs)]

pub mod backing;
pub mod budget;
pub mod callers;
mod control;
mod convert;
pub mod errno;
pub mod format;
mod handles;
#[cfg(not(target_os = "redox"))]
mod host;
pub mod path;
mod scheme;
mod snapshots;

pub use backing::{Backing, Region};
pub use budget::UserLimits;
pub use control::FaultInjector;
pub use scheme::{PddgpuScheme, SchemeOptions, ROOT_ID};
