//! What the driver reports: statistics, the leak check and its audit,
//! health, bad VRAM, client usage, and the periodic tick.

use alloc::format;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::Ordering;

use super::gate::Lane;
use super::{ClientUsage, Driver, Health};
use crate::bo::BoId;
use crate::device::{DeviceState, Domain};
use crate::gtt::GttStats;
use crate::leak::{find_suspects, Audit, AuditVerdict, LeakReport, Record};
use crate::manager::ManagerState;
use crate::stats::StatsSnapshot;
use crate::tunables::Tunable;
use crate::vram::VramStats;

/// Attempts of an audit to find a moment without allocations in flight.
const AUDIT_ATTEMPTS: u32 = 64;

impl Driver {
    /// Live BOs as the leak detector sees them (lock-free).
    pub fn bo_list(&self) -> Vec<Record> {
        let mut v = Vec::new();
        self.leaks.scan(true, |r| v.push(r));
        v.sort_by_key(|r| r.id);
        v
    }

    /// A consistent snapshot of the memory statistics (never blocks
    /// allocation).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// A consistent snapshot, or `None` ("busy") if `attempts` reads all
    /// overlapped an update. Never waits.
    pub fn try_stats(&self, attempts: u32) -> Option<StatsSnapshot> {
        self.stats.try_snapshot(attempts)
    }

    /// The VRAM manager's statistics.
    pub fn vram_stats(&self) -> VramStats {
        self.sync_tunables();
        self.vram.get_stats()
    }

    /// The GTT manager's statistics.
    pub fn gtt_stats(&self) -> GttStats {
        self.sync_tunables();
        self.gtt.get_stats()
    }

    /// Audits `domain`: allocator usage vs. live BOs (+ retired memory).
    pub(super) fn audit(&self, domain: Domain) -> Audit {
        let counters = self.gate.counters(Lane::Domain(domain));
        let mut audit = Audit {
            domain,
            allocator_used: 0,
            live_bytes: 0,
            reserved_bytes: 0,
            live_bos: 0,
            verdict: AuditVerdict::Inconclusive,
        };
        for _ in 0..AUDIT_ATTEMPTS {
            let finished = counters.finished.load(Ordering::SeqCst);
            let state = self.manager_state(domain);
            audit.allocator_used = self.manager_used(domain);
            let (bos, bytes) = self.leaks.totals()[domain.index()];
            audit.live_bos = bos;
            audit.live_bytes = bytes;
            audit.reserved_bytes = match domain {
                Domain::Vram => self.faults.lock().retired_bytes(),
                Domain::Gtt => 0,
            };
            if state != ManagerState::Ready {
                audit.verdict = AuditVerdict::Skipped;
                return audit;
            }
            if counters.started.load(Ordering::SeqCst) != finished {
                core::hint::spin_loop();
                continue;
            }
            if audit.difference() == 0 {
                audit.verdict = AuditVerdict::Clean;
            } else {
                audit.verdict = AuditVerdict::Mismatch;
                self.fail_domain(
                    domain,
                    format!(
                        "audit: the allocator uses {} bytes but live BOs hold {} (+{} retired)",
                        audit.allocator_used, audit.live_bytes, audit.reserved_bytes
                    ),
                );
            }
            return audit;
        }
        audit
    }

    /// Runs the leak check now: the audit of both domains (a mismatch moves
    /// the manager to ERROR), old BOs of owners above the size threshold,
    /// and exported BOs nobody holds. Also remembered as the last report.
    pub fn leak_check(&self, now_ms: u64) -> LeakReport {
        let threshold = self.tunables.value(Tunable::LeakThresholdBytes);
        let age = self.tunables.value(Tunable::LeakAgeMs);
        let audits = Domain::ALL.iter().map(|&d| self.audit(d)).collect();
        let (suspects, live) = find_suspects(&self.leaks, now_ms, threshold, age);
        let report = LeakReport {
            checked_ms: now_ms,
            audits,
            suspects,
            live_bos: live,
            threshold_bytes: threshold,
            age_ms: age,
        };
        if report.has_mismatch() || !report.suspects.is_empty() {
            log::warn!(
                "pddgpu: leak check: {} suspects, audit mismatch: {}",
                report.suspects.len(),
                report.has_mismatch()
            );
        }
        *self.last_report.lock() = report.clone();
        let interval = self.tunables.value(Tunable::LeakCheckIntervalMs);
        self.next_check_ms
            .store(now_ms.saturating_add(interval), Ordering::Relaxed);
        report
    }

    /// The report of the last leak check (empty if none ran yet).
    pub fn last_leak_report(&self) -> LeakReport {
        self.last_report.lock().clone()
    }

    /// Periodic work, driven by the caller's clock: polls the device for
    /// events and, when the leak monitor is on and the interval has passed,
    /// runs the leak check.
    pub fn tick(&self, now_ms: u64) {
        if self.gate.state.get() == DeviceState::READY {
            if let Err(e) = self.poll_device(false) {
                log::error!("pddgpu: device poll failed: {e}");
            }
        }
        if self.tunables.value(Tunable::LeakMonitor) != 0
            && now_ms >= self.next_check_ms.load(Ordering::Relaxed)
        {
            self.leak_check(now_ms);
        }
    }

    /// `ok`, or the list of problems: device not READY, managers not READY
    /// (with the reason), live BOs on bad VRAM.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        let state = self.gate.state.get();
        if state != DeviceState::READY {
            problems.push(format!("device is {}", state.name()));
        }
        let faults = self.faults.lock();
        for d in Domain::ALL {
            let ms = self.manager_state(d);
            if ms != ManagerState::Ready {
                match &faults.causes[d.index()] {
                    Some(cause) => problems.push(format!("{d} manager is {ms}: {cause}")),
                    None => problems.push(format!("{d} manager is {ms}")),
                }
            }
        }
        let bad = faults.bad_ranges.clone();
        drop(faults);
        if !bad.is_empty() {
            let mut on_bad: Vec<BoId> = Vec::new();
            for i in 0..self.table.shard_count() {
                let shard = self.table.shard_at(i);
                on_bad.extend(
                    shard
                        .bos
                        .iter()
                        .filter(|(_, e)| bad.iter().any(|r| e.placement.overlaps(r)))
                        .map(|(id, _)| BoId(*id)),
                );
            }
            on_bad.sort_unstable();
            for id in on_bad {
                problems.push(format!("BO {id} lies on bad VRAM"));
            }
        }
        Health { problems }
    }

    /// Reported bad VRAM ranges and the bytes retired because of them.
    pub fn bad_vram(&self) -> (Vec<Range<u64>>, u64) {
        let f = self.faults.lock();
        (f.bad_ranges.clone(), f.retired_bytes())
    }

    /// Per-client usage, ordered by owner.
    pub fn clients(&self) -> Vec<ClientUsage> {
        let quota = self.tunables.client_quota();
        let mut v = Vec::new();
        self.owners.for_each(|owner, e| {
            v.push(ClientUsage {
                owner,
                bo_count: e.held.len() as u64,
                vram_bytes: e.charged[0],
                gtt_bytes: e.charged[1],
                quota,
                account: e.account(),
            })
        });
        v.sort_by_key(|c| c.owner);
        v
    }
}
