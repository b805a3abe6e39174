//! Snapshots of generated files: what a handle on `vram.map.json`,
//! `clients`, … is read from, and the renderings they share.
//!
//! Rendering a file walks the whole server state (every BO, every client)
//! under the scheme lock, so it must not happen once per request: one user
//! asking for a file's size thousands of times would hold the lock for
//! everyone. So:
//!
//! - A handle's content is a snapshot, taken at its first `fstat`, `fsize`
//!   or read, and taken again at each read from offset 0; `fstat` and
//!   `fsize` report the size of the handle's snapshot (they never render
//!   once it has one).
//! - A snapshot is the file as of the server state when it was taken. The
//!   scheme starts a new state (its [`Renders::state_changed`]) on every
//!   request that may change what any file shows (opens, closes, writes,
//!   exports, retries, disconnects, ticks), so one rendering per file and
//!   state serves every handle that takes a snapshot at that state: the
//!   renders follow the changes of the server state, not the requests of
//!   the readers.
//! - Over the host transport a rendering runs without the scheme lock:
//!   what it needs of the scheme (the callers, [`crate::format::Owners`])
//!   is copied under the lock, in time proportional to the number of
//!   owners; the driver's reports (occupancy maps, usage, leak reports)
//!   and the formatting follow after the lock is released, and the text
//!   is handed to the request when it is dispatched
//!   (`HostScheme::prework`), so a user rendering big files over and over
//!   costs other users no lock time. Requests that need the same file at
//!   the same state share one such rendering ([`PendingRender`]).
//! - Changing the state is cheap for a client and rendering a big file is
//!   not, so a big rendering is paced ([`PACED_FROM`], [`PACE`]): it serves
//!   later states too, for a time proportional to what it cost, which
//!   bounds the share of the server's time renders take whatever readers
//!   do.
//! - Each handle's snapshot is charged to its user as if it were its own
//!   copy (see [`crate::budget`]); the last rendering's length, known
//!   before rendering, lets a user past its budget be refused without
//!   rendering.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::path::FileKind;

/// The text a file or tunable handle is being read from, and the user it
/// is charged to (see [`crate::budget`]); `None` before the first
/// snapshot.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub bytes: Option<Arc<[u8]>>,
    pub uid: u32,
}

impl Snapshot {
    /// Bytes charged for it.
    pub fn len(&self) -> usize {
        self.bytes.as_ref().map_or(0, |b| b.len())
    }
}

/// The latest rendering of each generated file, and the server state it
/// shows.
/// Renderings of at least this many bytes are paced (see [`PACE`]): a
/// map of several thousand labelled BOs. Smaller ones, every file of a
/// server of ordinary size, are made at every state that needs one, so a
/// client reads its own changes.
pub(crate) const PACED_FROM: usize = 1 << 20;

/// A paced file is rendered again at most once per `PACE` times its last
/// rendering's duration: until then a reader gets that rendering (at most
/// that much out of date, tens to hundreds of milliseconds), so renders
/// of one big file take at most a twentieth of the server's time whatever
/// readers do. Changing the state
/// costs a client one cheap request and a rendering of a map of 64 Ki BOs
/// tens of milliseconds; without pacing, users taking turns at both would
/// keep the CPUs rendering.
pub(crate) const PACE: u32 = 20;

/// One rendering of a file.
#[derive(Debug)]
struct Rendering {
    /// The server state it shows.
    state: u64,
    text: Arc<[u8]>,
    /// When it was made, and how long that took.
    made_at: Instant,
    cost: Duration,
}

/// The latest rendering of each generated file, and the server state it
/// shows.
#[derive(Debug, Default)]
pub(crate) struct Renders {
    /// The current server state; moves on every change.
    state: u64,
    /// Per file: the latest rendering.
    latest: HashMap<FileKind, Rendering>,
    /// Per file: the rendering of the current state being made without
    /// the lock. A second request that needs it waits for the first one's
    /// instead of rendering again, so renders stay one per file and state
    /// however many readers ask at once.
    pending: HashMap<FileKind, PendingRender>,
}

/// A rendering being made without the lock, shared by every request that
/// needs the same file at the same state: the first to get to it renders
/// (and times the rendering), the others wait for its text
/// (`OnceLock::get_or_init`).
pub(crate) type PendingRender = Arc<OnceLock<(Arc<[u8]>, Duration)>>;

/// Runs `render`, timing it.
pub(crate) fn timed(render: impl FnOnce() -> Vec<u8>) -> (Arc<[u8]>, Duration) {
    let start = Instant::now();
    let text = render().into();
    (text, start.elapsed())
}

impl Renders {
    /// A request may have changed what files show: renderings taken
    /// before are not reused from now on (but see [`PACE`]).
    pub fn state_changed(&mut self) {
        self.state = self.state.wrapping_add(1);
        self.pending.clear();
    }

    #[cfg(not(target_os = "redox"))]
    /// The rendering of `kind` at the current state that requests make
    /// without the lock (see [`PendingRender`]).
    pub fn pending(&mut self, kind: FileKind) -> PendingRender {
        self.pending.entry(kind).or_default().clone()
    }

    /// The length of `kind` when last rendered (at this state or an
    /// earlier one; 0 if never): what a snapshot of it will likely cost.
    pub fn expected_len(&self, kind: FileKind) -> usize {
        self.latest.get(&kind).map_or(0, |r| r.text.len())
    }

    #[cfg(not(target_os = "redox"))]
    /// The current server state (see [`Renders::state_changed`]).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Whether a snapshot of `kind` taken `now` is served by its latest
    /// rendering: one made at the current state, or a paced one still
    /// within its pace (see [`PACE`]).
    pub fn serves_now(&self, kind: FileKind, now: Instant) -> bool {
        self.latest.get(&kind).is_some_and(|r| {
            r.state == self.state
                || (r.text.len() >= PACED_FROM
                    && now.saturating_duration_since(r.made_at) < r.cost * PACE)
        })
    }

    /// Keeps `text`, a rendering of `kind` at state `state` made
    /// elsewhere (without the scheme lock) in `cost`, unless a later one
    /// is kept.
    pub fn offer(&mut self, kind: FileKind, state: u64, text: Arc<[u8]>, cost: Duration) {
        match self.latest.get(&kind) {
            Some(kept) if kept.state >= state => {}
            _ => {
                let made_at = Instant::now();
                self.latest.insert(
                    kind,
                    Rendering {
                        state,
                        text,
                        made_at,
                        cost,
                    },
                );
            }
        }
    }

    /// `kind` for a snapshot taken `now`: the latest rendering if it
    /// [serves now](Renders::serves_now), or a new one made by `render`.
    pub fn current(
        &mut self,
        kind: FileKind,
        now: Instant,
        render: impl FnOnce() -> Vec<u8>,
    ) -> Arc<[u8]> {
        if self.serves_now(kind, now) {
            if let Some(r) = self.latest.get(&kind) {
                return r.text.clone();
            }
        }
        let (text, cost) = timed(render);
        let state = self.state;
        self.offer(kind, state, text.clone(), cost);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A big rendering (paced) that takes `ms` milliseconds.
    fn slow(ms: u64, byte: u8, calls: &std::cell::Cell<u32>) -> impl FnOnce() -> Vec<u8> + '_ {
        move || {
            std::thread::sleep(Duration::from_millis(ms));
            calls.set(calls.get() + 1);
            vec![byte; PACED_FROM + calls.get() as usize]
        }
    }

    #[test]
    fn one_rendering_per_file_and_state() {
        let mut r = Renders::default();
        let calls = std::cell::Cell::new(0);
        let render = |r: &mut Renders, kind| {
            r.current(kind, Instant::now(), || {
                calls.set(calls.get() + 1);
                vec![b'x'; calls.get()]
            })
        };
        let a = render(&mut r, FileKind::VramMap);
        let b = render(&mut r, FileKind::VramMap);
        assert!(Arc::ptr_eq(&a, &b), "the same state shares one rendering");
        render(&mut r, FileKind::Clients);
        assert_eq!(calls.get(), 2, "each file has its own rendering");
        assert_eq!(r.expected_len(FileKind::VramMap), 1);
        r.state_changed();
        assert_eq!(
            r.expected_len(FileKind::VramMap),
            1,
            "known before rendering"
        );
        let c = render(&mut r, FileKind::VramMap);
        assert_eq!(
            calls.get(),
            3,
            "a quick rendering is made again at a new state"
        );
        assert_eq!(c.len(), 3);
        assert_eq!(r.expected_len(FileKind::VramMap), 3);
        assert_eq!(r.expected_len(FileKind::Health), 0, "never rendered");
        assert!(r.serves_now(FileKind::VramMap, Instant::now()));
        assert!(
            !r.serves_now(FileKind::Clients, Instant::now()),
            "a quick rendering at an older state"
        );
    }

    #[test]
    fn a_slow_rendering_serves_later_states_until_its_pace_is_over() {
        let mut r = Renders::default();
        let calls = std::cell::Cell::new(0);
        let first = r.current(FileKind::VramMap, Instant::now(), slow(2, b'a', &calls));
        let made = Instant::now();
        for _ in 0..5 {
            r.state_changed();
            let again = r.current(FileKind::VramMap, made, slow(2, b'b', &calls));
            assert!(
                Arc::ptr_eq(&first, &again),
                "rendered again within its pace"
            );
        }
        assert_eq!(calls.get(), 1);
        // The pace is PACE times the rendering's cost (at least 2 ms).
        let later = made + Duration::from_millis(2) * PACE * 50;
        assert!(!r.serves_now(FileKind::VramMap, later));
        let fresh = r.current(FileKind::VramMap, later, slow(2, b'c', &calls));
        assert_eq!(fresh.len(), PACED_FROM + 2);
        assert_eq!(fresh[0], b'c');
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn a_rendering_made_elsewhere_serves_its_state_and_no_later_one() {
        let mut r = Renders::default();
        let made_at = r.state();
        let quick = Duration::from_micros(10);
        r.offer(FileKind::Clients, made_at, vec![b'a'; 4].into(), quick);
        assert!(r.serves_now(FileKind::Clients, Instant::now()));
        let text = r.current(FileKind::Clients, Instant::now(), || {
            unreachable!("rendered twice")
        });
        assert_eq!(&*text, b"aaaa");
        r.state_changed();
        r.current(FileKind::Clients, Instant::now(), || vec![b'b'; 2]);
        // An older rendering arriving late does not replace a newer one.
        r.offer(FileKind::Clients, made_at, vec![b'a'; 4].into(), quick);
        assert_eq!(r.expected_len(FileKind::Clients), 2);
        assert!(r.serves_now(FileKind::Clients, Instant::now()));
    }
}
