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
//!   costs other users no lock time.
//! - Each handle's snapshot is charged to its user as if it were its own
//!   copy (see [`crate::budget`]); the last rendering's length, known
//!   before rendering, lets a user past its budget be refused without
//!   rendering.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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
#[derive(Debug, Default)]
pub(crate) struct Renders {
    /// The current server state; moves on every change.
    state: u64,
    /// Per file: the state it was rendered at, and the text.
    latest: HashMap<FileKind, (u64, Arc<[u8]>)>,
    /// Per file: the rendering of the current state being made without
    /// the lock. A second request that needs it waits for the first one's
    /// instead of rendering again, so renders stay one per file and state
    /// however many readers ask at once.
    pending: HashMap<FileKind, PendingRender>,
}

/// A rendering being made without the lock, shared by every request that
/// needs the same file at the same state: the first to get to it renders,
/// the others wait for its text (`OnceLock::get_or_init`).
pub(crate) type PendingRender = Arc<OnceLock<Arc<[u8]>>>;

impl Renders {
    /// A request may have changed what files show: renderings taken
    /// before are not reused from now on.
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
        self.latest.get(&kind).map_or(0, |(_, text)| text.len())
    }

    #[cfg(not(target_os = "redox"))]
    /// The current server state (see [`Renders::state_changed`]).
    pub fn state(&self) -> u64 {
        self.state
    }

    #[cfg(not(target_os = "redox"))]
    /// Whether `kind` was rendered at the current state already.
    pub fn is_current(&self, kind: FileKind) -> bool {
        self.latest
            .get(&kind)
            .is_some_and(|(state, _)| *state == self.state)
    }

    /// Keeps `text`, a rendering of `kind` at state `state` made
    /// elsewhere (without the scheme lock), unless a later one is kept.
    pub fn offer(&mut self, kind: FileKind, state: u64, text: Arc<[u8]>) {
        match self.latest.get(&kind) {
            Some((kept, _)) if *kept >= state => {}
            _ => {
                self.latest.insert(kind, (state, text));
            }
        }
    }

    /// `kind` at the current state: the rendering already made at this
    /// state, or a new one made by `render`.
    pub fn current(&mut self, kind: FileKind, render: impl FnOnce() -> Vec<u8>) -> Arc<[u8]> {
        match self.latest.get(&kind) {
            Some((state, text)) if *state == self.state => text.clone(),
            _ => {
                let text: Arc<[u8]> = render().into();
                self.latest.insert(kind, (self.state, text.clone()));
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rendering_per_file_and_state() {
        let mut r = Renders::default();
        let calls = std::cell::Cell::new(0);
        let render = |r: &mut Renders, kind| {
            r.current(kind, || {
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
        assert_eq!(calls.get(), 3, "a new state renders again");
        assert_eq!(c.len(), 3);
        assert_eq!(r.expected_len(FileKind::VramMap), 3);
        assert_eq!(r.expected_len(FileKind::Health), 0, "never rendered");
        assert!(r.is_current(FileKind::VramMap));
        assert!(
            !r.is_current(FileKind::Clients),
            "rendered at an older state"
        );
    }

    #[test]
    fn a_rendering_made_elsewhere_serves_its_state_and_no_later_one() {
        let mut r = Renders::default();
        let made_at = r.state();
        r.offer(FileKind::Clients, made_at, vec![b'a'; 4].into());
        assert!(r.is_current(FileKind::Clients));
        let text = r.current(FileKind::Clients, || unreachable!("rendered twice"));
        assert_eq!(&*text, b"aaaa");
        r.state_changed();
        r.current(FileKind::Clients, || vec![b'b'; 2]);
        // An older rendering arriving late does not replace a newer one.
        r.offer(FileKind::Clients, made_at, vec![b'a'; 4].into());
        assert_eq!(r.expected_len(FileKind::Clients), 2);
        assert!(r.is_current(FileKind::Clients));
    }
}
