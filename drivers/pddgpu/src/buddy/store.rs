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

mod chain;

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
