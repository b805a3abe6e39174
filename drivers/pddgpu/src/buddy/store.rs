//! Node storage of the buddy allocator: the explicit buddy tree and the
//! free lists.
//!
//! Like drm_buddy, the allocator keeps the tree of blocks that exist right
//! now: roots, split blocks (inner nodes) and leaves (free or allocated).
//! Children are created in pairs of 32 bytes (never split across cache
//! lines), so a block's buddy is `index ^ 1` and needs no search; each
//! pair knows its parent. Free leaves sit in doubly linked lists, one per
//! (region, order), where a region is one of at most 64 equal slices of
//! the address space;
//! bit masks say which lists are non-empty, so "smallest order ≥ k" and
//! "lowest / highest region with a block of order ≥ k" are a few bit
//! operations. A split down several orders, and a free that merges up
//! several, is one pass over the chain of pairs (pairs come off a chain
//! of spares reserved up front; counters and the masks of the block's own
//! region change once per chain). Memory is proportional to the number of
//! blocks plus a fixed table of at most 64 × 64 list heads — never to the
//! size of the space.

use alloc::vec;
use alloc::vec::Vec;

use super::bits_from;

/// "No node" in links, parents and list heads.
pub(crate) const NIL: u32 = u32::MAX;

/// What a node is right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum NodeState {
    /// A free leaf, in a free list.
    Free,
    /// An allocated leaf; `aux` holds the allocation tag.
    Allocated,
    /// Split into two children; `aux` holds the index of the left child.
    Split,
    /// Not part of the tree (a recycled pair, or the unused mate of a root).
    Unused,
}

/// A copy of one node of the tree, as read from its [`Pair`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    /// Byte offset of the block.
    pub offset: u64,
    /// Parent node, [`NIL`] for roots.
    pub parent: u32,
    /// Allocated: the allocation tag. Split: index of the left child.
    /// (Shares its storage with `prev`.)
    pub aux: u32,
    /// Previous node in its free list, [`NIL`] for the list head (free
    /// leaves). (Shares its storage with `aux`.)
    pub prev: u32,
    /// Next node in its free list (free leaves); next spare pair (spares).
    pub next: u32,
    /// Order of the block (size = chunk << order).
    pub order: u8,
    /// What the node is.
    pub state: NodeState,
}

/// Two sibling nodes in 32 bytes (two pairs per cache line, none split
/// across lines). Siblings share their parent and order, and the right
/// one's offset follows from the left one's; the free-list back link of a
/// free leaf and the tag / child index of an allocated / split one never
/// coexist, so they share a word.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Pair {
    /// Offset of the left node.
    offset: u64,
    /// Parent of both nodes, [`NIL`] for a root (and its unused mate).
    parent: u32,
    /// Order of both nodes.
    order: u8,
    state: [NodeState; 2],
    /// Per node: `aux` (allocated, split) or `prev` (free).
    a: [u32; 2],
    /// Per node: `next`.
    next: [u32; 2],
}

const UNUSED_PAIR: Pair = Pair {
    offset: 0,
    parent: NIL,
    order: 0,
    state: [NodeState::Unused; 2],
    a: [NIL; 2],
    next: [NIL; 2],
};

/// The nodes of one buddy allocator and its free lists.
pub(crate) struct NodeStore {
    pairs: Vec<Pair>,
    /// Head of the chain of recycled pairs (linked through `next`).
    spare: u32,
    /// Pairs in the `spare` chain.
    spares: usize,
    /// Leaves (free + allocated) in the tree.
    leaves: usize,
    /// Free-list heads, `[region * orders + order]`.
    heads: Vec<u32>,
    /// Per region: orders whose list in that region is non-empty.
    /// Fixed tables of 64 entries (there are at most 64 regions and 64
    /// orders), indexed with `& 63` so the hot paths need no bounds checks.
    region_orders: [u64; 64],
    /// Per order: regions whose list of that order is non-empty.
    order_regions: [u64; 64],
    /// Orders with at least one free block.
    order_mask: u64,
    /// Free blocks per order.
    free_count: [u64; 64],
    /// Bytes in free blocks (the allocator's used bytes are the rest).
    free_bytes: u64,
    /// Number of regions.
    regions: usize,
    orders: usize,
    region_shift: u32,
    chunk_shift: u32,
}

impl NodeStore {
    /// An empty store for `orders` orders, `regions` regions of
    /// `1 << region_shift` bytes and chunks of `1 << chunk_shift` bytes.
    pub fn new(orders: usize, regions: usize, region_shift: u32, chunk_shift: u32) -> Self {
        debug_assert!(orders <= 64 && regions <= 64);
        NodeStore {
            pairs: Vec::new(),
            spare: NIL,
            spares: 0,
            leaves: 0,
            heads: vec![NIL; orders * regions],
            region_orders: [0; 64],
            order_regions: [0; 64],
            order_mask: 0,
            free_count: [0; 64],
            free_bytes: 0,
            regions,
            orders,
            region_shift,
            chunk_shift,
        }
    }

    /// The pair holding node `idx`.
    #[inline(always)]
    fn pair(&self, idx: u32) -> &Pair {
        &self.pairs[(idx >> 1) as usize]
    }

    /// The pair holding node `idx`, mutably.
    #[inline(always)]
    fn pair_mut(&mut self, idx: u32) -> &mut Pair {
        &mut self.pairs[(idx >> 1) as usize]
    }

    /// A copy of node `idx` read from `pair`.
    #[inline(always)]
    fn view(&self, pair: &Pair, idx: u32) -> Node {
        let side = (idx & 1) as usize;
        let right = (side as u64) << ((u32::from(pair.order) + self.chunk_shift) & 63);
        Node {
            offset: pair.offset.wrapping_add(right),
            parent: pair.parent,
            aux: pair.a[side],
            prev: pair.a[side],
            next: pair.next[side],
            order: pair.order,
            state: pair.state[side],
        }
    }

    /// The node `idx` (a copy).
    #[inline(always)]
    pub fn node(&self, idx: u32) -> Node {
        self.view(self.pair(idx), idx)
    }

    /// The node `idx` if that index exists at all (for validating hints).
    #[inline(always)]
    pub fn get(&self, idx: u32) -> Option<Node> {
        self.pairs
            .get((idx >> 1) as usize)
            .map(|pair| self.view(pair, idx))
    }

    /// Marks leaf `idx` allocated with `tag`.
    #[inline(always)]
    pub fn set_allocated(&mut self, idx: u32, tag: u16) {
        let side = (idx & 1) as usize;
        let pair = self.pair_mut(idx);
        pair.state[side] = NodeState::Allocated;
        pair.a[side] = u32::from(tag);
    }

    /// The `aux` word (tag of an allocated node), mutably.
    #[inline(always)]
    pub fn aux_mut(&mut self, idx: u32) -> &mut u32 {
        let side = (idx & 1) as usize;
        &mut self.pair_mut(idx).a[side]
    }

    /// Sets the `next` link of node `idx`.
    #[inline(always)]
    fn set_next(&mut self, idx: u32, next: u32) {
        let side = (idx & 1) as usize;
        self.pair_mut(idx).next[side] = next;
    }

    /// Sets the `prev` link of node `idx`.
    #[inline(always)]
    fn set_prev(&mut self, idx: u32, prev: u32) {
        let side = (idx & 1) as usize;
        self.pair_mut(idx).a[side] = prev;
    }

    /// A fresh pair with both nodes unused; returns the left index.
    #[inline(always)]
    fn alloc_pair(&mut self) -> u32 {
        self.reserve_spares(1);
        let left = self.spare;
        self.spare = self.pair(left).next[0];
        self.spares -= 1;
        left
    }

    /// Makes the spare chain at least `n` pairs long (new pairs at the end
    /// of the store), so that a split chain takes its pairs off the chain
    /// without a check per level.
    #[inline(always)]
    fn reserve_spares(&mut self, n: usize) {
        if self.spares < n {
            self.grow_spares(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow_spares(&mut self, n: usize) {
        while self.spares < n {
            let pair = u32::try_from(self.pairs.len())
                .ok()
                .filter(|&p| p < NIL >> 1)
                .expect("more than 2^31 buddy nodes");
            self.pairs.push(Pair {
                next: [self.spare, NIL],
                ..UNUSED_PAIR
            });
            self.spare = pair << 1;
            self.spares += 1;
        }
    }

    /// Adds a root leaf (free, listed) of `order` at `offset`.
    pub fn add_root(&mut self, offset: u64, order: u8) -> u32 {
        let idx = self.alloc_pair();
        *self.pair_mut(idx) = Pair {
            offset,
            order,
            ..UNUSED_PAIR
        };
        self.leaves += 1;
        self.push_free(idx);
        idx
    }

    /// Splits leaf `idx` (free and unlisted, or allocated) into two unlisted free children of
    /// `order` at `left` and `left + (chunk << order)`; returns the left
    /// child's index.
    #[inline(always)]
    pub fn split(&mut self, idx: u32, order: u8, left: u64) -> u32 {
        debug_assert!(
            {
                let n = self.node(idx);
                matches!(n.state, NodeState::Free | NodeState::Allocated)
                    && n.order == order + 1
                    && n.offset == left
            },
            "split of a node that is not a leaf one order up at `left`"
        );
        let c = self.alloc_pair();
        *self.pair_mut(c) = Pair {
            offset: left,
            parent: idx,
            order,
            state: [NodeState::Free; 2],
            a: [NIL; 2],
            next: [NIL; 2],
        };
        let side = (idx & 1) as usize;
        let p = self.pair_mut(idx);
        p.state[side] = NodeState::Split;
        p.a[side] = c;
        self.leaves += 1;
        c
    }

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
    // One pass per chain (and in `release`): 4 KiB create+free, empty 8 GiB: 4,102 -> 2,639 instr., loops 181 -> 103 per level (callgrind).
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
        let NodeStore {
            pairs,
            spare,
            spares,
            leaves,
            heads,
            region_orders,
            order_regions,
            order_mask,
            free_count,
            free_bytes,
            orders,
            region_shift,
            chunk_shift,
            ..
        } = self;
        let (orders, region_shift, chunk_shift) = (*orders, *region_shift, *chunk_shift);
        let pairs = pairs.as_mut_slice();
        let heads = heads.as_mut_slice();
        // Below `region_order` both halves of a split lie in the region of
        // `target`: their region and its mask bit need no computing, and
        // that region's order mask is updated once after the loop.
        let region_order = region_shift - chunk_shift;
        let home = (target >> region_shift) as usize & 63;
        let home_bit = 1u64 << home;
        let mut c = *spare;
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
                pairs[(c >> 1) as usize] = if keep_right {
                    Pair {
                        offset: left,
                        parent: cur,
                        order: order as u8,
                        state: [NodeState::Free, NodeState::Split],
                        a: [NIL, after],
                        next: [head, NIL],
                    }
                } else {
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
                free_count[$bit] += 1;
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
                region_orders[region] |= 1 << bit;
                order_regions[bit] |= 1 << region;
                region * orders + bit
            });
        }
        while order > to {
            split_level!(free_offset, bit => {
                let _ = free_offset;
                order_regions[bit] |= home_bit;
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
        region_orders[home] |= listed & !bits_from(region_order);
        *order_mask |= listed;
        *spare = c;
        *spares -= levels;
        *leaves += levels;
        *free_bytes += (1u64 << ((from + chunk_shift) & 63)) - (1u64 << ((to + chunk_shift) & 63));
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
            let NodeStore {
                pairs,
                spare,
                spares,
                leaves,
                heads,
                region_orders,
                order_regions,
                order_mask,
                free_count,
                orders,
                region_shift,
                chunk_shift,
                ..
            } = &mut *self;
            let (orders, region_shift, chunk_shift) = (*orders, *region_shift, *chunk_shift);
            let pairs = pairs.as_mut_slice();
            let heads = heads.as_mut_slice();
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
            let home_bit = 1u64 << home;
            let home_base = home * orders;
            // Orders whose list in the home region / anywhere became empty
            // (masks updated once after the loop).
            let mut home_emptied = 0u64;
            let mut emptied = 0u64;
            let mut cur = idx;
            let mut merged = 0u32;
            let mut spare_head = *spare;
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
                    if order < region_order {
                        let slot = home_base + bit;
                        debug_assert_eq!(
                            heads[slot],
                            cur ^ 1,
                            "a node without prev heads its list"
                        );
                        heads[slot] = next;
                        if next == NIL {
                            home_emptied |= 1 << bit;
                            order_regions[bit] &= !home_bit;
                            if order_regions[bit] == 0 {
                                emptied |= 1 << bit;
                            }
                        }
                    } else {
                        let shift = (order + chunk_shift) & 63;
                        let offset = pair.offset + ((buddy as u64) << shift);
                        let region = (offset >> region_shift) as usize & 63;
                        let slot = region * orders + bit;
                        debug_assert_eq!(
                            heads[slot],
                            cur ^ 1,
                            "a node without prev heads its list"
                        );
                        heads[slot] = next;
                        if next == NIL {
                            region_orders[region] &= !(1 << bit);
                            order_regions[bit] &= !(1 << region);
                            if order_regions[bit] == 0 {
                                emptied |= 1 << bit;
                            }
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
                free_count[bit] -= 1;
                // The pair goes back on the spare chain; marking both
                // nodes unused is what makes stale node hints fail.
                let recycled = &mut pairs[p];
                recycled.state = [NodeState::Unused; 2];
                recycled.next[0] = spare_head;
                spare_head = cur & !1;
                merged += 1;
                cur = parent;
            }
            *spare = spare_head;
            region_orders[home] &= !home_emptied;
            *order_mask &= !emptied;
            *spares += merged as usize;
            *leaves -= merged as usize;
            // The buddies merged in were free bytes already.
            let merged_bytes = (1u64 << ((first_order + merged + chunk_shift) & 63))
                - (1u64 << ((first_order + chunk_shift) & 63));
            (cur, merged_bytes)
        };
        self.push_free(top);
        self.free_bytes -= merged_bytes;
    }

    /// Number of leaves (free and allocated).
    pub fn leaf_count(&self) -> usize {
        self.leaves
    }

    /// Nodes with storage (in use or spare): the metadata footprint.
    pub fn node_capacity(&self) -> usize {
        self.pairs.len() * 2
    }

    /// Region of a byte offset.
    #[inline]
    pub fn region_of(&self, offset: u64) -> u32 {
        (offset >> self.region_shift) as u32
    }

    /// `log2` of the region size in bytes.
    #[inline]
    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Orders with at least one free block.
    #[inline]
    pub fn order_mask(&self) -> u64 {
        self.order_mask
    }

    /// Regions with a free block of `order`.
    #[inline]
    pub fn order_regions(&self, order: u32) -> u64 {
        self.order_regions[order as usize & 63]
    }

    /// Regions with a free block of any of the orders set in `orders`.
    #[inline]
    pub fn regions_with(&self, mut orders: u64) -> u64 {
        let mut regions = 0;
        while orders != 0 {
            regions |= self.order_regions(orders.trailing_zeros());
            orders &= orders - 1;
        }
        regions
    }

    /// Orders with a free block starting in `region`.
    #[inline]
    pub fn region_orders(&self, region: u32) -> u64 {
        self.region_orders[region as usize & 63]
    }

    /// Number of free blocks of `order`.
    #[inline]
    pub fn free_count(&self, order: usize) -> u64 {
        self.free_count[order & 63]
    }

    /// Number of free blocks.
    pub fn free_blocks(&self) -> u64 {
        self.free_count[..self.orders].iter().sum()
    }

    /// Bytes in free blocks.
    #[inline]
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// First node of the free list (`region`, `order`), or [`NIL`].
    #[inline]
    pub fn head(&self, region: u32, order: u32) -> u32 {
        self.heads[region as usize * self.orders + order as usize]
    }

    /// Marks leaf `idx` free and pushes it on the list of its region and
    /// order.
    #[inline(always)]
    pub fn push_free(&mut self, idx: u32) {
        let n = self.node(idx);
        let region = self.region_of(n.offset) as usize & 63;
        let order = n.order as usize & 63;
        let slot = region * self.orders + order;
        let head = self.heads[slot];
        {
            let side = (idx & 1) as usize;
            let pair = self.pair_mut(idx);
            pair.state[side] = NodeState::Free;
            pair.a[side] = NIL;
            pair.next[side] = head;
        }
        if head == NIL {
            self.region_orders[region] |= 1 << order;
            self.order_regions[order] |= 1 << region;
            self.order_mask |= 1 << order;
        } else {
            self.set_prev(head, idx);
        }
        self.heads[slot] = idx;
        self.free_count[order] += 1;
        self.free_bytes += 1 << (order as u32 + self.chunk_shift);
    }

    /// Takes the head off the (non-empty) free list (`region`, `order`)
    /// and returns it (its state is left as is).
    #[inline(always)]
    pub fn pop_head(&mut self, region: u32, order: u32) -> u32 {
        let region = region as usize & 63;
        let order = order as usize & 63;
        let slot = region * self.orders + order;
        let idx = self.heads[slot];
        debug_assert!(idx != NIL, "pop from an empty free list");
        let next = self.pair(idx).next[(idx & 1) as usize];
        self.heads[slot] = next;
        self.unlisted(region, order, next);
        idx
    }

    /// Takes free leaf `idx` off its free list (its state is left as is).
    #[inline(always)]
    pub fn unlink_free(&mut self, idx: u32) {
        let n = self.node(idx);
        debug_assert_eq!(n.state, NodeState::Free);
        let order = n.order as usize & 63;
        let region = self.region_of(n.offset) as usize & 63;
        if n.prev == NIL {
            let slot = region * self.orders + order;
            debug_assert_eq!(self.heads[slot], idx, "a node without prev heads its list");
            self.heads[slot] = n.next;
            self.unlisted(region, order, n.next);
        } else {
            self.set_next(n.prev, n.next);
            if n.next != NIL {
                self.set_prev(n.next, n.prev);
            }
            self.free_count[order] -= 1;
            self.free_bytes -= 1 << (order as u32 + self.chunk_shift);
        }
    }

    /// Bookkeeping after the head of list (`region`, `order`) was taken
    /// off and `next` became the head: its back link, the masks when the
    /// list is now empty, the counts.
    #[inline(always)]
    fn unlisted(&mut self, region: usize, order: usize, next: u32) {
        if next != NIL {
            self.set_prev(next, NIL);
        } else {
            self.region_orders[region] &= !(1 << order);
            self.order_regions[order] &= !(1 << region);
            if self.order_regions[order] == 0 {
                self.order_mask &= !(1 << order);
            }
        }
        self.free_count[order] -= 1;
        self.free_bytes -= 1 << (order as u32 + self.chunk_shift);
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.regions
    }

    /// Number of orders.
    pub fn orders(&self) -> usize {
        self.orders
    }
}
