//! Contiguous allocations: round up to a power of two and trim the tail
//! (drm_buddy_block_trim), or, when no such block is free, find a run of
//! adjacent free blocks ("try harder") and claim exactly that run.

use super::store::{NodeState, NIL};
use super::{
    ceil_log2, floor_log2, pop_region, Block, BlockList, BuddyAllocator, BuddyError, Request,
};

impl BuddyAllocator {
    /// One contiguous run of `req.need` bytes (a whole number of
    /// minimum-size blocks), starting aligned to the minimum block size.
    pub(super) fn alloc_contiguous(
        &mut self,
        req: &Request,
        out: &mut BlockList,
    ) -> Result<(), BuddyError> {
        let order = ceil_log2(req.need >> self.chunk_shift);
        if order <= u32::from(self.max_order) {
            if let Some((idx, target)) = self.find(order, &req.place) {
                let block = self.take(idx, order, target, req.tag);
                if self.block_bytes(order) == req.need {
                    out.push(block);
                } else {
                    self.trim(block, req.need, req.place.topdown, out);
                }
                return Ok(());
            }
        }
        self.alloc_run(req, out)
    }

    /// Shrinks the freshly allocated `block` to `need` bytes — its low end,
    /// or its high end for top-down — giving the rest back as free blocks.
    /// Appends the kept blocks to `out` in address order.
    fn trim(&mut self, block: Block, need: u64, keep_high: bool, out: &mut BlockList) {
        let tag = block.tag;
        let mut cur = block.node;
        let mut offset = block.offset;
        let mut j = u32::from(block.order);
        let mut remaining = need;
        let base = out.len();
        loop {
            if remaining == self.block_bytes(j) {
                out.push(self.mark_allocated(cur, tag));
                break;
            }
            j -= 1;
            let half = self.block_bytes(j);
            let right = offset + half;
            let c = self.store.split(cur, j as u8, offset);
            // A half given back is never merged: its buddy is (partly) kept.
            if !keep_high {
                if remaining <= half {
                    self.store.push_free(c + 1);
                    cur = c;
                } else {
                    out.push(self.mark_allocated(c, tag));
                    cur = c + 1;
                    offset = right;
                    remaining -= half;
                }
            } else if remaining <= half {
                self.store.push_free(c);
                cur = c + 1;
                offset = right;
            } else {
                out.push(self.mark_allocated(c + 1, tag));
                cur = c;
                remaining -= half;
            }
        }
        if keep_high {
            out[base..].reverse();
        }
    }

    /// Marks leaf `idx` allocated with `tag` and returns its block.
    fn mark_allocated(&mut self, idx: u32, tag: u16) -> Block {
        self.store.set_allocated(idx, tag);
        let n = self.store.node(idx);
        Block {
            offset: n.offset,
            tag,
            node: idx,
            order: n.order,
            chunk_shift: self.chunk_shift,
        }
    }

    /// "Try harder": the first run of `need` free bytes, aligned to the
    /// minimum block size and inside the placement range, made of adjacent
    /// free leaves. Candidate runs start in free leaves, visited region by
    /// region (descending for top-down); in each leaf only the earliest
    /// aligned start is tried, which is the best start it has.
    fn alloc_run(&mut self, req: &Request, out: &mut BlockList) -> Result<(), BuddyError> {
        let align = self.block_bytes(req.min_order);
        let mut regions = self.store.regions_with(self.store.order_mask());
        while let Some(region) = pop_region(&mut regions, req.place.topdown) {
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
                        .max(req.place.start)
                        .checked_add(align - 1)
                        .map(|a| a & !(align - 1))
                    {
                        if u128::from(at) < leaf_end
                            && u128::from(at) + u128::from(req.need) <= u128::from(req.place.end)
                            && self.run_is_free(leaf_end, u128::from(at) + u128::from(req.need))
                        {
                            self.claim_span(at, at + req.need, req.tag, out);
                            return Ok(());
                        }
                    }
                    idx = node.next;
                }
            }
        }
        Err(BuddyError::NoSpace { size: req.need })
    }

    /// Whether the leaves from `from` (a leaf boundary) up to `to` are all
    /// free.
    fn run_is_free(&self, mut from: u128, to: u128) -> bool {
        while from < to {
            let n = self.store.node(self.leaf_at(from as u64));
            if n.state != NodeState::Free {
                return false;
            }
            from = u128::from(n.offset) + u128::from(self.block_bytes(u32::from(n.order)));
        }
        true
    }

    /// Allocates exactly `start..end` (all free, chunk-aligned) as the
    /// largest aligned blocks that tile it, in address order.
    fn claim_span(&mut self, start: u64, end: u64, tag: u16, out: &mut BlockList) {
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
    }
}
