//! From programs to a bootable disk: the initfs (init's root, packed by
//! base's `redox-initfs-ar` with bootstrap in front), the RedoxFS
//! filesystem holding `/boot/kernel` and `/boot/initfs`, and the BIOS disk
//! image (the bootloader in the MBR and the sectors after it, RedoxFS at
//! 2 MiB where the BIOS bootloader looks for it).
//!
//! The initfs contract with the guest side: the tree `image/redox/initfs/`
//! is copied verbatim into the initfs root (it holds `etc/init.rc` and the
//! pcid match file), then the base programs and ours go into `/bin`,
//! stripped; init finds them at `/scheme/initfs/bin/<name>`.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::components::{self, Ctx};
use super::layout::Layout;
use super::sources::copy_tree;

/// The disk image's size.
pub const DISK_MIB: u64 = 64;
/// Where the RedoxFS partition starts: the BIOS bootloader opens RedoxFS at
/// this fixed offset (bootloader `src/os/bios/mod.rs`).
pub const FS_OFFSET_MIB: u64 = 2;
const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// A program that goes into the initfs's `/bin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// Its name in `/bin`.
    pub name: String,
    /// The built executable.
    pub path: PathBuf,
}

/// The packed initfs.
pub fn initfs_path(layout: &Layout) -> PathBuf {
    layout.build("initfs").join("initfs.img")
}

/// The file the overlay must provide.
pub const INIT_RC: &str = "etc/init.rc";

/// Assembles and packs the initfs. `upstream` are the keys of the steps
/// that built the programs, bootstrap and the archiver.
pub fn initfs(ctx: &Ctx, programs: &[Program], upstream: &[&str]) -> Result<String> {
    let layout = ctx.layout;
    let overlay = &layout.initfs_overlay;
    if !overlay.join(INIT_RC).is_file() {
        bail!(
            "{} does not exist: the initfs overlay ({}; set by --initfs or {}) must hold \
             init.rc and the pcid match file",
            overlay.join(INIT_RC).display(),
            overlay.display(),
            super::layout::INITFS_ENV
        );
    }
    let mut key = ctx.key("initfs", None)?;
    key.tree("overlay", overlay, &[])?;
    for (i, k) in upstream.iter().enumerate() {
        key.text(&format!("upstream{i}"), k);
    }
    for p in programs {
        key.text("program", &p.name);
    }
    let out = layout.build("initfs");
    let root = out.join("root");
    let image = initfs_path(layout);
    let (key, _) = ctx
        .progress
        .cached("initfs", &key, std::slice::from_ref(&image), |log| {
            let _ = fs::remove_dir_all(&root);
            copy_tree(overlay, &root)?;
            fs::create_dir_all(root.join("bin"))?;
            for p in programs {
                log.run(
                    Command::new("strip")
                        .arg("-o")
                        .arg(root.join("bin").join(&p.name))
                        .arg(&p.path),
                )?;
            }
            log.run(
                Command::new(components::initfs_ar_path(layout))
                    .arg(&root)
                    .arg(components::bootstrap_path(layout))
                    .arg("-o")
                    .arg(&image),
            )
        })?;
    Ok(key)
}

/// The RedoxFS filesystem.
pub fn filesystem_path(layout: &Layout) -> PathBuf {
    layout.build("filesystem").join("filesystem.bin")
}

/// Packs `/boot/kernel` and `/boot/initfs` into a RedoxFS the size of the
/// disk's partition.
pub fn filesystem(ctx: &Ctx, upstream: &[&str]) -> Result<String> {
    let layout = ctx.layout;
    let mut key = ctx.key("filesystem", None)?;
    for (i, k) in upstream.iter().enumerate() {
        key.text(&format!("upstream{i}"), k);
    }
    key.text("size", &(DISK_MIB - FS_OFFSET_MIB).to_string());
    let out = layout.build("filesystem");
    let root = out.join("root");
    let fs_bin = filesystem_path(layout);
    let (key, _) =
        ctx.progress
            .cached("filesystem", &key, std::slice::from_ref(&fs_bin), |log| {
                let _ = fs::remove_dir_all(&root);
                fs::create_dir_all(root.join("boot"))?;
                fs::copy(components::kernel_path(layout), root.join("boot/kernel"))?;
                fs::copy(initfs_path(layout), root.join("boot/initfs"))?;
                let _ = fs::remove_file(&fs_bin);
                File::create(&fs_bin)?.set_len((DISK_MIB - FS_OFFSET_MIB) * MIB)?;
                log.run(
                    Command::new(components::tool_bin(layout, "redoxfs-ar"))
                        .arg(&fs_bin)
                        .arg(&root),
                )
            })?;
    Ok(key)
}

/// The one MBR partition: RedoxFS from [`FS_OFFSET_MIB`] to the end of the
/// disk, type 0x83 as `parted mkpart primary` writes it. The BIOS
/// bootloader does not read it (it looks at the fixed offset); it is there
/// for tools that inspect the image.
pub fn partition_entry(disk_sectors: u64) -> [u8; 16] {
    let first = FS_OFFSET_MIB * MIB / SECTOR;
    let count = disk_sectors - first;
    let mut entry = [0u8; 16];
    entry[1..4].copy_from_slice(&chs(first));
    entry[4] = 0x83;
    entry[5..8].copy_from_slice(&chs(disk_sectors - 1));
    entry[8..12].copy_from_slice(&(first as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    entry
}

/// The CHS address of `lba` with the usual 255 heads × 63 sectors
/// geometry, or the "use LBA" maximum beyond 1024 cylinders.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (255, 63);
    let cylinder = lba / (heads * sectors);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / sectors) % heads;
    let sector = lba % sectors + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

/// Writes the BIOS disk image: `bootloader` (sector 0 up to the partition
/// table, the rest from sector 1 on), the partition table and boot
/// signature, and `filesystem` at [`FS_OFFSET_MIB`].
pub fn write_disk(bootloader: &[u8], filesystem: &Path, disk: &Path) -> Result<()> {
    let stage_room = FS_OFFSET_MIB * MIB;
    if bootloader.len() < SECTOR as usize || bootloader.len() as u64 > stage_room {
        bail!(
            "bootloader.bin is {} bytes; it must fill the first sector and end before {FS_OFFSET_MIB} MiB",
            bootloader.len()
        );
    }
    let fs_len = fs::metadata(filesystem)
        .with_context(|| format!("reading {}", filesystem.display()))?
        .len();
    if fs_len > (DISK_MIB - FS_OFFSET_MIB) * MIB {
        bail!("the filesystem ({fs_len} bytes) does not fit the disk");
    }
    let _ = fs::remove_file(disk);
    let mut out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("creating {}", disk.display()))?;
    out.set_len(DISK_MIB * MIB)?;
    let mut mbr = [0u8; SECTOR as usize];
    mbr[..446].copy_from_slice(&bootloader[..446]);
    mbr[446..462].copy_from_slice(&partition_entry(DISK_MIB * MIB / SECTOR));
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    out.write_all(&mbr)?;
    out.write_all(&bootloader[SECTOR as usize..])?;
    out.seek(SeekFrom::Start(stage_room))?;
    std::io::copy(&mut File::open(filesystem)?, &mut out)?;
    out.sync_all()?;
    Ok(())
}

/// Writes the disk image (not cached: a few milliseconds, and `redox-boot`
/// removes it afterwards unless `--keep`).
pub fn disk(ctx: &Ctx) -> Result<PathBuf> {
    let layout = ctx.layout;
    let disk = layout.disk_image();
    ctx.progress.plain("disk image", || {
        let bootloader = fs::read(components::bootloader_path(layout))?;
        write_disk(&bootloader, &filesystem_path(layout), &disk)
    })?;
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_covers_the_disk_from_two_mib() {
        let sectors = DISK_MIB * MIB / SECTOR;
        let e = partition_entry(sectors);
        assert_eq!(e[0], 0, "not marked active, like parted");
        assert_eq!(e[4], 0x83);
        assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 4096);
        assert_eq!(
            u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64,
            sectors - 4096
        );
        // LBA 4096 = cylinder 0, head 65, sector 2 with 255×63 geometry.
        assert_eq!(chs(4096), [65, 2, 0]);
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
        // Cylinder bits 8-9 go into the sector byte's top bits.
        assert_eq!(chs(300 * 255 * 63), [0, 1 | (1 << 6), 44]);
    }

    #[test]
    fn the_disk_has_the_bootloader_table_and_filesystem_in_place() {
        let dir = std::env::temp_dir().join(format!("pddgpu-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bootloader: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 | 1).collect();
        let fs_path = dir.join("fs.bin");
        let fs_bytes: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        fs::write(&fs_path, &fs_bytes).unwrap();
        let disk = dir.join("disk.img");
        write_disk(&bootloader, &fs_path, &disk).unwrap();
        let img = fs::read(&disk).unwrap();
        assert_eq!(img.len() as u64, DISK_MIB * MIB);
        assert_eq!(&img[..446], &bootloader[..446]);
        assert_eq!(&img[446..462], &partition_entry(DISK_MIB * MIB / SECTOR));
        assert_eq!(&img[462..510], &[0u8; 48][..], "one partition only");
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        assert_eq!(&img[512..3000], &bootloader[512..]);
        assert!(img[3000..2 * MIB as usize].iter().all(|&b| b == 0));
        let fs_at = (FS_OFFSET_MIB * MIB) as usize;
        assert_eq!(&img[fs_at..fs_at + fs_bytes.len()], &fs_bytes[..]);

        // A bootloader that would run into the filesystem is refused.
        let huge = vec![1u8; (FS_OFFSET_MIB * MIB + 1) as usize];
        assert!(write_disk(&huge, &fs_path, &disk).is_err());
        assert!(write_disk(&bootloader[..100], &fs_path, &disk).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parted_agrees_on_the_partition_when_present() {
        let Some(parted) = crate::hosttools::find("parted") else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("pddgpu-parted-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("p.img");
        File::create(&img).unwrap().set_len(DISK_MIB * MIB).unwrap();
        for args in [
            &["mklabel", "msdos"][..],
            &["mkpart", "primary", "2MiB", "100%"][..],
        ] {
            let status = Command::new(&parted)
                .args(["-s", "-a", "minimal"])
                .arg(&img)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let theirs = fs::read(&img).unwrap();
        let ours = partition_entry(DISK_MIB * MIB / SECTOR);
        // Same status, type, first sector and length (parted's CHS follows
        // its own geometry guess).
        assert_eq!(theirs[446], ours[0]);
        assert_eq!(theirs[446 + 4], ours[4]);
        assert_eq!(&theirs[446 + 8..462], &ours[8..]);
        assert_eq!(&theirs[510..512], &[0x55, 0xaa]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
