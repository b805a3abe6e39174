//! Cache keys: a SHA-256 over everything a component is built from, and a
//! stamp file per component holding the key of its last successful build.
//!
//! A component is skipped ("cached") only when its stamp holds the key
//! computed now and every output it promises exists. Keys cover file
//! contents (tarballs, patches, lockfiles, our sources), the toolchain's
//! `rustc -vV`, the exact flags, and the keys of the components it uses, so
//! a change anywhere upstream rebuilds everything downstream of it and
//! nothing else.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Builds one key. Every item is fed with its label and length, so two
/// different sequences of items can never hash the same bytes.
#[derive(Clone, Debug, Default)]
pub struct Key {
    hasher: Sha256,
}

impl Key {
    /// An empty key for `component` (the name is part of the key).
    pub fn new(component: &str) -> Self {
        let mut key = Self::default();
        key.text("component", component);
        key
    }

    fn item(&mut self, kind: &str, label: &str, bytes: &[u8]) {
        for part in [kind.as_bytes(), label.as_bytes(), bytes] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
    }

    /// Feeds a string (a flag, a version, a command line).
    pub fn text(&mut self, label: &str, value: &str) -> &mut Self {
        self.item("text", label, value.as_bytes());
        self
    }

    /// Feeds the contents of one file.
    pub fn file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = file_digest(path)?;
        self.item("file", label, &digest);
        Ok(self)
    }

    /// Feeds every regular file under `dir` (relative path, executable bit
    /// and contents, in sorted order), skipping directories named in
    /// `skip` at any depth and symlinks' targets (a symlink is fed as its
    /// link text).
    pub fn tree(&mut self, label: &str, dir: &Path, skip: &[&str]) -> Result<&mut Self> {
        let mut files = Vec::new();
        walk(dir, Path::new(""), skip, &mut files)
            .with_context(|| format!("reading {}", dir.display()))?;
        files.sort();
        self.text(label, &dir.display().to_string());
        for rel in files {
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path)?;
            let name = rel.to_string_lossy();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?;
                self.item("link", &name, target.to_string_lossy().as_bytes());
            } else {
                use std::os::unix::fs::PermissionsExt;
                let exec = meta.permissions().mode() & 0o111 != 0;
                let digest = file_digest(&path)?;
                self.item(if exec { "exec" } else { "file" }, &name, &digest);
            }
        }
        Ok(self)
    }

    /// The key as 64 hex digits.
    pub fn finish(&self) -> String {
        self.hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn walk(root: &Path, rel: &Path, skip: &[&str], out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        let child = rel.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                walk(root, &child, skip, out)?;
            }
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// The record of one component's last successful build.
#[derive(Clone, Debug)]
pub struct Stamp {
    path: PathBuf,
}

impl Stamp {
    /// The stamp of `component` in `dir`.
    pub fn new(dir: &Path, component: &str) -> Self {
        Self {
            path: dir.join(format!("{component}.key")),
        }
    }

    /// Whether the last build had exactly `key` and all `outputs` still exist.
    pub fn is_current(&self, key: &str, outputs: &[PathBuf]) -> bool {
        fs::read_to_string(&self.path).is_ok_and(|k| k.trim() == key)
            && outputs.iter().all(|p| p.exists())
    }

    /// Records a successful build with `key`.
    pub fn write(&self, key: &str) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&self.path, format!("{key}\n"))
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Forgets the last build (before rebuilding, so a failed rebuild is
    /// never mistaken for the old good one).
    pub fn clear(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pddgpu-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keys_change_with_any_input_and_only_then() {
        let dir = scratch("keys");
        let f = dir.join("a.patch");
        fs::write(&f, "one").unwrap();
        let key = |flag: &str| {
            let mut k = Key::new("kernel");
            k.text("flags", flag).file("patch", &f).unwrap();
            k.finish()
        };
        let first = key("-O2");
        assert_eq!(first.len(), 64);
        assert_eq!(first, key("-O2"), "same inputs, same key");
        assert_ne!(first, key("-O3"), "a flag is an input");
        fs::write(&f, "two").unwrap();
        assert_ne!(first, key("-O2"), "file contents are an input");
        // Labels separate items: ("ab","c") is not ("a","bc").
        let mut x = Key::new("c");
        x.text("ab", "c");
        let mut y = Key::new("c");
        y.text("a", "bc");
        assert_ne!(x.finish(), y.finish());
        assert_ne!(Key::new("kernel").finish(), Key::new("relibc").finish());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tree_keys_see_contents_names_and_modes_but_skip_build_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("tree");
        fs::create_dir_all(dir.join("src/bin")).unwrap();
        fs::create_dir_all(dir.join("target/release")).unwrap();
        fs::write(dir.join("src/lib.rs"), "fn a() {}").unwrap();
        fs::write(dir.join("src/bin/x.rs"), "fn main() {}").unwrap();
        let key = || {
            let mut k = Key::new("ours");
            k.tree("ws", &dir, &["target"]).unwrap();
            k.finish()
        };
        let first = key();
        fs::write(dir.join("target/release/junk"), "changes every build").unwrap();
        assert_eq!(first, key(), "skipped directories are not inputs");
        fs::write(dir.join("src/lib.rs"), "fn b() {}").unwrap();
        let second = key();
        assert_ne!(first, second);
        fs::rename(dir.join("src/bin/x.rs"), dir.join("src/bin/y.rs")).unwrap();
        let third = key();
        assert_ne!(second, third, "a renamed file changes the key");
        fs::set_permissions(dir.join("src/lib.rs"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(third, key(), "the executable bit is an input");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stamp_needs_the_same_key_and_every_output() {
        let dir = scratch("stamp");
        let out = dir.join("kernel.bin");
        let stamp = Stamp::new(&dir.join("stamps"), "kernel");
        assert!(!stamp.is_current("k1", &[]), "never built");
        stamp.write("k1").unwrap();
        assert!(stamp.is_current("k1", &[]));
        assert!(!stamp.is_current("k2", &[]), "inputs changed");
        assert!(
            !stamp.is_current("k1", std::slice::from_ref(&out)),
            "output missing"
        );
        fs::write(&out, "x").unwrap();
        assert!(stamp.is_current("k1", std::slice::from_ref(&out)));
        stamp.clear().unwrap();
        stamp.clear().unwrap();
        assert!(!stamp.is_current("k1", &[out]));
        fs::remove_dir_all(&dir).unwrap();
    }
}
