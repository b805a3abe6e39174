//! The time the core is given. The core never reads a clock: every call
//! that cares takes `now_ms`. Here time is logical — one millisecond per
//! call — which keeps ages and leak-check intervals deterministic across
//! runs under TCG, where wall time says nothing about the code.

use core::sync::atomic::{AtomicU64, Ordering};

static NOW_MS: AtomicU64 = AtomicU64::new(1);

/// The current logical time; each call advances it by one millisecond.
pub fn now_ms() -> u64 {
    NOW_MS.fetch_add(1, Ordering::Relaxed)
}
