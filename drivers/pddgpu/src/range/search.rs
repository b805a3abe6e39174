//! Where to place a request: the Best / Low / High searches.
//!
//! Each search returns the chosen hole and the address inside it. The range
//! `rs..re` passed in is already clipped to the managed range and at least
//! `size` long; `align` is a power of two.

use super::holes::{Hole, Scan, NIL};
use super::RangeAllocator;

/// The address at which `size` bytes aligned to `align` go into `h` clipped
/// to `rs..re`: the lowest such address, or the highest when `high`.
#[inline]
pub(super) fn place(h: &Hole, size: u64, align: u64, rs: u64, re: u64, high: bool) -> Option<u64> {
    let lo = h.start.max(rs);
    let hi = h.end.min(re);
    if hi <= lo || hi - lo < size {
        return None;
    }
    if high {
        let x = (hi - size) & !(align - 1);
        (x >= lo).then_some(x)
    } else {
        let x = lo.checked_add(align - 1)? & !(align - 1);
        (x <= hi - size).then_some(x)
    }
}

impl RangeAllocator {
    #[inline]
    fn hole(&self, i: u32) -> &Hole {
        &self.holes.holes[i as usize]
    }

    #[inline]
    fn clipped_len(&self, i: u32, rs: u64, re: u64) -> u64 {
        let h = self.hole(i);
        h.end.min(re).saturating_sub(h.start.max(rs))
    }

    /// Best: the smallest hole that fits (see the module docs for the bound).
    pub(super) fn find_best(&self, size: u64, align: u64, rs: u64, re: u64) -> Option<(u32, u64)> {
        // Usually the smallest candidate fits (always when the alignment
        // divides every hole start).
        let first = self.holes.smallest_at_least(size);
        if first == NIL {
            return None;
        }
        if let Some(x) = place(self.hole(first), size, align, rs, re, false) {
            return Some((first, x));
        }
        let fits = |h: &Hole| place(h, size, align, rs, re, false);
        match self.holes.scan_by_size(size, self.search_limit, fits) {
            Scan::Found(h, x) => return Some((h, x)),
            Scan::Exhausted => return None,
            Scan::Limit => {}
        }
        // Too many unsuitable candidates: take a hole that surely fits.
        if let Some(sure) = size.checked_add(align - 1) {
            let unrestricted = rs == self.start && re == self.end;
            let g = if unrestricted {
                self.holes.smallest_at_least(sure)
            } else {
                self.first_in_range(rs, re, sure)
            };
            if g != NIL {
                if let Some(x) = place(self.hole(g), size, align, rs, re, false) {
                    return Some((g, x));
                }
            }
        }
        // No hole can surely take it: the first candidate that fits, however
        // far down the order.
        match self.holes.scan_by_size(size, u32::MAX, fits) {
            Scan::Found(h, x) => Some((h, x)),
            _ => None,
        }
    }

    /// Low: the lowest address that fits. Mirrored, high for low, by
    /// [`find_high`](Self::find_high).
    pub(super) fn find_low(&self, size: u64, align: u64, rs: u64, re: u64) -> Option<(u32, u64)> {
        let mut cur = self.first_in_range(rs, re, size);
        if cur == NIL {
            return None;
        }
        // The lowest candidate usually fits; the guaranteed hole is looked
        // up only when it does not. (It never lies below the first
        // candidate, and when it is the first candidate that one fits.)
        if let Some(x) = place(self.hole(cur), size, align, rs, re, false) {
            return Some((cur, x));
        }
        let sure = match size.checked_add(align - 1) {
            Some(s) if align > 1 => self.first_in_range(rs, re, s),
            _ => NIL,
        };
        let mut misses = 0u32;
        while cur != NIL && (sure == NIL || self.hole(cur).start < self.hole(sure).start) {
            if let Some(x) = place(self.hole(cur), size, align, rs, re, false) {
                return Some((cur, x));
            }
            misses += 1;
            if misses >= self.search_limit && sure != NIL {
                break;
            }
            let from = self.hole(cur).start + 1;
            cur = self.in_range_from(from, re, size);
        }
        if sure != NIL {
            return place(self.hole(sure), size, align, rs, re, false).map(|x| (sure, x));
        }
        None
    }

    /// High: the highest address that fits: the mirror of
    /// [`find_low`](Self::find_low).
    pub(super) fn find_high(&self, size: u64, align: u64, rs: u64, re: u64) -> Option<(u32, u64)> {
        let mut cur = self.last_in_range(rs, re, size);
        if cur == NIL {
            return None;
        }
        // As in `find_low`: the guaranteed hole only after a miss.
        if let Some(x) = place(self.hole(cur), size, align, rs, re, true) {
            return Some((cur, x));
        }
        let sure = match size.checked_add(align - 1) {
            Some(s) if align > 1 => self.last_in_range(rs, re, s),
            _ => NIL,
        };
        let mut misses = 0u32;
        while cur != NIL && (sure == NIL || self.hole(cur).start > self.hole(sure).start) {
            if let Some(x) = place(self.hole(cur), size, align, rs, re, true) {
                return Some((cur, x));
            }
            misses += 1;
            if misses >= self.search_limit && sure != NIL {
                break;
            }
            let below = self.hole(cur).start;
            cur = self.in_range_below(below, rs, size);
        }
        if sure != NIL {
            return place(self.hole(sure), size, align, rs, re, true).map(|x| (sure, x));
        }
        None
    }

    /// The lowest hole overlapping `rs..re` with at least `min` bytes inside
    /// it. Mirrored by [`last_in_range`](Self::last_in_range).
    fn first_in_range(&self, rs: u64, re: u64, min: u64) -> u32 {
        // Only a hole starting below `rs` can cross it.
        let p = if rs > self.start {
            self.holes.last_starting_at_or_below(rs)
        } else {
            NIL
        };
        if p != NIL {
            let h = self.hole(p);
            if h.start < rs && h.end > rs && self.clipped_len(p, rs, re) >= min {
                return p;
            }
        }
        self.in_range_from(rs, re, min)
    }

    /// The first hole starting in `from..re` with at least `min` bytes
    /// before `re` (`from` must not be below the range start). Mirrored by
    /// [`in_range_below`](Self::in_range_below).
    fn in_range_from(&self, from: u64, re: u64, min: u64) -> u32 {
        let i = self.holes.first_sized_at_or_above(from, min);
        if i == NIL {
            return NIL;
        }
        let h = self.hole(i);
        if h.start >= re {
            return NIL;
        }
        // Only the last hole of the range can cross its end.
        if h.end <= re || re - h.start >= min {
            i
        } else {
            NIL
        }
    }

    /// The highest hole overlapping `rs..re` with at least `min` bytes
    /// inside it: the mirror of [`first_in_range`](Self::first_in_range).
    fn last_in_range(&self, rs: u64, re: u64, min: u64) -> u32 {
        let mut below = re;
        // Only a hole ending above `re` can cross it.
        let p = if re < self.end {
            self.holes.last_starting_at_or_below(re - 1)
        } else {
            NIL
        };
        if p != NIL {
            let h = self.hole(p);
            if h.end > re {
                if self.clipped_len(p, rs, re) >= min {
                    return p;
                }
                below = h.start;
            }
        }
        self.in_range_below(below, rs, min)
    }

    /// The last hole starting below `below` that ends inside the range and
    /// has at least `min` bytes at or above `rs` (no hole starting below
    /// `below` may cross the range end): the mirror of
    /// [`in_range_from`](Self::in_range_from).
    fn in_range_below(&self, below: u64, rs: u64, min: u64) -> u32 {
        let i = self.holes.last_sized_below(below, min);
        if i == NIL {
            return NIL;
        }
        let h = self.hole(i);
        if h.end <= rs {
            return NIL;
        }
        // Only the first hole of the range can cross its start.
        if h.start >= rs || h.end - rs >= min {
            i
        } else {
            NIL
        }
    }
}
