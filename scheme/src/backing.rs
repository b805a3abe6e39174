//! Where BO contents live, and what a client may map of them.
//!
//! The driver core reads and writes each domain through one mapping in the
//! server ([`Region::server_addr`]). What a client may map depends on the
//! backend:
//!
//! | backend, domain | a client maps | through |
//! |---|---|---|
//! | host, simulated VRAM and GTT; host, linux-pci GTT | its own BO's pages, nothing else | a descriptor of that BO's own memory ([`ClientAccess::PerBo`]) |
//! | host, linux-pci VRAM (the BAR) | privileged callers only: the whole BAR; others read and write through the server | a descriptor of the BAR ([`ClientAccess::WholeForAdmin`]) |
//! | Redox | its own BO's pages | `mmap_prep`, which the scheme bounds to the BO |
//!
//! **Per-BO memory (host).** The first time a BO is mapped, it gets its own
//! memfd: the BO's bytes are copied into it and it is mapped
//! `MAP_FIXED | MAP_SHARED` over the BO's pages inside the server's
//! mapping, so the core's view is unchanged and server and clients share
//! the same pages from then on. The memfd is sealed against shrinking and
//! growing (`ftruncate` by a client fails, so the server never touches a
//! page that vanished: no `SIGBUS`), is mode 0600 (a client of another user
//! cannot reopen it through `/proc` with more rights than it was given),
//! and is handed out read-only to read-only handles. The domain's own
//! pages under it are released (`FALLOC_FL_PUNCH_HOLE`). When the BO is
//! freed and its pages are about to be reused — the next create that
//! overlaps them, or the periodic sweep — the domain's (zeroed) pages are
//! mapped back, and whoever still holds the old memfd keeps only that
//! dead BO's bytes.
//!
//! **What mapping costs the server (host).** Each BO memory is one open
//! descriptor, and each of its segments splits the server's mapping of the
//! domain (up to two more kernel mappings). Both are bounded
//! ([`MappingLimits`]): over all users, at most [`MAX_MAPPED_SEGMENTS`]
//! segments in both domains together (kept well below the kernel's
//! `vm.max_map_count`) and a number of BO memories the daemon derives from
//! its descriptor limit (`ENOMEM` beyond); per user, the shares of
//! [`UserLimits`](crate::budget::UserLimits) (`EDQUOT` beyond), so one
//! user never takes the whole budget. A BO memory is charged to every user
//! whose clients mapped the BO, each for as long as that user still holds
//! the BO (some client of it has a handle on it), so no user's share is
//! held by another user's choices: a user that maps BOs another user
//! exported gets its share back when it closes them, whatever the
//! exporter does. When the last user charged for a BO memory lets go
//! while the BO lives on (held by users that never mapped it), the memory
//! goes back to the domain with the BO's bytes ([`Backing::let_go`]), so
//! no BO memory stays charged to nobody; a mapping still held by a client
//! whose user let go keeps only a copy. On Redox a mapping costs the
//! server nothing (the kernel maps the BO's pages into the client), so
//! none of this applies there.

#[cfg(not(target_os = "redox"))]
pub use host::{BoMemoryError, ClientAccess};

/// Page size of every mapping the scheme hands out: the core's page, the
/// granule every BO takes whole.
pub const PAGE: u64 = pddgpu::driver::PAGE_SIZE;

/// Most segments (mapped ranges) all per-BO memories of both domains may
/// hold at once. Each splits the server's mapping of its domain (up to two
/// more kernel mappings), and the kernel bounds how many a process may have
/// (`vm.max_map_count`, 65530 by default): 16384 segments stay below half
/// of it with room for every connection thread's stack.
pub const MAX_MAPPED_SEGMENTS: usize = 16 << 10;

/// What mapping may cost the server, over all users and per user (host
/// transport; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingLimits {
    /// Segments mapped at once, both domains, all users (`ENOMEM` beyond).
    pub segments_total: usize,
    /// BO memories (server descriptors) at once, all users (`ENOMEM`
    /// beyond).
    pub bos_total: usize,
    /// Segments one user may have mapped (`EDQUOT` beyond).
    pub segments_per_uid: usize,
    /// BO memories one user may have mapped (`EDQUOT` beyond).
    pub bos_per_uid: usize,
}

impl Default for MappingLimits {
    fn default() -> Self {
        let user = crate::budget::UserLimits::default();
        MappingLimits {
            segments_total: MAX_MAPPED_SEGMENTS,
            bos_total: MAX_MAPPED_SEGMENTS,
            segments_per_uid: user.mapped_segments_per_uid,
            bos_per_uid: user.mapped_bos_per_uid,
        }
    }
}

/// One domain's backing memory.
#[derive(Debug, Default)]
pub struct Region {
    /// Address of the domain's memory in the server's address space (Redox:
    /// `mmap_prep` returns addresses inside it; host: per-BO memories are
    /// mapped over it). `None` when clients must not map through it.
    pub server_addr: Option<usize>,
    /// What clients may map of this domain (host transport).
    #[cfg(not(target_os = "redox"))]
    pub clients: ClientAccess,
    #[cfg(not(target_os = "redox"))]
    memories: host::BoMemories,
}

impl Region {
    /// A region clients map through per-BO memories carved out of `memory`,
    /// the descriptor behind the server's mapping at `server_addr` (`len`
    /// bytes).
    #[cfg(not(target_os = "redox"))]
    pub fn per_bo(server_addr: usize, memory: std::os::fd::OwnedFd, len: usize) -> Self {
        Region {
            server_addr: Some(server_addr),
            clients: ClientAccess::PerBo { memory, len },
            memories: Default::default(),
        }
    }

    /// A region only privileged callers map, through `whole` (a descriptor
    /// of all of it); the server maps it at `server_addr`.
    #[cfg(not(target_os = "redox"))]
    pub fn whole_for_admin(server_addr: usize, whole: std::os::fd::OwnedFd) -> Self {
        Region {
            server_addr: Some(server_addr),
            clients: ClientAccess::WholeForAdmin { fd: whole },
            memories: Default::default(),
        }
    }

    /// A region that clients map through `mmap_prep` at `server_addr`
    /// (Redox; on the host, in-process tests of `mmap_prep`).
    pub fn kernel_mapped(server_addr: usize) -> Self {
        Region {
            server_addr: Some(server_addr),
            ..Default::default()
        }
    }
}

/// VRAM and GTT backing.
#[derive(Debug, Default)]
pub struct Backing {
    /// VRAM.
    pub vram: Region,
    /// GTT.
    pub gtt: Region,
    /// What the BO memories of both domains cost, all users and per user.
    #[cfg(not(target_os = "redox"))]
    budget: host::MappingBudget,
}

/// Which domain a [`Backing`] call is about.
pub use pddgpu_ipc::wire::Domain;

impl Backing {
    /// The backing of a device whose VRAM and GTT are `vram` and `gtt`,
    /// with the default [`MappingLimits`].
    pub fn new(vram: Region, gtt: Region) -> Self {
        Backing {
            vram,
            gtt,
            ..Default::default()
        }
    }

    /// The region of `domain`.
    pub fn region(&self, domain: Domain) -> &Region {
        match domain {
            Domain::Vram => &self.vram,
            Domain::Gtt => &self.gtt,
        }
    }

    /// The per-BO memories of `domain` and the domain pages they are
    /// carved from; `None` unless clients map `domain` per BO
    /// ([`ClientAccess::PerBo`]) through a server mapping.
    #[cfg(not(target_os = "redox"))]
    fn per_bo_memories(
        &mut self,
        domain: Domain,
    ) -> Option<(&mut host::BoMemories, host::DomainPages<'_>)> {
        let region = match domain {
            Domain::Vram => &mut self.vram,
            Domain::Gtt => &mut self.gtt,
        };
        let base = region.server_addr?;
        let ClientAccess::PerBo { memory, len } = &region.clients else {
            return None;
        };
        let pages = host::DomainPages {
            base,
            memory,
            len: *len,
            budget: &mut self.budget,
        };
        Some((&mut region.memories, pages))
    }

    /// Sets what mapping may cost the server (host transport).
    #[cfg(not(target_os = "redox"))]
    pub fn set_mapping_limits(&mut self, limits: MappingLimits) {
        self.budget.limits = limits;
    }

    /// The limits mapping is held to (host transport).
    #[cfg(not(target_os = "redox"))]
    pub fn mapping_limits(&self) -> MappingLimits {
        self.budget.limits
    }

    /// BO memories and segments user `uid` has mapped now (host
    /// transport; `(0, 0)` elsewhere).
    pub fn mapped_by(&self, uid: u32) -> (usize, usize) {
        #[cfg(not(target_os = "redox"))]
        {
            (self.budget.bos.used(uid), self.budget.segments.used(uid))
        }
        #[cfg(target_os = "redox")]
        {
            let _ = uid;
            (0, 0)
        }
    }

    /// The server address of `domain`'s memory, if clients may map it
    /// through the kernel (Redox `mmap_prep`).
    pub fn server_addr(&self, domain: Domain) -> Option<usize> {
        self.region(domain).server_addr
    }

    /// The address range `mmap_prep` may return for a mapping of `len`
    /// bytes at `offset` in a BO with `segments` (`(BO offset, backing
    /// offset, length)`): only inside one segment, only inside the BO's own
    /// pages. `None` when the request leaves them.
    pub fn kernel_map_addr(
        &self,
        domain: Domain,
        segments: &[(u64, u64, u64)],
        offset: u64,
        len: usize,
    ) -> Option<usize> {
        let base = self.server_addr(domain)?;
        if offset % PAGE != 0 || len == 0 {
            return None;
        }
        let end = offset.checked_add(len as u64)?;
        // The kernel maps one contiguous range: it must lie in one
        // segment, rounded up to whole pages (a BO owns the whole pages it
        // occupies, and no other BO shares them).
        let &(bo_offset, at, _) = segments.iter().find(|(bo_off, _, seg_len)| {
            *bo_off <= offset && end <= bo_off + seg_len.next_multiple_of(PAGE)
        })?;
        base.checked_add(usize::try_from(at + (offset - bo_offset)).ok()?)
    }

    /// A descriptor of `bo`'s own memory for a client of user `uid` (host
    /// transport): its byte 0 is the BO's byte 0 and it is exactly the BO's
    /// pages long; read-only unless `writable`. The BO's memory is charged
    /// to `uid` unless it already is (see the module docs and
    /// [`MappingLimits`]). Ownership of the descriptor passes to the caller.
    #[cfg(not(target_os = "redox"))]
    #[allow(clippy::too_many_arguments)]
    pub fn bo_memory_fd(
        &mut self,
        domain: Domain,
        bo: u64,
        size: u64,
        segments: &[(u64, u64, u64)],
        writable: bool,
        uid: u32,
    ) -> Result<std::os::fd::OwnedFd, BoMemoryError> {
        let (memories, mut pages) = self
            .per_bo_memories(domain)
            .ok_or(BoMemoryError::NotMappable)?;
        memories.descriptor(&mut pages, bo, size, segments, writable, uid)
    }

    /// A descriptor of all of `domain`'s memory, for privileged callers of
    /// a backend that cannot give out per-BO memory (the linux-pci VRAM
    /// BAR). Ownership passes to the caller.
    #[cfg(not(target_os = "redox"))]
    pub fn whole_domain_fd(&self, domain: Domain) -> Result<std::os::fd::OwnedFd, BoMemoryError> {
        match &self.region(domain).clients {
            ClientAccess::WholeForAdmin { fd } => {
                rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| BoMemoryError::Os("dup", e))
            }
            _ => Err(BoMemoryError::NotMappable),
        }
    }

    /// Whether any per-BO memory of `domain` exists (then creates must
    /// [`reclaim`](Self::reclaim) the pages they get).
    pub fn has_bo_memories(&self, domain: Domain) -> bool {
        #[cfg(not(target_os = "redox"))]
        {
            !self.region(domain).memories.is_empty()
        }
        #[cfg(target_os = "redox")]
        {
            let _ = domain;
            false
        }
    }

    /// A BO was just created on `segments` of `domain`: any per-BO memory
    /// still mapped over those pages belonged to a freed BO and gives them
    /// back, so the new BO's bytes never reach an old descriptor. Must run
    /// before the new BO is handed out.
    pub fn reclaim(&mut self, domain: Domain, segments: &[(u64, u64, u64)]) {
        #[cfg(not(target_os = "redox"))]
        {
            if let Some((memories, mut pages)) = self.per_bo_memories(domain) {
                memories.reclaim_overlapping(&mut pages, segments);
            }
        }
        #[cfg(target_os = "redox")]
        {
            let _ = (domain, segments);
        }
    }

    /// Gives back the pages of every per-BO memory whose BO `is_live` says
    /// is gone.
    pub fn sweep(&mut self, is_live: impl Fn(u64) -> bool) {
        #[cfg(not(target_os = "redox"))]
        for domain in [Domain::Vram, Domain::Gtt] {
            if let Some((memories, mut pages)) = self.per_bo_memories(domain) {
                memories.reclaim_dead(&mut pages, &is_live);
            }
        }
        #[cfg(target_os = "redox")]
        let _ = is_live;
    }

    /// Whether `bo` has a memory charged to user `uid` (host transport).
    pub fn charged_to(&self, bo: u64, uid: u32) -> bool {
        #[cfg(not(target_os = "redox"))]
        {
            self.vram.memories.charged_to(bo, uid) || self.gtt.memories.charged_to(bo, uid)
        }
        #[cfg(target_os = "redox")]
        {
            let _ = (bo, uid);
            false
        }
    }

    /// User `uid` no longer holds `bo`: its charge for the BO's memory
    /// ends, and a memory no user is charged for any more goes back to the
    /// domain, the BO's bytes with it (see the module docs).
    pub fn let_go(&mut self, bo: u64, uid: u32) {
        #[cfg(not(target_os = "redox"))]
        for domain in [Domain::Vram, Domain::Gtt] {
            if let Some((memories, mut pages)) = self.per_bo_memories(domain) {
                memories.let_go(&mut pages, bo, uid);
            }
        }
        #[cfg(target_os = "redox")]
        let _ = (bo, uid);
    }

    /// Per-BO memories currently mapped, both domains.
    pub fn bo_memory_count(&self) -> usize {
        #[cfg(not(target_os = "redox"))]
        {
            self.vram.memories.len() + self.gtt.memories.len()
        }
        #[cfg(target_os = "redox")]
        {
            0
        }
    }
}

// The mapping edge: per-BO memories are mapped over the server's own
// mapping of a domain.
#[cfg(not(target_os = "redox"))]
#[allow(unsafe_code)]
mod host;
