//! Per-BO memories on the host: each BO a client maps gets its own sealed
//! memfd, mapped over the BO's pages in the server's mapping of its domain
//! (the mapping edge, hence the module's `unsafe`).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use super::{MappingLimits, PAGE};
use crate::budget::PerUser;

/// What clients may map of a domain on the host.
#[derive(Debug, Default)]
pub enum ClientAccess {
    /// Nothing: reads and writes go through the server.
    #[default]
    None,
    /// Each BO through its own memory (see the module docs). `memory`
    /// is the descriptor behind the server's mapping of the domain,
    /// `len` bytes long; its pages come back when a BO's memory goes.
    PerBo {
        /// The domain's memory (a memfd).
        memory: OwnedFd,
        /// Its length in bytes.
        len: usize,
    },
    /// Only privileged callers, through a descriptor of the whole
    /// domain (a BAR, for which no per-BO descriptor exists).
    WholeForAdmin {
        /// The descriptor.
        fd: OwnedFd,
    },
}

/// Why no descriptor could be handed out.
#[derive(Debug)]
pub enum BoMemoryError {
    /// This domain cannot be mapped this way.
    NotMappable,
    /// The BO's layout is not made of whole pages inside the domain.
    BadLayout,
    /// Too many mapped segments or BOs in the server already, all
    /// users together.
    TooManyMappings,
    /// The user has its share of mapped BOs or segments already.
    UserShareUsed {
        /// The user.
        uid: u32,
        /// BOs it has mapped.
        bos: usize,
        /// Segments it has mapped.
        segments: usize,
    },
    /// A system call failed.
    Os(&'static str, Errno),
}

impl BoMemoryError {
    /// The errno a client gets.
    pub fn errno(&self) -> i32 {
        match self {
            BoMemoryError::NotMappable => syscall::error::EOPNOTSUPP,
            BoMemoryError::BadLayout => syscall::error::EINVAL,
            BoMemoryError::TooManyMappings => syscall::error::ENOMEM,
            BoMemoryError::UserShareUsed { .. } => syscall::error::EDQUOT,
            BoMemoryError::Os(_, e) => e.raw_os_error(),
        }
    }
}

impl std::fmt::Display for BoMemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoMemoryError::NotMappable => write!(f, "clients cannot map this domain"),
            BoMemoryError::BadLayout => write!(f, "the BO is not made of whole pages"),
            BoMemoryError::TooManyMappings => {
                write!(
                    f,
                    "the server maps as many BOs as it may, all users together"
                )
            }
            BoMemoryError::UserShareUsed { uid, bos, segments } => write!(
                f,
                "user {uid} has mapped {bos} BOs with {segments} segments, its share"
            ),
            BoMemoryError::Os(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// What the BO memories of both domains cost: in all, and per user.
#[derive(Debug, Default)]
pub(super) struct MappingBudget {
    pub(super) limits: MappingLimits,
    /// Segments mapped, all users.
    segments_total: usize,
    /// BO memories, all users.
    bos_total: usize,
    /// Segments per user.
    pub(super) segments: PerUser,
    /// BO memories per user.
    pub(super) bos: PerUser,
}

impl MappingBudget {
    /// Charges a BO memory of `segments` segments to `uid` and, when it
    /// is `new` (not yet charged to anyone), to the server's totals; or
    /// says which limit it would pass.
    fn charge(&mut self, uid: u32, segments: usize, new: bool) -> Result<(), BoMemoryError> {
        let l = self.limits;
        if new
            && (self.segments_total + segments > l.segments_total || self.bos_total >= l.bos_total)
        {
            return Err(BoMemoryError::TooManyMappings);
        }
        let (bos, segs) = (self.bos.used(uid), self.segments.used(uid));
        if bos >= l.bos_per_uid || segs + segments > l.segments_per_uid {
            return Err(BoMemoryError::UserShareUsed {
                uid,
                bos,
                segments: segs,
            });
        }
        // Within the limits just checked, so neither charge fails.
        let _ = self.bos.try_charge(uid, 1, usize::MAX);
        let _ = self.segments.try_charge(uid, segments, usize::MAX);
        if new {
            self.segments_total += segments;
            self.bos_total += 1;
        }
        Ok(())
    }

    /// Gives back `segments` segments of a BO memory charged to `uid`,
    /// and the memory itself when `whole` (all of its segments went
    /// back, or `uid` let go of it).
    fn release_user(&mut self, uid: u32, segments: usize, whole: bool) {
        self.segments.release(uid, segments);
        if whole {
            self.bos.release(uid, 1);
        }
    }

    /// Gives back `segments` segments of a BO memory from the server's
    /// totals, and the memory itself when `whole`.
    fn release_total(&mut self, segments: usize, whole: bool) {
        self.segments_total -= segments;
        if whole {
            self.bos_total -= 1;
        }
    }
}

/// One BO's own memory, mapped over its pages in the server.
#[derive(Debug)]
struct BoMemory {
    fd: OwnedFd,
    /// `(offset in the domain, length)` of each mapped range, whole
    /// pages, with the offset in `fd` (the BO offset) of its start.
    ranges: Vec<MappedRange>,
    /// The BO's size (bytes past it in the last page are not the BO's).
    size: u64,
    /// The users it is charged to: each user whose clients mapped the
    /// BO, while it holds the BO.
    users: Vec<u32>,
}

/// A range of a BO memory mapped over the domain.
#[derive(Clone, Copy, Debug)]
struct MappedRange {
    /// Offset in the domain.
    at: u64,
    /// Length, whole pages.
    len: u64,
    /// Offset in the BO memory (and in the BO).
    fd_offset: u64,
}

/// One domain as its BO memories see it: the server's mapping of it at
/// `base`, the descriptor behind that mapping (`len` bytes), and the
/// budget every BO memory is charged to.
pub(super) struct DomainPages<'a> {
    pub(super) base: usize,
    pub(super) memory: &'a OwnedFd,
    pub(super) len: usize,
    pub(super) budget: &'a mut MappingBudget,
}

/// The per-BO memories of one domain.
#[derive(Debug, Default)]
pub(super) struct BoMemories {
    by_bo: HashMap<u64, BoMemory>,
    /// Domain offset of each mapped range -> (its end, its BO).
    by_offset: BTreeMap<u64, (u64, u64)>,
}

impl BoMemories {
    pub(super) fn is_empty(&self) -> bool {
        self.by_bo.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.by_bo.len()
    }

    /// Whether `bo` has a memory here charged to `uid`.
    pub(super) fn charged_to(&self, bo: u64, uid: u32) -> bool {
        self.by_bo.get(&bo).is_some_and(|m| m.users.contains(&uid))
    }

    /// User `uid` let go of `bo`: its charge ends, and a memory charged
    /// to nobody goes back to the domain with the BO's bytes.
    pub(super) fn let_go(&mut self, domain: &mut DomainPages<'_>, bo: u64, uid: u32) {
        let Some(memory) = self.by_bo.get_mut(&bo) else {
            return;
        };
        let Some(i) = memory.users.iter().position(|&u| u == uid) else {
            return;
        };
        memory.users.swap_remove(i);
        domain.budget.release_user(uid, memory.ranges.len(), true);
        if memory.users.is_empty() {
            self.give_back(domain, bo, Contents::Keep);
        }
    }

    /// The descriptor of `bo`'s memory, created on first use; charged
    /// to `uid` unless it already is.
    pub(super) fn descriptor(
        &mut self,
        domain: &mut DomainPages<'_>,
        bo: u64,
        size: u64,
        segments: &[(u64, u64, u64)],
        writable: bool,
        uid: u32,
    ) -> Result<OwnedFd, BoMemoryError> {
        if !self.by_bo.contains_key(&bo) {
            let ranges = page_ranges(size, segments, domain.len)?;
            // Pages of BOs freed since they were mapped: give them back
            // first (their ranges may overlap this BO's, and they count
            // against the budget until then).
            self.reclaim_overlapping(domain, segments);
            domain.budget.charge(uid, ranges.len(), true)?;
            let memory = match carve(domain.base, domain.memory, size, &ranges, uid) {
                Ok(memory) => memory,
                Err(e) => {
                    domain.budget.release_user(uid, ranges.len(), true);
                    domain.budget.release_total(ranges.len(), true);
                    return Err(e);
                }
            };
            for r in &memory.ranges {
                self.by_offset.insert(r.at, (r.at + r.len, bo));
            }
            self.by_bo.insert(bo, memory);
        } else if let Some(memory) = self.by_bo.get_mut(&bo) {
            if !memory.users.contains(&uid) {
                domain.budget.charge(uid, memory.ranges.len(), false)?;
                memory.users.push(uid);
            }
        }
        let fd = &self.by_bo[&bo].fd;
        if writable {
            rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| BoMemoryError::Os("dup", e))
        } else {
            // A new open file description, read-only: `mmap` with
            // `PROT_WRITE | MAP_SHARED` on it fails with EACCES.
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::fs::open(
                path.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| BoMemoryError::Os("reopen read-only", e))
        }
    }

    /// Gives back every BO memory mapped over any of `segments`.
    pub(super) fn reclaim_overlapping(
        &mut self,
        domain: &mut DomainPages<'_>,
        segments: &[(u64, u64, u64)],
    ) {
        if self.by_bo.is_empty() {
            return;
        }
        let mut dead = Vec::new();
        for &(_, at, len) in segments {
            let end = at + len.next_multiple_of(PAGE);
            // Ranges starting before `end` whose end lies after `at`.
            for (_, &(r_end, bo)) in self.by_offset.range(..end).rev() {
                if r_end <= at {
                    // Ranges do not overlap one another, so every range
                    // further left ends even earlier.
                    break;
                }
                dead.push(bo);
            }
        }
        dead.sort_unstable();
        dead.dedup();
        for bo in dead {
            self.give_back(domain, bo, Contents::Drop);
        }
    }

    /// Gives back every BO memory whose BO is gone.
    pub(super) fn reclaim_dead(
        &mut self,
        domain: &mut DomainPages<'_>,
        is_live: &dyn Fn(u64) -> bool,
    ) {
        let dead: Vec<u64> = self
            .by_bo
            .keys()
            .copied()
            .filter(|&bo| !is_live(bo))
            .collect();
        for bo in dead {
            self.give_back(domain, bo, Contents::Drop);
        }
    }

    /// Maps the domain's own pages back over a BO memory and forgets
    /// it (and its charges). With [`Contents::Keep`] (a live BO) the
    /// BO's bytes are copied into them first; with [`Contents::Drop`]
    /// (a freed BO) they read as zero.
    fn give_back(&mut self, domain: &mut DomainPages<'_>, bo: u64, contents: Contents) {
        let Some(memory) = self.by_bo.remove(&bo) else {
            return;
        };
        let mut failed = Vec::new();
        for &r in &memory.ranges {
            let (at, len) = (r.at, r.len);
            self.by_offset.remove(&at);
            // The domain's pages here were punched out when the BO got
            // its memory: they read as zero. Punch again (a copy kept
            // earlier may have failed half-way), then copy the BO's
            // bytes in when it lives on.
            let punched = rustix::fs::fallocate(
                domain.memory,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                at,
                len,
            );
            if let Err(e) = punched {
                log::warn!("clearing {len} bytes at {at:#x} of a domain: {e}");
            }
            if contents == Contents::Keep {
                let n = len.min(memory.size.saturating_sub(r.fd_offset));
                if let Err(e) = copy(&memory.fd, r.fd_offset, domain.memory, at, n) {
                    // The BO memory stays mapped here, so the BO loses
                    // nothing; the next try is when the BO is freed.
                    log::error!("cannot copy {n} bytes of BO {bo} back at {at:#x}: {e}");
                    failed.push(r);
                    continue;
                }
            }
            if let Err(e) = map_over(domain.base, at, len, domain.memory, at) {
                // Only a kernel out of mapping slots refuses this (what
                // MAX_MAPPED_SEGMENTS guards against). The BO memory
                // then stays mapped here and tracked, and the next
                // reclaim or sweep tries again.
                log::error!("cannot give back {len} bytes at {at:#x}: {e}");
                failed.push(r);
            }
        }
        // What could not be given back stays charged until it is.
        let (released, whole) = (memory.ranges.len() - failed.len(), failed.is_empty());
        for &uid in &memory.users {
            domain.budget.release_user(uid, released, whole);
        }
        domain.budget.release_total(released, whole);
        if !failed.is_empty() {
            for r in &failed {
                self.by_offset.insert(r.at, (r.at + r.len, bo));
            }
            self.by_bo.insert(
                bo,
                BoMemory {
                    fd: memory.fd,
                    ranges: failed,
                    size: memory.size,
                    users: memory.users,
                },
            );
        }
    }
}

/// What becomes of a BO memory's bytes when it goes back to the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contents {
    /// The BO lives on: its bytes go back into the domain's pages.
    Keep,
    /// The BO was freed: the domain's pages read as zero.
    Drop,
}

/// Copies `len` bytes of `from` at `from_offset` into `to` at
/// `to_offset` (through the descriptors, not the mappings).
fn copy(
    from: &OwnedFd,
    from_offset: u64,
    to: &OwnedFd,
    to_offset: u64,
    len: u64,
) -> Result<(), Errno> {
    let mut buf = vec![0u8; (len as usize).min(256 << 10)];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = rustix::io::pread(from, &mut buf[..want], from_offset + done)?;
        if n == 0 {
            return Err(Errno::IO);
        }
        let mut written = 0;
        while written < n {
            written += rustix::io::pwrite(to, &buf[written..n], to_offset + done + written as u64)?;
        }
        done += n as u64;
    }
    Ok(())
}

/// The BO's segments as whole-page ranges of the domain: page-aligned
/// starts, lengths rounded up to whole pages, inside the domain,
/// covering the BO in order.
fn page_ranges(
    size: u64,
    segments: &[(u64, u64, u64)],
    domain_len: usize,
) -> Result<Vec<(u64, u64)>, BoMemoryError> {
    let mut expect = 0u64;
    let mut ranges = Vec::with_capacity(segments.len());
    for &(bo_offset, at, len) in segments {
        let pages = len.next_multiple_of(PAGE);
        let fits = at
            .checked_add(pages)
            .is_some_and(|end| end <= domain_len as u64);
        if bo_offset != expect || at % PAGE != 0 || len == 0 || !fits {
            return Err(BoMemoryError::BadLayout);
        }
        if bo_offset + len < size && len % PAGE != 0 {
            return Err(BoMemoryError::BadLayout);
        }
        ranges.push((at, pages));
        expect = bo_offset + len;
    }
    if expect != size {
        return Err(BoMemoryError::BadLayout);
    }
    Ok(ranges)
}

/// Creates a BO's memory (charged to `uid`): a sealed memfd holding the
/// BO's current bytes, mapped over `ranges` of the server's mapping at
/// `base`.
fn carve(
    base: usize,
    domain_memory: &OwnedFd,
    size: u64,
    ranges: &[(u64, u64)],
    uid: u32,
) -> Result<BoMemory, BoMemoryError> {
    let os = |what| move |e| BoMemoryError::Os(what, e);
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let fd = rustix::fs::memfd_create("pddgpu-bo", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(os("memfd_create"))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(os("fchmod"))?;
    rustix::fs::ftruncate(&fd, total).map_err(os("ftruncate"))?;
    // The BO's bytes (not the rest of its last page: that stays zero in
    // the new memory). Nothing else writes these pages meanwhile: the
    // scheme is not serving another request, and no client maps them
    // yet.
    let mut bo_offset = 0u64;
    for &(at, len) in ranges {
        let n = len.min(size - bo_offset);
        // SAFETY: `base + at .. + n` lies inside the server's mapping of
        // the domain (checked by `page_ranges` against its length) and
        // stays mapped for the whole process; it is only read here, by
        // the kernel, while no one writes it (see above).
        let bytes =
            unsafe { std::slice::from_raw_parts((base + at as usize) as *const u8, n as usize) };
        let mut done = 0;
        while done < bytes.len() {
            done += rustix::io::pwrite(&fd, &bytes[done..], bo_offset + done as u64)
                .map_err(os("copying a BO into its memory"))?;
        }
        bo_offset += len;
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(os("sealing"))?;
    let mut mapped: Vec<MappedRange> = Vec::with_capacity(ranges.len());
    let mut fd_offset = 0u64;
    for &(at, len) in ranges {
        if let Err(e) = map_over(base, at, len, &fd, fd_offset) {
            for r in &mapped {
                let _ = map_over(base, r.at, r.len, domain_memory, r.at);
            }
            return Err(BoMemoryError::Os("mapping a BO's memory", e));
        }
        mapped.push(MappedRange { at, len, fd_offset });
        fd_offset += len;
    }
    for &(at, len) in ranges {
        // The domain's pages under the BO are not used any more.
        let _ = rustix::fs::fallocate(
            domain_memory,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            at,
            len,
        );
    }
    Ok(BoMemory {
        fd,
        ranges: mapped,
        size,
        users: vec![uid],
    })
}

/// Maps `len` bytes of `fd` at `fd_offset` over the server's mapping at
/// `base + at`, replacing what was there.
fn map_over(base: usize, at: u64, len: u64, fd: &OwnedFd, fd_offset: u64) -> Result<(), Errno> {
    let addr = (base + at as usize) as *mut core::ffi::c_void;
    // SAFETY: `addr .. addr + len` lies inside the server's own mapping
    // of the domain (the callers checked the range against the domain's
    // length) and is page-aligned. `MAP_FIXED` swaps the pages under it
    // atomically: the range stays mapped, readable and writable, so the
    // driver core's pointers into it stay valid; only which memory
    // object backs those pages changes, and the core reaches the bytes
    // only through `MemoryRegion`'s atomic accesses, which tolerate
    // that.
    unsafe {
        rustix::mm::mmap(
            addr,
            len as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::FIXED,
            fd.as_fd(),
            fd_offset,
        )
    }
    .map(|_| ())
}
