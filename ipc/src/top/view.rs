//! Drawing a [`Screen`] with ratatui widgets into a buffer: the same code
//! paints the live terminal and the `--plain` text frames, so what scripts
//! read is what people see.
//!
//! Layout, top to bottom: a title line (device, state, keys); a red line
//! when the server is unreachable; one box per memory view (a usage gauge,
//! a line of figures, a sparkline of the last minute); the coarse occupancy
//! map; the client table; health and the last leak audit.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, LineGauge, Paragraph, Row, Sparkline, Table, Widget};

use super::watch::{DomainView, Link, Screen, View};
use crate::model::OccupancyMap;
use crate::occupancy::{coarse, Cell as MapCell, Palette};
use crate::size::format_size;
use crate::stats_table::pct;

/// Lines of one memory view's box (border, gauge, two lines of figures,
/// sparkline, border).
const VIEW_HEIGHT: u16 = 6;
/// Most client rows a plain frame prints.
const MAX_PLAIN_CLIENTS: usize = 100;

fn colour((r, g, b): (u8, u8, u8)) -> Color {
    Color::Rgb(r, g, b)
}

/// Most lines the map's client legend takes.
const MAX_LEGEND_LINES: usize = 4;
/// Width of the row names of the map (`vram`, `gtt`, `clients`).
const MAP_HEAD: usize = 8;

fn map_height(screen: &Screen, width: u16) -> u16 {
    let rows = [screen.maps.vram.is_some(), screen.maps.gtt.is_some()];
    match rows {
        [false, false] => 0,
        // Borders, vram row and its visible-window marker, gtt row, legend.
        [v, g] => 2 + u16::from(v) * 2 + u16::from(g) + legend_lines(screen, width).len() as u16,
    }
}

/// Lines a frame `width` columns wide needs to show everything (all
/// clients, up to [`MAX_PLAIN_CLIENTS`]).
pub fn height_needed(screen: &Screen, width: u16) -> u16 {
    let link = u16::from(matches!(screen.link, Link::Lost { .. }));
    if !screen.has_data {
        return 1 + link.max(1);
    }
    let clients = screen.clients.len().clamp(1, MAX_PLAIN_CLIENTS) as u16;
    1 + link + 3 * VIEW_HEIGHT + map_height(screen, width) + (clients + 3) + 2
}

/// Draws `screen` into `area` of `buf`.
pub fn render(screen: &Screen, area: Rect, buf: &mut Buffer) {
    let link_height = u16::from(matches!(screen.link, Link::Lost { .. }) || !screen.has_data);
    let [title, link, views, map, clients, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(link_height),
        Constraint::Length(if screen.has_data { 3 * VIEW_HEIGHT } else { 0 }),
        Constraint::Length(if screen.has_data {
            map_height(screen, area.width)
        } else {
            0
        }),
        Constraint::Min(if screen.has_data { 4 } else { 0 }),
        Constraint::Length(if screen.has_data { 2 } else { 0 }),
    ])
    .areas(area);
    title_line(screen).render(title, buf);
    if link_height > 0 {
        link_line(&screen.link).render(link, buf);
    }
    if !screen.has_data {
        return;
    }
    let boxes: [Rect; 3] = Layout::vertical([Constraint::Length(VIEW_HEIGHT); 3]).areas(views);
    for ((view, data), area) in View::ALL.iter().zip(&screen.views).zip(boxes) {
        render_view(*view, data, area, buf);
    }
    if map.height > 0 {
        render_map(screen, map, buf);
    }
    render_clients(screen, clients, buf);
    footer_lines(screen).render(footer, buf);
}

fn title_line(screen: &Screen) -> Paragraph<'static> {
    let mut spans = vec![Span::styled(
        "pddgpu top",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if !screen.device.is_empty() {
        spans.push(Span::raw(format!(
            " - {} ({})",
            screen.device, screen.device_state
        )));
    }
    spans.push(Span::raw(format!(
        " - {} BOs - every {} - q quit, s sort, p pause",
        screen.bo_count,
        humantime(screen.interval)
    )));
    if screen.paused {
        spans.push(Span::styled(
            "  PAUSED",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    Paragraph::new(Line::from(spans))
}

fn humantime(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

fn link_line(link: &Link) -> Paragraph<'static> {
    let red = Style::default().fg(Color::Red).add_modifier(Modifier::BOLD);
    let text = match link {
        Link::Up => String::new(),
        Link::Connecting => "connecting to the server ...".to_string(),
        Link::Lost {
            error,
            for_secs,
            attempts,
        } => format!(
            "SERVER UNREACHABLE for {for_secs} s, reconnecting (attempt {attempts}): {error}"
        ),
    };
    Paragraph::new(Line::styled(text, red))
}

fn opt_rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn opt_delta(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("+{v}"))
}

/// The two figure lines of a memory view: space, then activity since the
/// previous frame.
pub fn figures(view: View, d: &DomainView) -> [String; 2] {
    let space = format!(
        "free {}  largest free {}  fragmentation {}",
        format_size(d.free),
        d.holes.map_or("-".into(), |h| format_size(h.largest_free)),
        d.holes
            .map_or("-".into(), |h| format!("{}%", h.fragmentation_pct)),
    );
    let activity = if view == View::Visible {
        "allocs, frees, failures, retries: counted with VRAM".to_string()
    } else {
        format!(
            "allocs/s {}  frees/s {}  failures {}  retries {}  (since the last frame)",
            opt_rate(d.activity.allocs_per_s),
            opt_rate(d.activity.frees_per_s),
            opt_delta(d.activity.failures),
            opt_delta(d.activity.retries),
        )
    };
    [space, activity]
}

/// The gauge label of a memory view.
pub fn gauge_label(d: &DomainView) -> String {
    format!(
        "{} / {} ({}%)",
        format_size(d.used),
        format_size(d.total),
        pct(d.used, d.total)
    )
}

fn render_view(view: View, d: &DomainView, area: Rect, buf: &mut Buffer) {
    let state_style = if d.state == "ready" {
        Style::default().fg(Color::Green)
    } else {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    };
    let block = Block::bordered().title(Line::from(vec![
        Span::styled(
            format!(" {} ", view.title()),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(format!("{} ", d.state), state_style),
    ]));
    let inner = block.inner(area);
    block.render(area, buf);
    let [gauge, text, spark] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(inner);
    let ratio = if d.total == 0 {
        0.0
    } else {
        (d.used as f64 / d.total as f64).clamp(0.0, 1.0)
    };
    let fill = match pct(d.used, d.total) {
        0..=69 => Color::Green,
        70..=89 => Color::Yellow,
        _ => Color::Red,
    };
    LineGauge::default()
        .ratio(ratio)
        .label(format!("{:<28}", gauge_label(d)))
        .filled_symbol(symbols::block::FULL)
        .unfilled_symbol(symbols::shade::LIGHT)
        .filled_style(Style::default().fg(fill))
        .unfilled_style(Style::default().fg(Color::DarkGray))
        .render(gauge, buf);
    Paragraph::new(figures(view, d).map(Line::from).to_vec()).render(text, buf);
    let label = "used, last 60 s ";
    let [name, line] =
        Layout::horizontal([Constraint::Length(label.len() as u16), Constraint::Min(1)])
            .areas(spark);
    Paragraph::new(label)
        .style(Style::default().fg(Color::DarkGray))
        .render(name, buf);
    // The newest samples that fit, oldest on the left.
    let width = line.width as usize;
    let samples = &d.history[d.history.len().saturating_sub(width)..];
    Sparkline::default()
        .data(samples)
        .max(d.total.max(1))
        .style(Style::default().fg(Color::Cyan))
        .render(line, buf);
}

fn map_row(map: &OccupancyMap, width: usize, palette: &Palette) -> Line<'static> {
    let spans: Vec<Span<'static>> = coarse(map, width)
        .into_iter()
        .map(|cell| {
            let style = match cell {
                MapCell::Owner(o) => palette
                    .get(o)
                    .map_or(Style::default(), |e| Style::default().fg(colour(e.colour))),
                MapCell::Free | MapCell::MostlyFree => Style::default().fg(Color::DarkGray),
                MapCell::Retired | MapCell::Unowned => Style::default().fg(Color::Red),
            };
            Span::styled(cell.symbol(palette).to_string(), style)
        })
        .collect();
    Line::from(spans)
}

/// The map's legend for a frame `width` columns wide: a letter and pid per
/// client, packed into lines after the `clients` heading, then what the
/// other symbols mean; at most [`MAX_LEGEND_LINES`] lines.
fn legend_lines(screen: &Screen, width: u16) -> Vec<Line<'static>> {
    let palette = Palette::of(screen.maps.iter());
    // Inside the borders, after the heading.
    let room = (width as usize).saturating_sub(2 + MAP_HEAD).max(20);
    let mut entries: Vec<Vec<Span<'static>>> = palette
        .entries()
        .iter()
        .map(|e| {
            vec![
                Span::styled(
                    e.letter.to_string(),
                    Style::default()
                        .fg(colour(e.colour))
                        .add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!(" pid {} ({})  ", e.pid, format_size(e.bytes))),
            ]
        })
        .collect();
    entries.push(vec![Span::raw(", mostly free  x retired  ! unowned")]);
    let width_of = |spans: &[Span]| {
        spans
            .iter()
            .map(|s| s.content.chars().count())
            .sum::<usize>()
    };
    let mut lines: Vec<Vec<Span<'static>>> = vec![Vec::new()];
    for entry in entries {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && width_of(last) + width_of(&entry) > room {
            lines.push(Vec::new());
        }
        lines.last_mut().expect("one line at least").extend(entry);
    }
    if lines.len() > MAX_LEGEND_LINES {
        let more = lines.len() - MAX_LEGEND_LINES + 1;
        lines.truncate(MAX_LEGEND_LINES - 1);
        lines.push(vec![Span::raw(format!("... {more} more lines of clients"))]);
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, mut spans)| {
            let head = if i == 0 { "clients" } else { "" };
            spans.insert(0, Span::raw(format!("{head:<MAP_HEAD$}")));
            Line::from(spans)
        })
        .collect()
}

fn render_map(screen: &Screen, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(" Occupancy (one letter per client, . free) ");
    let inner = block.inner(area);
    block.render(area, buf);
    let palette = Palette::of(screen.maps.iter());
    let width = (inner.width as usize).saturating_sub(MAP_HEAD);
    let mut lines: Vec<Line<'static>> = Vec::new();
    if let Some(m) = &screen.maps.vram {
        let mut row = map_row(m, width, &palette);
        row.spans.insert(0, Span::raw(format!("{:<8}", "vram")));
        lines.push(row);
        // Mark the CPU-visible window under the VRAM row.
        let cells = coarse(m, width).len();
        let visible_cells = if m.size == 0 {
            0
        } else {
            (m.visible_size as u128 * cells as u128).div_ceil(m.size as u128) as usize
        };
        let marker = if visible_cells == 0 {
            String::new()
        } else if visible_cells >= cells {
            format!("{:<8}{}", "", "^".repeat(cells))
        } else {
            format!("{:<8}{}| CPU-visible", "", "^".repeat(visible_cells))
        };
        lines.push(Line::styled(marker, Style::default().fg(Color::DarkGray)));
    }
    if let Some(m) = &screen.maps.gtt {
        let mut row = map_row(m, width, &palette);
        row.spans.insert(0, Span::raw(format!("{:<8}", "gtt")));
        lines.push(row);
    }
    lines.extend(legend_lines(screen, area.width));
    Paragraph::new(lines).render(inner, buf);
}

fn render_clients(screen: &Screen, area: Rect, buf: &mut Buffer) {
    let header = Row::new(["PID", "OWNER", "LARGEST BO", "BOS", "VRAM", "GTT", "QUOTA"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = screen
        .clients
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(c.pid.to_string()),
                Cell::from(c.owner.to_string()),
                Cell::from(
                    if c.largest_bo_label.is_empty() && c.largest_bo_bytes == 0 {
                        "-".to_string()
                    } else {
                        format!(
                            "{} ({})",
                            c.largest_bo_label,
                            format_size(c.largest_bo_bytes)
                        )
                    },
                ),
                Cell::from(c.bos.to_string()),
                Cell::from(format_size(c.vram_bytes)),
                Cell::from(format_size(c.gtt_bytes)),
                Cell::from(if c.quota == 0 {
                    "none".to_string()
                } else {
                    format_size(c.quota)
                }),
            ])
        })
        .collect();
    let title = format!(
        " Clients ({}) - sorted by {} (s) ",
        screen.clients.len(),
        screen.sort.name()
    );
    Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Min(16),
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(11),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title))
    .render(area, buf);
}

/// The health line and the leak-audit line.
fn footer_lines(screen: &Screen) -> Paragraph<'static> {
    let ok = screen.health.trim() == "ok";
    let health = Line::from(vec![
        Span::raw("health: "),
        Span::styled(
            screen.health.lines().collect::<Vec<_>>().join("; "),
            if ok {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            },
        ),
    ]);
    let leaks = match &screen.leaks {
        None => Line::raw("last leak audit: unknown (leaks.json unreadable)"),
        Some(r) if r.checked_ms == 0 && r.audits.is_empty() => {
            Line::raw("last leak audit: none yet (pddgpu leak-check runs one)")
        }
        Some(r) => {
            let verdicts: Vec<String> = r
                .audits
                .iter()
                .map(|a| format!("{} {}", a.domain, a.verdict))
                .collect();
            let style = if r.clean {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            };
            Line::from(vec![
                Span::raw(format!(
                    "last leak audit at {:.1} s: ",
                    r.checked_ms as f64 / 1000.0
                )),
                Span::styled(if r.clean { "clean" } else { "PROBLEMS" }, style),
                Span::raw(format!(
                    " ({}; {} live BOs, {} suspects)",
                    verdicts.join(", "),
                    r.live_bos,
                    r.suspects.len()
                )),
            ])
        }
    };
    Paragraph::new(vec![health, leaks])
}

/// The text of a buffer: one line per row, trailing blanks removed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut text = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Renders `screen` as plain text `width` columns wide, as tall as it needs.
pub fn plain(screen: &Screen, width: u16) -> String {
    let area = Rect::new(0, 0, width, height_needed(screen, width));
    let mut buf = Buffer::empty(area);
    render(screen, area, &mut buf);
    buffer_text(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClientInfo, ExtentKind, LeakAudit, LeakReport, MapExtent};
    use crate::top::watch::{Activity, Holes, Maps, SortKey};
    use std::time::Duration;

    fn screen() -> Screen {
        let view = |total: u64, used: u64| DomainView {
            total,
            used,
            free: total - used,
            holes: Some(Holes {
                largest_free: total - used,
                fragmentation_pct: 0,
            }),
            activity: Activity {
                allocs_per_s: Some(2.5),
                frees_per_s: Some(1.0),
                failures: Some(0),
                retries: Some(4),
            },
            history: vec![0, used / 2, used],
            state: "ready".into(),
        };
        let map = |domain: &str, visible: u64| OccupancyMap {
            abi: 1,
            domain: domain.into(),
            size: 64 << 20,
            visible_size: visible,
            settled: true,
            extents: vec![
                MapExtent {
                    start: 0,
                    size: 16 << 20,
                    kind: ExtentKind::Bo,
                    bo: 1,
                    owner: 5,
                    pid: 4242,
                    label: "frame".into(),
                },
                MapExtent {
                    start: 16 << 20,
                    size: 48 << 20,
                    kind: ExtentKind::Free,
                    ..MapExtent::default()
                },
            ],
        };
        Screen {
            device: "PDDGPU".into(),
            device_state: "ready".into(),
            link: Link::Up,
            paused: false,
            interval: Duration::from_secs(1),
            views: [
                view(64 << 20, 16 << 20),
                view(32 << 20, 16 << 20),
                view(64 << 20, 0),
            ],
            bo_count: 1,
            clients: vec![ClientInfo {
                owner: 5,
                pid: 4242,
                handles: 1,
                bos: 1,
                vram_bytes: 16 << 20,
                gtt_bytes: 0,
                quota: 0,
                largest_bo_label: "frame".into(),
                largest_bo_bytes: 16 << 20,
            }],
            sort: SortKey::Vram,
            health: "ok".into(),
            leaks: Some(LeakReport {
                checked_ms: 1500,
                clean: true,
                audits: vec![LeakAudit {
                    domain: "vram".into(),
                    verdict: "clean".into(),
                    ..LeakAudit::default()
                }],
                live_bos: 1,
                ..LeakReport::default()
            }),
            maps: Maps {
                vram: Some(map("vram", 32 << 20)),
                gtt: Some(map("gtt", 0)),
            },
            has_data: true,
        }
    }

    #[test]
    fn a_plain_frame_shows_every_part() {
        let text = plain(&screen(), 100);
        for needle in [
            "pddgpu top - PDDGPU (ready) - 1 BOs - every 1 s",
            " VRAM ready ",
            " CPU-visible VRAM ready ",
            " GTT ready ",
            "16.0 MiB / 64.0 MiB (25%)",
            "16.0 MiB / 32.0 MiB (50%)",
            "allocs/s 2.5  frees/s 1.0  failures +0  retries +4  (since the last frame)",
            "allocs, frees, failures, retries: counted with VRAM",
            "used, last 60 s",
            "Clients (1) - sorted by VRAM (s)",
            "frame (16.0 MiB)",
            "health: ok",
            "last leak audit at 1.5 s: clean (vram clean; 1 live BOs, 0 suspects)",
            "A pid 4242 (32.0 MiB)",
            "| CPU-visible",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // The gauge is drawn with visible characters: a quarter full.
        let gauge = text
            .lines()
            .find(|l| l.contains("16.0 MiB / 64.0 MiB"))
            .unwrap();
        let full = gauge.matches('█').count();
        let empty = gauge.matches('░').count();
        assert!(full > 0 && empty > 0, "{gauge}");
        assert_eq!((full * 4 + 2) / (full + empty), 1, "a quarter: {gauge}");
        // The map: a quarter of each row is client A, the rest free.
        let row = text.lines().find(|l| l.contains("│vram    ")).unwrap();
        let cells: String = row
            .trim_start_matches('│')
            .trim_end_matches('│')
            .chars()
            .skip(8)
            .collect();
        let a = cells.matches('A').count();
        assert!((a * 4).abs_diff(cells.chars().count()) <= 4, "{row}");
        assert!(cells.starts_with('A') && cells.ends_with('.'), "{row}");
        assert_eq!(text.lines().count() as u16, height_needed(&screen(), 100));
    }

    #[test]
    fn a_long_client_legend_wraps_within_the_frame() {
        let mut s = screen();
        let map = s.maps.vram.as_mut().unwrap();
        map.extents = (0..40u64)
            .map(|i| MapExtent {
                start: i << 20,
                size: 1 << 20,
                kind: ExtentKind::Bo,
                bo: i + 1,
                owner: i + 1,
                pid: 100_000 + i,
                label: "x".into(),
            })
            .chain(std::iter::once(MapExtent {
                start: 40 << 20,
                size: 24 << 20,
                kind: ExtentKind::Free,
                ..MapExtent::default()
            }))
            .collect();
        let text = plain(&s, 100);
        assert_eq!(text.lines().count() as u16, height_needed(&s, 100));
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "{line}");
        }
        // Clients up to the last legend line, which says how much is left.
        let legend: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("│clients "))
            .take_while(|l| !l.starts_with('└'))
            .collect();
        assert_eq!(legend.len(), MAX_LEGEND_LINES, "{text}");
        assert!(legend[0].contains("A pid 100000 (1.0 MiB)"), "{text}");
        assert!(legend[1].starts_with("│        "), "{text}");
        assert!(legend[3].contains("more lines of clients"), "{text}");
        // With few clients, one line says it all.
        let text = plain(&screen(), 100);
        let legend = text.lines().filter(|l| l.contains("mostly free")).count();
        assert_eq!(legend, 1, "{text}");
    }

    #[test]
    fn lost_server_and_pause_are_shown() {
        let mut s = screen();
        s.paused = true;
        s.link = Link::Lost {
            error: "connection refused".into(),
            for_secs: 3,
            attempts: 2,
        };
        let text = plain(&s, 100);
        assert!(text.lines().next().unwrap().ends_with("PAUSED"), "{text}");
        assert!(
            text.contains(
                "SERVER UNREACHABLE for 3 s, reconnecting (attempt 2): connection refused"
            ),
            "{text}"
        );
        s.has_data = false;
        let text = plain(&s, 100);
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn problems_stand_out() {
        let mut s = screen();
        s.health = "vram manager is error: audit\nBO 3 lies on bad VRAM".into();
        s.views[0].state = "error".into();
        s.leaks.as_mut().unwrap().clean = false;
        let text = plain(&s, 100);
        assert!(
            text.contains("health: vram manager is error: audit; BO 3 lies on bad VRAM"),
            "{text}"
        );
        assert!(text.contains(" VRAM error "), "{text}");
        assert!(text.contains("PROBLEMS"), "{text}");
    }
}
