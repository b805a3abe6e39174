//! Linux sysfs PCI backend: a real (or emulated) PCI GPU handed to pddgpud
//! as a sysfs directory such as `/sys/bus/pci/devices/0000:00:02.0`.
//!
//! The backend opens exactly two files of that directory — `resource0`
//! (the VRAM BAR) and `resource2` (the MMIO BAR) — maps them, and touches
//! nothing else: no config space, no driver binding, no `/dev/mem`. The open
//! files are the capability; everything the core learns about the device it
//! reads through the MMIO mapping. Clients map a BO by receiving a duplicate
//! of the `resource0` descriptor and the BO's offset in it, so their writes
//! land in the device's VRAM.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use pddgpu::device::bochs::{self, BochsModel};
use pddgpu::device::{DeviceModel, DeviceResources, MemoryRegion, Mmio};
use pddgpu::driver::Driver;
use pddgpu_ipc::size::format_size;
use pddgpu_scheme::backing::{Backing, Region};

use super::OpenedDevice;
use crate::entropy::OsRandom;
use crate::options::Options;

/// Where Linux lists PCI functions.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The BAR that holds VRAM.
pub const VRAM_BAR: u8 = bochs::VRAM_BAR;
/// The BAR that holds the MMIO registers.
pub const MMIO_BAR: u8 = bochs::MMIO_BAR;

/// The PCI functions this backend drives: QEMU's `bochs-display`.
pub const SUPPORTED: [PciId; 1] = [PciId {
    vendor: bochs::PCI_VENDOR,
    device: bochs::PCI_DEVICE,
}];

/// A PCI vendor/device id pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciId {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
}

impl fmt::Display for PciId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// Why the backend could not provide a device.
#[derive(Debug)]
pub enum LinuxPciError {
    /// No PCI function with a supported id.
    NoDevice {
        /// Where we looked.
        root: PathBuf,
        /// What we looked for.
        ids: Vec<PciId>,
    },
    /// The given directory is not a PCI function with a supported id.
    Unsupported {
        /// The directory.
        path: PathBuf,
        /// Its id, if readable.
        id: Option<PciId>,
    },
    /// A sysfs file could not be read, opened or mapped.
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A BAR file has no size (BAR not assigned by the firmware).
    EmptyBar {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for LinuxPciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxPciError::NoDevice { root, ids } => {
                let ids: Vec<String> = ids.iter().map(PciId::to_string).collect();
                write!(
                    f,
                    "no PDDGPU-compatible device: no PCI function with id {} under {}",
                    ids.join(" or "),
                    root.display()
                )
            }
            LinuxPciError::Unsupported { path, id } => match id {
                Some(id) => write!(
                    f,
                    "no PDDGPU-compatible device: {} is PCI {id}, which pddgpud does not drive",
                    path.display()
                ),
                None => write!(
                    f,
                    "no PDDGPU-compatible device: {} is not a PCI function (no readable vendor/device files)",
                    path.display()
                ),
            },
            LinuxPciError::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            LinuxPciError::EmptyBar { path } => {
                write!(f, "{} has size 0: the BAR is not assigned", path.display())
            }
        }
    }
}

impl std::error::Error for LinuxPciError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinuxPciError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn parse_id(text: &str) -> Option<u16> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u16::from_str_radix(hex, 16).ok()
}

/// Reads the vendor/device id of the PCI function at `dev`.
pub fn read_id(dev: &Path) -> Option<PciId> {
    let id = |f: &str| {
        fs::read_to_string(dev.join(f))
            .ok()
            .and_then(|t| parse_id(&t))
    };
    Some(PciId {
        vendor: id("vendor")?,
        device: id("device")?,
    })
}

/// The first PCI function under `root` (sorted by address) whose id is in
/// `ids`.
pub fn find(root: &Path, ids: &[PciId]) -> Result<PathBuf, LinuxPciError> {
    let entries = fs::read_dir(root).map_err(|source| LinuxPciError::Io {
        what: "listing",
        path: root.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| read_id(p).is_some_and(|id| ids.contains(&id)))
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| LinuxPciError::NoDevice {
            root: root.to_path_buf(),
            ids: ids.to_vec(),
        })
}

/// One BAR, opened read-write from its sysfs `resourceN` file and mapped
/// shared for the life of this value.
pub struct Bar {
    path: PathBuf,
    file: File,
    map: MmapRaw,
}

impl fmt::Debug for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bar")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Bar {
    /// Opens and maps `dev/resource<index>`.
    pub fn open(dev: &Path, index: u8) -> Result<Self, LinuxPciError> {
        let path = dev.join(format!("resource{index}"));
        let io = |what| {
            let path = path.clone();
            move |source| LinuxPciError::Io { what, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening"))?;
        let len = file.metadata().map_err(io("reading the size of"))?.len();
        if len == 0 {
            return Err(LinuxPciError::EmptyBar { path });
        }
        let len = usize::try_from(len).map_err(|_| LinuxPciError::Io {
            what: "mapping",
            path: path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "BAR larger than the address space",
            ),
        })?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(io("mapping"))?;
        Ok(Self { path, file, map })
    }

    /// The sysfs file this BAR was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the BAR in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the BAR is empty (never: [`Bar::open`] refuses empty BARs).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Start of the mapping. Valid while `self` lives.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The open `resourceN` file: what a client maps (at a BO's offset)
    /// to reach the same memory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A PCI GPU opened through sysfs: its VRAM and MMIO BARs, mapped.
#[derive(Debug)]
pub struct LinuxPciDevice {
    path: PathBuf,
    id: PciId,
    vram: Bar,
    mmio: Bar,
}

impl LinuxPciDevice {
    /// Opens the PCI function at `dev` if its id is in `ids`.
    pub fn open(dev: &Path, ids: &[PciId]) -> Result<Self, LinuxPciError> {
        let id = read_id(dev);
        let Some(id) = id.filter(|id| ids.contains(id)) else {
            return Err(LinuxPciError::Unsupported {
                path: dev.to_path_buf(),
                id,
            });
        };
        let mmio = Bar::open(dev, MMIO_BAR)?;
        let vram = Bar::open(dev, VRAM_BAR)?;
        Ok(Self {
            path: dev.to_path_buf(),
            id,
            vram,
            mmio,
        })
    }

    /// Finds the first supported device under `root` and opens it.
    pub fn discover(root: &Path, ids: &[PciId]) -> Result<Self, LinuxPciError> {
        let dev = find(root, ids)?;
        Self::open(&dev, ids)
    }

    /// The sysfs directory of the device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's PCI id.
    pub fn id(&self) -> PciId {
        self.id
    }

    /// The VRAM BAR.
    pub fn vram(&self) -> &Bar {
        &self.vram
    }

    /// The MMIO BAR.
    pub fn mmio(&self) -> &Bar {
        &self.mmio
    }
}

/// A duplicate of the BAR file descriptor (close-on-exec), for a client
/// to map.
fn dup(file: &File, path: &Path) -> Result<OwnedFd, String> {
    file.try_clone()
        .map(OwnedFd::from)
        .map_err(|e| format!("duplicating the descriptor of {}: {e}", path.display()))
}

/// System memory for the GTT aperture: a memfd mapped shared, so clients
/// can map GTT BOs from a duplicate of its descriptor. Never unmapped (the
/// driver core uses it until the process ends).
fn gtt_memory(len: u64) -> Result<(OwnedFd, *mut u8, usize), String> {
    let fail = |what: &str, e: &dyn fmt::Display| format!("GTT memory: {what}: {e}");
    let len_usize = usize::try_from(len).map_err(|_| format!("GTT size {len} too large"))?;
    let fd = rustix::fs::memfd_create("pddgpu-gtt", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| fail("memfd_create", &e))?;
    let file = File::from(fd);
    file.set_len(len).map_err(|e| fail("ftruncate", &e))?;
    let map = MmapOptions::new()
        .len(len_usize)
        .map_raw(&file)
        .map_err(|e| fail("mmap", &e))?;
    let ptr = map.as_mut_ptr();
    std::mem::forget(map);
    Ok((OwnedFd::from(file), ptr, len_usize))
}

/// Opens the PCI GPU the options name (`--pci-device`), or the first
/// supported one under [`SYSFS_PCI_DEVICES`], and runs the driver core on
/// it: registers through the MMIO BAR, VRAM = the VRAM BAR (size read from
/// the device's registers), GTT = a memfd of `--gtt-size` bytes.
pub fn open(opts: &Options) -> Result<OpenedDevice, String> {
    let device = match &opts.pci_device {
        Some(dev) => LinuxPciDevice::open(dev, &SUPPORTED),
        None => LinuxPciDevice::discover(Path::new(SYSFS_PCI_DEVICES), &SUPPORTED),
    }
    .map_err(|e| e.to_string())?;
    let at = device.path().display().to_string();
    let model = BochsModel::new(opts.gtt_size).map_err(|e| format!("{at}: {e}"))?;
    // SAFETY: the MMIO BAR mapping is shared device memory that stays
    // mapped for the life of the process (`device` is leaked below) and is
    // accessed only through `Mmio`'s volatile accesses.
    let mmio = unsafe { Mmio::new(device.mmio().as_mut_ptr(), device.mmio().len()) }
        .map_err(|e| format!("{at}: MMIO BAR: {e}"))?;
    let info = model
        .probe(&mmio)
        .map_err(|e| format!("no PDDGPU-compatible device: {at}: {e}"))?;
    let bar_len = device.vram().len() as u64;
    if info.vram_size > bar_len {
        return Err(format!(
            "{at}: registers report {} of VRAM but the VRAM BAR has only {}",
            format_size(info.vram_size),
            format_size(bar_len)
        ));
    }
    // SAFETY: the first `vram_size` bytes of the VRAM BAR mapping (checked
    // just above), mapped read-write for the life of the process (leaked
    // below); the core touches it only with atomic copies, and clients
    // write it concurrently through their own mappings of `resource0`.
    let vram = unsafe { MemoryRegion::new(device.vram().as_mut_ptr(), info.vram_size as usize) }
        .map_err(|e| format!("{at}: VRAM BAR: {e}"))?;
    let (gtt_fd, gtt_ptr, gtt_len) = gtt_memory(info.gtt_size)?;
    // SAFETY: a fresh shared mapping, never unmapped (see `gtt_memory`),
    // accessed by the core only through `MemoryRegion`.
    let gtt =
        unsafe { MemoryRegion::new(gtt_ptr, gtt_len) }.map_err(|e| format!("GTT memory: {e}"))?;
    let resources = DeviceResources {
        mmio,
        model: model.boxed(),
        vram,
        gtt,
    };
    let driver = Driver::with_options(resources, OsRandom::driver_options()?, 0)
        .map_err(|e| format!("driver on {at}: {e}"))?;
    let description = format!(
        "{} at {at} (PCI {}): {} VRAM in BAR{VRAM_BAR} (resource{VRAM_BAR}), registers in BAR{MMIO_BAR}, {} GTT in a memfd",
        info.name,
        device.id(),
        format_size(info.vram_size),
        format_size(info.gtt_size),
    );
    // VRAM is the BAR: no descriptor can cover one BO of it, so only
    // privileged callers map it (the whole BAR); everyone else reads and
    // writes VRAM BOs through the server. GTT is system memory: each mapped
    // BO gets its own memory.
    let backing = Backing::new(
        Region::whole_for_admin(
            device.vram().as_mut_ptr() as usize,
            dup(&device.vram().file, device.vram().path())?,
        ),
        Region::per_bo(gtt_ptr as usize, gtt_fd, gtt_len),
    );
    // The BAR mappings back `mmio` and `vram` until the process exits.
    std::mem::forget(device);
    Ok(OpenedDevice {
        driver: Arc::new(driver),
        backing,
        faults: None,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOCHS: PciId = PciId {
        vendor: 0x1234,
        device: 0x1111,
    };

    /// A fake `/sys/bus/pci/devices` under the temp directory (an Intel
    /// host bridge at `00:01.0`, bochs-displays at `00:03.0` and `00:04.0`),
    /// removed on drop.
    struct FakeSysfs {
        root: PathBuf,
    }

    impl FakeSysfs {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("pddgpud-sysfs-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for (bdf, vendor, device) in [
                ("0000:00:01.0", "0x8086", "0x7000"),
                ("0000:00:03.0", "0x1234", "0x1111"),
                ("0000:00:04.0", "0x1234", "0x1111"),
            ] {
                let d = root.join(bdf);
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
                fs::write(d.join("device"), format!("{device}\n")).unwrap();
            }
            FakeSysfs { root }
        }

        /// The first supported function, the one `find` picks.
        fn bochs(&self) -> PathBuf {
            self.root.join("0000:00:03.0")
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// 4 KiB of bochs-display registers: the DISPI id, and `vram_mib` in the
    /// VRAM size register (in 64 KiB units).
    fn dispi_regs(vram_mib: u16) -> Vec<u8> {
        let mut regs = vec![0u8; 4096];
        regs[0x500..0x502].copy_from_slice(&0xb0c5u16.to_le_bytes());
        regs[0x514..0x516].copy_from_slice(&(vram_mib * 16).to_le_bytes());
        regs
    }

    #[test]
    fn finds_the_first_supported_function() {
        let sysfs = FakeSysfs::new("find");
        assert_eq!(find(&sysfs.root, &[BOCHS]).unwrap(), sysfs.bochs());
    }

    #[test]
    fn no_device_error_is_clear() {
        let sysfs = FakeSysfs::new("none");
        let root = &sysfs.root;
        let other = PciId {
            vendor: 0x1af4,
            device: 0x1050,
        };
        let err = find(root, &[other]).unwrap_err().to_string();
        assert!(err.starts_with("no PDDGPU-compatible device"), "{err}");
        assert!(
            err.contains("1af4:1050") && err.contains(root.to_str().unwrap()),
            "{err}"
        );
        let err = LinuxPciDevice::open(&root.join("0000:00:01.0"), &[BOCHS])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is PCI 8086:7000"), "{err}");
    }

    #[test]
    fn maps_resource_files_and_sees_their_bytes() {
        // Regular files stand in for the BAR files: the same open + mmap path.
        let sysfs = FakeSysfs::new("map");
        let dev = sysfs.bochs();
        fs::write(dev.join("resource0"), vec![0xabu8; 8192]).unwrap();
        fs::write(dev.join("resource2"), dispi_regs(0)).unwrap();
        let gpu = LinuxPciDevice::discover(&sysfs.root, &[BOCHS]).unwrap();
        assert_eq!(gpu.id(), BOCHS);
        assert_eq!(gpu.vram().len(), 8192);
        assert_eq!(gpu.mmio().len(), 4096);
        // SAFETY: offsets inside the live mappings checked just above.
        let (v, id) = unsafe {
            (
                gpu.vram().as_mut_ptr().add(100).read_volatile(),
                gpu.mmio()
                    .as_mut_ptr()
                    .add(0x500)
                    .cast::<u16>()
                    .read_unaligned(),
            )
        };
        assert_eq!((v, id), (0xab, 0xb0c5));
    }

    /// Options for `--backend linux-pci --pci-device <dev>`.
    fn options(dev: &Path, gtt_size: u64) -> Options {
        let mut opts = Options::for_sim(1 << 20, gtt_size);
        opts.backend = crate::options::BackendKind::LinuxPci;
        opts.pci_device = Some(dev.to_path_buf());
        opts
    }

    /// A fake bochs-display: `resource0` a sparse VRAM file of `bar_mib`,
    /// `resource2` 4 KiB of registers with the DISPI id and `vram_mib`.
    fn fake_bochs(tag: &str, bar_mib: u64, vram_mib: u16) -> (FakeSysfs, PathBuf) {
        let sysfs = FakeSysfs::new(tag);
        let dev = sysfs.bochs();
        File::create(dev.join("resource0"))
            .unwrap()
            .set_len(bar_mib << 20)
            .unwrap();
        fs::write(dev.join("resource2"), dispi_regs(vram_mib)).unwrap();
        (sysfs, dev)
    }

    #[test]
    fn open_runs_the_driver_with_bo_bytes_in_the_vram_bar_file() {
        use pddgpu::driver::{BoCreate, Domain};
        let (_sysfs, dev) = fake_bochs("open", 8, 8);
        let opened = open(&options(&dev, 1 << 20)).unwrap();
        assert!(
            opened.description.contains("bochs-display"),
            "{}",
            opened.description
        );
        assert!(opened.description.contains("0000:00:03.0"));
        assert!(opened.faults.is_none());
        let driver = &opened.driver;
        assert_eq!(driver.vram_stats().total_size, 8 << 20);
        let req = BoCreate::new(3 * 4096 + 100, Domain::Vram, "t");
        let id = driver.bo_create(1, &req, 0).unwrap();
        let data: Vec<u8> = (0..req.size).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(driver.bo_write(1, id, 0, &data).unwrap(), data.len());
        // The bytes are in the VRAM BAR file, at the BO's segments.
        let bar = fs::read(dev.join("resource0")).unwrap();
        let info = driver.bo_info(1, id).unwrap();
        let info_segments = info.segments.clone();
        for (bo_off, backing_off, len) in info.segments {
            let (b, o, l) = (bo_off as usize, backing_off as usize, len as usize);
            assert_eq!(&bar[o..o + l], &data[b..b + l]);
        }
        // The descriptor passed to privileged clients is the same file;
        // no per-BO descriptor exists for the BAR.
        let fd = opened
            .backing
            .whole_domain_fd(pddgpu_scheme::backing::Domain::Vram)
            .unwrap();
        let dup_len = File::from(fd).metadata().unwrap().len();
        assert_eq!(dup_len, 8 << 20);
        let mut backing = opened.backing;
        let per_bo = backing.bo_memory_fd(
            pddgpu_scheme::backing::Domain::Vram,
            id.0,
            req.size,
            &info_segments,
            true,
            0,
        );
        assert_eq!(
            per_bo.err().map(|e| e.errno()),
            Some(syscall::error::EOPNOTSUPP)
        );
    }

    #[test]
    fn open_refuses_wrong_registers_and_a_short_bar() {
        // Registers claim 16 MiB of VRAM, the BAR has 8.
        let (_sysfs, dev) = fake_bochs("short", 8, 16);
        let err = open(&options(&dev, 1 << 20)).err().unwrap();
        assert!(err.contains("VRAM BAR has only"), "{err}");
        // Not a DISPI device: the id register reads 0.
        let mut regs = vec![0u8; 4096];
        regs[0x514] = 1;
        fs::write(dev.join("resource2"), &regs).unwrap();
        let err = open(&options(&dev, 1 << 20)).err().unwrap();
        assert!(err.starts_with("no PDDGPU-compatible device"), "{err}");
        // A bad GTT size is refused before anything is mapped.
        let err = open(&options(&dev, 1000)).err().unwrap();
        assert!(err.contains("GTT"), "{err}");
    }

    #[test]
    fn empty_or_missing_bar_is_an_error() {
        let sysfs = FakeSysfs::new("empty");
        let dev = sysfs.bochs();
        fs::write(dev.join("resource2"), b"").unwrap();
        let err = LinuxPciDevice::open(&dev, &[BOCHS]).unwrap_err();
        assert!(matches!(err, LinuxPciError::EmptyBar { .. }), "{err}");
        fs::write(dev.join("resource2"), vec![0u8; 4096]).unwrap();
        let err = LinuxPciDevice::open(&dev, &[BOCHS]).unwrap_err();
        assert!(err.to_string().contains("resource0"), "{err}");
    }
}
