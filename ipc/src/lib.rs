//! # pddgpu-ipc — wire protocol, transports and client library
//!
//! - [`wire`]: the `#[repr(C)]` structs of the binary `call` interface, BO
//!   creation parameters and their path form, share tokens.
//! - [`model`]: the JSON documents (`stats.json`, `leaks.json`,
//!   `clients.json`) shared by the scheme and its readers.
//! - [`frame`]: the versioned, validated frames of the host transport.
//! - [`host`]: the host transport (Unix sockets): a server that runs requests
//!   through the real `redox-scheme` dispatch, and its client side.
//! - [`transport`]: the small trait the client library talks through.
//! - `redox` (Redox only): the Redox transport, system calls on
//!   `/scheme/pddgpu/…`.
//! - [`Device`] / [`Bo`]: the client library.
//! - [`logline`]: capped log lines about client input, written after the
//!   scheme lock is released.
//! - [`occupancy`]: reading occupancy maps for display (client colours,
//!   the coarse map).
//! - [`map_svg`]: an occupancy map drawn as SVG (`pddgpu map --svg`).
//! - [`top`]: `pddgpu top`, the live terminal view.
//! - `progress` (feature `progress`): progress of long host-side work,
//!   live on a terminal and plain lines elsewhere.
//! - [`cli`]: the `pddgpu` command-line tool; [`stats_table`]: the human
//!   form of `stats.json` it prints.
#![deny(missing_docs)]

pub mod cli;
mod client;
mod error;
pub mod frame;
#[cfg(not(target_os = "redox"))]
pub mod host;
pub mod logline;
pub mod map_svg;
pub mod model;
pub mod occupancy;
#[cfg(feature = "progress")]
pub mod progress;
// The Redox transport: system calls on descriptors, and mapping BOs.
#[cfg(target_os = "redox")]
#[allow(unsafe_code)]
pub mod redox;
pub mod retry;
pub mod size;
pub mod stats_table;
pub mod top;
// Mapping a BO into the client: raw shared memory, viewed as atomics.
#[allow(unsafe_code)]
pub mod transport;
pub mod wire;

pub use client::{Bo, Device};
pub use error::{Error, Result};
pub use transport::SharedBytes;
pub use wire::{BoDesc, BoFlags, Domain, ShareToken};

/// Environment variable naming the host-transport socket.
pub const SOCKET_ENV: &str = "PDDGPU_SOCKET";

/// Where the host-transport socket lives: `$PDDGPU_SOCKET`, else
/// `$XDG_RUNTIME_DIR/pddgpu.sock`, else `/run/pddgpu/pddgpu.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return p.into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return std::path::Path::new(&dir).join("pddgpu.sock");
    }
    "/run/pddgpu/pddgpu.sock".into()
}
