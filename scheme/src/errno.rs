//! Driver errors as the errnos a Redox program expects. Each error maps to
//! exactly one errno; the reason goes to the log.
//!
//! The seL4 server compiles this same file (`drivers/pddgpu-sel4`, a
//! `no_std` root task), so its replies carry the same errnos: it may use
//! only `core`, the core crate and `redox_syscall`'s constants.

use pddgpu::driver::DriverError;
use pddgpu::manager::{ManagerError, ManagerState};
use syscall::error::{EAGAIN, EBADF, EBUSY, EDQUOT, EINVAL, EIO, ENFILE, ENOSPC, EPERM, ESHUTDOWN};

/// The errno for a driver error.
///
/// - no space: `EAGAIN` while the retry policy allows retries (the client
///   library waits and retries), `ENOSPC` when it does not;
/// - a BO the caller does not hold: `EPERM`; a wrong token or a BO that no
///   longer exists behind a handle: `EBADF`;
/// - a manager in ERROR or a failed device: `EIO` (see `health`, then
///   recover), and a failed random source (no token): `EIO`; shutting
///   down: `ESHUTDOWN`; quota: `EDQUOT`;
/// - bad parameters and out-of-bounds accesses: `EINVAL`.
pub fn driver_errno(e: &DriverError) -> i32 {
    match e {
        DriverError::NotReady => EAGAIN,
        DriverError::ShuttingDown => ESHUTDOWN,
        DriverError::NoSpace { retry, .. } => no_space(retry.count),
        DriverError::InvalidArgument(_) | DriverError::OutOfBounds => EINVAL,
        DriverError::NoSuchBo | DriverError::BadToken => EBADF,
        DriverError::PermissionDenied => EPERM,
        DriverError::QuotaExceeded { .. } | DriverError::AccountQuotaExceeded { .. } => EDQUOT,
        DriverError::TooManyBos => ENFILE,
        DriverError::WrongState { .. } => EBUSY,
        DriverError::Manager { error, .. } => manager_errno(error),
        DriverError::Device(_) | DriverError::Entropy(_) => EIO,
    }
}

fn no_space(retries: u32) -> i32 {
    if retries > 0 {
        EAGAIN
    } else {
        ENOSPC
    }
}

fn manager_errno(e: &ManagerError) -> i32 {
    match e {
        ManagerError::NotReady {
            state: ManagerState::Shutdown,
        } => ESHUTDOWN,
        ManagerError::NotReady {
            state: ManagerState::Initializing,
        } => EAGAIN,
        ManagerError::NotReady { .. } => EIO,
        ManagerError::NoSpace { retry, .. } => no_space(retry.count),
        ManagerError::InvalidArgument(_) => EINVAL,
        ManagerError::WrongState { .. } | ManagerError::RangeBusy { .. } => EBUSY,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pddgpu::device::Domain;
    use pddgpu::manager::RetryPolicy;

    #[test]
    fn each_error_has_its_errno() {
        let space = |count| DriverError::NoSpace {
            domain: Domain::Vram,
            size: 1,
            retry: RetryPolicy { count, delay_ms: 1 },
        };
        assert_eq!(driver_errno(&space(3)), EAGAIN);
        assert_eq!(driver_errno(&space(0)), ENOSPC);
        assert_eq!(driver_errno(&DriverError::PermissionDenied), EPERM);
        assert_eq!(driver_errno(&DriverError::BadToken), EBADF);
        assert_eq!(driver_errno(&DriverError::ShuttingDown), ESHUTDOWN);
        assert_eq!(driver_errno(&DriverError::InvalidArgument("x")), EINVAL);
        let in_error = DriverError::Manager {
            domain: Domain::Gtt,
            error: ManagerError::NotReady {
                state: ManagerState::Error,
            },
        };
        assert_eq!(driver_errno(&in_error), EIO);
    }
}
