//! What the host transport's server may ask of the scheme beyond
//! `SchemeSync` (`pddgpu_ipc::host::HostScheme`): how to park a create that
//! found no space, when to wake it, and releasing a dead connection's
//! handles in one batch.

use std::time::Duration;

use pddgpu::driver::Domain;
use pddgpu_ipc::host::{HostScheme, Install, ParkPolicy, Prework, PreworkRequest};

use crate::convert::core_domain;
use crate::handles::Kind;
use crate::path::{self, Node};
use crate::scheme::{rendered, PddgpuScheme, Prepared};
use crate::snapshots::timed;

/// The domain a `bo/new?…` open path creates in, and the size it asks
/// for, if it is one.
fn creates_in(path: &[u8]) -> Option<(Domain, u64)> {
    match path::parse(std::str::from_utf8(path).ok()?) {
        Ok(Node::BoNew(desc)) => Some((core_domain(desc.domain), desc.size)),
        _ => None,
    }
}

impl HostScheme for PddgpuScheme {
    /// A create that found no space waits in its connection's thread and is
    /// retried per the domain's tunables (`<domain>_retry_count`,
    /// `<domain>_retry_delay_ms`), and early when a free in its own domain
    /// leaves room for its size. The pool is the domain. Other opens are
    /// not parked.
    fn park_policy(&self, path: &[u8]) -> Option<ParkPolicy> {
        let (domain, size) = creates_in(path)?;
        let policy = self.driver().tunables().retry_policy(domain);
        Some(ParkPolicy {
            retries: policy.count,
            delay: Duration::from_millis(policy.delay_ms.into()),
            pool: domain.index(),
            needs: size,
        })
    }

    /// Counts the retry in the domain's statistics.
    fn on_retry(&mut self, path: &[u8]) {
        self.state_changed();
        if let Some((domain, _)) = creates_in(path) {
            self.driver().note_retry(domain);
        }
    }

    /// Frees so far in the domain numbered `pool`.
    fn wake_epoch(&self, pool: usize) -> u64 {
        Domain::ALL
            .get(pool)
            .map_or(0, |&d| self.driver().free_epoch(d))
    }

    /// Unallocated bytes of the domain numbered `pool`.
    fn free_bytes(&self, pool: usize) -> u64 {
        Domain::ALL
            .get(pool)
            .map_or(0, |&d| self.driver().free_size(d))
    }

    /// A read, `fstat` or `fsize` that takes a new snapshot of a generated
    /// file not rendered at this state yet: the callers are copied now,
    /// under the lock, and the file is rendered by the request's own
    /// thread after the lock is released, from that copy and the driver
    /// (see [`crate::snapshots`]).
    fn prework(&mut self, request: PreworkRequest) -> Option<Prework<Self>> {
        let (id, from_start) = match request {
            PreworkRequest::Read { id, offset } => (id, offset == 0),
            PreworkRequest::Size { id } => (id, false),
        };
        let (kind, state, owners, pending) = self.gather_for_snapshot(id, from_start)?;
        let driver = self.driver().clone();
        Some(Box::new(move || -> Install<Self> {
            let (text, cost) = pending
                .get_or_init(|| timed(|| rendered(kind, &driver, &owners)))
                .clone();
            Box::new(move |scheme: &mut Self| {
                scheme.set_prepared(
                    id,
                    Prepared {
                        kind,
                        state,
                        text,
                        cost,
                    },
                );
            })
        }))
    }

    /// A client connection ended: its handles are gone. An owner that
    /// ends with them is released in one `owner_exit` batch instead of BO
    /// by BO.
    fn on_disconnect(&mut self, caller: usize, handles: &[usize]) {
        self.state_changed();
        let pid = crate::callers::display_pid(caller);
        let mut ended = Vec::new();
        let mut others = Vec::new();
        // (BO, user) of every BO handle: the user may have let go of it.
        let mut let_go = Vec::new();
        for &id in handles {
            let Some(h) = self.take_handle(id) else {
                continue;
            };
            if let (Kind::Bo { id: bo, .. }, Some(uid)) = (&h.kind, self.callers.uid(h.owner)) {
                let_go.push((*bo, uid));
            }
            if self.callers.release_handle(h.owner) {
                ended.push(h.owner);
            }
            if matches!(h.kind, Kind::Bo { .. }) {
                others.push(h);
            }
        }
        for h in others {
            if !ended.contains(&h.owner) {
                self.drop_reference(h.owner, &h.kind);
            }
        }
        for owner in ended {
            pddgpu_ipc::logline::defer(None, log::Level::Debug, move || {
                format!("client pid {pid} (owner {owner}) gone; releasing what it held")
            });
            self.end_owner(owner);
        }
        let_go.sort_unstable_by_key(|&(bo, uid)| (bo.0, uid));
        let_go.dedup();
        for (bo, uid) in let_go {
            self.end_mapping_charge_if_let_go(bo, uid);
        }
    }
}
