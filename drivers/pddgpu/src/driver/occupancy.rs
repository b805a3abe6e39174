//! The occupancy map of a domain: what lies where, from the first byte to
//! the last — each BO's extents with its holder and label, each free hole,
//! retired bad VRAM, and allocated memory no BO accounts for.
//!
//! The allocator is the authority on what is allocated and what is free:
//! the map walks its layout (which tiles the domain exactly) and only
//! *names* the allocated runs from the BO table. So the extents always tile
//! the domain, even if BOs come and go during the walk; when nothing was in
//! flight during the walk (checked with the gate's counters, as the leak
//! audit does) the map is also exact about who holds what, and says so.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::Ordering;

use super::gate::Lane;
use super::{Driver, GTT_BASE};
use crate::bo::{BoId, OwnerId, Placement};
use crate::device::Domain;

/// Attempts to take the map at a moment without operations in flight.
const SETTLE_ATTEMPTS: u32 = 64;

/// What occupies an [`Extent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Occupant {
    /// Free: the allocator can hand it out.
    Free,
    /// A live BO.
    Bo {
        /// The BO.
        id: BoId,
        /// The owner shown as holding it: its creator while it holds it,
        /// else another holder (0 when only an export keeps it alive).
        owner: OwnerId,
        /// Its label.
        label: String,
    },
    /// Retired bad VRAM, kept allocated so it is never handed out again.
    Retired,
    /// Allocated, but no live BO holds it and it is not retired: what the
    /// leak audit calls a mismatch (or, in a map that is not
    /// [`settled`](OccupancyMap::settled), an allocation in flight).
    Unowned,
}

/// A run of addresses and what occupies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The addresses, relative to the start of the domain.
    pub range: Range<u64>,
    /// What is there.
    pub occupant: Occupant,
}

/// The occupancy of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OccupancyMap {
    /// The domain.
    pub domain: Domain,
    /// Its size: the extents tile `0..size`.
    pub size: u64,
    /// The CPU-visible window `0..visible_size` (VRAM; 0 for GTT).
    pub visible_size: u64,
    /// The extents in address order; neighbours never have the same
    /// occupant (they are merged).
    pub extents: Vec<Extent>,
    /// True when no operation in the domain was in flight while the map was
    /// taken, so every allocated run is named correctly.
    pub settled: bool,
}

/// One named piece of allocated memory, for the walk.
struct Piece {
    range: Range<u64>,
    occupant: Occupant,
}

/// Pushes `occupant` over `range`, merging with the last extent when it is
/// the same occupant and adjacent.
fn push(extents: &mut Vec<Extent>, range: Range<u64>, occupant: Occupant) {
    if range.is_empty() {
        return;
    }
    if let Some(last) = extents.last_mut() {
        if last.range.end == range.start && last.occupant == occupant {
            last.range.end = range.end;
            return;
        }
    }
    extents.push(Extent { range, occupant });
}

/// Names the allocated run `run` from `pieces` (sorted by start, disjoint
/// when settled); what no piece covers is [`Occupant::Unowned`].
fn name_run(extents: &mut Vec<Extent>, run: Range<u64>, pieces: &[Piece]) {
    let first = pieces.partition_point(|p| p.range.end <= run.start);
    let mut at = run.start;
    for p in pieces[first..]
        .iter()
        .take_while(|p| p.range.start < run.end)
    {
        let start = p.range.start.max(at);
        let end = p.range.end.min(run.end);
        if start >= end {
            continue;
        }
        push(extents, at..start, Occupant::Unowned);
        push(extents, start..end, p.occupant.clone());
        at = end;
    }
    push(extents, at..run.end, Occupant::Unowned);
}

impl Driver {
    /// The allocator's layout of `domain` (relative addresses) and the named
    /// pieces of allocated memory: BO placements and retired VRAM.
    fn occupancy_inputs(&self, domain: Domain) -> (Vec<(Range<u64>, bool)>, Vec<Piece>) {
        let layout = match domain {
            Domain::Vram => self.vram.layout(),
            Domain::Gtt => self
                .gtt
                .layout()
                .into_iter()
                .map(|(r, used)| (r.start - GTT_BASE..r.end - GTT_BASE, used))
                .collect(),
        };
        let mut pieces = Vec::new();
        for i in 0..self.table.shard_count() {
            let shard = self.table.shard_at(i);
            for (&id, e) in shard.bos.iter() {
                if e.placement.domain() != domain {
                    continue;
                }
                let occupant = Occupant::Bo {
                    id: BoId(id),
                    owner: e.own.primary_holder(),
                    label: e.label.clone(),
                };
                let ranges = match &e.placement {
                    Placement::Vram(a) => a.blocks().iter().map(|b| b.offset()..b.end()).collect(),
                    Placement::Gtt(n) => {
                        alloc::vec![n.start() - GTT_BASE..n.end() - GTT_BASE]
                    }
                };
                for range in ranges {
                    pieces.push(Piece {
                        range,
                        occupant: occupant.clone(),
                    });
                }
            }
        }
        if domain == Domain::Vram {
            for a in &self.faults.lock().retired {
                for b in a.blocks() {
                    pieces.push(Piece {
                        range: b.offset()..b.end(),
                        occupant: Occupant::Retired,
                    });
                }
            }
        }
        (layout, pieces)
    }

    /// The occupancy map of `domain`: every BO extent, free hole, retired
    /// and unowned run in address order, tiling the domain exactly. Takes
    /// the allocator lock for one walk and each BO-table shard briefly;
    /// retries (a bounded number of times, without waiting) until it sees a
    /// moment with no operation in flight, and reports whether it did.
    pub fn occupancy(&self, domain: Domain) -> OccupancyMap {
        let counters = self.gate.counters(Lane::Domain(domain));
        let mut settled = false;
        let mut inputs = (Vec::new(), Vec::new());
        for _ in 0..SETTLE_ATTEMPTS {
            let finished = counters.finished.load(Ordering::SeqCst);
            inputs = self.occupancy_inputs(domain);
            if counters.started.load(Ordering::SeqCst) == finished {
                settled = true;
                break;
            }
            core::hint::spin_loop();
        }
        let (layout, mut pieces) = inputs;
        pieces.sort_by_key(|p| p.range.start);
        let mut extents = Vec::new();
        for (run, allocated) in layout {
            if allocated {
                name_run(&mut extents, run, &pieces);
            } else {
                push(&mut extents, run, Occupant::Free);
            }
        }
        let size = match domain {
            Domain::Vram => self.vram.config().size,
            Domain::Gtt => self.gtt.config().size,
        };
        OccupancyMap {
            domain,
            size,
            visible_size: match domain {
                Domain::Vram => self.vram.config().visible_size,
                Domain::Gtt => 0,
            },
            extents,
            settled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bo(id: u64) -> Occupant {
        Occupant::Bo {
            id: BoId(id),
            owner: 1,
            label: String::new(),
        }
    }

    #[test]
    fn runs_are_named_and_gaps_are_unowned() {
        let pieces = [
            Piece {
                range: 10..20,
                occupant: bo(1),
            },
            Piece {
                range: 20..30,
                occupant: bo(1),
            },
            Piece {
                range: 40..50,
                occupant: Occupant::Retired,
            },
        ];
        let mut extents = Vec::new();
        name_run(&mut extents, 0..60, &pieces);
        let got: Vec<(Range<u64>, Occupant)> =
            extents.into_iter().map(|e| (e.range, e.occupant)).collect();
        assert_eq!(
            got,
            [
                (0..10, Occupant::Unowned),
                (10..30, bo(1)),
                (30..40, Occupant::Unowned),
                (40..50, Occupant::Retired),
                (50..60, Occupant::Unowned),
            ]
        );
        // A run inside one piece, and a piece straddling the run's start.
        let mut extents = Vec::new();
        name_run(&mut extents, 25..45, &pieces);
        let got: Vec<Range<u64>> = extents.iter().map(|e| e.range.clone()).collect();
        assert_eq!(got, [25..30, 30..40, 40..45]);
    }
}
