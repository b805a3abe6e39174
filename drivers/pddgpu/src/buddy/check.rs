//! Full consistency check of a [`BuddyAllocator`], for tests and recovery.

use alloc::vec::Vec;

use super::store::{NodeState, NIL};
use super::BuddyAllocator;

/// Verifies every invariant; see [`BuddyAllocator::check`].
pub(super) fn check(a: &BuddyAllocator) -> Result<(), &'static str> {
    let store = &a.store;
    // Walk the tree in address order: leaves must tile 0..size exactly.
    let mut at = 0u64;
    let mut leaves = 0usize;
    let mut used = 0u64;
    let mut allocated = 0u64;
    let mut free_per_order = [0u64; 64];
    let mut expected_root_offset = 0u64;
    for &root in &a.roots {
        let n = store.node(root);
        if n.parent != NIL || n.offset != expected_root_offset {
            return Err("root out of place");
        }
        expected_root_offset = expected_root_offset.wrapping_add(a.block_bytes(u32::from(n.order)));
    }
    let mut stack: Vec<u32> = a.roots.iter().rev().copied().collect();
    while let Some(idx) = stack.pop() {
        let n = store.node(idx);
        if n.order > a.max_order {
            return Err("node order above the maximum");
        }
        let bytes = a.block_bytes(u32::from(n.order));
        if n.offset & (bytes - 1) != 0 {
            return Err("node not aligned to its size");
        }
        match n.state {
            NodeState::Split => {
                let (l, r) = (store.node(n.aux), store.node(n.aux + 1));
                if n.aux & 1 != 0 || l.parent != idx || r.parent != idx {
                    return Err("broken parent/child links");
                }
                if n.order == 0 || l.order + 1 != n.order || r.order + 1 != n.order {
                    return Err("child order is not parent order - 1");
                }
                if l.offset != n.offset || r.offset != n.offset + bytes / 2 {
                    return Err("children do not halve their parent");
                }
                if l.state == NodeState::Free && r.state == NodeState::Free {
                    return Err("two free buddies left unmerged");
                }
                stack.push(n.aux + 1);
                stack.push(n.aux);
                continue;
            }
            NodeState::Allocated => {
                used += bytes;
                allocated += 1;
            }
            NodeState::Free => free_per_order[usize::from(n.order)] += 1,
            NodeState::Unused => return Err("unused node inside the tree"),
        }
        if n.offset != at {
            return Err("leaves do not tile the space");
        }
        leaves += 1;
        at = at.wrapping_add(bytes);
    }
    if at != a.size {
        return Err("leaves do not cover the space exactly");
    }
    if leaves != store.leaf_count() {
        return Err("leaf counter out of date");
    }
    if used != a.used() || allocated != a.allocated_blocks() {
        return Err("free-byte or block counters do not match the leaves");
    }
    // Free lists hold exactly the free leaves, with matching masks.
    let mut order_mask = 0u64;
    for order in 0..store.orders() as u32 {
        let mut listed = 0u64;
        let mut regions_with = 0u64;
        for region in 0..store.regions() as u32 {
            let mut idx = store.head(region, order);
            let mut prev = NIL;
            let nonempty = idx != NIL;
            while idx != NIL {
                let n = store.node(idx);
                if n.state != NodeState::Free || u32::from(n.order) != order {
                    return Err("free list holds a wrong node");
                }
                if store.region_of(n.offset) != region {
                    return Err("free list holds a node of another region");
                }
                if n.prev != prev {
                    return Err("broken free-list back link");
                }
                if a.leaf_at(n.offset) != idx {
                    return Err("listed node is not a leaf of the tree");
                }
                listed += 1;
                if listed > free_per_order[order as usize] {
                    return Err("free list longer than the free leaves");
                }
                prev = idx;
                idx = n.next;
            }
            if nonempty != (store.region_orders(region) & (1 << order) != 0) {
                return Err("region order mask out of date");
            }
            if nonempty {
                regions_with |= 1 << region;
            }
        }
        if listed != free_per_order[order as usize] || listed != store.free_count(order as usize) {
            return Err("free list count does not match the free leaves");
        }
        if regions_with != store.order_regions(order) {
            return Err("order region mask out of date");
        }
        if listed != 0 {
            order_mask |= 1 << order;
        }
    }
    if order_mask != store.order_mask() {
        return Err("order mask out of date");
    }
    Ok(())
}
