//! The human form of `stats.json` that `pddgpu stats` prints: the device,
//! the memory managers as an aligned table (one row per domain), the live
//! BOs, then the event counters as a small aligned table with one row per
//! domain and a unit on every column. The machine format stays `stats.json`; this text is for people
//! and may change.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::Stats;
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

/// The memory managers as an aligned table: one row per domain; sizes in
/// binary units, shares in percent (`-` where a column does not apply).
pub fn pools_table(s: &Stats) -> String {
    let mut rows = vec![[
        "memory",
        "state",
        "health",
        "used",
        "total",
        "use",
        "free",
        "largest free",
        "fragmentation",
        "visible used",
        "visible total",
    ]
    .map(String::from)
    .to_vec()];
    for (name, p) in [("vram", &s.vram), ("gtt", &s.gtt)] {
        let visible = |v: u64| {
            if p.visible_total > 0 {
                format_size(v)
            } else {
                "-".to_string()
            }
        };
        rows.push(vec![
            name.to_string(),
            p.state.clone(),
            if p.healthy { "healthy" } else { "UNHEALTHY" }.to_string(),
            format_size(p.used),
            format_size(p.total),
            format!("{}%", pct(p.used, p.total)),
            format_size(p.free),
            format_size(p.largest_free),
            format!("{}%", p.fragmentation_pct),
            visible(p.visible_used),
            visible(p.visible_total),
        ]);
    }
    aligned(&rows)
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

/// The event counters as an aligned table: a heading, a line of units
/// (`count` or `bytes`), one row per domain, then any counter the table has no column
/// for, one per line, so nothing the server reports is hidden.
pub fn counters_table(s: &Stats) -> String {
    if s.counters.is_empty() {
        return String::new();
    }
    let heading = std::iter::once("counters".to_string())
        .chain(COLUMNS.iter().map(|c| c.heading.to_string()))
        .collect();
    let units = std::iter::once(String::new())
        .chain(
            COLUMNS
                .iter()
                .map(|c| if c.bytes { "bytes" } else { "count" }.to_string()),
        )
        .collect();
    let mut rows: Vec<Vec<String>> = vec![heading, units];
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
    let mut text = format!("device  {} ({})\n\n", s.device.name, s.device.state);
    text += &pools_table(s);
    let _ = writeln!(
        text,
        "\nbos     {} live, vram {}, gtt {}",
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
    fn pools_are_a_table_with_units() {
        let text = pools_table(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("memory"), "{text}");
        assert!(
            lines[1].starts_with("vram")
                && lines[1].contains("64.0 MiB  256.0 MiB  25%")
                && lines[1].ends_with("0 B       64.0 MiB"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("gtt ") && lines[2].contains("UNHEALTHY"),
            "{text}"
        );
        assert!(lines[2].ends_with("-              -"), "{text}");
        assert!(format_stats(&sample()).starts_with("device  sim (ready)\n"));
    }

    #[test]
    fn counters_are_an_aligned_table_with_units() {
        let table = counters_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        let cells = |line: &str| -> Vec<String> {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells(lines[0]),
            [
                "counters",
                "allocs",
                "frees",
                "failures",
                "retries",
                "allocated",
                "peak allocated",
                "peak BOs"
            ],
            "{table}"
        );
        assert_eq!(
            cells(lines[1]),
            ["count", "count", "count", "count", "bytes", "bytes", "count"],
            "{table}"
        );
        assert_eq!(
            cells(lines[2]),
            ["vram", "123456", "7", "0", "3", "64.0 MiB", "96.0 MiB", "12"],
            "{table}"
        );
        assert_eq!(
            cells(lines[3]),
            ["gtt", "5", "5", "2", "1", "0 B", "4.0 KiB", "1"],
            "{table}"
        );
        // Right-aligned: every row of the table is as wide as the heading,
        // and each unit sits under the right end of its column.
        for line in &lines[1..4] {
            assert_eq!(line.len(), lines[0].len(), "{table}");
        }
        let end_of = |line: &str, cell: &str| line.find(cell).unwrap() + cell.len();
        assert_eq!(end_of(lines[0], "allocs"), end_of(lines[1], "count"));
        assert_eq!(end_of(lines[0], "peak BOs"), lines[1].len());
        assert!(table.contains("statistics updates (count): 99"), "{table}");
        assert!(table.contains("future_counter: 42"), "{table}");
        assert!(!table.contains("vram_allocs"), "{table}");
        // No 400-character counters line any more.
        assert!(format_stats(&sample()).lines().all(|l| l.len() < 130));
    }

    #[test]
    fn missing_counters_show_a_dash_and_none_print_nothing() {
        let mut s = sample();
        s.counters.remove("gtt_retries");
        let table = counters_table(&s);
        assert!(table.lines().nth(3).unwrap().contains(" -"), "{table}");
        assert_eq!(counters_table(&Stats::default()), "");
    }
}
