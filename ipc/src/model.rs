//! The machine-readable files of the scheme (`stats.json`, `leaks.json`,
//! `clients.json`): one set of serde types used by the scheme to write them
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
}
