//! The machine-readable files of the scheme (`stats.json`, `leaks.json`,
//! `clients.json`, `vram.map.json`, `gtt.map.json`): one set of serde types used by the scheme to write them
//! and by clients to read them, so the keys cannot drift apart.
//!
//! Keys are stable; new keys may be added (readers ignore unknown keys and
//! default missing ones).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the JSON layout, the `abi` key of every document.
pub const JSON_ABI: u32 = 1;

/// `stats.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// [`JSON_ABI`].
    pub abi: u32,
    /// The device.
    pub device: DeviceStats,
    /// The VRAM manager.
    pub vram: PoolStats,
    /// The GTT manager.
    pub gtt: PoolStats,
    /// Live buffer objects.
    pub bos: BoTotals,
    /// Event counters (allocations, frees, failures, retries, …), by name.
    pub counters: BTreeMap<String, u64>,
}

/// Device part of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceStats {
    /// Model name.
    pub name: String,
    /// `initializing`, `ready` or `shutdown`.
    pub state: String,
}

/// One memory manager (VRAM or GTT).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolStats {
    /// `initializing`, `ready`, `shutdown` or `error`.
    pub state: String,
    /// Whether the manager reports itself healthy.
    pub healthy: bool,
    /// Bytes managed.
    pub total: u64,
    /// Bytes allocated.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
    /// Largest block or hole that could be allocated at once.
    pub largest_free: u64,
    /// CPU-visible VRAM bytes (0 for GTT).
    pub visible_total: u64,
    /// CPU-visible VRAM bytes in use (0 for GTT).
    pub visible_used: u64,
    /// Free fragments: free blocks (VRAM) or holes (GTT).
    pub fragments: u64,
    /// Fragmentation in percent: `100 * (1 - largest_free / free)`.
    pub fragmentation_pct: u64,
}

/// Totals of live BOs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoTotals {
    /// Number of live BOs.
    pub count: u64,
    /// Bytes of live VRAM BOs.
    pub vram_bytes: u64,
    /// Bytes of live GTT BOs.
    pub gtt_bytes: u64,
}

/// `leaks.json`: the last leak audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeakReport {
    /// [`JSON_ABI`].
    pub abi: u32,
    /// Server time of the audit, in milliseconds since start (0: never ran).
    pub checked_ms: u64,
    /// True when the audit found nothing wrong.
    pub clean: bool,
    /// Problems found with the allocators themselves (usage not matching
    /// the live BOs), one line each.
    pub problems: Vec<String>,
    /// The allocator audits, one per domain.
    pub audits: Vec<LeakAudit>,
    /// Suspect BOs.
    pub suspects: Vec<LeakSuspect>,
    /// Live BOs seen by the check.
    pub live_bos: u64,
    /// Owners holding more than this many bytes are checked for old BOs.
    pub threshold_bytes: u64,
    /// BOs older than this (held by such owners) are suspects.
    pub age_ms: u64,
}

/// One domain's allocator audit: does the allocator's usage equal what the
/// live BOs hold?
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeakAudit {
    /// `vram` or `gtt`.
    pub domain: String,
    /// `clean`, `mismatch`, `inconclusive` or `skipped`.
    pub verdict: String,
    /// Bytes the allocator counts as used.
    pub allocator_used: u64,
    /// Bytes the live BOs hold.
    pub live_bytes: u64,
    /// Bytes held back on purpose (retired bad VRAM).
    pub reserved_bytes: u64,
    /// Live BOs in the domain.
    pub live_bos: u64,
}

/// One suspect BO of a [`LeakReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeakSuspect {
    /// BO id.
    pub id: u64,
    /// Owner (client) id.
    pub owner: u64,
    /// Process id of the owner, when known.
    pub pid: u64,
    /// Size in bytes.
    pub size: u64,
    /// `vram` or `gtt`.
    pub domain: String,
    /// Age in milliseconds at the audit.
    pub age_ms: u64,
    /// Label given at creation.
    pub label: String,
    /// Why it is suspect.
    pub reason: String,
}

/// One client in `clients.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// Owner id (never reused while the server runs).
    pub owner: u64,
    /// Process id.
    pub pid: u64,
    /// Open handles.
    pub handles: u64,
    /// BOs held.
    pub bos: u64,
    /// VRAM bytes held.
    pub vram_bytes: u64,
    /// GTT bytes held.
    pub gtt_bytes: u64,
    /// Quota in bytes (0: unlimited).
    pub quota: u64,
    /// Label of the largest BO the client holds (empty when it holds none).
    pub largest_bo_label: String,
    /// Size in bytes of that BO.
    pub largest_bo_bytes: u64,
}

/// `vram.map.json` / `gtt.map.json`: the occupancy map of one domain, the
/// JSON twin of the `vram.map` / `gtt.map` text files.
///
/// The extents are in address order and tile the domain exactly: each one
/// starts where the previous one ends, the first at 0 and the last ending at
/// `size`. Adjacent pieces of one BO are one extent; a BO split over
/// several places (VRAM is not always contiguous) has one extent per place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OccupancyMap {
    /// [`JSON_ABI`].
    pub abi: u32,
    /// `vram` or `gtt`.
    pub domain: String,
    /// Bytes managed: the end of the last extent.
    pub size: u64,
    /// The CPU-visible window `0..visible_size` (VRAM; 0 for GTT).
    pub visible_size: u64,
    /// True when no allocation or free was in flight while the map was
    /// taken (then every allocated run is named correctly; otherwise an
    /// allocation in flight may show as `unowned` for this one reading).
    pub settled: bool,
    /// The extents, in address order.
    pub extents: Vec<MapExtent>,
}

/// What occupies a [`MapExtent`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Free: a hole the allocator can hand out.
    #[default]
    Free,
    /// Memory of a live BO.
    Bo,
    /// Allocated and kept on purpose: retired bad VRAM.
    Retired,
    /// Allocated, but no live BO holds it and it is not retired: memory the
    /// allocator lost track of (what the leak audit reports as a mismatch).
    Unowned,
    /// A kind this reader does not know (written by a newer server).
    #[serde(other)]
    Other,
}

impl ExtentKind {
    /// The name used in the text map and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExtentKind::Free => "free",
            ExtentKind::Bo => "bo",
            ExtentKind::Retired => "retired",
            ExtentKind::Unowned => "unowned",
            ExtentKind::Other => "other",
        }
    }
}

/// One extent of an [`OccupancyMap`]: a run of addresses and what holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapExtent {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: ExtentKind,
    /// The BO id (kind `bo`; else 0).
    pub bo: u64,
    /// The owner (client) shown as holding the BO: its creator while it
    /// holds it, else another holder (kind `bo`; else 0).
    pub owner: u64,
    /// The owner's process id, when known (else 0).
    pub pid: u64,
    /// The BO's label (kind `bo`; else empty).
    pub label: String,
}

impl MapExtent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

impl OccupancyMap {
    /// Checks that the extents tile `0..size` exactly, in address order,
    /// with no empty extent; returns the first fault found.
    pub fn check_tiling(&self) -> std::result::Result<(), String> {
        let mut at = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.size == 0 {
                return Err(format!("extent {i} at {:#x} is empty", e.start));
            }
            if e.start != at {
                return Err(format!(
                    "extent {i} starts at {:#x}, expected {at:#x} ({})",
                    e.start,
                    if e.start > at { "a gap" } else { "an overlap" }
                ));
            }
            at = e
                .start
                .checked_add(e.size)
                .ok_or_else(|| format!("extent {i} runs past the address space"))?;
        }
        if at != self.size {
            return Err(format!(
                "the extents end at {at:#x}, the domain at {:#x}",
                self.size
            ));
        }
        Ok(())
    }

    /// Bytes of kind `kind` inside `window`.
    pub fn bytes_in(&self, kind: ExtentKind, window: std::ops::Range<u64>) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| {
                let start = e.start.max(window.start);
                let end = e.end().min(window.end);
                end.saturating_sub(start)
            })
            .sum()
    }

    /// The largest free run inside `window`.
    pub fn largest_free_in(&self, window: std::ops::Range<u64>) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Free)
            .map(|e| {
                let start = e.start.max(window.start);
                let end = e.end().min(window.end);
                end.saturating_sub(start)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(start: u64, size: u64, kind: ExtentKind) -> MapExtent {
        MapExtent {
            start,
            size,
            kind,
            ..MapExtent::default()
        }
    }

    #[test]
    fn tiling_check_finds_gaps_overlaps_and_short_ends() {
        let mut m = OccupancyMap {
            size: 100,
            extents: vec![
                extent(0, 10, ExtentKind::Bo),
                extent(10, 30, ExtentKind::Free),
                extent(40, 60, ExtentKind::Bo),
            ],
            ..OccupancyMap::default()
        };
        assert_eq!(m.check_tiling(), Ok(()));
        m.extents[1].size = 29;
        assert!(m.check_tiling().unwrap_err().contains("a gap"));
        m.extents[1].size = 31;
        assert!(m.check_tiling().unwrap_err().contains("an overlap"));
        m.extents[1].size = 30;
        m.size = 101;
        assert!(m.check_tiling().unwrap_err().contains("end at"));
        m.size = 100;
        m.extents.insert(1, extent(10, 0, ExtentKind::Free));
        assert!(m.check_tiling().unwrap_err().contains("empty"));
    }

    #[test]
    fn window_sums_clip_to_the_window() {
        let m = OccupancyMap {
            size: 100,
            extents: vec![
                extent(0, 10, ExtentKind::Bo),
                extent(10, 30, ExtentKind::Free),
                extent(40, 20, ExtentKind::Bo),
                extent(60, 40, ExtentKind::Free),
            ],
            ..OccupancyMap::default()
        };
        assert_eq!(m.bytes_in(ExtentKind::Bo, 0..50), 20);
        assert_eq!(m.bytes_in(ExtentKind::Free, 0..50), 30);
        assert_eq!(m.largest_free_in(0..50), 30);
        assert_eq!(m.largest_free_in(0..20), 10);
        assert_eq!(m.largest_free_in(0..100), 40);
    }

    #[test]
    fn unknown_kinds_and_keys_are_tolerated() {
        let m: OccupancyMap = serde_json::from_str(
            r#"{"abi":1,"domain":"gtt","size":8,"new_key":3,
                "extents":[{"start":0,"size":8,"kind":"quantum"}]}"#,
        )
        .unwrap();
        assert_eq!(m.extents[0].kind, ExtentKind::Other);
        let text = serde_json::to_string(&extent(0, 4, ExtentKind::Unowned)).unwrap();
        assert!(text.contains(r#""kind":"unowned""#), "{text}");
    }
}
