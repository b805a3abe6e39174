//! Log lines that carry client input.
//!
//! Two rules hold for every line built from what a client sent:
//! - the client's text appears only as an [`excerpt`]: at most
//!   [`EXCERPT_MAX`] bytes, escaped, with the full length noted, so a 16 MiB
//!   path costs a line of about a hundred bytes;
//! - the line is formatted and written only after the scheme lock is
//!   released. While a request is dispatched, the scheme records the line
//!   with [`defer`] (a closure over capped parts, kept in a small
//!   per-thread queue); the transport calls [`flush`] once it has let go of
//!   the lock. A stalled log pipe therefore delays only the connection
//!   whose request produced the line, never everyone waiting for the lock.
//!
//! - at most [`CLIENT_LINES_PER_SECOND`] such lines are written a second,
//!   server-wide: every one goes through one shared [`RateLimit`] (scheme
//!   refusals of every kind, refused connections, malformed frames), so a
//!   flood of bad requests from any number of clients and connections
//!   costs a few lines a second. The lines held back are counted; the next
//!   line let through says how many (`(N lines suppressed)`), and once a
//!   second has passed without one, the next [`flush`] writes the count on
//!   a line of its own.
//!
//! At most [`MAX_PENDING`] lines wait per thread between flushes; further
//! ones are counted as suppressed.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Longest excerpt of client text in a log line, in bytes (before
/// escaping).
pub const EXCERPT_MAX: usize = 96;

/// Lines kept per thread between two [`flush`]es.
pub const MAX_PENDING: usize = 16;

/// Log lines about client requests and connections written per second,
/// all clients together, at most.
pub const CLIENT_LINES_PER_SECOND: u32 = 5;

/// The one limiter of lines about clients: the scheme's refusals (through
/// [`flush`]) and the transport's lines about connections and frames
/// (refused connections, failed accepts, malformed or refused frames,
/// connections ended by a client) all go through [`write_limited`], so any
/// number of clients provoking them costs a few lines a second.
static CLIENT_LINES: Mutex<RateLimit> = Mutex::new(RateLimit::new(CLIENT_LINES_PER_SECOND));

fn client_lines() -> std::sync::MutexGuard<'static, RateLimit> {
    CLIENT_LINES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the line `line` builds now, unless the server-wide limit of
/// lines about clients holds it back (then only counts it). Call it with
/// no lock held; `line` must capture only capped parts (see [`excerpt`]).
pub fn write_limited(level: log::Level, line: impl FnOnce() -> String) {
    if !log::log_enabled!(level) {
        return;
    }
    let admitted = client_lines().admit(Instant::now());
    if let Some(held_back) = admitted {
        log::log!(level, "{}{}", line(), held_back_note(held_back));
    }
}

/// Writes the count of lines about clients held back, once a window has
/// passed since the last line let through (a flood that stopped is still
/// reported).
fn write_overdue_summary() {
    let overdue = client_lines().overdue(Instant::now());
    if let Some(n) = overdue {
        log::warn!(
            "{n} lines suppressed (lines about clients: at most {CLIENT_LINES_PER_SECOND} a second)"
        );
    }
}

type Line = Box<dyn FnOnce() -> String>;

struct Pending {
    lines: Vec<(log::Level, Line)>,
    dropped: usize,
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending {
            lines: Vec::new(),
            dropped: 0,
        })
    };
}

/// An escaped copy of at most [`EXCERPT_MAX`] bytes of `text`, quoted;
/// when cut, followed by the full length (`"abc"… (1048576 bytes)`).
pub fn excerpt(text: &str) -> String {
    quoted(text, text.len(), false)
}

/// `text` quoted and cut to [`EXCERPT_MAX`] bytes; the suffix names
/// `total` bytes when `text` was cut here or `cut_before`.
fn quoted(text: &str, total: usize, cut_before: bool) -> String {
    let mut end = text.len().min(EXCERPT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 24);
    out.push('"');
    push_escaped(&mut out, &text[..end]);
    out.push('"');
    if end < text.len() || cut_before {
        let _ = write!(out, "… ({total} bytes)");
    }
    out
}

/// Appends `text` with every character that is not printable escaped
/// (`escape_debug`): control characters, line and paragraph separators,
/// bidirectional overrides and other format characters, quotes and
/// backslashes. A client can therefore neither break a log line nor make
/// its text display as something else (a forged line, reversed fields).
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        let _ = write!(out, "{}", c.escape_debug());
    }
}

/// `text` (an error message or other line part that may quote client
/// input) cut to at most twice [`EXCERPT_MAX`] bytes, escaped like an
/// [`excerpt`] but unquoted; when cut, followed by `… (N bytes)`.
pub fn clip(text: &str) -> String {
    let mut end = text.len().min(2 * EXCERPT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 24);
    push_escaped(&mut out, &text[..end]);
    if end < text.len() {
        let _ = write!(out, "… ({} bytes)", text.len());
    }
    out
}

/// [`excerpt`] of bytes that may not be UTF-8.
pub fn excerpt_bytes(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(EXCERPT_MAX)];
    quoted(
        &String::from_utf8_lossy(cut),
        bytes.len(),
        cut.len() < bytes.len(),
    )
}

/// Records a log line to be built by `line` and written at the next
/// [`flush`] on this thread. `line` must capture only capped parts (see
/// [`excerpt`]).
pub fn defer(level: log::Level, line: impl FnOnce() -> String + 'static) {
    if log::log_enabled!(level) {
        push(level, Box::new(line));
    }
}

fn push(level: log::Level, line: Line) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.lines.len() < MAX_PENDING {
            p.lines.push((level, line));
        } else {
            p.dropped += 1;
        }
    });
}

/// Builds and writes the lines deferred on this thread. Call it with no
/// lock held.
pub fn flush() {
    let (lines, dropped) = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.lines.is_empty() && p.dropped == 0 {
            return (Vec::new(), 0);
        }
        (std::mem::take(&mut p.lines), std::mem::take(&mut p.dropped))
    });
    for (level, line) in lines {
        write_limited(level, line);
    }
    if dropped > 0 {
        client_lines().hold_back(dropped as u64);
    }
    write_overdue_summary();
}

/// Lets through at most `per_window` log lines of one kind per
/// [`RateLimit::WINDOW`]; the lines held back are counted, and the next
/// line let through says how many. One attacker that provokes the same
/// refusal thousands of times a second then costs a few lines, not a
/// flood.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window_start: Option<std::time::Instant>,
    in_window: u32,
    held_back: u64,
}

impl RateLimit {
    /// The window lines are counted in.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

    /// A limit of `per_window` lines per window.
    pub const fn new(per_window: u32) -> Self {
        RateLimit {
            per_window,
            window_start: None,
            in_window: 0,
            held_back: 0,
        }
    }

    /// Whether a line may be written now: `Some(n)` with the number of
    /// lines held back since the last one let through (to mention), or
    /// `None` when this one is held back.
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Self::WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.per_window {
            self.held_back += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held_back))
    }

    /// Counts `n` lines held back without asking.
    pub fn hold_back(&mut self, n: u64) {
        self.held_back = self.held_back.saturating_add(n);
    }

    /// The lines held back, once a whole window has passed since the
    /// current one started: a summary line to write now (it counts as a
    /// line of a fresh window). `None` while the window lasts or when
    /// nothing was held back.
    pub fn overdue(&mut self, now: Instant) -> Option<u64> {
        let start = self.window_start?;
        if self.held_back == 0 || now.saturating_duration_since(start) < Self::WINDOW {
            return None;
        }
        self.window_start = Some(now);
        self.in_window = 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// `" (N lines suppressed)"` when `held_back` is not zero, for the end of
/// a line a [`RateLimit`] let through.
pub fn held_back_note(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} lines suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_capped_escaped_and_say_the_length() {
        let long = "a".repeat(1 << 20);
        let e = excerpt(&long);
        assert!(e.len() < EXCERPT_MAX + 32, "{} bytes", e.len());
        assert!(e.ends_with("… (1048576 bytes)"), "{e}");
        assert_eq!(excerpt("x\ny\"z"), "\"x\\ny\\\"z\"");
        // A cut never splits a character.
        let wide = "é".repeat(EXCERPT_MAX);
        assert!(excerpt(&wide).starts_with("\"éé"));
        let reason = clip(&format!("query item `{long}` is not key=value\nforged"));
        assert!(reason.len() < 2 * EXCERPT_MAX + 32);
        assert!(!reason.contains('\n'));
        assert_eq!(clip("a\nb"), "a\\nb");
        // Separators and bidirectional overrides cannot forge a line or
        // reorder one, in reasons and excerpts alike.
        let forged = "1\u{2028}[WARN pddgpud] root: control: shutdown\u{202e}x";
        for line in [clip(forged), excerpt(forged)] {
            assert!(
                !line.contains('\u{2028}') && !line.contains('\u{202e}'),
                "{line}"
            );
            assert!(
                line.contains("\\u{2028}") && line.contains("\\u{202e}"),
                "{line}"
            );
        }
        assert_eq!(clip("label é 中"), "label é 中");
        let bytes = excerpt_bytes(&[0xff; 4 * EXCERPT_MAX]);
        assert!(
            bytes.ends_with(&format!("({} bytes)", 4 * EXCERPT_MAX)),
            "{bytes}"
        );
    }

    #[test]
    fn deferred_lines_are_bounded_per_thread() {
        // (No logger is installed in unit tests, so `defer` itself would
        // queue nothing: use the queue underneath it.)
        for _ in 0..MAX_PENDING + 3 {
            push(log::Level::Info, Box::new(String::new));
        }
        PENDING.with(|p| {
            let p = p.borrow();
            assert_eq!(p.lines.len(), MAX_PENDING);
            assert_eq!(p.dropped, 3);
        });
        flush();
        PENDING.with(|p| {
            let p = p.borrow();
            assert!(p.lines.is_empty());
            assert_eq!(p.dropped, 0);
        });
    }

    #[test]
    fn a_rate_limit_lets_a_few_lines_through_per_window_and_counts_the_rest() {
        let start = std::time::Instant::now();
        let mut r = RateLimit::new(3);
        let admitted: Vec<_> = (0..10).map(|_| r.admit(start)).collect();
        assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        let later = start + RateLimit::WINDOW;
        assert_eq!(
            r.admit(later),
            Some(7),
            "the next window reports the 7 held back"
        );
        assert_eq!(r.admit(later), Some(0));
        assert_eq!(held_back_note(7), " (7 lines suppressed)");
        assert_eq!(held_back_note(0), "");
    }

    #[test]
    fn lines_held_back_are_summarised_once_the_window_is_over() {
        let start = std::time::Instant::now();
        let mut r = RateLimit::new(1);
        assert_eq!(r.overdue(start), None, "nothing written yet");
        assert_eq!(r.admit(start), Some(0));
        assert_eq!(r.admit(start), None);
        r.hold_back(4);
        assert_eq!(r.overdue(start), None, "the window still lasts");
        let later = start + RateLimit::WINDOW;
        assert_eq!(r.overdue(later), Some(5));
        assert_eq!(r.overdue(later + RateLimit::WINDOW), None, "reported once");
        assert_eq!(r.admit(later), None, "the summary used the new window");
    }
}
