//! Errors of the client library, phrased so a shell user can act on them.

use std::io;

use crate::transport::TransportError;
use crate::wire::{errno_name, errno_text};

/// An error from the client library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheme refused an operation.
    #[error("{op} pddgpu:{path}: {} ({}){}", errno_text(*errno), errno_name(*errno), hint(*errno))]
    Scheme {
        /// What was attempted (`open`, `read`, `write`, `map`, …).
        op: &'static str,
        /// The scheme path involved.
        path: String,
        /// The errno.
        errno: i32,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach the pddgpu server at {path}: {source}; is pddgpud running? \
         (start it, or point PDDGPU_SOCKET at its socket)"
    )]
    Connect {
        /// Where we looked.
        path: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The connection failed in the middle of an operation.
    #[error("{op} pddgpu:{path}: connection to the server failed: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The scheme path involved.
        path: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The server's answer was malformed.
    #[error("{op} pddgpu:{path}: protocol error: {msg}")]
    Protocol {
        /// What was attempted.
        op: &'static str,
        /// The scheme path involved.
        path: String,
        /// What was wrong.
        msg: String,
    },
    /// A bad argument, caught before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

fn hint(errno: i32) -> &'static str {
    use syscall::error::*;
    match errno {
        ENOSPC | EAGAIN => "; free some buffers or retry later (see `pddgpu stats`)",
        EDQUOT => "; this client reached its quota (see `pddgpu clients`, config client_quota_bytes)",
        EACCES => "; control and config writes need the server's user or root",
        EIO => "; a memory manager is in the error state (see `pddgpu cat health`, then `pddgpu recover`)",
        ESHUTDOWN => "; the server is shutting down",
        _ => "",
    }
}

impl Error {
    /// The errno behind this error, if the scheme produced one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Scheme { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Attaches context to a transport error.
    pub(crate) fn from_transport(op: &'static str, path: &str, e: TransportError) -> Self {
        let path = path.to_string();
        match e {
            TransportError::Errno(errno) => Error::Scheme { op, path, errno },
            TransportError::Io(source) => Error::Io { op, path, source },
            TransportError::Protocol(msg) => Error::Protocol { op, path, msg },
        }
    }
}

/// Result of the client library.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_errno_and_suggest_a_fix() {
        let e = Error::from_transport(
            "open",
            "bo/new?size=1G",
            TransportError::Errno(syscall::error::ENOSPC),
        );
        let msg = e.to_string();
        assert!(msg.contains("ENOSPC"), "{msg}");
        assert!(msg.contains("pddgpu:bo/new?size=1G"), "{msg}");
        assert!(msg.contains("free some buffers"), "{msg}");
        assert_eq!(e.errno(), Some(syscall::error::ENOSPC));
    }
}
