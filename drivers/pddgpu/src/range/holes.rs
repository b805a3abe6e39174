//! The hole index: every free range of the allocator, findable by size and
//! by address.
//!
//! Holes live in an arena (`Vec<Hole>`, recycled through a free list) and are
//! indexed twice:
//! - by **address** in one treap keyed by start whose nodes carry the size
//!   of the largest hole in their subtree (exact: every change to a hole
//!   or to the tree's shape recomputes the bounds above it, stopping where
//!   they no longer change), so "the first hole at or after `a` that is at
//!   least `n` bytes" is one descent plus at most one more, `O(log n)`;
//! - by **size** in segregated bins (64 bins per power of two, found with two
//!   bitmap look-ups like TLSF). A bin holding at most [`LIST_MAX`] holes is
//!   an unsorted doubly linked list (filing and unfiling are `O(1)`, a
//!   search scans at most `LIST_MAX` entries); a bin that grows past that
//!   becomes a treap keyed by `(size, start)` (and turns back into a list
//!   once it shrinks below [`LIST_MIN`], so conversions are amortized
//!   `O(1)`). So "the smallest hole of at least `n` bytes" is a bitmap step
//!   plus a short scan or a walk down one tree, and stays `O(log n)` even
//!   when every hole falls into the same bin.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::tree::{self, ByAddr, BySize};

mod check;

/// "No index": the end of a list or an absent tree link.
pub(super) const NIL: u32 = u32::MAX;

/// Most holes (and nodes) the arenas can index; keeps tagged links unambiguous.
pub(super) const MAX_INDEX: u32 = (1 << 31) - 2;

/// log2 of the number of size bins per power of two.
const SUB_BITS: usize = 6;
/// Number of size bins: 64 per power of two from 64 up to 2^64, plus 64
/// exact small bins (3776 used).
const NBINS: usize = 4096;
const NWORDS: usize = NBINS / 64;
/// Most holes a bin keeps as a list; one more turns it into a treap.
// gtt bench random-4k-90: list bins up to 32 against treap-only bins: 16%
// fewer instructions (callgrind, 108 vs 129 M) and 17% less time (median of 6).
pub(super) const LIST_MAX: u32 = 32;
/// A treap bin that shrinks below this many holes turns back into a list.
pub(super) const LIST_MIN: u32 = 16;

/// Tree links of one hole in one tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Links {
    pub left: u32,
    pub right: u32,
    pub parent: u32,
}

impl Links {
    /// Not in any tree.
    pub const EMPTY: Links = Links {
        left: NIL,
        right: NIL,
        parent: NIL,
    };
}

/// One free range `[start, end)`, or a recycled arena slot. Exactly one
/// cache line, so a tree step touches one line.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub(super) struct Hole {
    /// First free byte.
    pub start: u64,
    /// One past the last free byte.
    pub end: u64,
    /// Address-ordered list link to the record before (tagged, see `Link`).
    pub prev: u32,
    /// Address-ordered list link to the record after; free-list link when recycled.
    pub next: u32,
    /// Random treap priority.
    pub prio: u32,
    /// The size bin this hole is filed in, or `NIL` when not filed.
    pub bin: u32,
    /// Size of the largest hole in this hole's address subtree.
    pub max: u64,
    /// Links in the address tree.
    pub addr: Links,
    /// Links in its size bin: tree links in a treap bin; in a list bin
    /// `left` is the previous and `right` the next entry (`parent` unused).
    pub size: Links,
}

impl Hole {
    /// Size of the hole in bytes.
    #[inline]
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// The size bin of a hole or request of `size` bytes: monotone in `size`.
#[inline]
pub(super) fn bin_of(size: u64) -> usize {
    const SUB: usize = 1 << SUB_BITS;
    if size < SUB as u64 {
        size as usize
    } else {
        let e = 63 - size.leading_zeros() as usize;
        let m = ((size >> (e - SUB_BITS)) as usize) & (SUB - 1);
        (e - SUB_BITS + 1) * SUB + m
    }
}

/// One size bin.
#[derive(Clone, Copy, Debug)]
struct Bin {
    /// The list head or the treap root (`NIL`: empty).
    head: u32,
    /// Number of holes filed here.
    len: u32,
}

/// All bins empty, built directly on the heap.
fn empty_bins() -> Box<[Bin; NBINS]> {
    let empty = Bin { head: NIL, len: 0 };
    match vec![empty; NBINS].into_boxed_slice().try_into() {
        Ok(bins) => bins,
        // The slice has exactly NBINS entries, so this arm never runs; it
        // falls back to building the array in place rather than panicking.
        Err(_) => Box::new([empty; NBINS]),
    }
}

/// The outcome of [`HoleIndex::scan_by_size`].
pub(super) enum Scan {
    /// The first accepted hole and the address chosen in it.
    Found(u32, u64),
    /// `limit` holes were rejected before any was accepted.
    Limit,
    /// No hole of the size was accepted (fewer than `limit` rejected).
    Exhausted,
}

/// All holes, their arena and both indexes.
#[derive(Clone, Debug)]
pub(super) struct HoleIndex {
    /// The arena; indices are stable while a hole lives.
    pub holes: Vec<Hole>,
    free: u32,
    addr_root: u32,
    /// Per bin (`NBINS` of them, on the heap to keep the allocator small
    /// to move): the list head or treap root and the number of holes.
    bins: Box<[Bin; NBINS]>,
    /// Bins in treap form (clear: list form).
    treap: [u64; NWORDS],
    bitmap: [u64; NWORDS],
    summary: u64,
    /// Number of live holes.
    pub count: usize,
    rng: u32,
}

impl HoleIndex {
    /// An empty index.
    pub fn new() -> Self {
        HoleIndex {
            holes: Vec::new(),
            free: NIL,
            addr_root: NIL,
            bins: empty_bins(),
            treap: [0; NWORDS],
            bitmap: [0; NWORDS],
            summary: 0,
            count: 0,
            rng: 0x9E37_79B9,
        }
    }

    #[inline]
    fn next_prio(&mut self) -> u32 {
        // xorshift32: treap priorities only need to be independent of keys.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x
    }

    /// Takes an arena slot for a new hole `[start, end)` with list links
    /// `prev`/`next` and files it in both indexes. The allocator caps live
    /// nodes below [`MAX_INDEX`], and holes never outnumber nodes by more
    /// than one, so the arena index always stays below [`MAX_INDEX`].
    ///
    /// `after`, when given, is the hole just before the new one in address
    /// order: the address tree is then entered from there instead of from
    /// its root.
    pub fn create(
        &mut self,
        start: u64,
        end: u64,
        prev: u32,
        next: u32,
        after: Option<u32>,
    ) -> u32 {
        debug_assert!(start < end, "empty hole {start:#x}..{end:#x}");
        let prio = self.next_prio();
        let rec = Hole {
            start,
            end,
            prev,
            next,
            prio,
            bin: NIL,
            max: end - start,
            addr: Links::EMPTY,
            size: Links::EMPTY,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.holes[i as usize].next;
            self.holes[i as usize] = rec;
            i
        } else {
            let i = self.holes.len() as u32;
            self.holes.push(rec);
            i
        };
        match after {
            Some(pred) => tree::insert_addr_after(&mut self.holes, &mut self.addr_root, pred, i),
            None => tree::insert::<ByAddr>(&mut self.holes, &mut self.addr_root, i),
        }
        self.file(i);
        self.count += 1;
        i
    }

    /// Unfiles hole `i` from both indexes and recycles its slot.
    pub fn destroy(&mut self, i: u32) {
        self.unfile(i);
        tree::remove::<ByAddr>(&mut self.holes, &mut self.addr_root, i);
        let h = &mut self.holes[i as usize];
        h.start = 0;
        h.end = 0;
        h.prev = NIL;
        h.next = self.free;
        self.free = i;
        self.count -= 1;
    }

    /// Changes hole `i` to `[start, end)`. The new range must keep the hole
    /// between the same neighbours in address order (it only grows into or
    /// shrinks away from adjacent allocated space).
    #[inline]
    pub fn resize(&mut self, i: u32, start: u64, end: u64) {
        debug_assert!(start < end, "hole resized to nothing");
        let old_len = self.holes[i as usize].len();
        let new_len = end - start;
        self.unfile(i);
        let h = &mut self.holes[i as usize];
        h.start = start;
        h.end = end;
        self.file(i);
        if new_len > old_len {
            tree::raise_max_upwards(&mut self.holes, i, new_len);
        } else if new_len < old_len {
            tree::lower_max_upwards(&mut self.holes, i);
        }
    }

    #[inline]
    fn is_treap(&self, b: usize) -> bool {
        self.treap[b / 64] & (1 << (b % 64)) != 0
    }

    #[inline]
    fn file(&mut self, i: u32) {
        debug_assert_eq!(self.holes[i as usize].bin, NIL, "hole filed twice");
        let b = bin_of(self.holes[i as usize].len());
        self.holes[i as usize].bin = b as u32;
        self.bins[b].len += 1;
        if self.is_treap(b) {
            tree::insert::<BySize>(&mut self.holes, &mut self.bins[b].head, i);
        } else if self.bins[b].len > LIST_MAX {
            self.list_push(b, i);
            self.list_to_treap(b);
        } else {
            self.list_push(b, i);
        }
        self.bitmap[b / 64] |= 1 << (b % 64);
        self.summary |= 1 << (b / 64);
    }

    #[inline]
    fn unfile(&mut self, i: u32) {
        debug_assert_ne!(self.holes[i as usize].bin, NIL, "unfiling a hole not filed");
        let b = self.holes[i as usize].bin as usize;
        self.bins[b].len -= 1;
        if self.is_treap(b) {
            tree::remove::<BySize>(&mut self.holes, &mut self.bins[b].head, i);
            if self.bins[b].len < LIST_MIN {
                self.treap_to_list(b);
            }
        } else {
            self.list_unlink(b, i);
        }
        self.holes[i as usize].bin = NIL;
        if self.bins[b].head == NIL {
            self.bitmap[b / 64] &= !(1 << (b % 64));
            if self.bitmap[b / 64] == 0 {
                self.summary &= !(1 << (b / 64));
            }
        }
    }

    /// Puts hole `i` at the head of list bin `b`.
    #[inline]
    fn list_push(&mut self, b: usize, i: u32) {
        let head = self.bins[b].head;
        self.holes[i as usize].size = Links {
            left: NIL,
            right: head,
            parent: NIL,
        };
        if head != NIL {
            self.holes[head as usize].size.left = i;
        }
        self.bins[b].head = i;
    }

    /// Takes hole `i` out of list bin `b`.
    #[inline]
    fn list_unlink(&mut self, b: usize, i: u32) {
        let Links { left, right, .. } = self.holes[i as usize].size;
        if left == NIL {
            self.bins[b].head = right;
        } else {
            self.holes[left as usize].size.right = right;
        }
        if right != NIL {
            self.holes[right as usize].size.left = left;
        }
        self.holes[i as usize].size = Links::EMPTY;
    }

    /// Turns list bin `b` (at most `LIST_MAX + 1` entries) into a treap.
    fn list_to_treap(&mut self, b: usize) {
        let mut cur = self.bins[b].head;
        self.bins[b].head = NIL;
        while cur != NIL {
            let next = self.holes[cur as usize].size.right;
            tree::insert::<BySize>(&mut self.holes, &mut self.bins[b].head, cur);
            cur = next;
        }
        self.treap[b / 64] |= 1 << (b % 64);
    }

    /// Turns treap bin `b` (fewer than `LIST_MIN` entries) into a list.
    fn treap_to_list(&mut self, b: usize) {
        let mut taken = [NIL; LIST_MIN as usize];
        let mut n = 0;
        let mut cur = tree::leftmost::<BySize>(&self.holes, self.bins[b].head);
        while cur != NIL {
            taken[n] = cur;
            n += 1;
            cur = tree::next::<BySize>(&self.holes, cur);
        }
        self.bins[b].head = NIL;
        self.treap[b / 64] &= !(1 << (b % 64));
        for &i in taken[..n].iter().rev() {
            self.list_push(b, i);
        }
    }

    /// The `(size, start)` key of hole `i`.
    #[inline]
    fn key(&self, i: u32) -> (u64, u64) {
        let h = &self.holes[i as usize];
        (h.len(), h.start)
    }

    /// In list bin `b`, the entry with the smallest key among those of at
    /// least `min` bytes.
    fn list_first_sized(&self, b: usize, min: u64) -> u32 {
        let mut best = NIL;
        let mut best_key = (u64::MAX, u64::MAX);
        let mut cur = self.bins[b].head;
        while cur != NIL {
            let k = self.key(cur);
            if k.0 >= min && (best == NIL || k < best_key) {
                best = cur;
                best_key = k;
            }
            cur = self.holes[cur as usize].size.right;
        }
        best
    }

    /// The hole with the smallest key in non-empty bin `b`.
    #[inline]
    fn bin_first(&self, b: usize) -> u32 {
        if self.is_treap(b) {
            tree::leftmost::<BySize>(&self.holes, self.bins[b].head)
        } else {
            self.list_first_sized(b, 0)
        }
    }

    /// The first non-empty bin at or above `b`.
    #[inline]
    fn bin_at_or_above(&self, b: usize) -> Option<usize> {
        if b >= NBINS {
            return None;
        }
        let w = b / 64;
        let m = self.bitmap[w] & (!0u64 << (b % 64));
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        let s = if w + 1 >= 64 {
            0
        } else {
            self.summary & (!0u64 << (w + 1))
        };
        if s == 0 {
            return None;
        }
        let w = s.trailing_zeros() as usize;
        Some(w * 64 + self.bitmap[w].trailing_zeros() as usize)
    }

    /// The smallest hole (by `(size, start)`) of at least `min` bytes.
    pub fn smallest_at_least(&self, min: u64) -> u32 {
        let b = bin_of(min);
        if self.bitmap[b / 64] & (1 << (b % 64)) != 0 && !self.is_treap(b) {
            let best = self.list_first_sized(b, min);
            if best != NIL {
                return best;
            }
        } else if self.bitmap[b / 64] & (1 << (b % 64)) != 0 {
            let best = self.tree_lower_bound(b, min);
            if best != NIL {
                return best;
            }
        }
        match self.bin_at_or_above(b + 1) {
            Some(b) => self.bin_first(b),
            None => NIL,
        }
    }

    /// Walks the holes of at least `min` bytes in `(size, start)` order and
    /// returns the first one that `fits` accepts (with the address it
    /// chose), [`Scan::Limit`] once `limit` holes were rejected first, or
    /// [`Scan::Exhausted`]. A list bin is judged in one pass: its first
    /// accepted entry by key and the number of rejected entries before it.
    pub fn scan_by_size(&self, min: u64, limit: u32, fits: impl Fn(&Hole) -> Option<u64>) -> Scan {
        let mut misses = 0u32;
        let b0 = bin_of(min);
        let mut next = if self.bitmap[b0 / 64] & (1 << (b0 % 64)) != 0 {
            Some(b0)
        } else {
            self.bin_at_or_above(b0 + 1)
        };
        while let Some(b) = next {
            if self.is_treap(b) {
                let mut cur = if b == b0 {
                    self.tree_lower_bound(b, min)
                } else {
                    tree::leftmost::<BySize>(&self.holes, self.bins[b].head)
                };
                while cur != NIL {
                    if let Some(x) = fits(&self.holes[cur as usize]) {
                        return Scan::Found(cur, x);
                    }
                    misses += 1;
                    if misses >= limit {
                        return Scan::Limit;
                    }
                    cur = tree::next::<BySize>(&self.holes, cur);
                }
            } else {
                // Rejected keys (at most LIST_MAX) and the best accepted one.
                let mut rejected = [(0u64, 0u64); LIST_MAX as usize];
                let mut n_rej = 0;
                let mut best: Option<((u64, u64), u32, u64)> = None;
                let mut cur = self.bins[b].head;
                while cur != NIL {
                    let h = &self.holes[cur as usize];
                    let k = (h.len(), h.start);
                    if k.0 >= min {
                        match fits(h) {
                            Some(x) => {
                                if best.is_none_or(|(bk, _, _)| k < bk) {
                                    best = Some((k, cur, x));
                                }
                            }
                            None => {
                                rejected[n_rej] = k;
                                n_rej += 1;
                            }
                        }
                    }
                    cur = h.size.right;
                }
                let rejected = &rejected[..n_rej];
                match best {
                    Some((bk, i, x)) => {
                        let before = rejected.iter().filter(|&&k| k < bk).count() as u32;
                        return if misses.saturating_add(before) < limit {
                            Scan::Found(i, x)
                        } else {
                            Scan::Limit
                        };
                    }
                    None => {
                        misses = misses.saturating_add(n_rej as u32);
                        if misses >= limit {
                            return Scan::Limit;
                        }
                    }
                }
            }
            next = self.bin_at_or_above(b + 1);
        }
        Scan::Exhausted
    }

    /// In treap bin `b`, the first hole (by key) of at least `min` bytes.
    fn tree_lower_bound(&self, b: usize, min: u64) -> u32 {
        let mut cur = self.bins[b].head;
        let mut best = NIL;
        while cur != NIL {
            let h = &self.holes[cur as usize];
            if h.len() >= min {
                best = cur;
                cur = h.size.left;
            } else {
                cur = h.size.right;
            }
        }
        best
    }

    /// The last hole whose start is at or below `addr`.
    pub fn last_starting_at_or_below(&self, addr: u64) -> u32 {
        let mut cur = self.addr_root;
        let mut best = NIL;
        while cur != NIL {
            let h = &self.holes[cur as usize];
            if h.start <= addr {
                best = cur;
                cur = h.addr.right;
            } else {
                cur = h.addr.left;
            }
        }
        best
    }

    /// The first hole in address order starting at or above `addr` whose size
    /// is at least `min`.
    pub fn first_sized_at_or_above(&self, addr: u64, min: u64) -> u32 {
        tree::first_fit_at_or_above(&self.holes, self.addr_root, addr, min)
    }

    /// The last hole in address order starting below `addr` whose size is at
    /// least `min`.
    pub fn last_sized_below(&self, addr: u64, min: u64) -> u32 {
        tree::last_fit_below(&self.holes, self.addr_root, addr, min)
    }

    /// The holes in address-tree order (in-order walk), for checks.
    pub fn in_address_order(&self) -> impl Iterator<Item = u32> + '_ {
        let mut i = tree::leftmost::<ByAddr>(&self.holes, self.addr_root);
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let cur = i;
            i = tree::next::<ByAddr>(&self.holes, i);
            Some(cur)
        })
    }

    /// The size of the largest hole (0 when there is none): the last hole
    /// of the highest non-empty size bin.
    pub fn largest(&self) -> u64 {
        if self.summary == 0 {
            return 0;
        }
        let w = 63 - self.summary.leading_zeros() as usize;
        let b = w * 64 + 63 - self.bitmap[w].leading_zeros() as usize;
        if self.is_treap(b) {
            let i = tree::rightmost::<BySize>(&self.holes, self.bins[b].head);
            return self.holes[i as usize].len();
        }
        let mut largest = 0;
        let mut cur = self.bins[b].head;
        while cur != NIL {
            largest = largest.max(self.holes[cur as usize].len());
            cur = self.holes[cur as usize].size.right;
        }
        largest
    }
}
