//! The GTT manager: a [`Manager`] over a [`RangeAllocator`] of the GTT
//! aperture (state machine, retry policy, recovery procedure; see
//! [`crate::manager`]), plus lock-free statistics and the rebuild of the
//! allocator from the nodes still in use, so that nothing live is lost or
//! handed out twice.
//!
//! Statistics are published after every change into atomics guarded by a
//! sequence counter, so [`GttManager::get_stats`] never takes the allocator
//! lock and still returns a consistent snapshot.

use core::ops::{Deref, Range};
use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::manager::{Manager, ManagerError, ManagerState, RetryPolicy};
use crate::range::{InsertMode, RangeAllocator, RangeError, RangeNode, RangeStats};

/// GTT page size: the alignment used when a caller asks for alignment 0.
pub const GTT_PAGE_SIZE: u64 = 4096;

/// Configuration of a [`GttManager`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GttConfig {
    /// First address of the aperture (usually 0).
    pub start: u64,
    /// Size of the aperture in bytes.
    pub size: u64,
    /// Retry policy handed to callers with [`ManagerError::NoSpace`]
    /// (initial value; see [`GttManager::set_retry_policy`]).
    pub retry: RetryPolicy,
}

impl GttConfig {
    /// An aperture `start..start + size` with the default GTT retry policy
    /// (3 tries, 5 ms apart).
    pub const fn new(start: u64, size: u64) -> Self {
        GttConfig {
            start,
            size,
            retry: RetryPolicy::GTT_DEFAULT,
        }
    }
}

/// A snapshot of a [`GttManager`]'s usage and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GttStats {
    /// Life-cycle state.
    pub state: ManagerState,
    /// READY with plausible counters.
    pub is_healthy: bool,
    /// Aperture size in bytes.
    pub total_size: u64,
    /// Bytes in live nodes.
    pub used_size: u64,
    /// Bytes free (`total_size - used_size`).
    pub free_size: u64,
    /// Number of holes (maximal free ranges).
    pub hole_count: u64,
    /// Largest hole: the largest allocation (alignment permitting) that is
    /// sure to succeed.
    pub largest_hole: u64,
    /// Live nodes.
    pub node_count: u64,
    /// Retry policy in force.
    pub retry: RetryPolicy,
}

impl GttStats {
    /// External fragmentation in per mille: how much of the free space is
    /// *not* in the largest hole (0 = one hole, or nothing free).
    pub fn fragmentation_permille(&self) -> u64 {
        crate::manager::fragmentation_permille(self.free_size, self.largest_hole)
    }
}

/// Allocator counters published for lock-free readers: a sequence lock
/// whose only writer is whoever holds the allocator lock.
#[derive(Debug)]
struct Published {
    seq: AtomicU64,
    used: AtomicU64,
    holes: AtomicU64,
    largest: AtomicU64,
    nodes: AtomicU64,
}

impl Published {
    fn new(s: &RangeStats) -> Self {
        Published {
            seq: AtomicU64::new(0),
            used: AtomicU64::new(s.used),
            holes: AtomicU64::new(s.hole_count),
            largest: AtomicU64::new(s.largest_hole),
            nodes: AtomicU64::new(s.node_count),
        }
    }

    /// Publishes `s`; the caller holds the allocator lock (single writer).
    fn store(&self, s: &RangeStats) {
        let seq = self.seq.load(Ordering::Relaxed);
        debug_assert_eq!(seq & 1, 0, "one writer at a time (the lock holder)");
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.used.store(s.used, Ordering::Relaxed);
        self.holes.store(s.hole_count, Ordering::Relaxed);
        self.largest.store(s.largest_hole, Ordering::Relaxed);
        self.nodes.store(s.node_count, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A consistent `(used, holes, largest, nodes)` snapshot, without a lock.
    fn load(&self) -> (u64, u64, u64, u64) {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let v = (
                self.used.load(Ordering::Relaxed),
                self.holes.load(Ordering::Relaxed),
                self.largest.load(Ordering::Relaxed),
                self.nodes.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return v;
            }
        }
    }
}

/// The GTT manager; `Sync`, to be shared by all threads of the driver.
/// Derefs to its [`Manager`] (state, retry policy, `mark_error`,
/// `shutdown`).
#[derive(Debug)]
pub struct GttManager {
    config: GttConfig,
    manager: Manager<RangeAllocator>,
    published: Published,
}

impl Deref for GttManager {
    type Target = Manager<RangeAllocator>;
    fn deref(&self) -> &Manager<RangeAllocator> {
        &self.manager
    }
}

impl GttManager {
    /// Builds a READY manager.
    pub fn new(config: GttConfig) -> Result<Self, ManagerError> {
        let manager = Self::create(config)?;
        manager.start()?;
        Ok(manager)
    }

    /// Builds a manager and leaves it INITIALIZING (serving nothing) until
    /// [`Manager::start`]: for bringing a device up in steps.
    pub fn create(config: GttConfig) -> Result<Self, ManagerError> {
        let alloc = RangeAllocator::new(config.start, config.size).map_err(|e| match e {
            RangeError::InvalidArgument(why) => ManagerError::InvalidArgument(why),
            _ => ManagerError::InvalidArgument("invalid GTT aperture"),
        })?;
        let published = Published::new(&alloc.stats());
        Ok(GttManager {
            config,
            manager: Manager::new("gtt", alloc, config.retry),
            published,
        })
    }

    /// The configuration (the retry policy in force is
    /// [`Manager::retry_policy`]).
    pub fn config(&self) -> &GttConfig {
        &self.config
    }

    /// READY with plausible counters (lock-free).
    pub fn is_healthy(&self) -> bool {
        self.state() == ManagerState::Ready && self.published.load().0 <= self.config.size
    }

    /// Allocates `size` bytes aligned to `align` (a power of two; 0 means
    /// [`GTT_PAGE_SIZE`]) inside `range` (`None`: anywhere in the aperture),
    /// placed per `mode`.
    ///
    /// Fails with [`ManagerError::NotReady`] unless READY,
    /// [`ManagerError::InvalidArgument`] for malformed requests and for
    /// requests that could not be placed even in an empty aperture (too
    /// large for the range, no suitably aligned address in it), and
    /// [`ManagerError::NoSpace`] (carrying the retry policy) when no hole
    /// can take it now but one could later. Never sleeps; holds the allocator lock only for the
    /// allocator call.
    pub fn alloc(
        &self,
        size: u64,
        align: u64,
        range: Option<Range<u64>>,
        mode: InsertMode,
    ) -> Result<RangeNode, ManagerError> {
        self.ensure_ready()?;
        let align = if align == 0 { GTT_PAGE_SIZE } else { align };
        let range = range.unwrap_or(0..u64::MAX);
        if !self.could_ever_fit(size, align, &range) {
            // Retrying cannot help: say so instead of handing out NoSpace.
            return Err(ManagerError::InvalidArgument(
                "request cannot fit in the aperture even when it is empty",
            ));
        }
        self.with_ready_allocator(|a| a.insert(size, align, range, mode))
    }

    /// Claims exactly `start..start + size` (firmware, scratch pages).
    /// Fails with [`ManagerError::RangeBusy`] if any of it is in use.
    pub fn reserve(&self, start: u64, size: u64) -> Result<RangeNode, ManagerError> {
        self.with_ready_allocator(|a| a.reserve(start, size))
    }

    /// Frees a node of this manager. Fails with [`ManagerError::NotReady`]
    /// unless READY (the caller then drops the node from its table;
    /// recovery reclaims it) and with [`ManagerError::InvalidFree`] for a
    /// double free, a stale copy or a node of another manager — without
    /// changing anything.
    pub fn free(&self, node: &RangeNode) -> Result<(), ManagerError> {
        self.with_ready_allocator(|a| a.remove(*node))
    }

    /// Whether `size` bytes aligned to `align` fit in `range` clipped to the
    /// aperture at all (in an empty aperture). Malformed arguments pass and
    /// are reported by the allocator.
    fn could_ever_fit(&self, size: u64, align: u64, range: &Range<u64>) -> bool {
        if size == 0 || !align.is_power_of_two() || range.start > range.end {
            return true;
        }
        let end = self.config.start.saturating_add(self.config.size);
        let lo = range.start.max(self.config.start);
        let hi = range.end.min(end);
        match lo.checked_add(align - 1) {
            Some(x) => {
                let x = x & !(align - 1);
                x < hi && hi - x >= size
            }
            None => false,
        }
    }

    /// Runs `op` on the allocator if the manager is READY (see
    /// [`Manager::with_ready`]), publishes the new counters and maps the
    /// error.
    fn with_ready_allocator<T>(
        &self,
        op: impl FnOnce(&mut RangeAllocator) -> Result<T, RangeError>,
    ) -> Result<T, ManagerError> {
        self.manager.with_ready(|a| {
            let result = op(a).map_err(map_error)?;
            self.published.store(&a.stats());
            Ok(result)
        })
    }

    /// A snapshot of usage and state, without taking the allocator lock.
    pub fn get_stats(&self) -> GttStats {
        let (used, holes, largest, nodes) = self.published.load();
        let state = self.state();
        GttStats {
            state,
            is_healthy: state == ManagerState::Ready && used <= self.config.size,
            total_size: self.config.size,
            used_size: used,
            free_size: self.config.size.saturating_sub(used),
            hole_count: holes,
            largest_hole: largest,
            node_count: nodes,
            retry: self.retry_policy(),
        }
    }

    /// The holes in address order (takes the allocator lock; for the
    /// `gtt` status file and tests).
    pub fn holes(&self) -> alloc::vec::Vec<Range<u64>> {
        self.manager.inspect(|a| a.holes().collect())
    }

    /// The aperture in address order as runs of `(range, allocated)`: the
    /// live nodes and the holes between them, which tile it exactly. Takes
    /// the allocator lock for one walk (for the occupancy map).
    pub fn layout(&self) -> alloc::vec::Vec<(Range<u64>, bool)> {
        self.manager.inspect(|alloc| {
            let mut holes = alloc.holes().peekable();
            let mut nodes = alloc.nodes().map(|n| n.range()).peekable();
            let mut out = alloc::vec::Vec::new();
            loop {
                let next = match (holes.peek(), nodes.peek()) {
                    (Some(h), Some(n)) if h.start < n.start => holes.next().map(|h| (h, false)),
                    (_, Some(_)) => nodes.next().map(|n| (n, true)),
                    (Some(_), None) => holes.next().map(|h| (h, false)),
                    (None, None) => None,
                };
                match next {
                    Some(run) => out.push(run),
                    None => return out,
                }
            }
        })
    }

    /// Verifies the allocator's internal invariants (`O(n)`, under the
    /// lock). On failure the manager goes to ERROR, as for any detected
    /// inconsistency, and the reason is returned.
    pub fn audit(&self) -> Result<(), &'static str> {
        let result = self.manager.inspect(RangeAllocator::check);
        if result.is_err() {
            self.mark_error();
        }
        result
    }

    /// Recovers from ERROR (see [`Manager::recover`]): rebuilds the
    /// allocator from `live`, the nodes still in use (normally from the
    /// driver's BO table), reserving exactly their ranges under their own
    /// handles, so they stay valid and can be freed later; verifies that
    /// they lie in the aperture, do not overlap, are genuine handles of
    /// this manager, and that the rebuilt accounting and invariants hold.
    /// Space of nodes that are not listed is reclaimed; listed space is
    /// never handed out twice.
    pub fn recover<'a>(
        &self,
        live: impl IntoIterator<Item = &'a RangeNode>,
    ) -> Result<(), ManagerError> {
        self.manager.recover(|current| {
            let mut expected_used = 0u64;
            let mut expected_nodes = 0u64;
            let fresh = current
                .rebuild(live.into_iter().inspect(|n| {
                    expected_used = expected_used.wrapping_add(n.size());
                    expected_nodes += 1;
                }))
                .map_err(|e| {
                    ManagerError::RecoveryFailed(match e {
                        RangeError::Busy { .. } => "live nodes overlap",
                        RangeError::InvalidNode(why) => why,
                        RangeError::InvalidArgument(why) => why,
                        RangeError::NoSpace { .. } => "cannot rebuild the allocator",
                    })
                })?;
            fresh.check().map_err(ManagerError::RecoveryFailed)?;
            let s = fresh.stats();
            if s.used != expected_used || s.node_count != expected_nodes {
                return Err(ManagerError::RecoveryFailed(
                    "rebuilt accounting does not match the live nodes",
                ));
            }
            *current = fresh;
            self.published.store(&s);
            log::info!(
                "gtt: rebuilt with {} live nodes, {} bytes",
                s.node_count,
                s.used
            );
            Ok(())
        })
    }
}

/// A range allocator error as a manager error.
fn map_error(e: RangeError) -> ManagerError {
    match e {
        RangeError::NoSpace { size } => ManagerError::no_space(size),
        RangeError::InvalidArgument(why) => ManagerError::InvalidArgument(why),
        RangeError::Busy { start, size } => ManagerError::RangeBusy { start, size },
        RangeError::InvalidNode(why) => ManagerError::InvalidFree(why),
    }
}
