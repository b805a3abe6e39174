//! Making kernel objects: retyping the root task's RAM untyped capabilities
//! into objects whose capabilities land in free slots of the root CNode.
//!
//! Slots and memory are only ever taken, never given back: the root task
//! makes a bounded set of objects (device backing, two clients) once.

use alloc::vec::Vec;
use core::ops::Range;

use sel4::init_thread::slot;

/// Largest number of objects one retype may make (the kernel's
/// `RetypeFanOutLimit`).
const FAN_OUT: usize = 256;

/// Hands out free root-CNode slots and objects retyped from RAM.
pub struct Objects {
    free_slots: Range<usize>,
    /// RAM untypeds, largest first; the first is used until it is full.
    untyped: Vec<sel4::cap::Untyped>,
}

impl Objects {
    /// All free slots and RAM untypeds of the boot info.
    pub fn new(bootinfo: &sel4::BootInfo) -> Self {
        let mut ram: Vec<(usize, sel4::cap::Untyped)> = bootinfo
            .untyped_list()
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_device())
            .map(|(i, d)| (d.size_bits(), bootinfo.untyped().index(i).cap()))
            .collect();
        ram.sort_by(|a, b| b.0.cmp(&a.0));
        Self {
            free_slots: bootinfo.empty().range(),
            untyped: ram.into_iter().map(|(_, u)| u).collect(),
        }
    }

    /// Takes `n` consecutive free slots of the root CNode.
    pub fn slots(&mut self, n: usize) -> sel4::Result<Range<usize>> {
        let start = self.free_slots.start;
        if self.free_slots.len() < n {
            return Err(sel4::Error::NotEnoughMemory);
        }
        self.free_slots.start += n;
        Ok(start..start + n)
    }

    /// Makes `n` objects of `blueprint` in consecutive slots.
    pub fn make(
        &mut self,
        blueprint: sel4::ObjectBlueprint,
        n: usize,
    ) -> sel4::Result<Range<usize>> {
        let slots = self.slots(n)?;
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(FAN_OUT);
            self.retype(&blueprint, slots.start + done, batch)?;
            done += batch;
        }
        Ok(slots)
    }

    /// Makes `n` objects of `blueprint` out of `untyped` (a device untyped
    /// being split or turned into frames), in consecutive slots.
    pub fn carve(
        &mut self,
        untyped: sel4::cap::Untyped,
        blueprint: sel4::ObjectBlueprint,
        n: usize,
    ) -> sel4::Result<Range<usize>> {
        let slots = self.slots(n)?;
        let dst = slot::CNODE.cap().absolute_cptr_for_self();
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(FAN_OUT);
            untyped.untyped_retype(&blueprint, &dst, slots.start + done, batch)?;
            done += batch;
        }
        Ok(slots)
    }

    /// Makes one object and returns its capability.
    pub fn make_one<T: sel4::CapType>(
        &mut self,
        blueprint: sel4::ObjectBlueprint,
    ) -> sel4::Result<sel4::Cap<T>> {
        let slot = self.make(blueprint, 1)?.start;
        Ok(sel4::init_thread::Slot::<T>::from_index(slot).cap())
    }

    /// Makes one object of a fixed-size type.
    pub fn make_fixed<T: sel4::CapTypeForObjectOfFixedSize>(
        &mut self,
    ) -> sel4::Result<sel4::Cap<T>> {
        self.make_one(T::object_blueprint())
    }

    /// Retypes from the first untyped with room, moving on when one is
    /// full.
    fn retype(
        &mut self,
        blueprint: &sel4::ObjectBlueprint,
        first: usize,
        n: usize,
    ) -> sel4::Result<()> {
        let dst = slot::CNODE.cap().absolute_cptr_for_self();
        loop {
            let Some(untyped) = self.untyped.first() else {
                return Err(sel4::Error::NotEnoughMemory);
            };
            match untyped.untyped_retype(blueprint, &dst, first, n) {
                Err(sel4::Error::NotEnoughMemory) => {
                    self.untyped.remove(0);
                }
                other => return other,
            }
        }
    }
}

/// A capability in slot `index` of the root CNode, as a path for
/// copy/mint/delete.
pub fn root_path(index: usize) -> sel4::AbsoluteCPtr {
    slot::CNODE.cap().absolute_cptr(
        sel4::init_thread::Slot::<sel4::cap_type::Unspecified>::from_index(index).cptr(),
    )
}
