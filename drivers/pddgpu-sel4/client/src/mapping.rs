//! Mapping the frames the server gives this client into [`BO_WINDOW`], and
//! touching them. The server built the window's page tables; the client
//! only maps frame capabilities it was given, through its own VSpace
//! capability.

use pddgpu_sel4_proto::{slots, BO_WINDOW, BO_WINDOW_PAGES, PAGE_SIZE};

/// The next free page of the window.
pub struct Window {
    next_page: usize,
}

/// Where a BO is mapped.
#[derive(Clone, Copy, Debug)]
pub struct Mapped {
    /// Its first byte in this address space.
    pub base: usize,
    /// Its frames' slots.
    pub first_slot: usize,
    /// How many pages.
    pub pages: usize,
}

impl Window {
    /// An empty window.
    pub const fn new() -> Self {
        Self { next_page: 0 }
    }

    /// Maps `pages` frames from `first_slot` read-write at the next free
    /// place in the window.
    pub fn map(&mut self, first_slot: usize, pages: usize) -> Result<Mapped, sel4::Error> {
        if self.next_page + pages > BO_WINDOW_PAGES || first_slot + pages > slots::END_FRAME {
            return Err(sel4::Error::RangeError);
        }
        let base = BO_WINDOW + self.next_page * PAGE_SIZE as usize;
        let vspace = sel4::cap::VSpace::from_bits(slots::VSPACE as u64);
        for i in 0..pages {
            sel4::cap::Granule::from_bits((first_slot + i) as u64).frame_map(
                vspace,
                base + i * PAGE_SIZE as usize,
                sel4::CapRights::read_write(),
                sel4::VmAttributes::default(),
            )?;
        }
        self.next_page += pages;
        Ok(Mapped {
            base,
            first_slot,
            pages,
        })
    }
}

/// Whether the slot holds a frame capability (after a free, the server
/// has deleted it: the frame is unmapped and the slot empty).
pub fn holds_frame(slot: usize) -> bool {
    sel4::cap::Granule::from_bits(slot as u64)
        .frame_get_address()
        .is_ok()
}

/// Writes `byte(i)` at every offset `i < len` of a mapped BO.
pub fn fill(mapped: &Mapped, len: u64, byte: impl Fn(u64) -> u8) {
    assert!(len <= (mapped.pages as u64) * PAGE_SIZE);
    for i in 0..len {
        let at = (mapped.base + i as usize) as *mut u8;
        // SAFETY: `at` lies in the pages this client just mapped read-write
        // from frames the server gave it for this BO (checked above);
        // nothing in this program holds a reference into them, and the
        // server only reads them through its own mapping.
        #[allow(unsafe_code)]
        unsafe {
            at.write_volatile(byte(i))
        };
    }
}

/// Reads the first byte of a BO this client has freed, through the mapping
/// it had. The server deleted the frame capabilities at free, which
/// unmapped them, so this load faults and the kernel stops the thread: it
/// returns only if the frames were not taken back.
pub fn read_revoked(mapped: &Mapped) -> u8 {
    let at = mapped.base as *const u8;
    // SAFETY: deliberately not a valid access — it is the check that the
    // page is gone. The load cannot observe memory of anyone else: either
    // the page is unmapped and the kernel stops this thread before the
    // load completes (nothing after it runs), or it is still this BO's own
    // frame, which the caller then reports as a failure.
    #[allow(unsafe_code)]
    unsafe {
        at.read_volatile()
    }
}
