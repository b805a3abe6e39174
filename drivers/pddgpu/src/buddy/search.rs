//! Finding a free block for one block of a given order, by placement
//! policy (bottom-up best fit, top-down, inside a range).

use super::store::NIL;
use super::{bits_from, floor_log2, pop_region, BuddyAllocator, Placement};

impl BuddyAllocator {
    /// A free leaf that can give a block of `order` under `place`, and the
    /// offset of that block inside it, or `None`.
    ///
    /// - whole space, bottom-up: the smallest order ≥ `order` with a free
    ///   block (best fit), in its lowest region;
    /// - whole space, top-down: the highest region holding a free block of
    ///   order ≥ `order`, the smallest such order there, and the block's
    ///   highest sub-block;
    /// - range: regions overlapping the range in address order (descending
    ///   for top-down), the smallest fitting order first in each region.
    ///   Regions entirely inside the range take a list head in O(1); lists
    ///   in the (at most two) boundary regions are scanned.
    #[inline(always)]
    pub(crate) fn find(&self, order: u32, place: &Placement) -> Option<(u32, u64)> {
        let avail = self.store.order_mask() & bits_from(order);
        if avail == 0 {
            return None;
        }
        if place.ranged {
            return self.find_in_range(order, avail, place);
        }
        if place.topdown {
            return self.find_top(order, avail);
        }
        let j = avail.trailing_zeros();
        let region = self.store.order_regions(j).trailing_zeros();
        let idx = self.store.head(region, j);
        Some((idx, self.store.node(idx).offset))
    }

    /// [`find`](Self::find) over the whole space, top-down.
    #[inline(never)]
    fn find_top(&self, order: u32, avail: u64) -> Option<(u32, u64)> {
        let regions = self.store.regions_with(avail);
        let region = floor_log2(regions);
        let j = (self.store.region_orders(region) & bits_from(order)).trailing_zeros();
        let idx = self.store.head(region, j);
        let offset = self.store.node(idx).offset;
        Some((idx, offset + self.block_bytes(j) - self.block_bytes(order)))
    }

    /// [`find`](Self::find) restricted to `place.start..place.end`.
    #[inline(never)]
    fn find_in_range(&self, order: u32, avail: u64, place: &Placement) -> Option<(u32, u64)> {
        let (start, end) = (place.start, place.end);
        let want = self.block_bytes(order);
        let shift = self.store.region_shift();
        let region_size = 1u128 << shift;
        // A free block overlapping `start` may begin before it, at `start`
        // aligned down to the largest free block size.
        let lowest = start & !(self.block_bytes(floor_log2(avail)) - 1);
        let first = self.store.region_of(lowest);
        let last = self.store.region_of(end - 1);
        let mut regions = self.store.regions_with(avail) & bits_from(first) & !bits_from(last + 1);
        while let Some(region) = pop_region(&mut regions, place.topdown) {
            let region_start = u64::from(region) << shift;
            let mut orders = self.store.region_orders(region) & bits_from(order);
            if u128::from(region_start) + region_size <= u128::from(start) {
                // The region lies wholly before the range: only a block
                // that starts here and is large enough can reach into it.
                let gap = start - region_start;
                let min_order = (floor_log2(gap) + 1).saturating_sub(u32::from(self.chunk_shift));
                orders &= bits_from(min_order);
            }
            while orders != 0 {
                let j = orders.trailing_zeros();
                orders &= orders - 1;
                let bytes = self.block_bytes(j);
                let interior = region_start >= start
                    && u128::from(region_start) + region_size.max(u128::from(bytes))
                        <= u128::from(end);
                let mut idx = self.store.head(region, j);
                if interior {
                    let offset = self.store.node(idx).offset;
                    let target = if place.topdown {
                        offset + bytes - want
                    } else {
                        offset
                    };
                    return Some((idx, target));
                }
                while idx != NIL {
                    let node = self.store.node(idx);
                    if let Some(target) = fit(node.offset, bytes, start, end, want, place.topdown) {
                        return Some((idx, target));
                    }
                    idx = node.next;
                }
            }
        }
        None
    }
}

/// The lowest (or highest, `topdown`) `want`-aligned sub-block of `want`
/// bytes inside both the block `offset..offset + bytes` and `start..end`.
#[inline]
fn fit(offset: u64, bytes: u64, start: u64, end: u64, want: u64, topdown: bool) -> Option<u64> {
    let lo = offset.max(start);
    let hi = (u128::from(offset) + u128::from(bytes)).min(u128::from(end)) as u64;
    if topdown {
        let top = hi & !(want - 1);
        (top >= lo.checked_add(want)?).then(|| top - want)
    } else {
        let at = lo.checked_add(want - 1)? & !(want - 1);
        (at.checked_add(want)? <= hi).then_some(at)
    }
}
