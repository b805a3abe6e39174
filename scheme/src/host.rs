//! What the host transport's server may ask of the scheme beyond
//! `SchemeSync` (`pddgpu_ipc::host::HostScheme`): how to park a create that
//! found no space, when to wake it, and releasing a dead connection's
//! handles in one batch.

use std::time::Duration;

use pddgpu::driver::Domain;
use pddgpu_ipc::host::{HostScheme, ParkPolicy};

use crate::convert::core_domain;
use crate::handles::Kind;
use crate::path::{self, Node};
use crate::scheme::PddgpuScheme;

/// The domain a `bo/new?…` open path creates in, if it is one.
fn creates_in(path: &[u8]) -> Option<Domain> {
    match path::parse(std::str::from_utf8(path).ok()?) {
        Ok(Node::BoNew(desc)) => Some(core_domain(desc.domain)),
        _ => None,
    }
}

impl HostScheme for PddgpuScheme {
    /// A create that found no space waits in its connection's thread and is
    /// retried per the domain's tunables (`<domain>_retry_count`,
    /// `<domain>_retry_delay_ms`), early when memory is freed. Other opens
    /// are not parked.
    fn park_policy(&self, path: &[u8]) -> Option<ParkPolicy> {
        let policy = self.driver().tunables().retry_policy(creates_in(path)?);
        Some(ParkPolicy {
            retries: policy.count,
            delay: Duration::from_millis(policy.delay_ms.into()),
        })
    }

    /// Counts the retry in the domain's statistics.
    fn on_retry(&mut self, path: &[u8]) {
        if let Some(domain) = creates_in(path) {
            self.driver().note_retry(domain);
        }
    }

    /// Frees so far, in both domains.
    fn wake_epoch(&self) -> u64 {
        let d = self.driver();
        d.free_epoch(Domain::Vram)
            .saturating_add(d.free_epoch(Domain::Gtt))
    }

    /// A client connection ended: its handles are gone. An owner that
    /// ends with them is released in one `owner_exit` batch instead of BO
    /// by BO.
    fn on_disconnect(&mut self, caller: usize, handles: &[usize]) {
        let pid = crate::callers::display_pid(caller);
        let mut ended = Vec::new();
        let mut others = Vec::new();
        for &id in handles {
            let Some(h) = self.take_handle(id) else {
                continue;
            };
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
            // Under the scheme lock, and one per connection a client may
            // open and drop at will: deferred and limited like a refusal.
            pddgpu_ipc::logline::defer(log::Level::Info, move || {
                format!("client pid {pid} (owner {owner}) gone; releasing what it held")
            });
            self.end_owner(owner);
        }
    }
}
