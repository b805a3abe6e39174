//! A drm_mm-class range allocator over a `u64` address range.
//!
//! [`RangeAllocator`] hands out byte-granular, non-overlapping ranges of an
//! address space (the GTT aperture): [`insert`](RangeAllocator::insert) with a
//! size, any power-of-two alignment, an optional `start..end` restriction and
//! a placement mode ([`InsertMode::Best`] / [`Low`](InsertMode::Low) /
//! [`High`](InsertMode::High), the semantics of drm_mm's BEST/LOW/HIGH);
//! [`reserve`](RangeAllocator::reserve) of an exact range; and
//! [`remove`](RangeAllocator::remove), which merges the freed range with its
//! neighbouring holes. Handles ([`RangeNode`]) carry a slot and generation,
//! so a double remove or a handle that was never issued by this allocator is
//! rejected with an error instead of corrupting the state.
//!
//! # How holes are found
//! Every free range ("hole") is indexed by size (segregated bins, each a short
//! list or a treap) and by address (a treap whose nodes bound the largest
//! hole below them; see `holes.rs`). Nodes and holes also form one doubly linked list in
//! address order, so a remove finds the holes to merge with in `O(1)`.
//! Without alignment trouble every search is `O(log n)` expected in the
//! number of holes:
//! - `Best`: the smallest hole of at least `size` bytes; its first aligned
//!   address.
//! - `Low` / `High`: the lowest / highest hole of at least `size` bytes
//!   inside the range, found by walking the address tree and skipping
//!   subtrees without a big enough hole; its lowest / highest aligned address.
//!
//! With an alignment `a`, a hole of at least `size + a - 1` bytes (after
//! clipping to the range) always fits, but a smaller one may not. Searches
//! examine such uncertain candidates in order; after
//! [`search_limit`](RangeAllocator::search_limit) misses (default
//! [`DEFAULT_SEARCH_LIMIT`]) they stop and take the best *guaranteed* hole
//! instead, found in `O(log n)`: for an unrestricted `Best` the smallest hole
//! of at least `size + a - 1` bytes, otherwise the lowest (`Best`, `Low`) or
//! highest (`High`) hole in the range with that much room. So the result is
//! exactly drm_mm's unless more than `search_limit` unsuitable candidates
//! come first, and the work per search is bounded by `search_limit` steps of
//! `O(log n)` each. Only when *no* guaranteed hole exists at all does the
//! search go on through the remaining candidates, so that an allocation never
//! fails while a fitting hole exists. A limit of `u32::MAX` gives exact
//! drm_mm behaviour everywhere.

mod check;
mod holes;
mod rebuild;
mod search;
mod tree;

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU32, Ordering};

use holes::{HoleIndex, MAX_INDEX, NIL};

/// How [`RangeAllocator::insert`] chooses where to place a new range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsertMode {
    /// The smallest hole that fits, at its lowest suitable address (drm_mm
    /// BEST): keeps large holes intact for large requests.
    Best,
    /// The lowest suitable address (drm_mm LOW).
    Low,
    /// The highest suitable address (drm_mm HIGH): keeps the low end free,
    /// e.g. for a CPU-visible window.
    High,
}

/// An allocated range handed out by a [`RangeAllocator`].
///
/// Besides its range, a node carries the identity of the allocator that
/// issued it and the slot and generation that identify it there, so that
/// removing a node twice, or a node that this allocator never issued, is
/// detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RangeNode {
    start: u64,
    size: u64,
    slot: u32,
    gen: u32,
    owner: u32,
}

impl RangeNode {
    /// First address of the range.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Size of the range in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last address of the range.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// The range as `start..end`.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end()
    }
}

/// A snapshot of a [`RangeAllocator`]'s accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeStats {
    /// Bytes managed.
    pub total: u64,
    /// Bytes in live nodes.
    pub used: u64,
    /// Bytes in holes (`total - used`).
    pub free: u64,
    /// Number of holes (maximal free ranges).
    pub hole_count: u64,
    /// Size of the largest hole.
    pub largest_hole: u64,
    /// Number of live nodes.
    pub node_count: u64,
}

/// Errors of a [`RangeAllocator`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A parameter is invalid: zero size, alignment not a power of two,
    /// inverted range, range outside the allocator, overflow.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// No hole can take the request (or the node table is full).
    #[error("no space for {size} bytes")]
    NoSpace {
        /// The size that could not be placed.
        size: u64,
    },
    /// An exact reservation overlaps a live node.
    #[error("range {start:#x}+{size:#x} is already in use")]
    Busy {
        /// Start of the requested range.
        start: u64,
        /// Size of the requested range.
        size: u64,
    },
    /// The node is not a live node of this allocator (removed already,
    /// issued by another allocator, or altered).
    #[error("invalid node: {0}")]
    InvalidNode(&'static str),
}

/// Default number of unsuitable candidates a search examines before it
/// settles for a guaranteed fit (see the [module docs](self)).
pub const DEFAULT_SEARCH_LIMIT: u32 = 32;

/// Most live nodes one allocator can hold.
const MAX_NODES: u32 = MAX_INDEX - 1;

/// Source of allocator identities (0 is never issued).
static NEXT_ALLOCATOR_ID: AtomicU32 = AtomicU32::new(1);

/// Tag bit marking a list link as pointing at a hole (clear: a node).
const HOLE: u32 = 1 << 31;

#[inline]
fn is_hole(link: u32) -> bool {
    link != NIL && link & HOLE != 0
}

#[inline]
fn hole_link(i: u32) -> u32 {
    i | HOLE
}

/// One node slot: a live node (`size > 0`) or a recycled slot.
#[derive(Clone, Debug)]
struct NodeRec {
    start: u64,
    /// 0 for a free slot.
    size: u64,
    /// Tagged link to the record before in address order.
    prev: u32,
    /// Tagged link to the record after; free-list link when the slot is free.
    next: u32,
    /// Bumped every time the slot is freed.
    gen: u32,
}

impl NodeRec {
    /// A slot never used: no node, unlinked, generation 0.
    const UNUSED: NodeRec = NodeRec {
        start: 0,
        size: 0,
        prev: NIL,
        next: NIL,
        gen: 0,
    };
}

/// A drm_mm-class range allocator; see the [module docs](self).
///
/// Single-threaded (`&mut self`); [`crate::gtt::GttManager`] puts it behind a
/// lock. All address space from `start` to `start + size` is managed as a
/// doubly linked list of nodes and holes in address order, with the holes
/// also indexed by size and by address.
///
/// Every allocator has an identity that its nodes carry. A clone keeps the
/// identity (it is a snapshot of the same allocator), and so does a
/// [`rebuild`](Self::rebuild).
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    id: u32,
    start: u64,
    end: u64,
    nodes: Vec<NodeRec>,
    node_free: u32,
    node_count: u32,
    holes: HoleIndex,
    /// Tagged link to the first record in address order.
    head: u32,
    used: u64,
    search_limit: u32,
}

impl RangeAllocator {
    /// An allocator managing `start..start + size`, all of it one hole.
    pub fn new(start: u64, size: u64) -> Result<Self, RangeError> {
        if size == 0 {
            return Err(RangeError::InvalidArgument("allocator size is zero"));
        }
        let end = start
            .checked_add(size)
            .ok_or(RangeError::InvalidArgument("allocator range overflows u64"))?;
        let mut holes = HoleIndex::new();
        let h = holes.create(start, end, NIL, NIL, None);
        Ok(RangeAllocator {
            id: NEXT_ALLOCATOR_ID.fetch_add(1, Ordering::Relaxed),
            start,
            end,
            nodes: Vec::new(),
            node_free: NIL,
            node_count: 0,
            holes,
            head: hole_link(h),
            used: 0,
            search_limit: DEFAULT_SEARCH_LIMIT,
        })
    }

    /// First managed address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last managed address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// How many unsuitable candidates a search examines before it takes a
    /// guaranteed fit (see the [module docs](self)).
    pub fn search_limit(&self) -> u32 {
        self.search_limit
    }

    /// Sets the search limit (values below 1 count as 1; `u32::MAX` makes
    /// every search exact at the price of unbounded work on adversarial
    /// layouts).
    pub fn set_search_limit(&mut self, limit: u32) {
        self.search_limit = limit.max(1);
    }

    /// Allocates `size` bytes aligned to `alignment` (a power of two; 0 means
    /// 1) inside `range` (clipped to the managed range), placed per `mode`.
    pub fn insert(
        &mut self,
        size: u64,
        alignment: u64,
        range: Range<u64>,
        mode: InsertMode,
    ) -> Result<RangeNode, RangeError> {
        if size == 0 {
            return Err(RangeError::InvalidArgument("size is zero"));
        }
        let align = alignment.max(1);
        if !align.is_power_of_two() {
            return Err(RangeError::InvalidArgument(
                "alignment is not a power of two",
            ));
        }
        if range.start > range.end {
            return Err(RangeError::InvalidArgument("range start is after its end"));
        }
        let rs = range.start.max(self.start);
        let re = range.end.min(self.end);
        if re <= rs || re - rs < size {
            return Err(RangeError::NoSpace { size });
        }
        if !self.has_node_room() {
            return Err(RangeError::NoSpace { size });
        }
        let found = match mode {
            InsertMode::Best => self.find_best(size, align, rs, re),
            InsertMode::Low => self.find_low(size, align, rs, re),
            InsertMode::High => self.find_high(size, align, rs, re),
        };
        let (h, x) = found.ok_or(RangeError::NoSpace { size })?;
        let n = self.take_slot();
        Ok(self.carve(h, x, size, n))
    }

    /// Claims exactly `start..start + size` (firmware areas, scratch pages).
    /// Fails with [`RangeError::Busy`] if any byte of it is in use, leaving
    /// the allocator unchanged.
    pub fn reserve(&mut self, start: u64, size: u64) -> Result<RangeNode, RangeError> {
        self.check_span(start, size)?;
        let h = self.hole_containing(start, size)?;
        if !self.has_node_room() {
            return Err(RangeError::NoSpace { size });
        }
        let n = self.take_slot();
        Ok(self.carve(h, start, size, n))
    }

    /// Frees `node`, merging it with neighbouring holes. A node that is not
    /// live in this allocator (double remove, foreign or stale handle) is
    /// rejected with [`RangeError::InvalidNode`] and changes nothing.
    pub fn remove(&mut self, node: RangeNode) -> Result<(), RangeError> {
        if !self.is_live(&node) {
            return Err(RangeError::InvalidNode("not a live node of this allocator"));
        }
        let n = node.slot;
        let (prev, next) = {
            let r = &self.nodes[n as usize];
            (r.prev, r.next)
        };
        let (ns, ne) = (node.start, node.end());
        match (is_hole(prev), is_hole(next)) {
            (true, true) => {
                let (l, r) = (prev & !HOLE, next & !HOLE);
                let (r_end, r_next) = {
                    let rh = &self.holes.holes[r as usize];
                    (rh.end, rh.next)
                };
                self.holes.holes[l as usize].next = r_next;
                self.set_prev(r_next, prev);
                self.holes.destroy(r);
                let l_start = self.holes.holes[l as usize].start;
                self.holes.resize(l, l_start, r_end);
            }
            // The next two arms mirror each other: the freed node joins
            // the hole before it, or the hole after it.
            (true, false) => {
                let l = prev & !HOLE;
                self.holes.holes[l as usize].next = next;
                self.set_prev(next, prev);
                let l_start = self.holes.holes[l as usize].start;
                self.holes.resize(l, l_start, ne);
            }
            // Mirror of the arm above.
            (false, true) => {
                let r = next & !HOLE;
                self.holes.holes[r as usize].prev = prev;
                self.set_next(prev, next);
                let r_end = self.holes.holes[r as usize].end;
                self.holes.resize(r, ns, r_end);
            }
            (false, false) => {
                // At most one more hole than nodes ever exists, and node
                // slots are capped below the hole arena's limit.
                let after = self.hole_before(prev);
                let h = self.holes.create(ns, ne, prev, next, after);
                self.set_next(prev, hole_link(h));
                self.set_prev(next, hole_link(h));
            }
        }
        let r = &mut self.nodes[n as usize];
        r.size = 0;
        r.prev = NIL;
        r.gen = r.gen.wrapping_add(1);
        r.next = self.node_free;
        self.node_free = n;
        self.node_count -= 1;
        self.used -= node.size;
        Ok(())
    }

    /// Whether `node` is a live node of this allocator.
    pub fn is_live(&self, node: &RangeNode) -> bool {
        node.owner == self.id
            && self.nodes.get(node.slot as usize).is_some_and(|r| {
                r.size != 0 && r.size == node.size && r.start == node.start && r.gen == node.gen
            })
    }

    /// Current accounting.
    pub fn stats(&self) -> RangeStats {
        let total = self.end - self.start;
        RangeStats {
            total,
            used: self.used,
            free: total - self.used,
            hole_count: self.holes.count as u64,
            largest_hole: self.holes.largest(),
            node_count: u64::from(self.node_count),
        }
    }

    /// The holes in address order.
    pub fn holes(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.records().filter_map(|r| match r {
            Record::Hole(h) => Some(h),
            Record::Node(_) => None,
        })
    }

    /// The live nodes in address order.
    pub fn nodes(&self) -> impl Iterator<Item = RangeNode> + '_ {
        self.records().filter_map(|r| match r {
            Record::Node(n) => Some(n),
            Record::Hole(_) => None,
        })
    }

    // ---- internals -------------------------------------------------------

    fn check_span(&self, start: u64, size: u64) -> Result<(), RangeError> {
        if size == 0 {
            return Err(RangeError::InvalidArgument("size is zero"));
        }
        let end = start
            .checked_add(size)
            .ok_or(RangeError::InvalidArgument("range overflows u64"))?;
        if start < self.start || end > self.end {
            return Err(RangeError::InvalidArgument(
                "range lies outside the allocator",
            ));
        }
        Ok(())
    }

    /// The hole that contains all of `start..start + size`.
    fn hole_containing(&self, start: u64, size: u64) -> Result<u32, RangeError> {
        let h = self.holes.last_starting_at_or_below(start);
        if h != NIL {
            let hr = &self.holes.holes[h as usize];
            if hr.end > start && hr.end - start >= size {
                return Ok(h);
            }
        }
        Err(RangeError::Busy { start, size })
    }

    /// The nearest hole at or before list link `link`, if one is within a
    /// few records (a hint for entering the address tree near its place).
    fn hole_before(&self, mut link: u32) -> Option<u32> {
        for _ in 0..8 {
            if link == NIL {
                return None;
            }
            if is_hole(link) {
                return Some(link & !HOLE);
            }
            link = self.nodes[link as usize].prev;
        }
        None
    }

    fn has_node_room(&self) -> bool {
        self.node_free != NIL || self.nodes.len() < MAX_NODES as usize
    }

    /// A free node slot (the caller checked [`Self::has_node_room`]).
    fn take_slot(&mut self) -> u32 {
        if self.node_free != NIL {
            let n = self.node_free;
            self.node_free = self.nodes[n as usize].next;
            n
        } else {
            self.nodes.push(NodeRec::UNUSED);
            (self.nodes.len() - 1) as u32
        }
    }

    #[inline]
    fn set_next(&mut self, link: u32, to: u32) {
        if link == NIL {
            self.head = to;
        } else if is_hole(link) {
            self.holes.holes[(link & !HOLE) as usize].next = to;
        } else {
            self.nodes[link as usize].next = to;
        }
    }

    #[inline]
    fn set_prev(&mut self, link: u32, to: u32) {
        if link == NIL {
        } else if is_hole(link) {
            self.holes.holes[(link & !HOLE) as usize].prev = to;
        } else {
            self.nodes[link as usize].prev = to;
        }
    }

    /// Places node slot `n` at `x..x + size` inside hole `h`, splitting the
    /// hole as needed.
    fn carve(&mut self, h: u32, x: u64, size: u64, n: u32) -> RangeNode {
        let (hs, he, hprev, hnext) = {
            let r = &self.holes.holes[h as usize];
            (r.start, r.end, r.prev, r.next)
        };
        debug_assert!(
            size > 0 && x >= hs && x.checked_add(size).is_some_and(|e| e <= he),
            "carve of {x:#x}+{size:#x} outside hole {hs:#x}..{he:#x}"
        );
        debug_assert_eq!(self.nodes[n as usize].size, 0, "carve into a live slot");
        let ne = x + size;
        let (prev, next) = match (x == hs, ne == he) {
            (true, true) => {
                self.set_next(hprev, n);
                self.set_prev(hnext, n);
                self.holes.destroy(h);
                (hprev, hnext)
            }
            (true, false) => {
                self.set_next(hprev, n);
                self.holes.holes[h as usize].prev = n;
                self.holes.resize(h, ne, he);
                (hprev, hole_link(h))
            }
            (false, true) => {
                self.set_prev(hnext, n);
                self.holes.holes[h as usize].next = n;
                self.holes.resize(h, hs, x);
                (hole_link(h), hnext)
            }
            (false, false) => {
                self.holes.holes[h as usize].next = n;
                self.holes.resize(h, hs, x);
                let h2 = self.holes.create(ne, he, n, hnext, Some(h));
                self.set_prev(hnext, hole_link(h2));
                (hole_link(h), hole_link(h2))
            }
        };
        let r = &mut self.nodes[n as usize];
        r.start = x;
        r.size = size;
        r.prev = prev;
        r.next = next;
        self.node_count += 1;
        self.used += size;
        RangeNode {
            start: x,
            size,
            slot: n,
            gen: r.gen,
            owner: self.id,
        }
    }

    fn records(&self) -> Records<'_> {
        Records {
            alloc: self,
            link: self.head,
        }
    }
}

/// One entry of the address-ordered record list.
enum Record {
    Node(RangeNode),
    Hole(Range<u64>),
}

/// Walks the record list in address order.
struct Records<'a> {
    alloc: &'a RangeAllocator,
    link: u32,
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.link == NIL {
            return None;
        }
        let link = self.link;
        if is_hole(link) {
            let h = &self.alloc.holes.holes[(link & !HOLE) as usize];
            self.link = h.next;
            Some(Record::Hole(h.start..h.end))
        } else {
            let r = &self.alloc.nodes[link as usize];
            self.link = r.next;
            Some(Record::Node(RangeNode {
                start: r.start,
                size: r.size,
                slot: link,
                gen: r.gen,
                owner: self.alloc.id,
            }))
        }
    }
}
