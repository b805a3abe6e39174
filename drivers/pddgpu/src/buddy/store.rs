//! Node storage of the buddy allocator: the explicit buddy tree and the
//! free lists.
//!
//! Like drm_buddy, the allocator keeps the tree of blocks that exist right
//! now: roots, split blocks (inner nodes) and leaves (free or allocated).
//! Children are created in pairs that share one 64-byte cache line, so a
//! block's buddy is `index ^ 1` and needs no search; each node knows its
//! parent. Free leaves sit in doubly linked lists, one per (region, order),
//! where a region is one of at most 64 equal slices of the address space;
//! bit masks say which lists are non-empty, so "smallest order ≥ k" and
//! "lowest / highest region with a block of order ≥ k" are a few bit
//! operations. Memory is proportional to the number of blocks plus a fixed
//! table of at most 64 × 64 list heads — never to the size of the space.

use alloc::vec;
use alloc::vec::Vec;

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

/// One block of the tree.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Node {
    /// Byte offset of the block.
    pub offset: u64,
    /// Parent node, [`NIL`] for roots.
    pub parent: u32,
    /// Allocated: the allocation tag. Split: index of the left child.
    pub aux: u32,
    /// Previous node in its free list (free leaves other than the list
    /// head; stale on the head).
    pub prev: u32,
    /// Next node in its free list (free leaves); next spare pair (spares).
    pub next: u32,
    /// Order of the block (size = chunk << order).
    pub order: u8,
    /// What the node is.
    pub state: NodeState,
}

const UNUSED: Node = Node {
    offset: 0,
    parent: NIL,
    aux: 0,
    prev: NIL,
    next: NIL,
    order: 0,
    state: NodeState::Unused,
};

/// Two sibling nodes in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Pair([Node; 2]);

/// The nodes of one buddy allocator and its free lists.
pub(crate) struct NodeStore {
    pairs: Vec<Pair>,
    /// Head of the chain of recycled pairs (linked through `next`).
    spare: u32,
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
    /// Number of regions.
    regions: usize,
    orders: usize,
    region_shift: u32,
}

impl NodeStore {
    /// An empty store for `orders` orders and `regions` regions of
    /// `1 << region_shift` bytes.
    pub fn new(orders: usize, regions: usize, region_shift: u32) -> Self {
        debug_assert!(orders <= 64 && regions <= 64);
        NodeStore {
            pairs: Vec::new(),
            spare: NIL,
            leaves: 0,
            heads: vec![NIL; orders * regions],
            region_orders: [0; 64],
            order_regions: [0; 64],
            order_mask: 0,
            free_count: [0; 64],
            regions,
            orders,
            region_shift,
        }
    }

    /// The node `idx`.
    #[inline]
    pub fn node(&self, idx: u32) -> &Node {
        &self.pairs[(idx >> 1) as usize].0[(idx & 1) as usize]
    }

    /// The node `idx`, mutably.
    #[inline]
    pub fn node_mut(&mut self, idx: u32) -> &mut Node {
        &mut self.pairs[(idx >> 1) as usize].0[(idx & 1) as usize]
    }

    /// The node `idx` if that index exists at all (for validating hints).
    #[inline]
    pub fn get(&self, idx: u32) -> Option<&Node> {
        self.pairs
            .get((idx >> 1) as usize)
            .map(|pair| &pair.0[(idx & 1) as usize])
    }

    /// A fresh pair with both nodes unused; returns the left index.
    #[inline(always)]
    fn alloc_pair(&mut self) -> u32 {
        if self.spare != NIL {
            let left = self.spare;
            self.spare = self.node(left).next;
            left
        } else {
            let pair = u32::try_from(self.pairs.len())
                .ok()
                .filter(|&p| p < NIL >> 1)
                .expect("more than 2^31 buddy nodes");
            self.pairs.push(Pair([UNUSED; 2]));
            pair << 1
        }
    }

    /// Adds a root leaf (free, listed) of `order` at `offset`.
    pub fn add_root(&mut self, offset: u64, order: u8) -> u32 {
        let idx = self.alloc_pair();
        *self.node_mut(idx) = Node {
            offset,
            order,
            ..UNUSED
        };
        self.leaves += 1;
        self.push_free(idx);
        idx
    }

    /// Splits leaf `idx` (not listed) into two unlisted free children of
    /// `order` at `left` and `right`; returns the left child's index.
    #[inline(always)]
    pub fn split(&mut self, idx: u32, order: u8, left: u64, right: u64) -> u32 {
        let c = self.alloc_pair();
        let child = |offset| Node {
            offset,
            parent: idx,
            aux: 0,
            prev: NIL,
            next: NIL,
            order,
            state: NodeState::Free,
        };
        self.pairs[(c >> 1) as usize] = Pair([child(left), child(right)]);
        let n = self.node_mut(idx);
        n.state = NodeState::Split;
        n.aux = c;
        self.leaves += 1;
        c
    }

    /// Drops the (unlisted, leaf) children of `parent`, which becomes a
    /// leaf again (its state is left for the caller to set).
    #[inline(always)]
    pub fn merge(&mut self, parent: u32) {
        let c = self.node(parent).aux;
        let spare = self.spare;
        self.pairs[(c >> 1) as usize] = Pair([
            Node {
                next: spare,
                ..UNUSED
            },
            UNUSED,
        ]);
        self.spare = c;
        self.leaves -= 1;
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

    /// First node of the free list (`region`, `order`), or [`NIL`].
    #[inline]
    pub fn head(&self, region: u32, order: u32) -> u32 {
        self.heads[region as usize * self.orders + order as usize]
    }

    /// Marks leaf `idx` free and pushes it on the list of its region and
    /// order.
    #[inline(always)]
    pub fn push_free(&mut self, idx: u32) {
        let (offset, order) = {
            let n = self.node(idx);
            (n.offset, n.order as usize)
        };
        let region = self.region_of(offset) as usize & 63;
        let order = order & 63;
        let slot = region * self.orders + order;
        let head = self.heads[slot];
        {
            let n = self.node_mut(idx);
            n.state = NodeState::Free;
            n.prev = NIL;
            n.next = head;
        }
        if head == NIL {
            self.region_orders[region] |= 1 << order;
            self.order_regions[order] |= 1 << region;
            self.order_mask |= 1 << order;
        } else {
            self.node_mut(head).prev = idx;
        }
        self.heads[slot] = idx;
        self.free_count[order] += 1;
    }

    /// Takes free leaf `idx` off its free list (its state is left as is).
    ///
    /// The head of a list is recognised by the list head, not by its
    /// `prev` link, which is left stale on the new head: taking the head
    /// (the common case, as allocations take list heads) then touches no
    /// other node, saving a cache miss on a cold neighbour.
    #[inline(always)]
    pub fn unlink_free(&mut self, idx: u32) {
        let (offset, order, prev, next) = {
            let n = self.node(idx);
            debug_assert_eq!(n.state, NodeState::Free);
            (n.offset, n.order as usize & 63, n.prev, n.next)
        };
        let region = self.region_of(offset) as usize & 63;
        let slot = region * self.orders + order;
        if self.heads[slot] == idx {
            self.heads[slot] = next;
            if next == NIL {
                self.region_orders[region] &= !(1 << order);
                self.order_regions[order] &= !(1 << region);
                if self.order_regions[order] == 0 {
                    self.order_mask &= !(1 << order);
                }
            }
        } else {
            self.node_mut(prev).next = next;
            if next != NIL {
                self.node_mut(next).prev = prev;
            }
        }
        self.free_count[order] -= 1;
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
