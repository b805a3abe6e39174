//! # pddgpu-ipc — wire protocol, transports and client library
//!
//! - [`frame`]: the versioned, validated frames of the host transport.
//! - [`host`]: the host transport (Unix sockets): a server that runs requests
//!   through the real `redox-scheme` dispatch, and a client connection.
#![deny(missing_docs)]

pub mod frame;
#[cfg(not(target_os = "redox"))]
pub mod host;
