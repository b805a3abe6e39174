//! Where BO contents live, as the scheme hands them to clients: a file
//! descriptor to pass (host transport) and/or the server's own address of
//! the mapping (Redox `mmap_prep`).

#[cfg(not(target_os = "redox"))]
use std::os::fd::{IntoRawFd, OwnedFd};

use pddgpu_ipc::wire::Domain;

/// One domain's backing memory.
#[derive(Debug, Default)]
pub struct Region {
    /// Address of the backing in the server's address space (Redox:
    /// `mmap_prep` returns addresses inside it). `None` when clients must
    /// not map through the kernel.
    pub server_addr: Option<usize>,
    /// A descriptor of the backing (memfd of the simulated device, or the
    /// BAR resource file), duplicated for each client that maps a BO.
    #[cfg(not(target_os = "redox"))]
    pub fd: Option<OwnedFd>,
}

/// VRAM and GTT backing.
#[derive(Debug, Default)]
pub struct Backing {
    /// VRAM.
    pub vram: Region,
    /// GTT.
    pub gtt: Region,
}

impl Backing {
    fn region(&self, domain: Domain) -> &Region {
        match domain {
            Domain::Vram => &self.vram,
            Domain::Gtt => &self.gtt,
        }
    }

    /// The server address of `domain`'s backing, if clients may map it.
    pub fn server_addr(&self, domain: Domain) -> Option<usize> {
        self.region(domain).server_addr
    }

    /// A fresh descriptor of `domain`'s backing whose ownership passes to
    /// the caller (returned as `OpenResult::OtherScheme`).
    pub fn dup_fd(&self, domain: Domain) -> Option<usize> {
        #[cfg(not(target_os = "redox"))]
        {
            let fd = self.region(domain).fd.as_ref()?;
            match rustix::io::fcntl_dupfd_cloexec(fd, 0) {
                Ok(dup) => Some(dup.into_raw_fd() as usize),
                Err(e) => {
                    log::warn!("cannot duplicate the {domain} backing descriptor: {e}");
                    None
                }
            }
        }
        #[cfg(target_os = "redox")]
        {
            let _ = domain;
            None
        }
    }
}
