//! Allocation: request validation, placement, the greedy block loop of
//! drm_buddy (largest blocks first) and the split of a free block down to
//! the block taken.

use core::ops::Range;

use super::store::NodeState;
use super::{
    bits_from, floor_log2, AllocFlags, Block, BlockList, BuddyAllocator, BuddyError, Placement,
    Request,
};

impl BuddyAllocator {
    /// Allocates `size` bytes (rounded up to whole chunks, then to a
    /// multiple of `min_block_size`) and returns the blocks backing them.
    ///
    /// `min_block_size` is a power of two; values below the chunk size
    /// mean the chunk size. Every returned block is at least that large and
    /// aligned to its own size. `range` is used only with
    /// [`AllocFlags::RANGE`]; it must be chunk-aligned, non-empty and inside
    /// the space. Non-contiguous blocks come largest first; contiguous ones
    /// in address order. On failure nothing is changed.
    pub fn alloc(
        &mut self,
        size: u64,
        min_block_size: u64,
        flags: AllocFlags,
        range: Range<u64>,
    ) -> Result<BlockList, BuddyError> {
        let mut out = BlockList::new();
        self.alloc_into(size, min_block_size, flags, range, &mut out)?;
        Ok(out)
    }

    /// [`alloc`](Self::alloc), appending the blocks to `out` instead of
    /// returning a new list (on error `out` is left as it was). Writing
    /// straight into the caller's storage saves a copy on the hot path.
    #[inline]
    pub fn alloc_into(
        &mut self,
        size: u64,
        min_block_size: u64,
        flags: AllocFlags,
        range: Range<u64>,
        out: &mut BlockList,
    ) -> Result<(), BuddyError> {
        if size == 0 {
            return Err(BuddyError::ZeroSize);
        }
        if !min_block_size.is_power_of_two() {
            return Err(BuddyError::InvalidMinBlockSize(min_block_size));
        }
        let chunk = self.chunk_size();
        let min_block = min_block_size.max(chunk);
        let largest_block = self.block_bytes(u32::from(self.max_order));
        if min_block > largest_block {
            return Err(BuddyError::TooLarge {
                size: min_block,
                limit: largest_block,
            });
        }
        let need = size
            .checked_add(min_block - 1)
            .map(|s| s & !(min_block - 1))
            .ok_or(BuddyError::TooLarge {
                size,
                limit: self.size,
            })?;
        let place = self.placement(flags, &range)?;
        let limit = place.end - place.start;
        if need > limit {
            return Err(BuddyError::TooLarge { size: need, limit });
        }
        let min_order = min_block.trailing_zeros() - u32::from(self.chunk_shift);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        // One block of a power-of-two size anywhere, bottom-up (contiguous
        // or not, it is the same block), with a large enough block free:
        // best fit is the head of the lowest region's list of the smallest
        // order that has one.
        // vram bench `mix` (one power-of-two block per request): 14% fewer
        // instructions (callgrind, 79 vs 92 M) and 14% less time (median of 6).
        if !place.ranged && !place.topdown && need & (need - 1) == 0 {
            let order = need.trailing_zeros() - u32::from(self.chunk_shift);
            let avail = self.store.order_mask() & bits_from(order);
            if avail != 0 {
                let j = avail.trailing_zeros();
                let region = self.store.order_regions(j).trailing_zeros();
                let idx = self.store.pop_head(region, j);
                out.push(self.split_low(idx, order, tag));
                return Ok(());
            }
        }
        let req = Request {
            need,
            min_order,
            place,
            tag,
        };
        if flags.contains(AllocFlags::CONTIGUOUS) {
            self.alloc_contiguous(&req, out)
        } else {
            if !place.ranged && need > self.free_bytes() {
                return Err(BuddyError::NoSpace { size: need });
            }
            if !place.ranged && !place.topdown {
                return self.alloc_blocks_low(&req, out);
            }
            self.alloc_blocks(&req, out)
        }
    }

    /// Validates `flags` + `range` into a [`Placement`].
    pub(super) fn placement(
        &self,
        flags: AllocFlags,
        range: &Range<u64>,
    ) -> Result<Placement, BuddyError> {
        let topdown = flags.contains(AllocFlags::TOPDOWN);
        if !flags.contains(AllocFlags::RANGE) {
            return Ok(Placement {
                topdown,
                ranged: false,
                start: 0,
                end: self.size,
            });
        }
        let mask = self.chunk_size() - 1;
        if range.start >= range.end
            || range.end > self.size
            || (range.start | range.end) & mask != 0
        {
            return Err(BuddyError::InvalidRange {
                start: range.start,
                end: range.end,
            });
        }
        Ok(Placement {
            topdown,
            ranged: !(range.start == 0 && range.end == self.size),
            start: range.start,
            end: range.end,
        })
    }

    /// Non-contiguous allocation of `req.need` bytes: greedy, largest
    /// blocks first, never below `req.min_order` (drm_buddy's loop).
    /// Appends to `out`; on failure everything taken is given back and
    /// `out` is restored.
    #[inline]
    pub(super) fn alloc_blocks(
        &mut self,
        req: &Request,
        out: &mut BlockList,
    ) -> Result<(), BuddyError> {
        let base = out.len();
        let (mut pages, mut order) = self.greedy_start(req.need, out);
        loop {
            order = order.min(floor_log2(pages));
            loop {
                if let Some((idx, target)) = self.find(order, &req.place) {
                    let block = self.take(idx, order, target, req.tag);
                    out.push(block);
                    break;
                }
                let mut give_up = order == req.min_order;
                if !give_up {
                    order -= 1;
                    if !req.place.ranged {
                        // Nothing of order ≥ the failed one is free
                        // anywhere: jump to the largest order that is.
                        let below = self.store.order_mask() & !bits_from(order + 1);
                        give_up = below == 0 || floor_log2(below) < req.min_order;
                        if !give_up {
                            order = order.min(floor_log2(below));
                        }
                    }
                }
                if give_up {
                    return self.give_back(out, base, req.need);
                }
            }
            pages -= 1 << order;
            if pages == 0 {
                return Ok(());
            }
        }
    }

    /// [`alloc_blocks`](Self::alloc_blocks) over the whole space, bottom-up:
    /// the same greedy loop, where best fit is always the head of the
    /// lowest region's list of the smallest order that has a block, so a
    /// block is popped and split toward its low end without a search.
    // vram bench `blocks`: 11% fewer instructions than the generic loop
    // (callgrind, 262 vs 295 M) and 7% less time (median of 5 runs).
    #[inline]
    pub(super) fn alloc_blocks_low(
        &mut self,
        req: &Request,
        out: &mut BlockList,
    ) -> Result<(), BuddyError> {
        debug_assert!(
            !req.place.ranged && !req.place.topdown,
            "alloc_blocks_low of a placed request"
        );
        let base = out.len();
        let (mut pages, mut order) = self.greedy_start(req.need, out);
        loop {
            order = order.min(floor_log2(pages));
            let mask = self.store.order_mask();
            let avail = mask & bits_from(order);
            if avail == 0 {
                // Nothing of order ≥ `order` is free anywhere: go on with
                // the largest order that is, if it is allowed.
                let below = mask & !bits_from(order);
                if below == 0 || floor_log2(below) < req.min_order {
                    return self.give_back(out, base, req.need);
                }
                order = floor_log2(below);
                continue;
            }
            let j = avail.trailing_zeros();
            let region = self.store.order_regions(j).trailing_zeros();
            let idx = self.store.pop_head(region, j);
            out.push(self.split_low(idx, order, req.tag));
            pages -= 1 << order;
            if pages == 0 {
                return Ok(());
            }
        }
    }

    /// Splits free, unlisted leaf `idx` down to its lowest block of
    /// `order` and marks that block allocated with `tag`; the right halves
    /// split off become free.
    #[inline(always)]
    pub(super) fn split_low(&mut self, idx: u32, order: u32, tag: u16) -> Block {
        let (offset, from) = {
            let n = self.store.node(idx);
            debug_assert_eq!(n.state, NodeState::Free, "split_low of a node in use");
            debug_assert!(order <= u32::from(n.order), "split_low below the block");
            (n.offset, u32::from(n.order))
        };
        let (leaf, _) = self
            .store
            .split_to::<true>(idx, offset, from, order, offset);
        self.allocated(leaf, offset, order, tag)
    }

    /// Marks leaf `node` (the block of `order` at `offset`) allocated with
    /// `tag` and returns that block.
    #[inline(always)]
    fn allocated(&mut self, node: u32, offset: u64, order: u32, tag: u16) -> Block {
        self.store.set_allocated(node, tag);
        Block {
            offset,
            tag,
            node,
            order: order as u8,
            chunk_shift: self.chunk_shift,
        }
    }

    /// Where the greedy loop starts for `need` bytes: the pages to cover
    /// and the first order to try. It takes one block per set bit of the
    /// page count unless it has to fall back to smaller blocks, so `out`
    /// grows once here, not per block.
    #[inline(always)]
    fn greedy_start(&self, need: u64, out: &mut BlockList) -> (u64, u32) {
        let pages = need >> self.chunk_shift;
        if pages & (pages - 1) != 0 {
            out.reserve(pages.count_ones() as usize);
        }
        (pages, floor_log2(pages).min(u32::from(self.max_order)))
    }

    /// A greedy allocation of `need` bytes failed: gives back the blocks it
    /// appended to `out` after `base` and restores `out`.
    #[cold]
    fn give_back(&mut self, out: &mut BlockList, base: usize, need: u64) -> Result<(), BuddyError> {
        self.rollback(&out[base..]);
        out.truncate(base);
        Err(BuddyError::NoSpace { size: need })
    }

    /// Frees blocks taken by a failed allocation.
    pub(super) fn rollback(&mut self, blocks: &[Block]) {
        for block in blocks {
            self.release(block.node);
        }
    }

    /// Takes free leaf `idx` off its list and splits it down to the block
    /// of `order` at `target` (which it must contain, aligned), marking
    /// that block allocated with `tag`. The split-off halves become free.
    #[inline(always)]
    pub(crate) fn take(&mut self, idx: u32, order: u32, target: u64, tag: u16) -> Block {
        self.store.unlink_free(idx);
        let (offset, from) = {
            let n = self.store.node(idx);
            let bytes = self.block_bytes(u32::from(n.order));
            debug_assert!(order <= u32::from(n.order), "take above the block's order");
            debug_assert!(
                target >= n.offset
                    && target - n.offset < bytes
                    && target & (self.block_bytes(order) - 1) == 0,
                "take of a target outside the block or misaligned"
            );
            (n.offset, u32::from(n.order))
        };
        let (leaf, offset) = self
            .store
            .split_to::<false>(idx, offset, from, order, target);
        self.allocated(leaf, offset, order, tag)
    }
}
