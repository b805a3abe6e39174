//! Starting a client in an address space and capability space of its own,
//! and destroying it.
//!
//! A client gets: a new VSpace (PML4, with its own ASID) holding its ELF
//! image, an IPC buffer and the page tables of its BO window; a new CNode
//! holding exactly a badged endpoint to the server (write and grant-reply
//! rights only: it can call, not receive or pass capabilities), the same
//! endpoint with the fault badge as its fault endpoint, and a capability to
//! its own VSpace root (to map the frames it will be given); a TCB at a
//! lower priority than the server. The root task keeps every
//! other capability to these objects, so it can copy frames into the
//! client's CNode and destroy the client.

use alloc::vec::Vec;

use object::elf::{PF_W, PF_X};
use object::{Object, ObjectSegment, SegmentFlags};
use pddgpu_sel4_proto::{slots, BO_WINDOW, BO_WINDOW_PAGES, FAULT_BADGE, PAGE_SIZE};
use sel4::init_thread::slot;
use sel4::VmAttributes;

use crate::frames::FRAME;
use crate::objects::{root_path, Objects};
use crate::paging::Tables;

/// Where the root task maps a client's fresh pages while filling them.
const SCRATCH_VADDR: usize = 0x12_0000_0000;
/// Clients run below the server, so a request is served as soon as it is
/// sent.
const CLIENT_PRIORITY: u64 = 100;

/// A running client, as the root task holds it.
pub struct Process {
    /// Its TCB.
    pub tcb: sel4::cap::Tcb,
    /// Its CNode (the root task copies BO frames into it).
    pub cnode: sel4::cap::CNode,
    /// Every root-CNode slot holding a capability made for this client.
    owned: Vec<usize>,
}

impl Process {
    /// The path of slot `index` of the client's CNode, for the root task.
    pub fn slot(&self, index: usize) -> sel4::AbsoluteCPtr {
        self.cnode
            .absolute_cptr_from_bits_with_depth(index as u64, slots::CNODE_SIZE_BITS)
    }

    /// Stops the client and deletes every capability the root task holds
    /// for it. Deleting the last capability of an object destroys it: the
    /// CNode (and with it the endpoint and every BO frame it held, which
    /// unmaps them), the VSpace and its ASID, the tables, the image.
    pub fn destroy(self) -> sel4::Result<()> {
        self.tcb.tcb_suspend()?;
        for &index in self.owned.iter().rev() {
            root_path(index).revoke()?;
            root_path(index).delete()?;
        }
        Ok(())
    }
}

/// Starts `elf` as a client whose endpoint carries `badge`.
pub fn spawn(
    objects: &mut Objects,
    server_tables: &mut Tables,
    elf: &[u8],
    endpoint: sel4::cap::Endpoint,
    badge: u64,
) -> sel4::Result<Process> {
    let image = object::File::parse(elf).map_err(|_| sel4::Error::InvalidArgument)?;
    let mut owned = Vec::new();

    let vspace = objects.make_fixed::<sel4::cap_type::VSpace>()?;
    owned.push(vspace.bits() as usize);
    slot::ASID_POOL.cap().asid_pool_assign(vspace)?;
    let mut tables = Tables::new(vspace);

    let (start, end) = footprint(&image)?;
    for page_addr in (start..end).step_by(FRAME) {
        let frame = objects.make_fixed::<sel4::cap_type::Granule>()?;
        owned.push(frame.bits() as usize);
        fill_page(objects, server_tables, frame, &image, page_addr)?;
        tables.map(
            objects,
            frame,
            page_addr,
            rights_at(&image, page_addr),
            VmAttributes::default(),
        )?;
    }
    let ipc_buffer_addr = end;
    let ipc_buffer = objects.make_fixed::<sel4::cap_type::Granule>()?;
    owned.push(ipc_buffer.bits() as usize);
    tables.map(
        objects,
        ipc_buffer,
        ipc_buffer_addr,
        sel4::CapRights::read_write(),
        VmAttributes::default(),
    )?;
    for page in (0..BO_WINDOW_PAGES).step_by(512) {
        tables.ensure(objects, BO_WINDOW + page * PAGE_SIZE as usize)?;
    }
    owned.extend_from_slice(tables.made());

    let cnode = objects.make_one::<sel4::cap_type::CNode>(sel4::ObjectBlueprint::CNode {
        size_bits: slots::CNODE_SIZE_BITS,
    })?;
    owned.push(cnode.bits() as usize);
    let client_slot = |index: usize| {
        cnode.absolute_cptr_from_bits_with_depth(index as u64, slots::CNODE_SIZE_BITS)
    };
    // The server's endpoint, send-only (write and grant-reply), under
    // `badge` in the client's CNode slot `index`.
    let mint_endpoint = |index: usize, badge: u64| {
        let rights = sel4::CapRightsBuilder::none()
            .write(true)
            .grant_reply(true)
            .build();
        client_slot(index).mint(&slot::CNODE.cap().absolute_cptr(endpoint), rights, badge)
    };
    mint_endpoint(slots::ENDPOINT, badge)?;
    mint_endpoint(slots::FAULT_ENDPOINT, FAULT_BADGE | badge)?;
    client_slot(slots::VSPACE).copy(
        &slot::CNODE.cap().absolute_cptr(vspace),
        sel4::CapRights::all(),
    )?;

    let tcb = objects.make_fixed::<sel4::cap_type::Tcb>()?;
    owned.push(tcb.bits() as usize);
    tcb.tcb_configure(
        sel4::CPtr::from_bits(slots::FAULT_ENDPOINT as u64),
        cnode,
        sel4::CNodeCapData::new(0, sel4::WORD_SIZE - slots::CNODE_SIZE_BITS),
        vspace,
        ipc_buffer_addr as u64,
        ipc_buffer,
    )?;
    tcb.tcb_set_priority(slot::TCB.cap(), CLIENT_PRIORITY)?;
    let mut registers = sel4::UserContext::default();
    *registers.pc_mut() = image.entry();
    tcb.tcb_write_all_registers(true, &mut registers)?;
    Ok(Process { tcb, cnode, owned })
}

/// The page-aligned range the image's segments cover.
fn footprint(image: &object::File<'_>) -> sel4::Result<(usize, usize)> {
    let segments = || {
        image
            .segments()
            .map(|s| (s.address() as usize, (s.address() + s.size()) as usize))
    };
    let start = segments()
        .map(|s| s.0)
        .min()
        .ok_or(sel4::Error::InvalidArgument)?;
    let end = segments()
        .map(|s| s.1)
        .max()
        .ok_or(sel4::Error::InvalidArgument)?;
    Ok((start - start % FRAME, end.next_multiple_of(FRAME)))
}

/// The rights of the page at `page_addr`: readable always, writable or
/// executable when a segment on it is.
fn rights_at(image: &object::File<'_>, page_addr: usize) -> sel4::CapRights {
    let mut rights = sel4::CapRightsBuilder::none().read(true);
    for segment in image.segments() {
        let (s, e) = (
            segment.address() as usize,
            (segment.address() + segment.size()) as usize,
        );
        if s < page_addr + FRAME && page_addr < e {
            if let SegmentFlags::Elf { p_flags } = segment.flags() {
                if p_flags & PF_W != 0 {
                    rights = rights.write(true);
                }
                if p_flags & PF_X != 0 {
                    // x86 frames have no execute right of their own;
                    // `grant` is what seL4 reads as executable.
                    rights = rights.grant(true);
                }
            }
        }
    }
    rights.build()
}

/// Copies the image bytes that fall on the page at `page_addr` into
/// `frame` (fresh frames are zero, which is what `.bss` wants).
fn fill_page(
    objects: &mut Objects,
    server_tables: &mut Tables,
    frame: sel4::cap::Granule,
    image: &object::File<'_>,
    page_addr: usize,
) -> sel4::Result<()> {
    server_tables.map(
        objects,
        frame,
        SCRATCH_VADDR,
        sel4::CapRights::read_write(),
        VmAttributes::default(),
    )?;
    for segment in image.segments() {
        let data = segment.data().map_err(|_| sel4::Error::InvalidArgument)?;
        let (s, e) = (
            segment.address() as usize,
            segment.address() as usize + data.len(),
        );
        let (from, to) = (s.max(page_addr), e.min(page_addr + FRAME));
        if from < to {
            let bytes = &data[from - s..to - s];
            let dst = (SCRATCH_VADDR + (from - page_addr)) as *mut u8;
            // SAFETY: `frame` is mapped read-write at SCRATCH_VADDR right
            // above, for this copy only; `from - page_addr + bytes.len()`
            // is at most one page; nothing else refers to that page.
            #[allow(unsafe_code)]
            unsafe {
                dst.copy_from_nonoverlapping(bytes.as_ptr(), bytes.len())
            };
        }
    }
    frame.frame_unmap()
}
