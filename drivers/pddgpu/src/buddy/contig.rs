//! Contiguous allocations: round up to a power of two and trim the tail
//! (drm_buddy_block_trim), or, when no such block is free, find a run of
//! adjacent free blocks ("try harder") and claim exactly that run.

use alloc::vec;
use alloc::vec::Vec;

use super::store::{NodeState, NIL};
use super::{ceil_log2, floor_log2, Block, BuddyAllocator, BuddyError, Placement};

impl BuddyAllocator {
    /// One contiguous run of `need` bytes (a multiple of the minimum block
    /// size, `1 << min_order` chunks), starting aligned to the minimum
    /// block size.
    pub(super) fn alloc_contiguous(
        &mut self,
        need: u64,
        min_order: u32,
        place: &Placement,
        tag: u32,
    ) -> Result<Vec<Block>, BuddyError> {
        let order = ceil_log2(need >> self.chunk_shift);
        if order <= u32::from(self.max_order) {
            if let Some((idx, target)) = self.find(order, place) {
                let block = self.take(idx, order, target, tag);
                if self.block_bytes(order) == need {
                    return Ok(vec![block]);
                }
                return Ok(self.trim(block, need, place.topdown));
            }
        }
        self.alloc_run(need, min_order, place, tag)
    }

    /// Shrinks the freshly allocated `block` to `need` bytes — its low end,
    /// or its high end for top-down — giving the rest back as free blocks.
    /// Returns the kept blocks in address order.
    fn trim(&mut self, block: Block, need: u64, keep_high: bool) -> Vec<Block> {
        let mut cur = self.store.lookup(block.offset).expect("taken block");
        let mut offset = block.offset;
        let mut j = u32::from(block.order);
        let mut remaining = need;
        let mut out = Vec::with_capacity((need >> self.chunk_shift).count_ones() as usize);
        self.used -= self.block_bytes(j) - need;
        loop {
            if remaining == self.block_bytes(j) {
                out.push(Block::new(offset, j as u8, self.chunk_shift, block.tag));
                break;
            }
            j -= 1;
            let half = self.block_bytes(j);
            let right = offset + half;
            self.store.node_mut(cur).order = j as u8;
            // A half given back is never merged: its buddy is (partly) kept.
            if !keep_high {
                if remaining <= half {
                    let r = self.store.create(right, j as u8);
                    self.store.push_free(r);
                } else {
                    out.push(Block::new(offset, j as u8, self.chunk_shift, block.tag));
                    cur = self.new_allocated(right, j, block.tag);
                    offset = right;
                    remaining -= half;
                }
            } else if remaining <= half {
                self.store.push_free(cur);
                cur = self.new_allocated(right, j, block.tag);
                offset = right;
            } else {
                self.new_allocated(right, j, block.tag);
                out.push(Block::new(right, j as u8, self.chunk_shift, block.tag));
                remaining -= half;
            }
        }
        self.allocated_blocks += out.len() as u64 - 1;
        if keep_high {
            out.reverse();
        }
        out
    }

    /// A new allocated leaf (no accounting; the caller does it).
    fn new_allocated(&mut self, offset: u64, order: u32, tag: u32) -> u32 {
        let idx = self.store.create(offset, order as u8);
        let n = self.store.node_mut(idx);
        n.state = NodeState::Allocated;
        n.tag = tag;
        idx
    }

    /// "Try harder": the first run of `need` free bytes, aligned to the
    /// minimum block size and inside the placement range, made of adjacent
    /// free leaves. Candidate runs start in free leaves, visited region by
    /// region (descending for top-down); in each leaf only the earliest
    /// aligned start is tried, which is the best start it has.
    fn alloc_run(
        &mut self,
        need: u64,
        min_order: u32,
        place: &Placement,
        tag: u32,
    ) -> Result<Vec<Block>, BuddyError> {
        let align = self.block_bytes(min_order);
        let mut regions = 0u64;
        let mut orders = self.store.order_mask();
        while orders != 0 {
            regions |= self.store.order_regions(orders.trailing_zeros());
            orders &= orders - 1;
        }
        while regions != 0 {
            let region = if place.topdown {
                floor_log2(regions)
            } else {
                regions.trailing_zeros()
            };
            regions &= !(1u64 << region);
            let mut orders = self.store.region_orders(region);
            while orders != 0 {
                let j = orders.trailing_zeros();
                orders &= orders - 1;
                let bytes = self.block_bytes(j);
                let mut idx = self.store.head(region, j);
                while idx != NIL {
                    let node = self.store.node(idx);
                    let leaf_end = u128::from(node.offset) + u128::from(bytes);
                    if let Some(at) = node
                        .offset
                        .max(place.start)
                        .checked_add(align - 1)
                        .map(|a| a & !(align - 1))
                    {
                        if u128::from(at) < leaf_end
                            && u128::from(at) + u128::from(need) <= u128::from(place.end)
                            && self.run_is_free(leaf_end, u128::from(at) + u128::from(need))
                        {
                            return Ok(self.claim_span(at, at + need, tag));
                        }
                    }
                    idx = node.next;
                }
            }
        }
        Err(BuddyError::NoSpace { size: need })
    }

    /// Whether the leaves from `from` up to `to` are all free.
    fn run_is_free(&self, mut from: u128, to: u128) -> bool {
        while from < to {
            let Some(idx) = self.store.lookup(from as u64) else {
                return false;
            };
            let n = self.store.node(idx);
            if n.state != NodeState::Free {
                return false;
            }
            from += u128::from(self.block_bytes(u32::from(n.order)));
        }
        true
    }

    /// Allocates exactly `start..end` (all free, chunk-aligned) as the
    /// largest aligned blocks that tile it, in address order.
    fn claim_span(&mut self, start: u64, end: u64, tag: u32) -> Vec<Block> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let pages_left = (end - at) >> self.chunk_shift;
            let align_order = (at >> self.chunk_shift).trailing_zeros();
            let order = floor_log2(pages_left).min(align_order);
            let probe = Block::new(at, order as u8, self.chunk_shift, tag);
            let idx = self.containing_free(&probe).expect("span is free");
            out.push(self.take(idx, order, at, tag));
            at += self.block_bytes(order);
        }
        out
    }
}
