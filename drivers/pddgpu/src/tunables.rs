//! Runtime tunables: the driver's knobs as validated settings, readable
//! and settable by name at run time (the scheme exposes them as
//! `config/<name>`).
//!
//! | name | unit | allowed | default |
//! |---|---|---|---|
//! | `vram_retry_count` | retries | 0..=100 | 3 |
//! | `vram_retry_delay_ms` | ms | 0..=60000 | 10 |
//! | `gtt_retry_count` | retries | 0..=100 | 3 |
//! | `gtt_retry_delay_ms` | ms | 0..=60000 | 5 |
//! | `leak_check_interval_ms` | ms | 100..=86400000 | 30000 |
//! | `leak_threshold_bytes` | bytes | 0..=2^50 | 100 MiB |
//! | `leak_monitor` | on/off | 0..=1 | on |
//! | `client_quota_bytes` | bytes, 0 = off | 0..=2^50 | 0 |
//! | `leak_age_ms` | ms | 0..=86400000 | 60000 |
//! | `uid_quota_percent` | % of each domain, 100 = off | 1..=100 | 75 |
//!
//! `leak_age_ms` is our addition: how old a BO must be before the leak
//! check calls it a suspect. So is `uid_quota_percent`: the share of each
//! domain the owners of one account (a user) may hold together, see
//! [`crate::driver::ownership`].
//!
//! Values are written as decimal or `0x` hex; byte values accept a binary
//! suffix (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`), times
//! accept `ms` or `s`, switches accept `on`/`off`, `1`/`0`,
//! `true`/`false`, `yes`/`no`.

use alloc::format;
use alloc::string::{String, ToString};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::device::Domain;
use crate::manager::RetryPolicy;

/// The unit of a tunable, which decides how values are parsed and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// A plain count.
    Count,
    /// Milliseconds.
    Millis,
    /// Bytes.
    Bytes,
    /// On (1) or off (0).
    Switch,
}

/// Identifies a tunable without a name lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Tunable {
    /// Retries a client may make after a VRAM allocation fails for space.
    VramRetryCount,
    /// Delay between VRAM retries.
    VramRetryDelayMs,
    /// Retries a client may make after a GTT allocation fails for space.
    GttRetryCount,
    /// Delay between GTT retries.
    GttRetryDelayMs,
    /// Period of the automatic leak check.
    LeakCheckIntervalMs,
    /// Owners holding more than this are checked for old BOs.
    LeakThresholdBytes,
    /// Whether the periodic leak check runs.
    LeakMonitor,
    /// Per-client quota (0 = none).
    ClientQuotaBytes,
    /// Minimum age of a BO reported as a leak suspect.
    LeakAgeMs,
    /// Share of each domain one account (user) may hold (100 = no limit).
    UidQuotaPercent,
}

/// Description of one tunable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunableSpec {
    /// Which tunable.
    pub id: Tunable,
    /// Its name.
    pub name: &'static str,
    /// How values are parsed and shown.
    pub unit: Unit,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
    /// Value at start.
    pub default: u64,
    /// One-line description.
    pub help: &'static str,
}

const MAX_BYTES: u64 = 1 << 50;
const DAY_MS: u64 = 86_400_000;

/// All tunables, in display order.
pub const SPECS: [TunableSpec; 10] = [
    TunableSpec {
        id: Tunable::VramRetryCount,
        name: "vram_retry_count",
        unit: Unit::Count,
        min: 0,
        max: 100,
        default: RetryPolicy::VRAM_DEFAULT.count as u64,
        help: "retries allowed after a VRAM allocation fails for lack of space",
    },
    TunableSpec {
        id: Tunable::VramRetryDelayMs,
        name: "vram_retry_delay_ms",
        unit: Unit::Millis,
        min: 0,
        max: 60_000,
        default: RetryPolicy::VRAM_DEFAULT.delay_ms as u64,
        help: "delay between VRAM allocation retries",
    },
    TunableSpec {
        id: Tunable::GttRetryCount,
        name: "gtt_retry_count",
        unit: Unit::Count,
        min: 0,
        max: 100,
        default: RetryPolicy::GTT_DEFAULT.count as u64,
        help: "retries allowed after a GTT allocation fails for lack of space",
    },
    TunableSpec {
        id: Tunable::GttRetryDelayMs,
        name: "gtt_retry_delay_ms",
        unit: Unit::Millis,
        min: 0,
        max: 60_000,
        default: RetryPolicy::GTT_DEFAULT.delay_ms as u64,
        help: "delay between GTT allocation retries",
    },
    TunableSpec {
        id: Tunable::LeakCheckIntervalMs,
        name: "leak_check_interval_ms",
        unit: Unit::Millis,
        min: 100,
        max: DAY_MS,
        default: 30_000,
        help: "period of the automatic leak check",
    },
    TunableSpec {
        id: Tunable::LeakThresholdBytes,
        name: "leak_threshold_bytes",
        unit: Unit::Bytes,
        min: 0,
        max: MAX_BYTES,
        default: 100 << 20,
        help: "owners holding more than this are checked for old BOs",
    },
    TunableSpec {
        id: Tunable::LeakMonitor,
        name: "leak_monitor",
        unit: Unit::Switch,
        min: 0,
        max: 1,
        default: 1,
        help: "run the leak check periodically (on/off)",
    },
    TunableSpec {
        id: Tunable::ClientQuotaBytes,
        name: "client_quota_bytes",
        unit: Unit::Bytes,
        min: 0,
        max: MAX_BYTES,
        default: 0,
        help:
            "allocated bytes (whole pages) one client may hold, created or imported (0 = no quota)",
    },
    TunableSpec {
        id: Tunable::LeakAgeMs,
        name: "leak_age_ms",
        unit: Unit::Millis,
        min: 0,
        max: DAY_MS,
        default: 60_000,
        help: "minimum age of a BO reported as a leak suspect",
    },
    TunableSpec {
        id: Tunable::UidQuotaPercent,
        name: "uid_quota_percent",
        unit: Unit::Count,
        min: 1,
        max: 100,
        default: 75,
        help: "percent of each domain the clients of one user may hold together, created or imported (100 = no limit)",
    },
];

impl Tunable {
    /// Its description.
    pub fn spec(self) -> &'static TunableSpec {
        &SPECS[self as usize]
    }

    /// The tunable called `name`.
    pub fn from_name(name: &str) -> Option<Tunable> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.id)
    }
}

/// Why a tunable could not be set. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TunableError {
    /// No tunable has this name.
    #[error("unknown tunable `{name}` (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        known: String,
    },
    /// The text is not a value of the tunable's unit.
    #[error("{name}: cannot parse `{value}` ({expected}; allowed {allowed})")]
    Unparsable {
        /// The tunable.
        name: &'static str,
        /// The text given.
        value: String,
        /// What was expected.
        expected: &'static str,
        /// The allowed range.
        allowed: String,
    },
    /// The value is outside the allowed range.
    #[error("{name}: {value} is out of range (allowed {allowed})")]
    OutOfRange {
        /// The tunable.
        name: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        allowed: String,
    },
}

impl TunableSpec {
    /// The allowed range as text, e.g. `0..=100` or `on|off`.
    pub fn allowed(&self) -> String {
        match self.unit {
            Unit::Switch => "on|off".to_string(),
            _ => format!("{}..={}", self.min, self.max),
        }
    }

    /// Shows `value` in this tunable's unit (`on`/`off` for switches,
    /// plain numbers otherwise).
    pub fn show(&self, value: u64) -> String {
        match self.unit {
            Unit::Switch => (if value != 0 { "on" } else { "off" }).to_string(),
            _ => value.to_string(),
        }
    }

    /// Parses and range-checks `text`.
    pub fn parse(&self, text: &str) -> Result<u64, TunableError> {
        let text = text.trim();
        let unparsable = |expected| TunableError::Unparsable {
            name: self.name,
            value: text.to_string(),
            expected,
            allowed: self.allowed(),
        };
        let value = match self.unit {
            Unit::Switch => match text.to_ascii_lowercase().as_str() {
                "on" | "1" | "true" | "yes" => 1,
                "off" | "0" | "false" | "no" => 0,
                _ => return Err(unparsable("on or off")),
            },
            Unit::Count => parse_number(text).ok_or(unparsable("a whole number"))?,
            Unit::Millis => parse_millis(text).ok_or(unparsable("milliseconds, e.g. 250 or 2s"))?,
            Unit::Bytes => parse_bytes(text).ok_or(unparsable("bytes, e.g. 4096, 64M or 1GiB"))?,
        };
        if value < self.min || value > self.max {
            return Err(TunableError::OutOfRange {
                name: self.name,
                value,
                allowed: self.allowed(),
            });
        }
        Ok(value)
    }
}

fn parse_number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_millis(text: &str) -> Option<u64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return parse_number(ms.trim_end());
    }
    if let Some(s) = text.strip_suffix('s') {
        return parse_number(s.trim_end())?.checked_mul(1000);
    }
    parse_number(text)
}

fn parse_bytes(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (body, binary_suffix) = match lower.strip_suffix("ib") {
        Some(body) => (body, true),
        None => (lower.strip_suffix('b').unwrap_or(&lower), false),
    };
    let shift = match body.as_bytes().last() {
        Some(b'k') => 10,
        Some(b'm') => 20,
        Some(b'g') => 30,
        Some(b't') => 40,
        _ if binary_suffix => return None,
        _ => 0,
    };
    let digits = if shift > 0 {
        &body[..body.len() - 1]
    } else {
        body
    };
    parse_number(digits.trim_end())?.checked_mul(1u64 << shift)
}

/// The current values, readable and settable from any thread without
/// locks. A generation number changes on every successful set, so users
/// can cheaply notice changes.
#[derive(Debug)]
pub struct Tunables {
    values: [AtomicU64; SPECS.len()],
    generation: AtomicU64,
}

impl Default for Tunables {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunables {
    /// All tunables at their defaults.
    pub fn new() -> Self {
        Tunables {
            values: SPECS.map(|s| AtomicU64::new(s.default)),
            generation: AtomicU64::new(0),
        }
    }

    /// The names of all tunables, in display order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        SPECS.iter().map(|s| s.name)
    }

    /// The descriptions of all tunables.
    pub fn specs(&self) -> &'static [TunableSpec] {
        &SPECS
    }

    /// The value of `name`, or `None` if there is no such tunable.
    pub fn get(&self, name: &str) -> Option<u64> {
        Tunable::from_name(name).map(|t| self.value(t))
    }

    /// The value of `name` shown in its unit (`on`/`off` for switches).
    pub fn show(&self, name: &str) -> Option<String> {
        let t = Tunable::from_name(name)?;
        Some(t.spec().show(self.value(t)))
    }

    /// The value of `t`.
    pub fn value(&self, t: Tunable) -> u64 {
        self.values[t as usize].load(Ordering::Relaxed)
    }

    /// Parses `text` and sets `name`; returns the new value. Errors name
    /// the allowed range and change nothing.
    pub fn set(&self, name: &str, text: &str) -> Result<u64, TunableError> {
        let t = Tunable::from_name(name).ok_or_else(|| TunableError::Unknown {
            name: name.to_string(),
            known: SPECS
                .iter()
                .map(|s| s.name)
                .collect::<alloc::vec::Vec<_>>()
                .join(", "),
        })?;
        let value = t.spec().parse(text)?;
        self.store(t, value);
        Ok(value)
    }

    /// Sets `t` to `value` after the range check.
    pub fn set_value(&self, t: Tunable, value: u64) -> Result<(), TunableError> {
        let spec = t.spec();
        if value < spec.min || value > spec.max {
            return Err(TunableError::OutOfRange {
                name: spec.name,
                value,
                allowed: spec.allowed(),
            });
        }
        self.store(t, value);
        Ok(())
    }

    fn store(&self, t: Tunable, value: u64) {
        self.values[t as usize].store(value, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes on every successful set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The retry policy configured for `domain`.
    pub fn retry_policy(&self, domain: Domain) -> RetryPolicy {
        let (count, delay) = match domain {
            Domain::Vram => (Tunable::VramRetryCount, Tunable::VramRetryDelayMs),
            Domain::Gtt => (Tunable::GttRetryCount, Tunable::GttRetryDelayMs),
        };
        // Both are range-checked far below u32::MAX.
        RetryPolicy {
            count: self.value(count) as u32,
            delay_ms: self.value(delay) as u32,
        }
    }

    /// The per-client quota in bytes, `None` when off.
    pub fn client_quota(&self) -> Option<u64> {
        Some(self.value(Tunable::ClientQuotaBytes)).filter(|&q| q > 0)
    }

    /// The per-account quota in a domain of `domain_size` bytes:
    /// `uid_quota_percent` of it, rounded down to whole pages; `None` at
    /// 100 % (no limit).
    pub fn account_quota(&self, domain_size: u64) -> Option<u64> {
        let percent = self.value(Tunable::UidQuotaPercent);
        if percent >= 100 {
            return None;
        }
        let share = (u128::from(domain_size) * u128::from(percent) / 100) as u64;
        Some(share - share % crate::bo::PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_knobs_exist_with_defaults() {
        let t = Tunables::new();
        let names: alloc::vec::Vec<_> = t.names().collect();
        for n in [
            "vram_retry_count",
            "vram_retry_delay_ms",
            "gtt_retry_count",
            "gtt_retry_delay_ms",
            "leak_check_interval_ms",
            "leak_threshold_bytes",
            "leak_monitor",
            "client_quota_bytes",
            "uid_quota_percent",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert_eq!(t.get("leak_threshold_bytes"), Some(100 << 20));
        assert_eq!(t.retry_policy(Domain::Vram), RetryPolicy::VRAM_DEFAULT);
        assert_eq!(t.retry_policy(Domain::Gtt), RetryPolicy::GTT_DEFAULT);
        assert_eq!(t.client_quota(), None);
        assert_eq!(t.account_quota(1 << 30), Some(3 << 28), "75 % by default");
        assert_eq!(t.set("uid_quota_percent", "33"), Ok(33));
        assert_eq!(
            t.account_quota(100 * 4096 + 1),
            Some(33 * 4096),
            "whole pages"
        );
        assert_eq!(t.set("uid_quota_percent", "100"), Ok(100));
        assert_eq!(t.account_quota(1 << 30), None, "100 % is no limit");
        assert!(t.set("uid_quota_percent", "0").is_err());
        assert!(t.set("uid_quota_percent", "101").is_err());
        assert_eq!(t.show("leak_monitor").as_deref(), Some("on"));
        assert_eq!(t.get("nope"), None);
        for (i, s) in SPECS.iter().enumerate() {
            assert_eq!(s.id as usize, i);
            assert!(s.min <= s.default && s.default <= s.max, "{}", s.name);
        }
    }

    #[test]
    fn values_parse_in_their_units() {
        let t = Tunables::new();
        assert_eq!(t.set("client_quota_bytes", " 64M\n"), Ok(64 << 20));
        assert_eq!(t.client_quota(), Some(64 << 20));
        assert_eq!(t.set("client_quota_bytes", "1GiB"), Ok(1 << 30));
        assert_eq!(t.set("client_quota_bytes", "0x1000"), Ok(4096));
        assert_eq!(t.set("client_quota_bytes", "12kb"), Ok(12 << 10));
        assert_eq!(t.set("leak_check_interval_ms", "2s"), Ok(2000));
        assert_eq!(t.set("leak_check_interval_ms", "250ms"), Ok(250));
        assert_eq!(t.set("leak_monitor", "off"), Ok(0));
        assert_eq!(t.show("leak_monitor").as_deref(), Some("off"));
        assert_eq!(t.set("gtt_retry_count", "7"), Ok(7));
        assert_eq!(t.set("gtt_retry_delay_ms", "9"), Ok(9));
        assert_eq!(
            t.retry_policy(Domain::Gtt),
            RetryPolicy {
                count: 7,
                delay_ms: 9
            }
        );
    }

    #[test]
    fn bad_values_are_rejected_with_the_allowed_range() {
        let t = Tunables::new();
        let g = t.generation();
        let e = t.set("vram_retry_count", "101").unwrap_err();
        assert_eq!(
            e.to_string(),
            "vram_retry_count: 101 is out of range (allowed 0..=100)"
        );
        let e = t.set("leak_check_interval_ms", "5").unwrap_err();
        assert!(e.to_string().contains("allowed 100..=86400000"), "{e}");
        let e = t.set("vram_retry_count", "-1").unwrap_err();
        assert!(e.to_string().contains("allowed 0..=100"), "{e}");
        let e = t.set("leak_monitor", "maybe").unwrap_err();
        assert!(e.to_string().contains("on|off"), "{e}");
        for bad in [
            "",
            "1.5",
            "12iB",
            "99999999999999999999",
            "16E",
            "4Mx",
            "0xg",
            "M",
        ] {
            assert!(t.set("client_quota_bytes", bad).is_err(), "{bad:?}");
        }
        assert!(t.set("client_quota_bytes", "2048T").is_err());
        let e = t.set("bogus", "1").unwrap_err();
        assert!(e.to_string().contains("vram_retry_count"), "{e}");
        assert!(t.set_value(Tunable::LeakMonitor, 2).is_err());
        assert_eq!(t.generation(), g);
        assert_eq!(t.value(Tunable::VramRetryCount), 3);
    }
}
