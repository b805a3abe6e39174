//! The host transport (Linux and other Unix hosts): Unix stream sockets
//! carrying Redox scheme requests, with `SCM_RIGHTS` for mapping and
//! `SO_PEERCRED` for the caller's identity.

pub mod client;
pub mod server;

pub use client::{HostConnection, Reply};
pub use server::{
    caller_id, caller_pid, HostScheme, HostServer, Install, ParkPolicy, PeerCred, Prework,
    PreworkRequest, ServerLimits, PARK_POOLS, ROOT_FD,
};
// Mapping a BO from the descriptor the server passed.
#[allow(unsafe_code)]
pub mod transport;

pub use transport::HostTransport;
