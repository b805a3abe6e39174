//! Drawing an [`OccupancyMap`] as SVG (`pddgpu map --svg`): the domain's
//! addresses run left to right in rows, top to bottom; every BO extent is a
//! rectangle in its client's colour (with a tooltip naming the BO, its
//! label, client and addresses), holes stay blank, retired and unowned
//! memory are marked (dark grey, red stripes), the CPU-visible window is
//! underlined, and a legend lists the clients.
//!
//! Each BO extent is drawn at least one pixel wide so that even a 4 KiB BO
//! in gigabytes of VRAM can be seen (and hovered); the drawing is otherwise
//! to scale. Every BO rectangle carries `data-bo="<id>"`.

use std::fmt::Write;

use crate::model::{ExtentKind, OccupancyMap};
use crate::occupancy::Palette;
use crate::size::format_size;

/// Width of the address rows in pixels.
const ROW_WIDTH: f64 = 1024.0;
/// Height of one row.
const ROW_HEIGHT: f64 = 18.0;
/// Space between rows (the visible-window mark sits in it).
const ROW_GAP: f64 = 6.0;
/// Left margin, for the row addresses.
const LEFT: f64 = 110.0;
/// Top margin, for the title.
const TOP: f64 = 46.0;
/// Rows the domain is cut into (fewer when it has fewer 4 KiB pages).
pub const ROWS: u64 = 32;

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Bytes per row: the domain cut into [`ROWS`] rows, rounded up to 4 KiB.
fn row_bytes(size: u64) -> u64 {
    size.div_ceil(ROWS).next_multiple_of(4096).max(4096)
}

/// The pieces of `start..end` on each row: `(row, x, width)` in pixels.
fn row_pieces(start: u64, end: u64, per_row: u64) -> Vec<(u64, f64, f64)> {
    let scale = ROW_WIDTH / per_row as f64;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let row = at / per_row;
        let row_end = ((row + 1) * per_row).min(end);
        let x = (at - row * per_row) as f64 * scale;
        let w = (row_end - at) as f64 * scale;
        out.push((row, x, w));
        at = row_end;
    }
    out
}

fn row_y(row: u64) -> f64 {
    TOP + row as f64 * (ROW_HEIGHT + ROW_GAP)
}

/// The SVG document of `map`.
pub fn render(map: &OccupancyMap) -> String {
    let per_row = row_bytes(map.size);
    let rows = map.size.div_ceil(per_row).max(1);
    let palette = Palette::of([map]);
    let clients = palette.entries().len() as u64;
    let legend_top = row_y(rows) + 10.0;
    let legend_lines = 2 + clients;
    let height = legend_top + legend_lines as f64 * 20.0 + 20.0;
    let width = LEFT + ROW_WIDTH + 20.0;
    let used: u64 = map
        .extents
        .iter()
        .filter(|e| e.kind != ExtentKind::Free)
        .map(|e| e.size)
        .sum();
    let bo_ids: std::collections::BTreeSet<u64> = map
        .extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Bo)
        .map(|e| e.bo)
        .collect();
    let domain = map.domain.to_uppercase();
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="monospace" font-size="12">"#
    );
    let _ = writeln!(
        s,
        "<title>pddgpu {domain} occupancy: {} used of {}, {} BOs, {} clients</title>",
        format_size(used),
        format_size(map.size),
        bo_ids.len(),
        clients
    );
    // Memory no BO holds is striped red, so it cannot pass for a client.
    let _ = writeln!(
        s,
        r##"<defs><pattern id="unowned" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="white"/><rect width="3" height="6" fill="#e00000"/></pattern></defs>"##
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">pddgpu {domain} occupancy: {} used of {}, {} BOs, {} clients{}</text>"#,
        format_size(used),
        format_size(map.size),
        bo_ids.len(),
        clients,
        if map.settled {
            ""
        } else {
            " (taken while allocations were in flight)"
        }
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="36" fill="#555">each row is {} of addresses, left to right; hover a block for its BO</text>"##,
        format_size(per_row)
    );
    // Row frames and addresses; holes are these frames left blank.
    let _ = writeln!(s, r#"<g id="rows">"#);
    for row in 0..rows {
        let y = row_y(row);
        let row_len = (map.size - row * per_row).min(per_row);
        let w = row_len as f64 * ROW_WIDTH / per_row as f64;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{:#010x}</text><rect x="{LEFT:.1}" y="{y:.1}" width="{w:.2}" height="{ROW_HEIGHT:.0}" fill="none" stroke="#bbb"/>"##,
            LEFT - 8.0,
            y + ROW_HEIGHT - 5.0,
            row * per_row
        );
    }
    let _ = writeln!(s, "</g>");
    // The extents.
    let _ = writeln!(s, r#"<g id="extents">"#);
    for e in &map.extents {
        let (fill, tip, class) = match e.kind {
            ExtentKind::Free | ExtentKind::Other => continue,
            ExtentKind::Bo => {
                let colour = palette.get(e.owner).map_or((0, 0, 0), |p| p.colour);
                (
                    hex(colour),
                    format!(
                        "BO {} \"{}\": {} at {:#x}..{:#x}, client pid {} (owner {})",
                        e.bo,
                        e.label,
                        format_size(e.size),
                        e.start,
                        e.end(),
                        e.pid,
                        e.owner
                    ),
                    "bo",
                )
            }
            ExtentKind::Retired => (
                "#444444".to_string(),
                format!(
                    "retired bad VRAM: {} at {:#x}..{:#x}",
                    format_size(e.size),
                    e.start,
                    e.end()
                ),
                "retired",
            ),
            ExtentKind::Unowned => (
                "url(#unowned)".to_string(),
                format!(
                    "allocated but held by no BO: {} at {:#x}..{:#x}",
                    format_size(e.size),
                    e.start,
                    e.end()
                ),
                "unowned",
            ),
        };
        let data = if e.kind == ExtentKind::Bo {
            format!(
                r#" data-bo="{}" data-owner="{}" data-pid="{}""#,
                e.bo, e.owner, e.pid
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r#"<g class="{class}"{data}><title>{}</title>"#,
            xml_escape(&tip)
        );
        for (row, x, w) in row_pieces(e.start, e.end(), per_row) {
            // Wide pieces leave a pixel free at their start, so neighbouring
            // BOs of one client stay apart.
            let (x, w) = if w > 4.0 {
                (x + 1.0, w - 1.0)
            } else {
                (x, w.max(1.0))
            };
            let _ = writeln!(
                s,
                r#"<rect x="{:.2}" y="{:.1}" width="{:.2}" height="{ROW_HEIGHT:.0}" fill="{fill}"/>"#,
                LEFT + x,
                row_y(row),
                w
            );
            // The BO's id and label inside it, where they fit.
            let name = format!("{} {}", e.bo, e.label);
            if e.kind == ExtentKind::Bo && w > 7.0 * name.len() as f64 + 8.0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.2}" y="{:.1}" fill="white" font-size="11">{}</text>"#,
                    LEFT + x + 4.0,
                    row_y(row) + ROW_HEIGHT - 5.0,
                    xml_escape(&name)
                );
            }
        }
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(s, "</g>");
    // The CPU-visible window, underlined.
    if map.visible_size > 0 {
        let _ = writeln!(
            s,
            r#"<g id="visible"><title>CPU-visible window: 0x0..{:#x} ({})</title>"#,
            map.visible_size,
            format_size(map.visible_size)
        );
        for (row, x, w) in row_pieces(0, map.visible_size.min(map.size), per_row) {
            let y = row_y(row) + ROW_HEIGHT + 2.0;
            let _ = writeln!(
                s,
                r##"<line x1="{:.2}" y1="{y:.1}" x2="{:.2}" y2="{y:.1}" stroke="#0050ff" stroke-width="3"/>"##,
                LEFT + x,
                LEFT + x + w
            );
        }
        let _ = writeln!(s, "</g>");
    }
    // Legend.
    let _ = writeln!(s, r#"<g id="legend">"#);
    let mut y = legend_top;
    let swatch = |s: &mut String, y: f64, fill: &str, stroke: &str, text: &str| {
        let _ = writeln!(
            s,
            r#"<rect x="10" y="{:.1}" width="14" height="14" fill="{fill}" stroke="{stroke}"/><text x="30" y="{:.1}">{}</text>"#,
            y,
            y + 11.0,
            xml_escape(text)
        );
    };
    for p in palette.entries() {
        swatch(
            &mut s,
            y,
            &hex(p.colour),
            "none",
            &format!(
                "client pid {} (owner {}): {} BO{}, {}",
                p.pid,
                p.owner,
                p.bos,
                if p.bos == 1 { "" } else { "s" },
                format_size(p.bytes)
            ),
        );
        y += 20.0;
    }
    let _ = writeln!(
        s,
        r##"<g transform="translate(0 {y:.1})"><rect x="10" y="0" width="14" height="14" fill="white" stroke="#bbb"/><text x="30" y="11">free (blank)</text><rect x="150" y="0" width="14" height="14" fill="#444444"/><text x="170" y="11">retired bad VRAM</text><rect x="330" y="0" width="14" height="14" fill="url(#unowned)" stroke="#e00000"/><text x="350" y="11">allocated, held by no BO</text></g>"##
    );
    y += 20.0;
    if map.visible_size > 0 {
        let _ = writeln!(
            s,
            r##"<line x1="10" y1="{:.1}" x2="24" y2="{:.1}" stroke="#0050ff" stroke-width="3"/><text x="30" y="{:.1}">CPU-visible window (first {})</text>"##,
            y + 7.0,
            y + 7.0,
            y + 11.0,
            format_size(map.visible_size)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapExtent;

    #[test]
    fn pieces_split_at_row_ends() {
        let p = row_pieces(1000, 5000, 2048);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].0, 0);
        assert_eq!(p[2].0, 2);
        let total: f64 = p.iter().map(|x| x.2).sum();
        assert!((total - 4000.0 * ROW_WIDTH / 2048.0).abs() < 1e-6);
        assert!(row_pieces(5, 5, 100).is_empty());
    }

    #[test]
    fn labels_are_escaped_and_every_bo_is_drawn() {
        let map = OccupancyMap {
            abi: 1,
            domain: "vram".into(),
            size: 1 << 20,
            visible_size: 1 << 19,
            settled: true,
            extents: vec![
                MapExtent {
                    start: 0,
                    size: 4096,
                    kind: ExtentKind::Bo,
                    bo: 9,
                    owner: 2,
                    pid: 77,
                    label: "<a&b>\"'".into(),
                },
                MapExtent {
                    start: 4096,
                    size: (1 << 20) - 4096,
                    kind: ExtentKind::Free,
                    ..MapExtent::default()
                },
            ],
        };
        let svg = render(&map);
        assert!(svg.contains(r#"data-bo="9""#), "{svg}");
        assert!(svg.contains("&lt;a&amp;b&gt;&quot;&apos;"), "{svg}");
        assert!(!svg.contains("<a&b>"), "{svg}");
        assert!(
            svg.contains("client pid 77 (owner 2): 1 BO, 4.0 KiB"),
            "{svg}"
        );
        assert!(
            svg.contains("CPU-visible window (first 512.0 KiB)"),
            "{svg}"
        );
        // A 4 KiB BO in a 32 KiB row is drawn 1/8 of the row wide, less
        // the pixel that keeps it apart from its neighbour.
        assert!(
            svg.contains(r##"x="111.00" y="46.0" width="127.00" height="18" fill="#1f77b4""##),
            "{svg}"
        );
    }
}
