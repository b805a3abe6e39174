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
//!   server-wide, and at most [`CLIENT_LINES_PER_SECOND_PER_USER`] of them
//!   about any one user: every one goes through one shared fair
//!   [`RateLimit`] (scheme refusals of every kind, refused connections,
//!   malformed frames), so a flood of bad requests from any number of
//!   connections costs a few lines a second, and one user's flood cannot
//!   hide another user's refusals. The lines held back are counted per
//!   user; once their second is over, the next line or [`flush`] writes a
//!   summary naming who they were about (`N lines suppressed (uid 1000:
//!   …)`).
//!
//! A third rule keeps secrets out of the log: an excerpt or clipped reason
//! never shows a run of [`SECRET_RUN`] or more hex digits beyond its first
//! four (export tokens are 32; see [`push_escaped`]), so a refused open of
//! `bo/<id>?token=…` with a live token does not publish the token to
//! everyone who can read the log.
//!
//! At most [`MAX_PENDING`] lines wait per thread between flushes; further
//! ones are counted as held back.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Longest excerpt of client text in a log line, in bytes (before
/// escaping).
pub const EXCERPT_MAX: usize = 96;

/// Lines kept per thread between two [`flush`]es.
pub const MAX_PENDING: usize = 16;

/// Log lines about client requests and connections written per second,
/// all clients together, at most.
pub const CLIENT_LINES_PER_SECOND: u32 = 8;

/// Of those, lines about one user (uid) a second, at most.
pub const CLIENT_LINES_PER_SECOND_PER_USER: u32 = 2;

/// Hex digits in a row that an excerpt hides (all but the first four):
/// long enough to leave sizes, ids and addresses readable (a `u64` is at
/// most 16 hex digits, and a decimal number shows when it has no letter
/// and at most 20 digits), short enough that no 128-bit token shows.
pub const SECRET_RUN: usize = 17;

/// The one limiter of lines about clients: the scheme's refusals (through
/// [`flush`]) and the transport's lines about connections and frames
/// (refused connections, failed accepts, malformed or refused frames,
/// connections ended by a client) all go through [`write_limited`].
static CLIENT_LINES: Mutex<RateLimit> = Mutex::new(RateLimit::new(
    CLIENT_LINES_PER_SECOND,
    CLIENT_LINES_PER_SECOND_PER_USER,
));

fn client_lines() -> std::sync::MutexGuard<'static, RateLimit> {
    CLIENT_LINES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the line `line` builds now, about `source`, unless the limit of
/// lines about clients holds it back (then only counts it); writes the
/// summary of earlier lines held back first when one is due. Call it with
/// no lock held; `line` must capture only capped parts (see [`excerpt`]).
pub fn write_limited(source: Source, level: log::Level, line: impl FnOnce() -> String) {
    if !log::log_enabled!(level) {
        return;
    }
    let admission = {
        let mut limit = client_lines();
        let admission = limit.admit(source, Instant::now());
        if !admission.write {
            HOLDING_BACK.store(true, Ordering::Relaxed);
        }
        admission
    };
    if let Some(summary) = admission.summary {
        log::warn!("{summary}");
    }
    if admission.write {
        log::log!(level, "{}", line());
    }
}

/// Whether [`CLIENT_LINES`] holds back lines not yet summarised: set and
/// cleared under its lock, read without it, so that a [`flush`] with
/// nothing to report costs neither the lock nor a clock reading.
static HOLDING_BACK: AtomicBool = AtomicBool::new(false);

/// Counts `n` lines about `source` held back.
fn hold_back(source: Source, n: u64) {
    let mut limit = client_lines();
    limit.hold_back(source, n);
    HOLDING_BACK.store(true, Ordering::Relaxed);
}

/// Writes the summary of lines about clients held back once their window
/// is over (a flood that stopped is still reported).
fn write_overdue_summary() {
    if !HOLDING_BACK.load(Ordering::Relaxed) {
        return;
    }
    let overdue = {
        let mut limit = client_lines();
        let overdue = limit.overdue(Instant::now());
        if !limit.holds_back() {
            HOLDING_BACK.store(false, Ordering::Relaxed);
        }
        overdue
    };
    if let Some(summary) = overdue {
        log::warn!("{summary}");
    }
}

type Line = Box<dyn FnOnce() -> String>;

/// How a deferred line is written: a line about a client through the
/// limit, as a line about its source; a trace line (the server's own
/// debug diagnostics, such as each rendering of a generated file) as it
/// is, so that whoever counts them sees every one.
#[derive(Clone, Copy, Debug)]
enum Kind {
    About(Source),
    Trace,
}

/// Lines deferred on one thread, at most [`MAX_PENDING`].
struct Pending {
    lines: Vec<(Kind, log::Level, Line)>,
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending { lines: Vec::new() })
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
    let end = cut_point(text, EXCERPT_MAX);
    let mut out = String::with_capacity(end + 24);
    out.push('"');
    push_escaped(&mut out, text, end);
    out.push('"');
    if end < text.len() || cut_before {
        let _ = write!(out, "… ({total} bytes)");
    }
    out
}

/// The largest char boundary of `text` at most `max` bytes in.
fn cut_point(text: &str, max: usize) -> usize {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Hex digits looked at past a cut to tell whether a run there is a
/// secret (see [`is_secret_run`]).
const RUN_SCAN: usize = 21;

/// Whether the run of hex digits at the start of `bytes` is to be hidden:
/// [`SECRET_RUN`] or more digits with a letter among them, or more than 20
/// (longer than any decimal `u64`).
fn is_secret_run(bytes: &[u8]) -> bool {
    let run = bytes
        .iter()
        .take(RUN_SCAN)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    let has_letter = bytes[..run].iter().any(u8::is_ascii_alphabetic);
    run >= RUN_SCAN || (run >= SECRET_RUN && has_letter)
}

/// Appends `text[..end]` with every character that is not printable
/// escaped (`escape_debug`): control characters, line and paragraph
/// separators, bidirectional overrides and other format characters, quotes
/// and backslashes. A client can therefore neither break a log line nor
/// make its text display as something else (a forged line, reversed
/// fields). A secret-looking run of hex digits ([`is_secret_run`], judged
/// on the whole run even where `end` cuts it) shows as its first four
/// digits and `…`.
fn push_escaped(out: &mut String, text: &str, end: usize) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < end {
        let run_starts =
            bytes[i].is_ascii_hexdigit() && (i == 0 || !bytes[i - 1].is_ascii_hexdigit());
        if run_starts && is_secret_run(&bytes[i..]) {
            out.push_str(&text[i..i + 4]);
            out.push('…');
            while i < end && bytes[i].is_ascii_hexdigit() {
                i += 1;
            }
            continue;
        }
        let c = text[i..]
            .chars()
            .next()
            .expect("i is a char boundary below end");
        let _ = write!(out, "{}", c.escape_debug());
        i += c.len_utf8();
    }
}

/// `text` (an error message or other line part that may quote client
/// input) cut to at most twice [`EXCERPT_MAX`] bytes, escaped like an
/// [`excerpt`] but unquoted; when cut, followed by `… (N bytes)`.
pub fn clip(text: &str) -> String {
    let end = cut_point(text, 2 * EXCERPT_MAX);
    let mut out = String::with_capacity(end + 24);
    push_escaped(&mut out, text, end);
    if end < text.len() {
        let _ = write!(out, "… ({} bytes)", text.len());
    }
    out
}

/// [`excerpt`] of bytes that may not be UTF-8.
pub fn excerpt_bytes(bytes: &[u8]) -> String {
    // A few bytes past the cut, so a secret run there is still seen whole.
    let window = &bytes[..bytes.len().min(EXCERPT_MAX + RUN_SCAN)];
    quoted(
        &String::from_utf8_lossy(window),
        bytes.len(),
        window.len() < bytes.len(),
    )
}

/// Records a log line about `source` to be built by `line` and written at
/// the next [`flush`] on this thread. `line` must capture only capped
/// parts (see [`excerpt`]).
pub fn defer(source: Source, level: log::Level, line: impl FnOnce() -> String + 'static) {
    if log::log_enabled!(level) {
        push(Kind::About(source), level, Box::new(line));
    }
}

/// Records a debug-level diagnostic of the server's own, to be written at
/// the next [`flush`] on this thread outside the limit on lines about
/// clients (debug level is for developers; tests count these lines).
pub fn defer_trace(line: impl FnOnce() -> String + 'static) {
    if log::log_enabled!(log::Level::Debug) {
        push(Kind::Trace, log::Level::Debug, Box::new(line));
    }
}

fn push(kind: Kind, level: log::Level, line: Line) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.lines.len() < MAX_PENDING {
            p.lines.push((kind, level, line));
        } else if let Kind::About(source) = kind {
            // Counting only: the limiter's lock is a leaf, held for a few
            // instructions, so taking it under the scheme lock is fine.
            hold_back(source, 1);
        }
    });
}

/// Builds and writes the lines deferred on this thread. Call it with no
/// lock held.
pub fn flush() {
    let lines = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().lines));
    for (kind, level, line) in lines {
        match kind {
            Kind::About(source) => write_limited(source, level, line),
            Kind::Trace => log::log!(level, "{}", line()),
        }
    }
    write_overdue_summary();
}

/// Who a log line is about: the user (uid) whose request or connection
/// produced it, or `None` for the server's own lines about clients it has
/// no user for (a failed `accept`, a peer without credentials).
pub type Source = Option<u32>;

/// Sources whose held-back lines are counted one by one between two
/// summaries; the lines of further sources are counted together.
const TRACKED_SOURCES: usize = 64;

/// Sources a summary names; the rest are counted as "N more".
const NAMED_IN_SUMMARY: usize = 4;

/// A fair limit on log lines: at most `total` lines per
/// [`RateLimit::WINDOW`], of which at most `per_source` are about any one
/// [`Source`]. So a flood from one user costs `per_source` lines a second
/// and leaves the rest of the window to everyone else: one user cannot
/// hide another's refusals (a forged token, a quota hit) by provoking
/// refusals of its own. The lines held back are counted per source, and
/// once a window has passed a summary line names the sources (a few of
/// the largest, the rest as a count).
#[derive(Debug)]
pub struct RateLimit {
    total: u32,
    per_source: u32,
    window_start: Option<Instant>,
    in_window: u32,
    /// Lines let through in this window, per source.
    admitted: Vec<(Source, u32)>,
    /// Lines held back since the last summary, per source (at most
    /// [`TRACKED_SOURCES`] entries), and those of the sources beyond.
    held_back: Vec<(Source, u64)>,
    held_back_untracked: u64,
}

/// What [`RateLimit`] says about one line.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// Whether to write the line.
    pub write: bool,
    /// A summary of the lines held back since the last one, to write
    /// first (the window they were held back in is over).
    pub summary: Option<String>,
}

impl RateLimit {
    /// The window lines are counted in.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

    /// A limit of `total` lines per window, `per_source` of them about any
    /// one source.
    pub const fn new(total: u32, per_source: u32) -> Self {
        RateLimit {
            total,
            per_source,
            window_start: None,
            in_window: 0,
            admitted: Vec::new(),
            held_back: Vec::new(),
            held_back_untracked: 0,
        }
    }

    /// Whether a line about `source` may be written `now`, and the summary
    /// of earlier lines held back if one is due.
    pub fn admit(&mut self, source: Source, now: Instant) -> Admission {
        let summary = self.roll_window(now);
        let slot = self.admitted.iter().position(|(s, _)| *s == source);
        let write = self.in_window < self.total
            && slot.is_none_or(|i| self.admitted[i].1 < self.per_source);
        if write {
            self.in_window += 1;
            // At most `total` sources get a line a window, so this list
            // stays that short.
            match slot {
                Some(i) => self.admitted[i].1 += 1,
                None => self.admitted.push((source, 1)),
            }
        } else {
            self.hold_back(source, 1);
        }
        Admission { write, summary }
    }

    /// Counts `n` lines about `source` held back without asking.
    pub fn hold_back(&mut self, source: Source, n: u64) {
        if let Some(entry) = self.held_back.iter_mut().find(|(s, _)| *s == source) {
            entry.1 = entry.1.saturating_add(n);
        } else if self.held_back.len() < TRACKED_SOURCES {
            self.held_back.push((source, n));
        } else {
            self.held_back_untracked = self.held_back_untracked.saturating_add(n);
        }
    }

    /// Whether lines are held back that no summary has reported yet.
    pub fn holds_back(&self) -> bool {
        !self.held_back.is_empty() || self.held_back_untracked > 0
    }

    /// The summary of the lines held back, once the window they were held
    /// back in is over (it then starts a fresh window); `None` while the
    /// window lasts or when nothing was held back.
    pub fn overdue(&mut self, now: Instant) -> Option<String> {
        self.roll_window(now)
    }

    /// Starts a fresh window when the current one is over, returning the
    /// summary of what was held back in it.
    fn roll_window(&mut self, now: Instant) -> Option<String> {
        let over = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Self::WINDOW);
        if !over {
            return None;
        }
        self.window_start = Some(now);
        self.in_window = 0;
        self.admitted.clear();
        self.summary()
    }

    /// `N lines suppressed (uid 1000: 7, server: 2, 3 more: 5; …)` for the
    /// lines held back since the last summary, which it resets.
    fn summary(&mut self) -> Option<String> {
        let mut held = std::mem::take(&mut self.held_back);
        let untracked = std::mem::take(&mut self.held_back_untracked);
        let total: u64 = held.iter().map(|(_, n)| n).sum::<u64>() + untracked;
        if total == 0 {
            return None;
        }
        held.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let mut parts: Vec<String> = held
            .iter()
            .take(NAMED_IN_SUMMARY)
            .map(|(source, n)| match source {
                Some(uid) => format!("uid {uid}: {n}"),
                None => format!("server: {n}"),
            })
            .collect();
        let rest = held.len().saturating_sub(NAMED_IN_SUMMARY);
        let rest_lines: u64 = held
            .iter()
            .skip(NAMED_IN_SUMMARY)
            .map(|(_, n)| n)
            .sum::<u64>()
            + untracked;
        if rest_lines > 0 {
            let sources = if untracked > 0 {
                format!("{rest}+")
            } else {
                rest.to_string()
            };
            parts.push(format!("{sources} more: {rest_lines}"));
        }
        Some(format!(
            "{total} lines suppressed ({}; lines about clients: at most {} a second, {} per user)",
            parts.join(", "),
            self.total,
            self.per_source
        ))
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
    fn secret_runs_of_hex_digits_are_hidden_wherever_they_are_cut() {
        let token = "27b186e62264332561ef2713a5a71a5b";
        let path = format!("bo/3?token={token}");
        assert_eq!(excerpt(&path), "\"bo/3?token=27b1…\"");
        assert_eq!(clip(&format!("x {token} y")), "x 27b1… y");
        // Cut by the excerpt's length: still judged on the whole run.
        let padded = format!("{}{token}", "a/".repeat((EXCERPT_MAX - 20) / 2));
        let e = excerpt(&padded);
        assert!(!e.contains(&token[4..16]), "{e}");
        assert!(e.ends_with("27b1…\"… (108 bytes)"), "{e}");
        let e = excerpt_bytes(padded.as_bytes());
        assert!(!e.contains(&token[4..16]), "{e}");
        // Sizes, ids and addresses stay readable.
        for plain in [
            "size=18446744073709551615",
            "bo/123456789",
            "0x00007fff12345678",
            "abcdef0123456789",
        ] {
            assert_eq!(excerpt(plain), format!("\"{plain}\""));
        }
        // A long number is hidden as well: it could be a token without a
        // letter.
        assert_eq!(excerpt("size=123456789012345678901"), "\"size=1234…\"");
    }

    #[test]
    fn deferred_lines_are_bounded_per_thread() {
        // (No logger is installed in unit tests, so `defer` itself would
        // queue nothing: use the queue underneath it.)
        for _ in 0..MAX_PENDING + 3 {
            push(
                Kind::About(Some(1)),
                log::Level::Info,
                Box::new(String::new),
            );
        }
        PENDING.with(|p| assert_eq!(p.borrow().lines.len(), MAX_PENDING));
        flush();
        PENDING.with(|p| assert!(p.borrow().lines.is_empty()));
    }

    #[test]
    fn one_source_gets_a_share_of_the_window_and_others_the_rest() {
        let start = Instant::now();
        let mut r = RateLimit::new(5, 2);
        let flood: Vec<bool> = (0..1000)
            .map(|_| r.admit(Some(1000), start).write)
            .collect();
        assert_eq!(flood.iter().filter(|w| **w).count(), 2, "the flood's share");
        assert!(flood[..2].iter().all(|w| *w));
        // Another user's lines still get through in the same window …
        assert!(r.admit(Some(1001), start).write);
        assert!(r.admit(Some(1001), start).write);
        assert!(!r.admit(Some(1001), start).write, "… up to its own share");
        assert!(r.admit(None, start).write, "the fifth line of the window");
        assert!(!r.admit(Some(1002), start).write, "the window is full");
        // The next window starts with a summary naming who was held back,
        // largest first.
        let later = start + RateLimit::WINDOW;
        let next = r.admit(Some(1002), later);
        assert!(next.write);
        assert_eq!(
            next.summary.as_deref(),
            Some(
                "1000 lines suppressed (uid 1000: 998, uid 1001: 1, uid 1002: 1; \
                 lines about clients: at most 5 a second, 2 per user)"
            )
        );
        assert_eq!(r.admit(Some(1002), later).summary, None, "said once");
    }

    #[test]
    fn a_summary_names_a_few_sources_and_counts_the_rest() {
        let start = Instant::now();
        let mut r = RateLimit::new(1, 1);
        assert!(r.admit(None, start).write);
        for uid in 0..(TRACKED_SOURCES as u32 + 10) {
            for _ in 0..=uid {
                r.hold_back(Some(uid), 1);
            }
        }
        assert_eq!(r.overdue(start), None, "the window still lasts");
        let summary = r.overdue(start + RateLimit::WINDOW).expect("a summary");
        let top = TRACKED_SOURCES as u32 - 1;
        assert!(
            summary.contains(&format!("(uid {top}: {}, uid {}: {top},", top + 1, top - 1)),
            "{summary}"
        );
        assert!(
            summary.contains(&format!("{}+ more:", TRACKED_SOURCES - NAMED_IN_SUMMARY)),
            "{summary}"
        );
        let total: u64 = (1..=u64::from(top) + 11).sum();
        assert!(
            summary.starts_with(&format!("{total} lines suppressed")),
            "{summary}"
        );
        assert_eq!(
            r.overdue(start + 2 * RateLimit::WINDOW),
            None,
            "reported once"
        );
    }
}
