//! Full consistency check of a [`BuddyAllocator`], for tests and recovery.

use super::store::{NodeState, NIL};
use super::BuddyAllocator;

/// Verifies every invariant; see [`BuddyAllocator::check`].
pub(super) fn check(a: &BuddyAllocator) -> Result<(), &'static str> {
    let store = &a.store;
    // Leaves tile 0..size exactly, each aligned, with no mergeable buddies.
    let mut at = 0u64;
    let mut leaves = 0usize;
    let mut used = 0u64;
    let mut allocated = 0u64;
    let mut free_per_order = [0u64; 64];
    while at < a.size {
        let idx = store.lookup(at).ok_or("hole in the leaf tiling")?;
        let n = store.node(idx);
        if n.offset != at {
            return Err("leaf indexed under a wrong offset");
        }
        if n.order > a.max_order {
            return Err("leaf order above the maximum");
        }
        let bytes = a.block_bytes(u32::from(n.order));
        if at & (bytes - 1) != 0 {
            return Err("leaf not aligned to its size");
        }
        match n.state {
            NodeState::Allocated => {
                used += bytes;
                allocated += 1;
            }
            NodeState::Free => {
                free_per_order[usize::from(n.order)] += 1;
                if n.order < a.max_order {
                    if let Some(b) = store.lookup(at ^ bytes) {
                        let bn = store.node(b);
                        if bn.state == NodeState::Free && bn.order == n.order {
                            return Err("two free buddies left unmerged");
                        }
                    }
                }
            }
        }
        leaves += 1;
        at = at
            .checked_add(bytes)
            .ok_or("leaf past the end of the space")?;
    }
    if at != a.size {
        return Err("leaves run past the end of the space");
    }
    if leaves != store.leaf_count() {
        return Err("index holds leaves outside the tiling");
    }
    if used != a.used || allocated != a.allocated_blocks {
        return Err("used/allocated counters do not match the leaves");
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
                if store.lookup(n.offset) != Some(idx) {
                    return Err("listed node is not indexed");
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
