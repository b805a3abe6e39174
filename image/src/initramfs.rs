//! An in-memory initramfs: a tree of directories, files and symlinks,
//! written as a gzip-compressed newc cpio archive (the format the Linux
//! kernel unpacks into its root file system).
//!
//! The archive is deterministic: entries are sorted (parents before
//! children), owned by root and time-stamped 0, so the same inputs give the
//! same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use cpio::newc::{Builder, ModeFileType};
use flate2::write::GzEncoder;
use flate2::Compression;

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its permission bits (e.g. `0o755`).
    File {
        /// File contents.
        data: Vec<u8>,
        /// Permission bits (no file-type bits).
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink {
        /// Where the link points.
        target: String,
    },
}

/// A file tree to be packed into an initramfs.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

/// Checks a guest path and returns it without the leading `/`.
fn normalize(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        bail!("initramfs path `{path}` names the root itself");
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            bail!("initramfs path `{path}` has an empty, `.` or `..` component");
        }
    }
    if trimmed.len() > 1024 {
        bail!("initramfs path `{path}` is too long");
    }
    Ok(trimmed.to_string())
}

impl Initramfs {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure_parents(&mut self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.nodes.get(parent) {
                None => {
                    self.nodes.insert(parent.to_string(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => bail!("initramfs: `/{parent}` is not a directory"),
            }
            end += pos + 1;
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let path = normalize(path)?;
        self.ensure_parents(&path)?;
        match (self.nodes.get(&path), &node) {
            (Some(Node::Dir), Node::Dir) => Ok(()),
            (Some(_), _) => bail!("initramfs: `/{path}` added twice"),
            (None, _) => {
                self.nodes.insert(path, node);
                Ok(())
            }
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.insert(path, Node::Dir)
    }

    /// Adds a regular file with permission bits `mode` (and its parents).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        if mode & !0o7777 != 0 {
            bail!("initramfs: mode {mode:#o} for `{path}` has bits beyond 0o7777");
        }
        if u32::try_from(data.len()).is_err() {
            bail!("initramfs: `{path}` is larger than the 4 GiB newc limit");
        }
        self.insert(path, Node::File { data, mode })
    }

    /// Copies a host file (following symlinks) into the tree at `path`,
    /// keeping its permission bits.
    pub fn copy_from_host(&mut self, path: &str, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)
            .with_context(|| format!("stat {}", host.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.file(path, data, mode)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() {
            bail!("initramfs: empty symlink target for `{path}`");
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Whether the tree has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.nodes.contains_key(&p))
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|p| self.nodes.get(&p))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Writes the tree as an uncompressed newc cpio archive (with trailer).
    pub fn write_cpio<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let builder = Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
            let (builder, data): (Builder, &[u8]) = match node {
                Node::Dir => (
                    builder
                        .mode(0o755)
                        .nlink(2)
                        .set_mode_file_type(ModeFileType::Directory),
                    &[],
                ),
                Node::File { data, mode } => (
                    builder
                        .mode(*mode)
                        .nlink(1)
                        .set_mode_file_type(ModeFileType::Regular),
                    data,
                ),
                Node::Symlink { target } => (
                    builder
                        .mode(0o777)
                        .nlink(1)
                        .set_mode_file_type(ModeFileType::Symlink),
                    target.as_bytes(),
                ),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry over 4 GiB"))?;
            let mut writer = builder.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        cpio::newc::trailer(out)
    }

    /// Writes the tree as a gzip-compressed newc archive to `path`;
    /// returns the compressed size. Written to a temporary name first and
    /// renamed, so a reader never sees half an archive.
    pub fn write_gz(&self, path: &Path) -> Result<u64> {
        let tmp = path.with_extension("tmp");
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let encoder = GzEncoder::new(io::BufWriter::new(file), Compression::fast());
        let encoder = self
            .write_cpio(encoder)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let mut buffered = encoder.finish()?;
        buffered.flush()?;
        drop(buffered);
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(fs::metadata(path)?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = archive;
        loop {
            let mut reader = cpio::newc::Reader::new(rest).expect("valid newc entry");
            if reader.entry().is_trailer() {
                break;
            }
            let name = reader.entry().name().to_string();
            let mode = reader.entry().mode();
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            out.push((name, mode, data));
            rest = reader.finish().unwrap();
        }
        out
    }

    #[test]
    fn round_trip_with_parents_first() {
        let mut fs = Initramfs::new();
        fs.file("/usr/bin/tool", b"ELF!".to_vec(), 0o755).unwrap();
        fs.symlink("/bin/sh", "busybox").unwrap();
        fs.dir("/proc").unwrap();
        fs.file("/init", b"#!/bin/sh\n".to_vec(), 0o755).unwrap();
        let archive = fs.write_cpio(Vec::new()).unwrap();
        let entries = read_back(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "init",
                "proc",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        let tool = &entries[6];
        assert_eq!(tool.1, 0o100755);
        assert_eq!(tool.2, b"ELF!");
        let link = &entries[1];
        assert_eq!(link.1 & 0o170000, 0o120000);
        assert_eq!(link.2, b"busybox");
        assert_eq!(entries[3].1 & 0o170000, 0o040000);
        // newc: every header starts on a 4-byte boundary; the whole archive too.
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
    }

    #[test]
    fn deterministic_bytes() {
        let build = || {
            let mut fs = Initramfs::new();
            fs.file("b", vec![1, 2, 3], 0o644).unwrap();
            fs.file("a/x", vec![9; 17], 0o600).unwrap();
            fs.write_cpio(Vec::new()).unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut fs = Initramfs::new();
        assert!(fs.file("/", vec![], 0o644).is_err());
        assert!(fs.file("a/../b", vec![], 0o644).is_err());
        assert!(fs.file("a//b", vec![], 0o644).is_err());
        assert!(fs.file("x", vec![], 0o100644).is_err());
        fs.file("x", vec![], 0o644).unwrap();
        assert!(fs.file("x", vec![], 0o644).is_err());
        // a file cannot become a parent directory
        assert!(fs.file("x/y", vec![], 0o644).is_err());
        assert!(fs.symlink("l", "").is_err());
        // nothing half-added
        assert!(!fs.contains("x/y"));
        assert!(!fs.contains("a"));
        assert_eq!(fs.len(), 1);
    }

    #[test]
    fn gzip_file_decompresses_to_the_archive() {
        let mut fs = Initramfs::new();
        fs.file("init", b"hello".to_vec(), 0o755).unwrap();
        let dir = std::env::temp_dir().join(format!("pddgpu-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd.gz");
        let size = fs.write_gz(&path).unwrap();
        assert!(size > 0);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw, fs.write_cpio(Vec::new()).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
