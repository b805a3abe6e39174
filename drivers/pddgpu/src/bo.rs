//! Buffer objects: their public description ([`BoId`], [`BoFlags`],
//! [`BoCreate`], [`BoInfo`]), their placement in a domain ([`Placement`]),
//! and the sharded table mapping ids to live BOs.
//!
//! Ids are handed out from a counter and never reused within a run, so a
//! stale id can only fail, never name someone else's new BO. The low bit
//! of an id is its domain (0 = VRAM, 1 = GTT), which lets the driver route
//! an operation to the right domain before touching the table.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::{HashMap, HashSet};

use crate::device::Domain;
use crate::driver::BoOwnership;
use crate::leak::SlotId;
use crate::range::RangeNode;
use crate::vram::VramAllocation;

/// A map keyed by integer ids (hashbrown's default hasher).
pub(crate) type IdMap<V> = HashMap<u64, V>;
/// A set of integer ids.
pub(crate) type IdSet = HashSet<u64>;

/// A client of the driver (the scheme maps a connection or process to one).
pub type OwnerId = u64;

/// The page size, and so the granule of every BO's memory: a BO takes
/// whole pages that no other BO shares (its size is rounded up and it is
/// aligned to at least a page, in both domains), and all of them start
/// zeroed when asked to be cleared. Mapping is page-granular, so this is
/// what keeps one client's mapping from showing another's bytes.
pub const PAGE_SIZE: u64 = 4096;

/// Longest BO label, in bytes.
pub const LABEL_MAX: usize = 48;

/// A buffer object's id; never reused within a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoId(pub u64);

impl BoId {
    /// The domain encoded in the id, or `None` for an id the driver could
    /// not have issued (0).
    pub fn domain(self) -> Option<Domain> {
        match (self.0, self.0 & 1) {
            (0, _) => None,
            (_, 0) => Some(Domain::Vram),
            _ => Some(Domain::Gtt),
        }
    }
}

impl fmt::Display for BoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

bitflags::bitflags! {
    /// Placement and initialisation requests of [`BoCreate`]. The VRAM
    /// manager places by these same flags
    /// ([`VramManager::alloc`](crate::vram::VramManager::alloc)); the wire
    /// protocol carries their bits as they are.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct BoFlags: u32 {
        /// One physically contiguous run (VRAM; GTT ranges always are).
        const CONTIGUOUS = 1 << 0;
        /// CPU-visible: in VRAM, inside the visible window (GTT always is).
        const VISIBLE = 1 << 1;
        /// Prefer high addresses.
        const TOPDOWN = 1 << 2;
        /// Zero the contents before the BO is handed out. Without it the
        /// contents are unspecified and may still hold the data of a BO
        /// freed earlier, possibly another client's: a front end serving
        /// mutually distrusting clients should set it on every create.
        const CLEARED = 1 << 3;
    }
}

/// A request to create a BO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoCreate<'a> {
    /// Size in bytes (> 0).
    pub size: u64,
    /// Where it lives.
    pub domain: Domain,
    /// Placement requests.
    pub flags: BoFlags,
    /// Alignment in bytes: 0 (default) or a power of two.
    pub align: u64,
    /// A label for reports (at most [`LABEL_MAX`] bytes).
    pub label: &'a str,
}

impl<'a> BoCreate<'a> {
    /// A request for `size` bytes in `domain`, labelled `label`, with no
    /// flags and the default alignment.
    pub const fn new(size: u64, domain: Domain, label: &'a str) -> Self {
        Self {
            size,
            domain,
            flags: BoFlags::empty(),
            align: 0,
            label,
        }
    }

    /// The same request with `flags`.
    pub const fn with_flags(self, flags: BoFlags) -> Self {
        Self { flags, ..self }
    }
}

/// A BO as described to one of its holders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoInfo {
    /// Its id.
    pub id: BoId,
    /// Its domain.
    pub domain: Domain,
    /// Requested size.
    pub size: u64,
    /// Bytes reserved for it in the allocator.
    pub allocated_size: u64,
    /// Flags it was created with.
    pub flags: BoFlags,
    /// Its creator.
    pub owner: OwnerId,
    /// References held by all its holders (one per hold).
    pub refcount: u32,
    /// Creation time.
    pub created_ms: u64,
    /// Label.
    pub label: String,
    /// Whether it has been exported (and so can be imported with a token).
    pub exported: bool,
    /// Where its bytes are: `(offset in the BO, offset in the domain's
    /// backing memory, length)`, in BO order, covering exactly `size`.
    pub segments: Vec<(u64, u64, u64)>,
}

/// Where a BO's memory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Blocks of VRAM.
    Vram(VramAllocation),
    /// A range of the GTT aperture.
    Gtt(RangeNode),
}

impl Placement {
    /// The domain.
    pub fn domain(&self) -> Domain {
        match self {
            Placement::Vram(_) => Domain::Vram,
            Placement::Gtt(_) => Domain::Gtt,
        }
    }

    /// Bytes reserved in the allocator.
    pub fn allocated_size(&self) -> u64 {
        match self {
            Placement::Vram(a) => a.allocated_size(),
            Placement::Gtt(n) => n.size(),
        }
    }

    /// Reserved ranges in allocator addresses.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        match self {
            Placement::Vram(a) => a.blocks().iter().map(|b| b.offset()..b.end()).collect(),
            Placement::Gtt(n) => alloc::vec![n.range()],
        }
    }

    /// Bytes of the placement inside `window` (allocator addresses).
    pub fn bytes_within(&self, window: &Range<u64>) -> u64 {
        let within =
            |start: u64, end: u64| end.min(window.end).saturating_sub(start.max(window.start));
        // Without collecting `ranges()`: this runs on every create.
        match self {
            Placement::Vram(a) => a.blocks().iter().map(|b| within(b.offset(), b.end())).sum(),
            Placement::Gtt(n) => {
                let r = n.range();
                within(r.start, r.end)
            }
        }
    }

    /// Calls `f(offset in backing, length)` for every reserved range,
    /// including the bytes past the BO's size (its last page, the rest of
    /// a larger block); `gtt_base` is the GTT address of backing byte 0.
    pub fn try_for_each_reserved<E>(
        &self,
        gtt_base: u64,
        mut f: impl FnMut(u64, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Placement::Vram(a) => a.blocks().iter().try_for_each(|b| f(b.offset(), b.size())),
            Placement::Gtt(n) => f(n.start() - gtt_base, n.size()),
        }
    }

    /// Whether any reserved byte lies in `range`.
    pub fn overlaps(&self, range: &Range<u64>) -> bool {
        self.bytes_within(range) > 0
    }

    /// The BO's bytes as `(offset in BO, offset in backing, length)` for a
    /// BO of `size` bytes; `gtt_base` is the GTT address of backing byte 0.
    pub fn segments(&self, size: u64, gtt_base: u64) -> Vec<(u64, u64, u64)> {
        self.segments_iter(size, gtt_base).collect()
    }

    /// [`segments`](Self::segments) without collecting them (for the
    /// per-request paths: clearing a new BO, reads and writes).
    pub fn segments_iter(
        &self,
        size: u64,
        gtt_base: u64,
    ) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let (vram, gtt) = match self {
            Placement::Vram(a) => (Some(a.segments()), None),
            Placement::Gtt(n) => (None, Some((0, n.start() - gtt_base, size.min(n.size())))),
        };
        let mut at = 0;
        vram.into_iter()
            .flatten()
            .map(move |(off, len)| {
                let s = (at, off, len);
                at += len;
                s
            })
            .chain(gtt)
    }
}

/// A live BO in the table.
#[derive(Debug)]
pub(crate) struct BoEntry {
    pub placement: Placement,
    pub size: u64,
    pub flags: BoFlags,
    pub created_ms: u64,
    pub label: String,
    /// Holders, export and charge (see [`crate::driver`]'s ownership
    /// model).
    pub own: BoOwnership,
    /// Bytes inside the CPU-visible window (for statistics).
    pub visible_bytes: u64,
    /// Its leak-tracker record.
    pub slot: SlotId,
}

impl BoEntry {
    /// The public description.
    pub fn info(&self, id: BoId, gtt_base: u64) -> BoInfo {
        BoInfo {
            id,
            domain: self.placement.domain(),
            size: self.size,
            allocated_size: self.placement.allocated_size(),
            flags: self.flags,
            owner: self.own.creator(),
            refcount: self.own.refcount(),
            created_ms: self.created_ms,
            label: self.label.clone(),
            exported: self.own.token().is_some(),
            segments: self.placement.segments(self.size, gtt_base),
        }
    }
}

/// One shard of the table.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub bos: IdMap<BoEntry>,
    /// Leak-tracker slots of BOs freed from this shard, for reuse.
    pub free_slots: Vec<SlotId>,
}

const SHARDS: usize = 64;

/// The BO table: id → entry, split into independently locked shards.
#[derive(Debug)]
pub(crate) struct BoTable {
    /// Each shard on its own cache line, so locking one never contends
    /// with a neighbour's line.
    shards: alloc::boxed::Box<[CachePadded<spin::Mutex<Shard>>]>,
    next: AtomicU64,
}

impl BoTable {
    pub fn new() -> Self {
        BoTable {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            next: AtomicU64::new(1),
        }
    }

    /// A fresh id in `domain`.
    pub fn next_id(&self, domain: Domain) -> BoId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = BoId(n << 1 | domain.index() as u64);
        debug_assert_eq!(id.domain(), Some(domain), "ids never wrap");
        id
    }

    /// The locked shard holding `id`.
    pub fn shard(&self, id: BoId) -> spin::MutexGuard<'_, Shard> {
        self.shards[((id.0 >> 1) as usize) % SHARDS].lock()
    }

    /// Index of the shard holding `id`.
    pub fn shard_index(id: BoId) -> usize {
        ((id.0 >> 1) as usize) % SHARDS
    }

    /// The locked shard number `i`.
    pub fn shard_at(&self, i: usize) -> spin::MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_domain_and_are_not_reused() {
        let t = BoTable::new();
        let a = t.next_id(Domain::Vram);
        let b = t.next_id(Domain::Gtt);
        let c = t.next_id(Domain::Vram);
        assert_eq!(a.domain(), Some(Domain::Vram));
        assert_eq!(b.domain(), Some(Domain::Gtt));
        assert!(a != c && a.0 < b.0 && b.0 < c.0);
        assert_eq!(BoId(0).domain(), None);
    }

    #[test]
    fn placements_describe_their_bytes() {
        let node = crate::range::RangeAllocator::new(0, 1 << 20)
            .unwrap()
            .insert(4096, 0, 0..1 << 20, crate::range::InsertMode::Best)
            .unwrap();
        let p = Placement::Gtt(node);
        assert_eq!(p.segments(4000, 0), [(0, 0, 4000)]);
        assert_eq!(p.allocated_size(), 4096);
        assert_eq!(p.bytes_within(&(0..100)), 100);
        assert!(!p.overlaps(&(4096..8192)));
    }
}
