//! The buddy tree's chain operations: a split down several orders and a
//! free that merges up several, each one pass over the chain of pairs,
//! with the leaf and free counters and the masks of the block's own region
//! changed once per chain instead of once per level.

use super::{bits_from, NodeState, NodeStore, Pair, NIL};

impl NodeStore {
    /// Splits leaf `idx` — free and unlisted, the block of order `from` at
    /// `offset` — down to the block of order `to` that contains `target`
    /// (aligned to that order), in one pass. Every half split off on the
    /// way becomes a free leaf on the list of its region and order; the
    /// kept halves become split nodes, down to the returned leaf (of order
    /// `to` at the returned offset), which is left free and unlisted for
    /// the caller to mark. The leaf and free counters change once for the
    /// whole chain, not per level: the chain adds `from - to` leaves and
    /// frees `bytes(from) - bytes(to)` (the block of `from` itself was
    /// counted off when it was unlisted).
    ///
    /// With `LOW` the block kept is always the lowest one (`target` must be
    /// `offset`), which spares a test per level.
    // One pass per chain (and in `release`): 4 KiB create+free, empty 8 GiB: 4,102 -> 2,644 instr., loops 181 -> 103 per level (callgrind).
    #[inline(always)]
    pub fn split_to<const LOW: bool>(
        &mut self,
        idx: u32,
        offset: u64,
        from: u32,
        to: u32,
        target: u64,
    ) -> (u32, u64) {
        debug_assert!(
            {
                let n = self.node(idx);
                n.state == NodeState::Free
                    && u32::from(n.order) == from
                    && n.offset == offset
                    && to <= from
                    && target >= offset
                    && target - offset < 1u64 << (from + self.chunk_shift)
                    && target & ((1u64 << (to + self.chunk_shift)) - 1) == 0
                    && (!LOW || target == offset)
            },
            "split_to of a node that is not a free leaf of `from` at `offset` holding `target`"
        );
        let levels = (from - to) as usize;
        if levels == 0 {
            return (idx, offset);
        }
        if levels == 1 {
            // One level (most splits in a populated space): the chain's
            // setup would cost more than it saves.
            let c = self.split(idx, to as u8, offset);
            let half = 1u64 << ((to + self.chunk_shift) & 63);
            return if !LOW && target & half != 0 {
                self.push_free(c);
                (c | 1, offset + half)
            } else {
                self.push_free(c | 1);
                (c, offset)
            };
        }
        self.reserve_spares(levels);
        let (orders, region_shift, chunk_shift) =
            (self.orders, self.region_shift, self.chunk_shift);
        // Plain slices for the chain's loops; the other fields are reached
        // through `self` (disjoint borrows).
        let pairs = self.pairs.as_mut_slice();
        let heads = self.heads.as_mut_slice();
        // Below `region_order` both halves of a split lie in the region of
        // `target`: their region and its mask bit need no computing, and
        // that region's order mask is updated once after the loop.
        let region_order = region_shift - chunk_shift;
        let home = (target >> region_shift) as usize & 63;
        let home_bit = 1u64 << home;
        let mut c = self.spare;
        {
            let side = (idx & 1) as usize;
            let p = &mut pairs[(idx >> 1) as usize];
            p.state[side] = NodeState::Split;
            p.a[side] = c;
        }
        let mut cur = idx;
        let mut left = offset;
        let mut half = 1u64 << ((from + chunk_shift) & 63);
        let mut order = from;
        let home_base = home * orders;
        // One level: the kept half split into the next spare pair, the
        // other listed at the slot `$slot` computes from its offset and
        // order (two loops below, so each keeps its own slot computation).
        macro_rules! split_level {
            ($free_offset:ident, $bit:ident => $slot:expr) => {
                order -= 1;
                half >>= 1;
                // `left` is aligned to twice `half`, so this bit of
                // `target` says which half holds it.
                let keep_right = !LOW && target & half != 0;
                let after = pairs[(c >> 1) as usize].next[0];
                let $bit = order as usize & 63;
                let (free_idx, $free_offset) = if keep_right {
                    (c, left)
                } else {
                    (c | 1, left + half)
                };
                let slot = $slot;
                let head = heads[slot];
                // The kept half is split at the next level (its children
                // are the next pair of the spare chain); the last one is
                // fixed up after the loops.
                // One literal per side, mirrors of each other: indexing the
                // arrays by side costs 116 more instructions per 4 KiB pair
                // (callgrind, examples/buddy_pairs 4k).
                pairs[(c >> 1) as usize] = if keep_right {
                    // Mirror of the keep-left literal below.
                    Pair {
                        offset: left,
                        parent: cur,
                        order: order as u8,
                        state: [NodeState::Free, NodeState::Split],
                        a: [NIL, after],
                        next: [head, NIL],
                    }
                } else {
                    // Mirror of the keep-right literal above.
                    Pair {
                        offset: left,
                        parent: cur,
                        order: order as u8,
                        state: [NodeState::Split, NodeState::Free],
                        a: [after, NIL],
                        next: [NIL, head],
                    }
                };
                if head != NIL {
                    pairs[(head >> 1) as usize].a[(head & 1) as usize] = free_idx;
                }
                heads[slot] = free_idx;
                self.free_count[$bit] += 1;
                if keep_right {
                    left += half;
                    cur = c | 1;
                } else {
                    cur = c;
                }
                c = after;
            };
        }
        while order > to && order > region_order {
            split_level!(free_offset, bit => {
                let region = (free_offset >> region_shift) as usize & 63;
                self.region_orders[region] |= 1 << bit;
                self.order_regions[bit] |= 1 << region;
                region * orders + bit
            });
        }
        while order > to {
            split_level!(free_offset, bit => {
                let _ = free_offset;
                self.order_regions[bit] |= home_bit;
                home_base + bit
            });
        }
        {
            let side = (cur & 1) as usize;
            let p = &mut pairs[(cur >> 1) as usize];
            p.state[side] = NodeState::Free;
            p.a[side] = NIL;
        }
        let listed = bits_from(to) & !bits_from(from);
        self.region_orders[home] |= listed & !bits_from(region_order);
        self.order_mask |= listed;
        self.spare = c;
        self.spares -= levels;
        self.leaves += levels;
        self.free_bytes +=
            (1u64 << ((from + chunk_shift) & 63)) - (1u64 << ((to + chunk_shift) & 63));
        (cur, left)
    }

    /// Makes allocated leaf `idx` free again, merged with its free buddies
    /// as far as they go (each buddy is unlisted and the pair of children
    /// recycled, one level at a time up to the first buddy that is not a
    /// free leaf), and lists the resulting free leaf. No two free buddies
    /// are left unmerged. The leaf and free counters change once for the
    /// whole chain: it frees exactly the bytes of `idx`'s block.
    #[inline(always)]
    pub fn release(&mut self, idx: u32) {
        debug_assert_eq!(
            self.node(idx).state,
            NodeState::Allocated,
            "release of a block that is not allocated"
        );
        {
            let pair = self.pair(idx);
            if pair.parent == NIL || pair.state[((idx & 1) ^ 1) as usize] != NodeState::Free {
                // Nothing to merge (most frees in a populated space): skip
                // the chain's setup.
                self.push_free(idx);
                return;
            }
        }
        let (top, merged_bytes) = {
            let (orders, region_shift, chunk_shift) =
                (self.orders, self.region_shift, self.chunk_shift);
            // Plain slices for the merge loop; the other fields are reached
            // through `self` (disjoint borrows).
            let pairs = self.pairs.as_mut_slice();
            let heads = self.heads.as_mut_slice();
            let first_order = u32::from(pairs[(idx >> 1) as usize].order);
            // Below `region_order` a buddy lies in the region of `idx`'s
            // block (their parent fits in one region).
            let region_order = region_shift - chunk_shift;
            let home = {
                let pair = &pairs[(idx >> 1) as usize];
                let offset =
                    pair.offset + (u64::from(idx & 1) << ((first_order + chunk_shift) & 63));
                (offset >> region_shift) as usize & 63
            };
            // Orders whose list in the home region / anywhere became empty
            // (masks updated once after the loop).
            let mut home_emptied = 0u64;
            let mut emptied = 0u64;
            let mut cur = idx;
            let mut merged = 0u32;
            let mut spare_head = self.spare;
            loop {
                let p = (cur >> 1) as usize;
                let buddy = ((cur & 1) ^ 1) as usize;
                let pair = &pairs[p];
                let parent = pair.parent;
                if parent == NIL || pair.state[buddy] != NodeState::Free {
                    break;
                }
                debug_assert!(
                    {
                        let side = (parent & 1) as usize;
                        let up = &pairs[(parent >> 1) as usize];
                        up.state[side] == NodeState::Split && up.a[side] == cur & !1
                    },
                    "merge into a parent that is not split into this pair"
                );
                let order = u32::from(pair.order);
                let bit = order as usize & 63;
                let (prev, next) = (pair.a[buddy], pair.next[buddy]);
                if prev == NIL {
                    // The buddy heads its list: below `region_order` the
                    // list of the home region, else that of its own region.
                    let region = if order < region_order {
                        home
                    } else {
                        let shift = (order + chunk_shift) & 63;
                        let offset = pair.offset + ((buddy as u64) << shift);
                        (offset >> region_shift) as usize & 63
                    };
                    let slot = region * orders + bit;
                    debug_assert_eq!(heads[slot], cur ^ 1, "a node without prev heads its list");
                    heads[slot] = next;
                    if next == NIL {
                        if order < region_order {
                            home_emptied |= 1 << bit;
                        } else {
                            self.region_orders[region] &= !(1 << bit);
                        }
                        self.order_regions[bit] &= !(1 << region);
                        if self.order_regions[bit] == 0 {
                            emptied |= 1 << bit;
                        }
                    }
                    if next != NIL {
                        pairs[(next >> 1) as usize].a[(next & 1) as usize] = NIL;
                    }
                } else {
                    pairs[(prev >> 1) as usize].next[(prev & 1) as usize] = next;
                    if next != NIL {
                        pairs[(next >> 1) as usize].a[(next & 1) as usize] = prev;
                    }
                }
                self.free_count[bit] -= 1;
                // The pair goes back on the spare chain; marking both
                // nodes unused is what makes stale node hints fail.
                let recycled = &mut pairs[p];
                recycled.state = [NodeState::Unused; 2];
                recycled.next[0] = spare_head;
                spare_head = cur & !1;
                merged += 1;
                cur = parent;
            }
            self.spare = spare_head;
            self.region_orders[home] &= !home_emptied;
            self.order_mask &= !emptied;
            self.spares += merged as usize;
            self.leaves -= merged as usize;
            // The buddies merged in were free bytes already.
            let merged_bytes = (1u64 << ((first_order + merged + chunk_shift) & 63))
                - (1u64 << ((first_order + chunk_shift) & 63));
            (cur, merged_bytes)
        };
        self.push_free(top);
        self.free_bytes -= merged_bytes;
    }
}
