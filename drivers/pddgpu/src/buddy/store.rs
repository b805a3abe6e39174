//! Leaf storage of the buddy allocator.
//!
//! Only *leaf* blocks exist as records: the blocks that are currently free
//! or allocated (a split block is implied by its children). Leaves partition
//! the managed space, so their offsets are unique and an offset alone finds
//! a leaf. Each leaf is a [`Node`] in a slab; a hash index maps offset →
//! node; free leaves sit in doubly linked lists, one per (region, order),
//! where a region is one of at most 64 equal slices of the address space.
//! Two sets of bit masks say which lists are non-empty, so "smallest order
//! ≥ k", "lowest / highest region with a block of order ≥ k" are a few bit
//! operations. Memory is proportional to the number of leaves plus a fixed
//! table of at most 64 × 64 list heads — never to the size of the space.

use alloc::vec;
use alloc::vec::Vec;
use core::hash::{BuildHasherDefault, Hasher};
use hashbrown::HashMap;

/// "No node" in links and list heads.
pub(crate) const NIL: u32 = u32::MAX;

/// Whether a leaf is free or handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeState {
    /// In a free list.
    Free,
    /// Part of an allocation.
    Allocated,
}

/// One leaf block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    /// Byte offset of the block.
    pub offset: u64,
    /// Previous node in its free list (free leaves only).
    pub prev: u32,
    /// Next node in its free list, or next spare slot for recycled slots.
    pub next: u32,
    /// Allocation tag (allocated leaves only), checked on free.
    pub tag: u32,
    /// Order of the block (size = chunk << order).
    pub order: u8,
    /// Free or allocated.
    pub state: NodeState,
}

/// Hasher for block offsets: one folded 64×64→128-bit multiply, so both
/// the low bits (bucket index) and the high bits (tag byte) depend on every
/// bit of the offset, even though offsets are multiples of large powers of
/// two.
#[derive(Default, Clone, Copy)]
pub(crate) struct OffsetHasher(u64);

impl OffsetHasher {
    #[inline]
    fn mix(&mut self, x: u64) {
        let p = u128::from(x ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for OffsetHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
}

/// The leaves of one buddy allocator and its free lists.
pub(crate) struct LeafStore {
    nodes: Vec<Node>,
    /// Head of the chain of recycled slots (linked through `next`).
    spare: u32,
    index: HashMap<u64, u32, BuildHasherDefault<OffsetHasher>>,
    /// Free-list heads, `[region * orders + order]`.
    heads: Vec<u32>,
    /// Per region: orders whose list in that region is non-empty.
    region_orders: Vec<u64>,
    /// Per order: regions whose list of that order is non-empty.
    order_regions: Vec<u64>,
    /// Orders with at least one free block.
    order_mask: u64,
    /// Free blocks per order.
    free_count: Vec<u64>,
    orders: usize,
    region_shift: u32,
}

impl LeafStore {
    /// An empty store for `orders` orders and `regions` regions of
    /// `1 << region_shift` bytes.
    pub fn new(orders: usize, regions: usize, region_shift: u32) -> Self {
        debug_assert!(orders <= 64 && regions <= 64);
        LeafStore {
            nodes: Vec::new(),
            spare: NIL,
            index: HashMap::default(),
            heads: vec![NIL; orders * regions],
            region_orders: vec![0; regions],
            order_regions: vec![0; orders],
            order_mask: 0,
            free_count: vec![0; orders],
            orders,
            region_shift,
        }
    }

    /// The node in slot `idx`.
    #[inline]
    pub fn node(&self, idx: u32) -> &Node {
        &self.nodes[idx as usize]
    }

    /// The node in slot `idx`, mutably.
    #[inline]
    pub fn node_mut(&mut self, idx: u32) -> &mut Node {
        &mut self.nodes[idx as usize]
    }

    /// The leaf starting at `offset`, if any.
    #[inline]
    pub fn lookup(&self, offset: u64) -> Option<u32> {
        self.index.get(&offset).copied()
    }

    /// Number of leaves (free and allocated).
    pub fn leaf_count(&self) -> usize {
        self.index.len()
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
        self.order_regions[order as usize]
    }

    /// Orders with a free block starting in `region`.
    #[inline]
    pub fn region_orders(&self, region: u32) -> u64 {
        self.region_orders[region as usize]
    }

    /// Number of free blocks of `order`.
    #[inline]
    pub fn free_count(&self, order: usize) -> u64 {
        self.free_count[order]
    }

    /// First node of the free list (`region`, `order`), or [`NIL`].
    #[inline]
    pub fn head(&self, region: u32, order: u32) -> u32 {
        self.heads[region as usize * self.orders + order as usize]
    }

    /// Creates a free, unlisted leaf at `offset` and indexes it.
    #[inline]
    pub fn create(&mut self, offset: u64, order: u8) -> u32 {
        let node = Node {
            offset,
            prev: NIL,
            next: NIL,
            tag: 0,
            order,
            state: NodeState::Free,
        };
        let idx = if self.spare != NIL {
            let idx = self.spare;
            self.spare = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            let idx = u32::try_from(self.nodes.len()).expect("more than 2^32 buddy leaves");
            self.nodes.push(node);
            idx
        };
        let old = self.index.insert(offset, idx);
        debug_assert!(old.is_none(), "two leaves at one offset");
        idx
    }

    /// Drops an unlisted leaf: unindexes it and recycles its slot.
    #[inline]
    pub fn destroy(&mut self, idx: u32) {
        let offset = self.nodes[idx as usize].offset;
        let removed = self.index.remove(&offset);
        debug_assert_eq!(removed, Some(idx));
        self.nodes[idx as usize].next = self.spare;
        self.spare = idx;
    }

    /// Marks leaf `idx` free and pushes it on the list of its region and
    /// order (its `order` must already be set).
    #[inline]
    pub fn push_free(&mut self, idx: u32) {
        let (offset, order) = {
            let n = &self.nodes[idx as usize];
            (n.offset, n.order as usize)
        };
        let region = self.region_of(offset) as usize;
        let slot = region * self.orders + order;
        let head = self.heads[slot];
        {
            let n = &mut self.nodes[idx as usize];
            n.state = NodeState::Free;
            n.prev = NIL;
            n.next = head;
        }
        if head == NIL {
            self.region_orders[region] |= 1 << order;
            self.order_regions[order] |= 1 << region;
            self.order_mask |= 1 << order;
        } else {
            self.nodes[head as usize].prev = idx;
        }
        self.heads[slot] = idx;
        self.free_count[order] += 1;
    }

    /// Takes free leaf `idx` off its free list (its state is left as is).
    #[inline]
    pub fn unlink_free(&mut self, idx: u32) {
        let (offset, order, prev, next) = {
            let n = &self.nodes[idx as usize];
            debug_assert_eq!(n.state, NodeState::Free);
            (n.offset, n.order as usize, n.prev, n.next)
        };
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            let region = self.region_of(offset) as usize;
            let slot = region * self.orders + order;
            self.heads[slot] = next;
            if next == NIL {
                self.region_orders[region] &= !(1 << order);
                self.order_regions[order] &= !(1 << region);
                if self.order_regions[order] == 0 {
                    self.order_mask &= !(1 << order);
                }
            }
        }
        self.free_count[order] -= 1;
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.region_orders.len()
    }

    /// Number of orders.
    pub fn orders(&self) -> usize {
        self.orders
    }
}
