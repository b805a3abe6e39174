//! The full consistency check of a [`RangeAllocator`], for tests and
//! recovery.

use super::{is_hole, RangeAllocator, HOLE, NIL};

impl RangeAllocator {
    /// Verifies every internal invariant: the records tile the range in
    /// address order with no two holes adjacent, links agree both ways,
    /// accounting matches, both hole indexes are well formed and complete,
    /// and the free slot list is sound. `O(n)`; for tests and recovery.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut expect_start = self.start;
        let mut prev = NIL;
        let mut used = 0u64;
        let mut nodes = 0u32;
        let mut holes = 0usize;
        let mut last_was_hole = false;
        let mut link = self.head;
        let mut steps = 0usize;
        let limit = self.nodes.len() + self.holes.holes.len() + 1;
        while link != NIL {
            steps += 1;
            if steps > limit {
                return Err("record list has a cycle");
            }
            let (start, end, p, next) = if is_hole(link) {
                let h = self
                    .holes
                    .holes
                    .get((link & !HOLE) as usize)
                    .ok_or("hole link out of bounds")?;
                if last_was_hole {
                    return Err("two adjacent holes");
                }
                if h.bin == NIL {
                    return Err("listed hole is not filed by size");
                }
                last_was_hole = true;
                holes += 1;
                (h.start, h.end, h.prev, h.next)
            } else {
                let r = self
                    .nodes
                    .get(link as usize)
                    .ok_or("node link out of bounds")?;
                if r.size == 0 {
                    return Err("free slot in the record list");
                }
                last_was_hole = false;
                nodes += 1;
                used += r.size;
                (r.start, r.start + r.size, r.prev, r.next)
            };
            if p != prev {
                return Err("prev link disagrees with list order");
            }
            if start != expect_start || end <= start {
                return Err("records do not tile the range");
            }
            expect_start = end;
            prev = link;
            link = next;
        }
        if expect_start != self.end {
            return Err("records do not reach the end of the range");
        }
        if used != self.used || nodes != self.node_count || holes != self.holes.count {
            return Err("accounting differs from the records");
        }
        // The address tree lists exactly the holes of the record list, in order.
        let listed = self.holes().map(|r| r.start);
        let indexed = self
            .holes
            .in_address_order()
            .map(|i| self.holes.holes[i as usize].start);
        if !listed.eq(indexed) {
            return Err("address tree order differs from the record list");
        }
        let mut free_slots = 0usize;
        let mut f = self.node_free;
        while f != NIL {
            free_slots += 1;
            if free_slots > self.nodes.len() {
                return Err("free slot list has a cycle");
            }
            let r = self
                .nodes
                .get(f as usize)
                .ok_or("free slot out of bounds")?;
            if r.size != 0 {
                return Err("live node on the free slot list");
            }
            f = r.next;
        }
        if free_slots + nodes as usize != self.nodes.len() {
            return Err("node slots leaked");
        }
        self.holes.check()
    }
}
