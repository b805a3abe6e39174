//! Mapping frames into a VSpace, making the translation tables on the way.
//!
//! x86-64 has four levels (PML4 — the VSpace object itself —, PDPT, page
//! directory, page table). [`Tables::ensure`] makes sure the three lower
//! tables covering an address exist: it remembers what it mapped, and a
//! table the kernel reports as already there (`DeleteFirst`, e.g. the root
//! task's own image tables) is kept as a spare for the next one needed.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use sel4::vspace_levels::{span_bits, NUM_LEVELS};
use sel4::{TranslationTableObjectType, VmAttributes};

use crate::objects::Objects;

/// The translation tables of one VSpace.
pub struct Tables {
    vspace: sel4::cap::VSpace,
    /// `(level, vaddr >> span_bits(level))` of every table known present.
    present: BTreeSet<(usize, usize)>,
    /// Tables made but not mapped, per level.
    spare: [Vec<sel4::cap::UnspecifiedIntermediateTranslationTable>; NUM_LEVELS],
    /// Every table this made (the caps to delete with the VSpace).
    made: Vec<usize>,
}

impl Tables {
    /// Tables of `vspace` (none known yet).
    pub fn new(vspace: sel4::cap::VSpace) -> Self {
        Self {
            vspace,
            present: BTreeSet::new(),
            spare: Default::default(),
            made: Vec::new(),
        }
    }

    /// Root-CNode slots of every table made for this VSpace.
    pub fn made(&self) -> &[usize] {
        &self.made
    }

    /// Makes sure every table that translates `vaddr` exists.
    pub fn ensure(&mut self, objects: &mut Objects, vaddr: usize) -> sel4::Result<()> {
        for level in 1..NUM_LEVELS {
            let key = (level, vaddr >> span_bits(level));
            if self.present.contains(&key) {
                continue;
            }
            let ty = TranslationTableObjectType::from_level(level)
                .ok_or(sel4::Error::InvalidArgument)?;
            let table = match self.spare[level].pop() {
                Some(table) => table,
                None => {
                    let table = objects
                        .make_one::<sel4::cap_type::UnspecifiedIntermediateTranslationTable>(
                            ty.blueprint(),
                        )?;
                    self.made.push(table.bits() as usize);
                    table
                }
            };
            match table.generic_intermediate_translation_table_map(
                ty,
                self.vspace,
                vaddr,
                VmAttributes::default(),
            ) {
                Ok(()) => {}
                Err(sel4::Error::DeleteFirst) => self.spare[level].push(table),
                Err(e) => return Err(e),
            }
            self.present.insert(key);
        }
        Ok(())
    }

    /// Maps `frame` at `vaddr` with `rights`, making tables as needed.
    pub fn map(
        &mut self,
        objects: &mut Objects,
        frame: sel4::cap::Granule,
        vaddr: usize,
        rights: sel4::CapRights,
        attrs: VmAttributes,
    ) -> sel4::Result<()> {
        self.ensure(objects, vaddr)?;
        frame.frame_map(self.vspace, vaddr, rights, attrs)
    }
}
