//! Fitting the host transport's budgets to what the kernel lets this
//! process have (host only).
//!
//! - **Descriptors.** Every connection holds two (its socket and the
//!   server's handle on it, to end it at shutdown) and, while an answer
//!   passing a descriptor waits for a client that does not read, a third;
//!   every mapped BO holds one (its memfd). At start the soft `RLIMIT_NOFILE` is raised to the hard
//!   one; beyond a reserve for the program itself, connections may take
//!   at most half of the result (`--max-connections` is lowered to fit,
//!   so the connections kept for the admin always have their
//!   descriptors) and mapped BOs, all users together, the rest; one user
//!   may map at most a quarter of that, so no single user comes near the
//!   limit. When the accept loop still runs out, it backs off (see
//!   `pddgpu_ipc::host`).
//! - **Kernel mappings.** Each mapped segment splits the server's mapping
//!   of its domain (up to two more VMAs) and each connection thread has a
//!   stack and a guard page; `vm.max_map_count` bounds them all. The
//!   segment budget keeps twice itself, plus every possible thread's
//!   mappings and a margin for the program itself, below that bound.

use pddgpu_scheme::backing::{MappingLimits, MAX_MAPPED_SEGMENTS};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::options::Options;

/// Kernel mappings kept for the program itself (libraries, heap, the
/// domains' own mappings).
const MAPPINGS_RESERVED: usize = 1024;
/// Descriptors kept for the program itself (log, device, listener, …).
const DESCRIPTORS_RESERVED: usize = 64;

/// Raises the soft descriptor limit to the hard one; returns the limit in
/// force afterwards.
pub fn raise_descriptor_limit() -> usize {
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if soft != hard {
        let raised = Rlimit {
            current: hard,
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                log::info!(
                    "descriptor limit raised from {} to {}",
                    shown(soft),
                    shown(hard)
                );
                return clamp(hard);
            }
            Err(e) => log::warn!(
                "cannot raise the descriptor limit from {} to {}: {e}",
                shown(soft),
                shown(hard)
            ),
        }
    }
    log::info!("descriptor limit: {}", shown(soft));
    clamp(soft)
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

fn clamp(limit: Option<u64>) -> usize {
    limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The kernel's bound on mappings per process, when it says.
pub fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Connections served at once however few descriptors there are (with
/// fewer than about 100, the accept loop's own refusal of clients it has
/// no descriptor for takes over).
const MIN_CONNECTIONS: usize = 16;

/// Descriptors one connection may hold: its socket, the server's handle
/// on it, and one being passed in an answer.
const DESCRIPTORS_PER_CONNECTION: usize = 3;

/// Connections a process allowed `descriptors` open files may serve at
/// once: `--max-connections`, lowered so that their descriptors
/// ([`DESCRIPTORS_PER_CONNECTION`] each) take at most half of what the
/// program's own reserve leaves, but not below [`MIN_CONNECTIONS`].
pub fn connection_limit(opts: &Options, descriptors: usize) -> usize {
    let usable = descriptors.saturating_sub(DESCRIPTORS_RESERVED);
    let fitted = (usable / 2 / DESCRIPTORS_PER_CONNECTION).max(MIN_CONNECTIONS);
    opts.limits.max_connections.min(fitted)
}

/// The mapping budget for a process allowed `descriptors` open files and
/// `mappings` kernel mappings, serving as `opts` says: the descriptors
/// the connections ([`connection_limit`]) and the reserve leave.
pub fn mapping_limits(
    opts: &Options,
    descriptors: usize,
    mappings: Option<usize>,
) -> MappingLimits {
    let limits = opts.limits.user_limits();
    let connections = connection_limit(opts, descriptors);
    let usable = descriptors.saturating_sub(DESCRIPTORS_RESERVED);
    let bos_total =
        MAX_MAPPED_SEGMENTS.min(usable.saturating_sub(DESCRIPTORS_PER_CONNECTION * connections));
    // A thread: its stack and its guard page.
    let threads = 2 * (connections + 1);
    let segments_total = mappings.map_or(MAX_MAPPED_SEGMENTS, |m| {
        MAX_MAPPED_SEGMENTS.min(m.saturating_sub(threads + MAPPINGS_RESERVED) / 2)
    });
    MappingLimits {
        segments_total,
        bos_total,
        segments_per_uid: limits.mapped_segments_per_uid.min(segments_total),
        bos_per_uid: limits.mapped_bos_per_uid.min(bos_total / 4),
    }
}

/// Raises the descriptor limit and fits the connection limit and the
/// mapping budget to it and to the kernel's mapping bound; logs the
/// figures. Returns the mapping budget and the connection limit.
pub fn fit(opts: &Options) -> (MappingLimits, usize) {
    let descriptors = raise_descriptor_limit();
    let connections = connection_limit(opts, descriptors);
    if connections < opts.limits.max_connections {
        log::info!(
            "connections: at most {connections} (not {}: {DESCRIPTORS_PER_CONNECTION} descriptors each)",
            opts.limits.max_connections
        );
    }
    let limits = mapping_limits(opts, descriptors, max_map_count());
    log::info!(
        "mapped BOs: at most {} ({} per user), {} segments ({} per user)",
        limits.bos_total,
        limits.bos_per_uid,
        limits.segments_total,
        limits.segments_per_uid
    );
    (limits, connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_descriptor_and_mapping_limits() {
        let opts = Options::for_sim(1 << 20, 1 << 20);
        let roomy = mapping_limits(&opts, 1 << 20, Some(65530));
        assert_eq!(roomy.bos_total, MAX_MAPPED_SEGMENTS);
        assert_eq!(
            roomy.bos_per_uid, 1024,
            "the option, when descriptors allow"
        );
        assert_eq!(roomy.segments_total, MAX_MAPPED_SEGMENTS);
        assert!(
            2 * roomy.segments_total + 2 * 1025 + MAPPINGS_RESERVED <= 65530,
            "segments and threads fit below vm.max_map_count"
        );
        assert_eq!(connection_limit(&opts, 1 << 20), 1024, "the option");
        let tight = mapping_limits(&opts, 1024, Some(20000));
        let connections = connection_limit(&opts, 1024);
        assert_eq!(connections, (1024 - 64) / 6, "half the descriptors");
        assert!(
            3 * connections + tight.bos_total + DESCRIPTORS_RESERVED <= 1024,
            "connections, mapped BOs and the reserve fit the descriptors"
        );
        assert_eq!(tight.bos_total, (1024 - 64) / 2);
        assert_eq!(
            tight.bos_per_uid, 120,
            "a quarter of what descriptors allow"
        );
        assert_eq!(tight.segments_total, (20000 - 2 * 161 - 1024) / 2);
        assert_eq!(mapping_limits(&opts, 10, Some(100)).segments_total, 0);
        assert_eq!(connection_limit(&opts, 10), MIN_CONNECTIONS);
    }
}
