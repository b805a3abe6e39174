//! [`Frames`]: memory the server owns as 4 KiB frame capabilities, mapped
//! contiguously into its own address space. The device's backing memory
//! (VRAM and GTT of the simulated PDDGPU, GTT of the bochs-display, and the
//! bochs-display's VRAM BAR) is made of these, so the server can hand a
//! client exactly the frames of one BO — and nothing else.

use core::ops::Range;

use pddgpu::device::MemoryRegion;
use sel4::{CapTypeForObjectOfFixedSize, VmAttributes};

use crate::objects::Objects;
use crate::paging::Tables;

/// Size of one frame.
pub const FRAME: usize = 4096;

/// Frames in consecutive root-CNode slots, mapped at consecutive
/// addresses of the server.
pub struct Frames {
    slots: Range<usize>,
    vaddr: usize,
}

impl Frames {
    /// Makes `pages` zeroed frames from RAM and maps them read-write at
    /// `vaddr` in the server's VSpace.
    pub fn from_ram(
        objects: &mut Objects,
        tables: &mut Tables,
        vaddr: usize,
        pages: usize,
    ) -> sel4::Result<Self> {
        let slots = objects.make(sel4::cap_type::Granule::object_blueprint(), pages)?;
        let frames = Frames { slots, vaddr };
        frames.map_all(objects, tables, VmAttributes::default())?;
        Ok(frames)
    }

    /// Frames already made (from device memory) in `slots`, mapped at
    /// `vaddr` with `attrs`.
    pub fn map_existing(
        objects: &mut Objects,
        tables: &mut Tables,
        slots: Range<usize>,
        vaddr: usize,
        attrs: VmAttributes,
    ) -> sel4::Result<Self> {
        let frames = Frames { slots, vaddr };
        frames.map_all(objects, tables, attrs)?;
        Ok(frames)
    }

    fn map_all(
        &self,
        objects: &mut Objects,
        tables: &mut Tables,
        attrs: VmAttributes,
    ) -> sel4::Result<()> {
        for page in 0..self.pages() {
            tables.map(
                objects,
                self.frame(page),
                self.vaddr + page * FRAME,
                sel4::CapRights::read_write(),
                attrs,
            )?;
        }
        Ok(())
    }

    /// Number of frames.
    pub fn pages(&self) -> usize {
        self.slots.len()
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.pages() * FRAME
    }

    /// The root-CNode slot of frame `page`.
    pub fn slot(&self, page: usize) -> usize {
        self.slots.start + page
    }

    /// The capability of frame `page`.
    pub fn frame(&self, page: usize) -> sel4::cap::Granule {
        sel4::init_thread::Slot::<sel4::cap_type::Granule>::from_index(self.slot(page)).cap()
    }

    /// The frames as the core's backing memory, through the server's
    /// mapping.
    pub fn region(&self) -> MemoryRegion {
        // SAFETY: `vaddr..vaddr + len` is mapped read-write in this address
        // space by `map_all` and is never unmapped (the server keeps its
        // frames for its whole life); the core accesses backing memory only
        // with atomic or volatile accesses, and clients that map the same
        // frames are other address spaces.
        #[allow(unsafe_code)]
        let region = unsafe { MemoryRegion::new(self.vaddr as *mut u8, self.len()) };
        region.expect("a frame mapping is never at address 0")
    }
}
