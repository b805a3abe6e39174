//! The generated files: small, line-oriented text (`key value`) for shell
//! users, and JSON (the [`pddgpu_ipc::model`] types) for programs. Both are
//! built from one snapshot of the driver, so they always agree.

use std::fmt::Write;

use pddgpu::driver::{AuditVerdict, Domain, Driver, LeakReport, Occupant, SuspectReason};
use pddgpu::gtt::GttStats;
use pddgpu::manager::{ManagerState, RetryPolicy};
use pddgpu_ipc::model::{
    BoTotals, ClientInfo, DeviceStats, ExtentKind, LeakAudit, LeakReport as LeakModel, LeakSuspect,
    MapExtent, OccupancyMap, PoolStats, Stats, JSON_ABI,
};

use crate::callers::{Callers, OwnerId};
use crate::path::FileKind;

/// Renders a generated file.
pub fn render(kind: FileKind, driver: &Driver, owners: &Owners) -> Vec<u8> {
    let text = match kind {
        FileKind::Stats => stats_text(&stats(driver)),
        FileKind::StatsJson => json(&stats(driver)),
        FileKind::Vram => vram_text(driver),
        FileKind::Gtt => gtt_text(&driver.gtt_stats()),
        FileKind::VramMap => map_text(&occupancy(driver, owners, Domain::Vram)),
        FileKind::VramMapJson => json(&occupancy(driver, owners, Domain::Vram)),
        FileKind::GttMap => map_text(&occupancy(driver, owners, Domain::Gtt)),
        FileKind::GttMapJson => json(&occupancy(driver, owners, Domain::Gtt)),
        FileKind::Leaks => leaks_text(&leaks(&driver.last_leak_report(), owners)),
        FileKind::LeaksJson => json(&leaks(&driver.last_leak_report(), owners)),
        FileKind::Clients => clients_text(&clients(driver, owners)),
        FileKind::ClientsJson => json(&clients(driver, owners)),
        FileKind::Health => driver.health().to_string(),
        FileKind::State => state_text(driver),
    };
    text.into_bytes()
}

/// The callers as generated files show them (pid and open handles per
/// live owner): copied out of [`Callers`] under the scheme lock, in time
/// proportional to the number of owners, so that a file can be rendered
/// after the lock is released. Everything else a file shows is the
/// driver's, which serves concurrent readers itself (each of its reports
/// is taken under its own locks, e.g. an occupancy map in one walk).
#[derive(Clone, Debug, Default)]
pub struct Owners {
    /// Owner -> (pid for display, open handles).
    by_owner: std::collections::BTreeMap<OwnerId, (usize, usize)>,
}

impl Owners {
    /// The live owners of `callers` now.
    pub fn of(callers: &Callers) -> Owners {
        let by_owner = callers
            .list()
            .into_iter()
            .map(|(owner, pid)| (owner, (pid, callers.handles(owner))))
            .collect();
        Owners { by_owner }
    }

    /// The pid of a live owner.
    pub fn pid(&self, owner: OwnerId) -> Option<usize> {
        self.by_owner.get(&owner).map(|&(pid, _)| pid)
    }

    /// Open handles of a live owner.
    pub fn handles(&self, owner: OwnerId) -> usize {
        self.by_owner.get(&owner).map_or(0, |&(_, handles)| handles)
    }

    /// All live owners with their pids, by owner id.
    pub fn list(&self) -> Vec<(OwnerId, usize)> {
        self.by_owner
            .iter()
            .map(|(&owner, &(pid, _))| (owner, pid))
            .collect()
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Serialising plain structs of numbers and strings cannot fail.
    let mut s = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

fn permille_to_pct(permille: u64) -> u64 {
    (permille + 5) / 10
}

/// `stats.json` from the driver.
pub fn stats(driver: &Driver) -> Stats {
    let snap = driver.stats();
    let v = driver.vram_stats();
    let g = driver.gtt_stats();
    let mut counters = std::collections::BTreeMap::new();
    for (name, c) in [("vram", &snap.vram), ("gtt", &snap.gtt)] {
        counters.insert(format!("{name}_allocs"), c.allocs);
        counters.insert(format!("{name}_frees"), c.frees);
        counters.insert(format!("{name}_failures"), c.failures);
        counters.insert(format!("{name}_retries"), c.retries);
        counters.insert(format!("{name}_allocated_bytes"), c.allocated_bytes);
        counters.insert(
            format!("{name}_peak_allocated_bytes"),
            c.peak_allocated_bytes,
        );
        counters.insert(format!("{name}_peak_bo_count"), c.peak_bo_count);
    }
    counters.insert("updates".into(), snap.updates);
    Stats {
        abi: JSON_ABI,
        device: DeviceStats {
            name: driver.info().name.to_string(),
            state: driver.device_state().name().to_string(),
        },
        vram: PoolStats {
            state: v.state.name().to_string(),
            healthy: v.is_healthy,
            total: v.total_size,
            used: v.used_size,
            free: v.free_size,
            largest_free: v.largest_free,
            visible_total: v.visible_size,
            visible_used: v.visible_used,
            fragments: v.free_block_count,
            fragmentation_pct: permille_to_pct(v.fragmentation_permille()),
        },
        gtt: PoolStats {
            state: g.state.name().to_string(),
            healthy: g.is_healthy,
            total: g.total_size,
            used: g.used_size,
            free: g.free_size,
            largest_free: g.largest_hole,
            visible_total: 0,
            visible_used: 0,
            fragments: g.hole_count,
            fragmentation_pct: permille_to_pct(g.fragmentation_permille()),
        },
        bos: BoTotals {
            count: snap.vram.bo_count + snap.gtt.bo_count,
            vram_bytes: snap.vram.requested_bytes,
            gtt_bytes: snap.gtt.requested_bytes,
        },
        counters,
    }
}

/// The `stats` text: `key value` per line.
pub fn stats_text(s: &Stats) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "device_name {}", s.device.name);
    let _ = writeln!(t, "device_state {}", s.device.state);
    for (name, p) in [("vram", &s.vram), ("gtt", &s.gtt)] {
        let _ = writeln!(t, "{name}_state {}", p.state);
        let _ = writeln!(t, "{name}_healthy {}", u8::from(p.healthy));
        let _ = writeln!(t, "{name}_total {}", p.total);
        let _ = writeln!(t, "{name}_used {}", p.used);
        let _ = writeln!(t, "{name}_free {}", p.free);
        let _ = writeln!(t, "{name}_largest_free {}", p.largest_free);
        if name == "vram" {
            let _ = writeln!(t, "{name}_visible_total {}", p.visible_total);
            let _ = writeln!(t, "{name}_visible_used {}", p.visible_used);
        }
        let _ = writeln!(t, "{name}_fragments {}", p.fragments);
        let _ = writeln!(t, "{name}_fragmentation_pct {}", p.fragmentation_pct);
    }
    let _ = writeln!(t, "bo_count {}", s.bos.count);
    let _ = writeln!(t, "bo_vram_bytes {}", s.bos.vram_bytes);
    let _ = writeln!(t, "bo_gtt_bytes {}", s.bos.gtt_bytes);
    for (k, v) in &s.counters {
        let _ = writeln!(t, "{k} {v}");
    }
    t
}

/// [`manager_text`] of a manager's statistics with the allocator's own
/// rows: [`VramStats`](pddgpu::vram::VramStats) and
/// [`GttStats`](pddgpu::gtt::GttStats) carry the figures every manager has
/// under the same names.
macro_rules! manager_text_of {
    ($stats:expr, $allocator:expr) => {{
        let s = &$stats;
        manager_text(
            s.state,
            s.is_healthy,
            [s.total_size, s.used_size, s.free_size],
            $allocator,
            s.fragmentation_permille(),
            s.retry,
        )
    }};
}

fn vram_text(driver: &Driver) -> String {
    let v = driver.vram_stats();
    let allocator = [
        ("visible_size", v.visible_size),
        ("visible_used", v.visible_used),
        ("largest_free", v.largest_free),
        ("min_block_size", v.min_block_size),
        ("allocations", v.allocations),
        ("blocks", v.block_count),
        ("free_blocks", v.free_block_count),
    ];
    let mut t = manager_text_of!(v, &allocator);
    let (bad, retired) = driver.bad_vram();
    let _ = writeln!(t, "bad_ranges {}", bad.len());
    let _ = writeln!(t, "retired_bytes {retired}");
    for (order, bytes) in v.free_per_order.iter().enumerate() {
        if *bytes > 0 {
            let block = v.min_block_size << order;
            let _ = writeln!(t, "free_order_{order} {bytes} blocks_of {block}");
        }
    }
    t
}

fn gtt_text(g: &GttStats) -> String {
    let allocator = [
        ("holes", g.hole_count),
        ("largest_hole", g.largest_hole),
        ("nodes", g.node_count),
    ];
    manager_text_of!(g, &allocator)
}

/// The `key value` lines both managers' files share, in this order: state,
/// health and usage (`total`, `used`, `free`), then the allocator's own
/// rows, then fragmentation and the retry policy.
fn manager_text(
    state: ManagerState,
    healthy: bool,
    [total, used, free]: [u64; 3],
    allocator: &[(&str, u64)],
    fragmentation_permille: u64,
    retry: RetryPolicy,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "state {}", state.name());
    let _ = writeln!(t, "healthy {}", u8::from(healthy));
    let _ = writeln!(t, "total {total}");
    let _ = writeln!(t, "used {used}");
    let _ = writeln!(t, "free {free}");
    for (key, value) in allocator {
        let _ = writeln!(t, "{key} {value}");
    }
    let _ = writeln!(t, "fragmentation_permille {fragmentation_permille}");
    let _ = writeln!(t, "retry_count {}", retry.count);
    let _ = writeln!(t, "retry_delay_ms {}", retry.delay_ms);
    t
}

/// `<domain>.map.json`: the driver's occupancy map with owners resolved to
/// pids.
pub fn occupancy(driver: &Driver, owners: &Owners, domain: Domain) -> OccupancyMap {
    let m = driver.occupancy(domain);
    let extents = m
        .extents
        .into_iter()
        .map(|e| {
            let (kind, bo, owner, label) = match e.occupant {
                Occupant::Free => (ExtentKind::Free, 0, 0, String::new()),
                Occupant::Bo { id, owner, label } => (ExtentKind::Bo, id.0, owner, label),
                Occupant::Retired => (ExtentKind::Retired, 0, 0, String::new()),
                Occupant::Unowned => (ExtentKind::Unowned, 0, 0, String::new()),
            };
            MapExtent {
                start: e.range.start,
                size: e.range.end - e.range.start,
                kind,
                bo,
                owner,
                pid: if owner == 0 {
                    0
                } else {
                    owners.pid(owner).map_or(0, |p| p as u64)
                },
                label,
            }
        })
        .collect();
    OccupancyMap {
        abi: JSON_ABI,
        domain: domain_name(domain),
        size: m.size,
        visible_size: m.visible_size,
        settled: m.settled,
        extents,
    }
}

/// The `<domain>.map` text: `key value` lines, then one `extent` line per
/// extent in address order: `extent <start> <end> <kind>`, for BOs followed
/// by `id <bo id> owner <owner> pid <pid> label "<label>"`.
pub fn map_text(m: &OccupancyMap) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "domain {}", m.domain);
    let _ = writeln!(t, "size {}", m.size);
    let _ = writeln!(t, "visible_size {}", m.visible_size);
    let _ = writeln!(t, "settled {}", u8::from(m.settled));
    let _ = writeln!(t, "extents {}", m.extents.len());
    for e in &m.extents {
        let _ = write!(
            t,
            "extent {:#012x} {:#012x} {}",
            e.start,
            e.end(),
            e.kind.name()
        );
        if e.kind == ExtentKind::Bo {
            let _ = write!(
                t,
                " id {} owner {} pid {} label {:?}",
                e.bo, e.owner, e.pid, e.label
            );
        }
        t.push('\n');
    }
    t
}

fn state_text(driver: &Driver) -> String {
    format!(
        "device {}\nvram {}\ngtt {}\n",
        driver.device_state().name(),
        driver.vram_stats().state.name(),
        driver.gtt_stats().state.name()
    )
}

fn domain_name(d: Domain) -> String {
    d.name().to_string()
}

/// `leaks.json` from a driver report; owners are resolved to pids.
pub fn leaks(r: &LeakReport, owners: &Owners) -> LeakModel {
    let audits: Vec<LeakAudit> = r
        .audits
        .iter()
        .map(|a| LeakAudit {
            domain: domain_name(a.domain),
            verdict: a.verdict.name().to_string(),
            allocator_used: a.allocator_used,
            live_bytes: a.live_bytes,
            reserved_bytes: a.reserved_bytes,
            live_bos: a.live_bos,
        })
        .collect();
    let problems = r
        .audits
        .iter()
        .filter(|a| a.verdict != AuditVerdict::Clean)
        .map(|a| {
            format!(
                "{} audit {}: allocator uses {} bytes, live BOs hold {} (+{} retired)",
                a.domain.name(),
                a.verdict.name(),
                a.allocator_used,
                a.live_bytes,
                a.reserved_bytes
            )
        })
        .collect();
    let suspects = r
        .suspects
        .iter()
        .map(|s| LeakSuspect {
            id: s.id.0,
            owner: s.owner,
            pid: owners.pid(s.owner).map_or(0, |p| p as u64),
            size: s.size,
            domain: domain_name(s.domain),
            age_ms: s.age_ms,
            label: s.label.clone(),
            reason: match s.reason {
                SuspectReason::OldAndLarge { owner_bytes } => {
                    format!("old-large: owner holds {owner_bytes} bytes")
                }
                SuspectReason::Unheld => "unheld: no owner holds it (bookkeeping error)".into(),
            },
        })
        .collect();
    LeakModel {
        abi: JSON_ABI,
        checked_ms: r.checked_ms,
        clean: r.is_clean(),
        problems,
        audits,
        suspects,
        live_bos: r.live_bos,
        threshold_bytes: r.threshold_bytes,
        age_ms: r.age_ms,
    }
}

/// The `leaks` text.
pub fn leaks_text(r: &LeakModel) -> String {
    let mut t = String::new();
    if r.checked_ms == 0 && r.audits.is_empty() {
        t.push_str("no leak check has run yet (write leak-check to control)\n");
        return t;
    }
    let _ = writeln!(t, "checked_ms {}", r.checked_ms);
    let _ = writeln!(t, "result {}", if r.clean { "clean" } else { "problems" });
    let _ = writeln!(t, "live_bos {}", r.live_bos);
    let _ = writeln!(t, "threshold_bytes {}", r.threshold_bytes);
    let _ = writeln!(t, "age_ms {}", r.age_ms);
    for a in &r.audits {
        let _ = writeln!(
            t,
            "audit {} {} allocator_used {} live_bytes {} reserved_bytes {} live_bos {}",
            a.domain, a.verdict, a.allocator_used, a.live_bytes, a.reserved_bytes, a.live_bos
        );
    }
    for s in &r.suspects {
        let _ = writeln!(
            t,
            "suspect id {} owner {} pid {} size {} domain {} age_ms {} label {:?} reason {}",
            s.id, s.owner, s.pid, s.size, s.domain, s.age_ms, s.label, s.reason
        );
    }
    t
}

/// `clients.json`: every live owner (with handles) joined with the
/// driver's usage.
pub fn clients(driver: &Driver, owners: &Owners) -> Vec<ClientInfo> {
    let usage = driver.clients();
    // The largest BO each owner is shown holding: (size, label).
    let mut largest: std::collections::BTreeMap<u64, (u64, String)> = Default::default();
    for r in driver.bo_list() {
        let best = largest.entry(r.owner).or_default();
        if r.size > best.0 {
            *best = (r.size, r.label);
        }
    }
    let largest_of = |owner: u64| largest.get(&owner).cloned().unwrap_or_default();
    let mut out: Vec<ClientInfo> = owners
        .list()
        .into_iter()
        .map(|(owner, pid)| {
            let u = usage.iter().find(|u| u.owner == owner);
            let (largest_bo_bytes, largest_bo_label) = largest_of(owner);
            ClientInfo {
                owner,
                pid: pid as u64,
                handles: owners.handles(owner) as u64,
                bos: u.map_or(0, |u| u.bo_count),
                vram_bytes: u.map_or(0, |u| u.vram_bytes),
                gtt_bytes: u.map_or(0, |u| u.gtt_bytes),
                quota: u.and_then(|u| u.quota).unwrap_or(0),
                largest_bo_label,
                largest_bo_bytes,
            }
        })
        .collect();
    // Usage of owners that have no handle any more (should not happen:
    // their BOs are released when the last handle closes) is shown too.
    for u in usage {
        if !out.iter().any(|c| c.owner == u.owner) {
            let (largest_bo_bytes, largest_bo_label) = largest_of(u.owner);
            out.push(ClientInfo {
                owner: u.owner,
                pid: 0,
                handles: 0,
                bos: u.bo_count,
                vram_bytes: u.vram_bytes,
                gtt_bytes: u.gtt_bytes,
                quota: u.quota.unwrap_or(0),
                largest_bo_label,
                largest_bo_bytes,
            });
        }
    }
    out
}

/// The `clients` text.
pub fn clients_text(c: &[ClientInfo]) -> String {
    let mut t = String::from("owner pid handles bos vram_bytes gtt_bytes quota\n");
    for c in c {
        let _ = writeln!(
            t,
            "{} {} {} {} {} {} {}",
            c.owner, c.pid, c.handles, c.bos, c.vram_bytes, c.gtt_bytes, c.quota
        );
    }
    t
}
