//! The consistency check of the hole index: both trees and every size bin.

use alloc::vec::Vec;

use super::Hole;
use super::{bin_of, HoleIndex, LIST_MAX, LIST_MIN, NBINS, NIL};
use crate::range::tree::{self, BySize};

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
            for (c, is_left) in [(h.addr.left, true), (h.addr.right, false)] {
                if c == NIL {
                    continue;
                }
                let ch = &self.holes[c as usize];
                if ch.addr.parent != i {
                    return Err("address tree parent link broken");
                }
                if ch.prio > h.prio {
                    return Err("address tree heap order broken");
                }
                if (ch.start < h.start) != is_left {
                    return Err("address tree key order broken");
                }
                m = m.max(ch.max);
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
                for (c, is_left) in [(h.size.left, true), (h.size.right, false)] {
                    if c == NIL {
                        continue;
                    }
                    let ch = &self.holes[c as usize];
                    if ch.size.parent != i {
                        return Err("size tree parent link broken");
                    }
                    if ch.prio > h.prio {
                        return Err("size tree heap order broken");
                    }
                    if BySize::less_pub(ch, h) != is_left {
                        return Err("size tree key order broken");
                    }
                    stack.push(c);
                }
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

impl BySize {
    /// Key order of size trees, for checks.
    fn less_pub(a: &Hole, b: &Hole) -> bool {
        <BySize as tree::TreeKind>::less(a, b)
    }
}
