//! Per-user budgets: what the clients of one user (uid) may make the
//! server hold at once, beyond their BOs.
//!
//! - **Mappings** (host transport): each BO a client maps keeps a
//!   descriptor (its memfd) open in the server and splits the server's
//!   mapping of the domain into more kernel mappings (VMAs). One user may
//!   have at most [`UserLimits::mapped_bos_per_uid`] BOs and
//!   [`UserLimits::mapped_segments_per_uid`] segments mapped; beyond:
//!   `EDQUOT`. A BO's memory is charged to every user whose clients
//!   mapped it, each for as long as that user still holds the BO (some
//!   client of it has a handle on it), and released when its last handle
//!   on the BO closes or the BO is freed (see [`crate::backing`]). So a
//!   user is charged only for its own choices: mapping BOs another user
//!   exported costs it nothing once it closes them, however long the
//!   exporter keeps them, and an importer keeping an exporter's BO alive
//!   never holds the exporter's share.
//! - **Read snapshots** (every transport): a handle on a generated file
//!   (`vram.map`, `clients.json`, …) keeps the text it is being read from,
//!   so a reader sees one consistent rendering. Like a `seq_file` buffer
//!   charged to the reader's memory cgroup, a snapshot is charged to the
//!   user of the reader that took it (as if it were its own copy, though
//!   handles taking one at the same server state share one rendering: see
//!   `crate::snapshots`), and released when the handle takes a new one or
//!   closes. One user's snapshots may hold at most
//!   [`UserLimits::snapshot_bytes_per_uid`] bytes, except that a user
//!   holding none may always take one (a file's size depends on the
//!   server's state, not on the reader); beyond: `ENOBUFS`. All users'
//!   snapshots together may hold at most
//!   [`UserLimits::snapshot_bytes_total`], so users acting together cannot
//!   pin more; root and the admin user are exempt from that one, so
//!   they can always read the server's files.
//!
//! Users never share a per-user budget, so one user that spends all of
//! its own leaves every other user's untouched.

use std::collections::HashMap;

/// What one user may make the server hold (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserLimits {
    /// BOs one user's clients may have mapped at once (host transport:
    /// one server descriptor each).
    pub mapped_bos_per_uid: usize,
    /// Mapped segments one user's clients may have at once (host
    /// transport: kernel mappings in the server).
    pub mapped_segments_per_uid: usize,
    /// Bytes of read snapshots one user's handles may hold at once.
    pub snapshot_bytes_per_uid: usize,
    /// Bytes of read snapshots all users' handles may hold at once (root
    /// and the admin user exempt).
    pub snapshot_bytes_total: usize,
}

impl UserLimits {
    /// The default of [`UserLimits::mapped_bos_per_uid`].
    pub const DEFAULT_MAPPED_BOS_PER_UID: usize = 1024;
    /// The default of [`UserLimits::mapped_segments_per_uid`]: a quarter of
    /// the server's [`MAX_MAPPED_SEGMENTS`](crate::backing::MAX_MAPPED_SEGMENTS).
    pub const DEFAULT_MAPPED_SEGMENTS_PER_UID: usize = crate::backing::MAX_MAPPED_SEGMENTS / 4;
    /// The default of [`UserLimits::snapshot_bytes_per_uid`].
    pub const DEFAULT_SNAPSHOT_BYTES_PER_UID: usize = 16 << 20;
    /// The default of [`UserLimits::snapshot_bytes_total`].
    pub const DEFAULT_SNAPSHOT_BYTES_TOTAL: usize = 256 << 20;
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            mapped_bos_per_uid: Self::DEFAULT_MAPPED_BOS_PER_UID,
            mapped_segments_per_uid: Self::DEFAULT_MAPPED_SEGMENTS_PER_UID,
            snapshot_bytes_per_uid: Self::DEFAULT_SNAPSHOT_BYTES_PER_UID,
            snapshot_bytes_total: Self::DEFAULT_SNAPSHOT_BYTES_TOTAL,
        }
    }
}

/// An amount per user, charged and released in pairs; a user whose
/// amount drops to zero is forgotten.
#[derive(Debug, Default)]
pub struct PerUser {
    used: HashMap<u32, usize>,
    /// The sum of `used`.
    total: usize,
}

impl PerUser {
    /// What `uid` holds now.
    pub fn used(&self, uid: u32) -> usize {
        self.used.get(&uid).copied().unwrap_or(0)
    }

    /// Charges `amount` to `uid` if its total stays within `limit`;
    /// otherwise charges nothing and returns what it holds.
    pub fn try_charge(&mut self, uid: u32, amount: usize, limit: usize) -> Result<(), usize> {
        let used = self.used(uid);
        match used.checked_add(amount) {
            Some(total) if total <= limit => {
                if total > 0 {
                    self.used.insert(uid, total);
                }
                self.total = self.total.saturating_add(amount);
                Ok(())
            }
            _ => Err(used),
        }
    }

    /// Gives back `amount` that was charged to `uid`.
    pub fn release(&mut self, uid: u32, amount: usize) {
        if let Some(used) = self.used.get_mut(&uid) {
            self.total -= amount.min(*used);
            *used = used.saturating_sub(amount);
            if *used == 0 {
                self.used.remove(&uid);
            }
        }
    }

    /// What all users hold now.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Users holding anything.
    pub fn users(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_charged_separately_and_forgotten_at_zero() {
        let mut p = PerUser::default();
        assert_eq!(p.try_charge(1, 8, 10), Ok(()));
        assert_eq!(p.try_charge(1, 3, 10), Err(8), "over the limit");
        assert_eq!(p.used(1), 8, "a refused charge changes nothing");
        assert_eq!(p.try_charge(2, 10, 10), Ok(()), "another user's own budget");
        assert_eq!(p.total(), 18);
        p.release(1, 8);
        assert_eq!(p.used(1), 0);
        assert_eq!(p.total(), 10);
        p.release(2, 11);
        assert_eq!(
            p.total(),
            0,
            "releasing more than held gives back what was held"
        );
        p.try_charge(2, 10, 10).unwrap();
        assert_eq!(p.users(), 1, "a user at zero is forgotten");
        assert_eq!(p.try_charge(1, usize::MAX, usize::MAX), Ok(()));
        assert_eq!(
            p.try_charge(1, 1, usize::MAX),
            Err(usize::MAX),
            "no overflow"
        );
        p.release(3, 5);
        assert_eq!(
            p.users(),
            2,
            "releasing what was never charged does nothing"
        );
    }
}
