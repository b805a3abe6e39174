//! The consistency check of the hole index: both trees and every size bin.

use alloc::vec::Vec;

use super::{bin_of, HoleIndex, LIST_MAX, LIST_MIN, NBINS, NIL};
use crate::range::tree::{ByAddr, BySize, TreeKind};

impl HoleIndex {
    /// Checks the index's internal invariants (tree order, heap order,
    /// parent links, subtree maxima, bin filing, counts).
    pub fn check(&self) -> Result<(), &'static str> {
        let mut seen = 0usize;
        let mut stack = Vec::new();
        if self.addr_root != NIL {
            if self.holes[self.addr_root as usize].addr.parent != NIL {
                return Err("address root has a parent");
            }
            stack.push(self.addr_root);
        }
        while let Some(i) = stack.pop() {
            seen += 1;
            let h = &self.holes[i as usize];
            if h.start >= h.end {
                return Err("empty hole in the address tree");
            }
            let mut m = h.len();
            for c in self.checked_children::<ByAddr>(i, &ADDR_BROKEN)? {
                m = m.max(self.holes[c as usize].max);
                stack.push(c);
            }
            if h.max != m {
                return Err("address tree subtree bound is not its largest hole");
            }
        }
        if seen != self.count {
            return Err("address tree size differs from hole count");
        }
        let mut filed = 0usize;
        for b in 0..NBINS {
            let root = self.bins[b].head;
            let marked = self.bitmap[b / 64] & (1 << (b % 64)) != 0;
            if marked != (root != NIL) {
                return Err("bin bitmap out of date");
            }
            if (self.summary & (1 << (b / 64)) != 0) != (self.bitmap[b / 64] != 0) {
                return Err("bin summary out of date");
            }
            if root == NIL {
                if self.bins[b].len != 0 || self.is_treap(b) {
                    return Err("empty bin has a count or is a treap");
                }
                continue;
            }
            let before = filed;
            if !self.is_treap(b) {
                // A list: links agree both ways, every entry is filed here.
                if self.bins[b].len > LIST_MAX {
                    return Err("list bin longer than LIST_MAX");
                }
                let mut prev = NIL;
                let mut cur = root;
                while cur != NIL {
                    filed += 1;
                    if filed - before > LIST_MAX as usize {
                        return Err("list bin longer than LIST_MAX");
                    }
                    let h = &self.holes[cur as usize];
                    if h.bin as usize != b || bin_of(h.len()) != b {
                        return Err("hole filed in the wrong size bin");
                    }
                    if h.size.left != prev || h.size.parent != NIL {
                        return Err("size list links broken");
                    }
                    prev = cur;
                    cur = h.size.right;
                }
                if (filed - before) as u32 != self.bins[b].len {
                    return Err("bin count differs from its entries");
                }
                continue;
            }
            if self.bins[b].len < LIST_MIN {
                return Err("treap bin shorter than LIST_MIN");
            }
            if self.holes[root as usize].size.parent != NIL {
                return Err("size root has a parent");
            }
            stack.push(root);
            while let Some(i) = stack.pop() {
                filed += 1;
                let h = &self.holes[i as usize];
                if h.bin as usize != b || bin_of(h.len()) != b {
                    return Err("hole filed in the wrong size bin");
                }
                stack.extend(self.checked_children::<BySize>(i, &SIZE_BROKEN)?);
            }
            if (filed - before) as u32 != self.bins[b].len {
                return Err("bin count differs from its entries");
            }
        }
        if filed != self.count {
            return Err("size bins hold a different number of holes");
        }
        Ok(())
    }
}

/// What [`HoleIndex::checked_children`] reports for the address tree:
/// a broken parent link, heap order, key order.
const ADDR_BROKEN: [&str; 3] = [
    "address tree parent link broken",
    "address tree heap order broken",
    "address tree key order broken",
];
/// The same for a size tree.
const SIZE_BROKEN: [&str; 3] = [
    "size tree parent link broken",
    "size tree heap order broken",
    "size tree key order broken",
];

impl HoleIndex {
    /// The children of `i` in its tree `K` (none, one or two), each checked
    /// against `i`: its parent link, the heap order of priorities and the
    /// key order. A failure is the matching one of `broken`.
    fn checked_children<K: TreeKind>(
        &self,
        i: u32,
        broken: &[&'static str; 3],
    ) -> Result<impl Iterator<Item = u32>, &'static str> {
        let h = &self.holes[i as usize];
        let links = K::links(h);
        let children = [(links.left, true), (links.right, false)];
        for (c, is_left) in children {
            if c == NIL {
                continue;
            }
            let ch = &self.holes[c as usize];
            if K::links(ch).parent != i {
                return Err(broken[0]);
            }
            if ch.prio > h.prio {
                return Err(broken[1]);
            }
            if K::less(ch, h) != is_left {
                return Err(broken[2]);
            }
        }
        Ok(children.into_iter().map(|(c, _)| c).filter(|&c| c != NIL))
    }
}
