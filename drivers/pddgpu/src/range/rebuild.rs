//! Rebuilding an allocator from a list of live nodes (recovery).

use super::{NodeRec, RangeAllocator, RangeError, RangeNode, MAX_NODES, NIL};

impl RangeAllocator {
    /// Builds a fresh allocator over the same range holding exactly the
    /// `live` nodes, each keeping its identity (so the handles stay valid in
    /// the new allocator). Used to recover from a suspected inconsistency:
    /// nothing is trusted from `self` except its range, search limit, the
    /// number of slots it ever issued (handles with a larger slot cannot be
    /// genuine) and the slots' generations (so that a handle removed before
    /// the rebuild stays rejected after it, even once its slot is reused). Fails if a node lies outside the range, overlaps another or
    /// shares a handle slot with another.
    pub fn rebuild<'a>(
        &self,
        live: impl IntoIterator<Item = &'a RangeNode>,
    ) -> Result<RangeAllocator, RangeError> {
        let mut fresh = RangeAllocator::new(self.start, self.end - self.start)?;
        fresh.search_limit = self.search_limit;
        fresh.id = self.id;
        let slot_limit = self.nodes.len();
        // Every slot keeps its generation, so that a handle removed before
        // the rebuild cannot come back to life when its slot is reused.
        fresh.nodes = self
            .nodes
            .iter()
            .map(|r| NodeRec {
                start: 0,
                size: 0,
                prev: NIL,
                next: NIL,
                gen: r.gen,
            })
            .collect();
        for node in live {
            fresh.restore(node, slot_limit)?;
        }
        fresh.relink_free_slots();
        Ok(fresh)
    }

    /// Re-creates `node` with its own slot and generation (for [`Self::rebuild`]).
    pub(super) fn restore(
        &mut self,
        node: &RangeNode,
        slot_limit: usize,
    ) -> Result<(), RangeError> {
        if node.owner != self.id {
            return Err(RangeError::InvalidNode(
                "node was issued by another allocator",
            ));
        }
        if node.slot as usize >= slot_limit || node.slot >= MAX_NODES {
            return Err(RangeError::InvalidNode(
                "node slot was never issued by this allocator",
            ));
        }
        self.check_span(node.start, node.size)
            .map_err(|_| RangeError::InvalidNode("node lies outside the allocator"))?;
        if self.nodes.len() <= node.slot as usize {
            self.nodes.resize(node.slot as usize + 1, NodeRec::UNUSED);
        }
        if self.nodes[node.slot as usize].size != 0 {
            return Err(RangeError::InvalidNode("two live nodes share one handle"));
        }
        let h = self.hole_containing(node.start, node.size)?;
        self.nodes[node.slot as usize].gen = node.gen;
        self.carve(h, node.start, node.size, node.slot);
        Ok(())
    }

    /// Rebuilds the free slot list from all slots not holding a live node.
    fn relink_free_slots(&mut self) {
        self.node_free = NIL;
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].size == 0 {
                self.nodes[i].next = self.node_free;
                self.node_free = i as u32;
            }
        }
    }
}
