//! The human form of `stats.json` that `pddgpu stats` prints: one line for
//! the device, one per memory manager, the live BOs, then the event counters
//! as a small aligned table with one row per domain and a unit on every
//! column. The machine format stays `stats.json`; this text is for people
//! and may change.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::{PoolStats, Stats};
use crate::size::format_size;

/// Percent of `part` in `whole`, rounded down (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        0
    } else {
        (part as u128 * 100 / whole as u128) as u64
    }
}

/// The domains of the counter table, as the counter keys spell them.
const DOMAINS: [&str; 2] = ["vram", "gtt"];

/// One column of the counter table: its heading, the counter key suffix
/// (`<domain>_<suffix>`) and how its value is shown.
struct Column {
    heading: &'static str,
    suffix: &'static str,
    bytes: bool,
}

/// The counter table's columns, in order. Counts are events since the
/// server started; byte columns are shown in binary units.
const COLUMNS: [Column; 7] = [
    Column {
        heading: "allocs",
        suffix: "allocs",
        bytes: false,
    },
    Column {
        heading: "frees",
        suffix: "frees",
        bytes: false,
    },
    Column {
        heading: "failures",
        suffix: "failures",
        bytes: false,
    },
    Column {
        heading: "retries",
        suffix: "retries",
        bytes: false,
    },
    Column {
        heading: "allocated",
        suffix: "allocated_bytes",
        bytes: true,
    },
    Column {
        heading: "peak allocated",
        suffix: "peak_allocated_bytes",
        bytes: true,
    },
    Column {
        heading: "peak BOs",
        suffix: "peak_bo_count",
        bytes: false,
    },
];

/// The counter key of `column` in `domain`.
fn key(domain: &str, column: &Column) -> String {
    format!("{domain}_{}", column.suffix)
}

fn pool_line(name: &str, p: &PoolStats) -> String {
    let mut s = format!(
        "{name:<8} {} {}, used {} of {} ({}%), free {}, largest free {}, fragmentation {}%",
        p.state,
        if p.healthy { "healthy" } else { "UNHEALTHY" },
        format_size(p.used),
        format_size(p.total),
        pct(p.used, p.total),
        format_size(p.free),
        format_size(p.largest_free),
        p.fragmentation_pct,
    );
    if p.visible_total > 0 {
        let _ = write!(
            s,
            ", visible used {} of {}",
            format_size(p.visible_used),
            format_size(p.visible_total)
        );
    }
    s.push('\n');
    s
}

/// Renders `rows` (the first one the heading) as right-aligned columns
/// after a left-aligned first column, two spaces apart.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            }
        }
        text += line.trim_end();
        text.push('\n');
    }
    text
}

/// The event counters as an aligned table: one row per domain, one column
/// per counter (with its unit), then any counter the table has no column
/// for, one per line, so nothing the server reports is hidden.
pub fn counters_table(s: &Stats) -> String {
    if s.counters.is_empty() {
        return String::new();
    }
    let mut rows = vec![std::iter::once("counters".to_string())
        .chain(COLUMNS.iter().map(|c| {
            if c.bytes {
                format!("{} (bytes)", c.heading)
            } else {
                format!("{} (count)", c.heading)
            }
        }))
        .collect::<Vec<_>>()];
    let mut shown = BTreeSet::new();
    for domain in DOMAINS {
        let mut row = vec![domain.to_string()];
        for column in &COLUMNS {
            let k = key(domain, column);
            let cell = match s.counters.get(&k) {
                Some(&v) if column.bytes => format_size(v),
                Some(v) => v.to_string(),
                None => "-".to_string(),
            };
            shown.insert(k);
            row.push(cell);
        }
        rows.push(row);
    }
    let mut text = aligned(&rows);
    for (k, v) in &s.counters {
        if shown.contains(k) {
            continue;
        }
        if k == "updates" {
            let _ = writeln!(text, "statistics updates (count): {v}");
        } else {
            let _ = writeln!(text, "{k}: {v}");
        }
    }
    text
}

/// The whole human form of `stats.json`.
pub fn format_stats(s: &Stats) -> String {
    let mut text = format!("device   {} ({})\n", s.device.name, s.device.state);
    text += &pool_line("vram", &s.vram);
    text += &pool_line("gtt", &s.gtt);
    let _ = writeln!(
        text,
        "bos      {} live, vram {}, gtt {}",
        s.bos.count,
        format_size(s.bos.vram_bytes),
        format_size(s.bos.gtt_bytes)
    );
    let table = counters_table(s);
    if !table.is_empty() {
        text.push('\n');
        text += &table;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        let mut s = Stats::default();
        s.device.name = "sim".into();
        s.device.state = "ready".into();
        s.vram.state = "ready".into();
        s.vram.healthy = true;
        s.vram.total = 256 << 20;
        s.vram.used = 64 << 20;
        s.vram.visible_total = 64 << 20;
        for (k, v) in [
            ("vram_allocs", 123_456),
            ("vram_frees", 7),
            ("vram_failures", 0),
            ("vram_retries", 3),
            ("vram_allocated_bytes", 64 << 20),
            ("vram_peak_allocated_bytes", 96 << 20),
            ("vram_peak_bo_count", 12),
            ("gtt_allocs", 5),
            ("gtt_frees", 5),
            ("gtt_failures", 2),
            ("gtt_retries", 1),
            ("gtt_allocated_bytes", 0),
            ("gtt_peak_allocated_bytes", 4096),
            ("gtt_peak_bo_count", 1),
            ("updates", 99),
            ("future_counter", 42),
        ] {
            s.counters.insert(k.into(), v);
        }
        s
    }

    #[test]
    fn pools_are_one_line_each_with_units() {
        let text = format_stats(&sample());
        assert!(text.contains("used 64.0 MiB of 256.0 MiB (25%)"), "{text}");
        assert!(text.contains("visible used 0 B of 64.0 MiB"), "{text}");
        assert!(text.contains("\ngtt      "), "{text}");
    }

    #[test]
    fn counters_are_an_aligned_table_with_units() {
        let table = counters_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("counters"), "{table}");
        assert!(lines[0].contains("allocs (count)"), "{table}");
        assert!(lines[0].contains("peak allocated (bytes)"), "{table}");
        let vram: Vec<&str> = lines[1].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(
            vram.iter().map(|c| c.trim()).collect::<Vec<_>>(),
            ["vram", "123456", "7", "0", "3", "64.0 MiB", "96.0 MiB", "12"],
            "{table}"
        );
        assert!(lines[2].starts_with("gtt "), "{table}");
        assert!(lines[2].contains("4.0 KiB"), "{table}");
        // Right-aligned: every row of the table is as long as the heading.
        assert_eq!(lines[1].len(), lines[0].len(), "{table}");
        assert_eq!(lines[2].len(), lines[0].len(), "{table}");
        assert!(table.contains("statistics updates (count): 99"), "{table}");
        assert!(table.contains("future_counter: 42"), "{table}");
        assert!(!table.contains("vram_allocs"), "{table}");
        // No 400-character counters line any more.
        assert!(format_stats(&sample()).lines().all(|l| l.len() < 160));
    }

    #[test]
    fn missing_counters_show_a_dash_and_none_print_nothing() {
        let mut s = sample();
        s.counters.remove("gtt_retries");
        let table = counters_table(&s);
        assert!(table.lines().nth(2).unwrap().contains(" -"), "{table}");
        assert_eq!(counters_table(&Stats::default()), "");
    }
}
