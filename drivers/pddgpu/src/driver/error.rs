//! [`DriverError`]: every way a driver operation can fail. Each variant is
//! meant to map to one errno in a front end.

use crate::bo::OwnerId;
use crate::device::{DeviceError, Domain};
use crate::manager::{ManagerError, RetryPolicy};

/// Errors of [`Driver`](super::Driver) operations. A failed operation
/// changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The device is not (yet) serving.
    #[error("device is not ready")]
    NotReady,
    /// The device is shutting down or shut down; nothing new is served.
    #[error("device is shutting down")]
    ShuttingDown,
    /// Not enough memory in `domain` right now; retry per `retry`.
    #[error("no space for {size} bytes in {domain} (retry up to {} times, {} ms apart)", retry.count, retry.delay_ms)]
    NoSpace {
        /// The domain.
        domain: Domain,
        /// The size asked for.
        size: u64,
        /// How the caller may retry.
        retry: RetryPolicy,
    },
    /// A request parameter is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// No BO with this id exists (never did, or was freed).
    #[error("no such buffer object")]
    NoSuchBo,
    /// The BO exists but the caller holds no reference to it.
    #[error("permission denied: the caller does not hold this buffer object")]
    PermissionDenied,
    /// The BO is not exported, or the token is wrong.
    #[error("bad share token")]
    BadToken,
    /// The create or import would take the owner over its quota (which
    /// charges allocated bytes); nothing was allocated or imported.
    #[error("quota exceeded: owner {owner} holds {held} of {quota} bytes, asked for {requested}")]
    QuotaExceeded {
        /// The owner.
        owner: OwnerId,
        /// Its quota.
        quota: u64,
        /// Bytes it holds now.
        held: u64,
        /// Bytes the create or import would charge (allocated, whole
        /// pages).
        requested: u64,
    },
    /// The create or import would take the owner's account (its user)
    /// over its share of the domain (`uid_quota_percent`); nothing was
    /// allocated or imported.
    #[error("quota exceeded: user {account} holds {held} of its {quota} bytes of {domain}, asked for {requested}")]
    AccountQuotaExceeded {
        /// The account.
        account: super::ownership::AccountId,
        /// The domain.
        domain: Domain,
        /// Its quota in `domain`.
        quota: u64,
        /// Bytes of `domain` it holds now.
        held: u64,
        /// Bytes the create or import would charge.
        requested: u64,
    },
    /// An access reaches outside the BO.
    #[error("offset is outside the buffer object")]
    OutOfBounds,
    /// The random source for export tokens failed; nothing was exported.
    #[error(transparent)]
    Entropy(#[from] super::token::EntropyError),
    /// The table of live BOs is full.
    #[error("too many live buffer objects")]
    TooManyBos,
    /// The operation is not allowed in the current state (e.g. recovering a
    /// domain that is not in ERROR, or one already being recovered).
    #[error("cannot {action} {domain}: {reason}")]
    WrongState {
        /// What was attempted.
        action: &'static str,
        /// The domain.
        domain: Domain,
        /// Why not.
        reason: &'static str,
    },
    /// A memory manager refused (e.g. not READY, recovery failed).
    #[error("{domain} manager: {error}")]
    Manager {
        /// The domain.
        domain: Domain,
        /// The manager's error.
        error: ManagerError,
    },
    /// The device failed.
    #[error("device: {0}")]
    Device(#[from] DeviceError),
}

impl DriverError {
    /// True when retrying later may succeed ([`DriverError::NoSpace`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DriverError::NoSpace { .. })
    }

    /// The BO this error is about is unknown or not the caller's: the
    /// scheme answers both with "bad handle" or "permission denied".
    pub fn is_access_error(&self) -> bool {
        matches!(
            self,
            DriverError::NoSuchBo | DriverError::PermissionDenied | DriverError::BadToken
        )
    }
}
