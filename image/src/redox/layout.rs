//! Where things are: the read-only Redox source snapshot (`../shared/redox`
//! beside the repository), the tree this tool builds in (`target/redox/`),
//! and the initfs overlay from `image/redox/initfs/`.
//!
//! Nothing from the snapshot is ever written inside the repository's
//! tracked files: sources are unpacked under `target/redox/src` and
//! `target/redox/deps`, whose relative layout the snapshot's patches expect
//! (`src/<repo>` next to `deps/<crate>`, path dependencies `../../deps/…`).

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::binaries;

/// Environment variable naming the snapshot directory (overrides the
/// default `<repo>/../shared/redox`).
pub const SNAPSHOT_ENV: &str = "PDDGPU_REDOX_SNAPSHOT";
/// Environment variable naming the initfs overlay (overrides the default
/// `<repo>/image/redox/initfs`).
pub const INITFS_ENV: &str = "PDDGPU_REDOX_INITFS";

/// The tarballs of the snapshot, each unpacking into a directory named after
/// it (`../shared/redox/SOURCES.md`).
pub const TARBALLS: [&str; 9] = [
    "kernel",
    "rmm",
    "relibc",
    "openlibm",
    "bootloader",
    "base",
    "fdt",
    "uefi",
    "cc-rs",
];

/// The snapshot's lockfiles and the manifest directory (under `src/`) each
/// belongs to.
pub const LOCKS: [(&str, &str); 5] = [
    ("kernel", "kernel"),
    ("relibc", "relibc"),
    ("bootloader", "bootloader"),
    ("base", "base"),
    ("base_bootstrap", "base/bootstrap"),
];

/// The Rust target of Redox user space.
pub const REDOX_TARGET: &str = "x86_64-unknown-redox";

/// All paths of one build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The read-only snapshot (`README.md`, `src/`, `patches/`, `locks/`).
    pub snapshot: PathBuf,
    /// The build tree, `<target>/redox`.
    pub root: PathBuf,
    /// The pddgpu workspace.
    pub workspace: PathBuf,
    /// Copied verbatim into the initfs root (redox-port's `init.rc` and
    /// pcid match file live there).
    pub initfs_overlay: PathBuf,
}

impl Layout {
    /// The layout for this checkout: `snapshot` and `initfs_overlay` if
    /// given, else their environment variables, else the defaults.
    pub fn new(snapshot: Option<PathBuf>, initfs_overlay: Option<PathBuf>) -> Self {
        let workspace = binaries::workspace_root();
        let from_env = |var: &str| {
            env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let snapshot = snapshot
            .or_else(|| from_env(SNAPSHOT_ENV))
            .unwrap_or_else(|| workspace.join("../shared/redox"));
        let initfs_overlay = initfs_overlay
            .or_else(|| from_env(INITFS_ENV))
            .unwrap_or_else(|| workspace.join("image/redox/initfs"));
        Self {
            snapshot: absolute(&snapshot),
            root: build_root(),
            workspace,
            initfs_overlay: absolute(&initfs_overlay),
        }
    }

    /// Fails with a clear message unless the snapshot has every tarball,
    /// patch and lockfile the build uses.
    pub fn check_snapshot(&self) -> Result<()> {
        let mut missing = Vec::new();
        for name in TARBALLS {
            let path = self.tarball(name);
            if !path.is_file() {
                missing.push(path);
            }
        }
        for name in ["kernel", "bootloader", "relibc", "base"] {
            let path = self.patch(&format!("{name}.patch"));
            if !path.is_file() {
                missing.push(path);
            }
        }
        for (lock, _) in LOCKS {
            let path = self.lock(lock);
            if !path.is_file() {
                missing.push(path);
            }
        }
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "the Redox source snapshot at {} is incomplete (set {SNAPSHOT_ENV} or \
                 --snapshot to the directory holding src/, patches/ and locks/); missing:\n  {}",
                self.snapshot.display(),
                list.join("\n  ")
            );
        }
        Ok(())
    }

    /// `src/<name>.tar.gz` of the snapshot.
    pub fn tarball(&self, name: &str) -> PathBuf {
        self.snapshot.join("src").join(format!("{name}.tar.gz"))
    }

    /// `patches/<file>` of the snapshot.
    pub fn patch(&self, file: &str) -> PathBuf {
        self.snapshot.join("patches").join(file)
    }

    /// `locks/<name>.Cargo.lock` of the snapshot.
    pub fn lock(&self, name: &str) -> PathBuf {
        self.snapshot
            .join("locks")
            .join(format!("{name}.Cargo.lock"))
    }

    /// Unpacked upstream repositories (`kernel`, `relibc`, `bootloader`, `base`).
    pub fn src(&self, repo: &str) -> PathBuf {
        self.root.join("src").join(repo)
    }

    /// Unpacked dependencies the patches point at (`../../deps/<name>`).
    pub fn deps(&self) -> PathBuf {
        self.root.join("deps")
    }

    /// The build directory of one component.
    pub fn build(&self, component: &str) -> PathBuf {
        self.root.join("build").join(component)
    }

    /// Host tools installed with `cargo install --root`.
    pub fn tools(&self) -> PathBuf {
        self.root.join("tools")
    }

    /// The relibc sysroot (`lib/`, `include/`) and the linker wrapper.
    pub fn sysroot(&self) -> PathBuf {
        self.root.join("sysroot")
    }

    /// The linker wrapper that stands in for `x86_64-unknown-redox-gcc`.
    pub fn linker(&self) -> PathBuf {
        self.sysroot().join("bin/redox-cc")
    }

    /// Cargo's target directory for our own binaries.
    pub fn ours(&self) -> PathBuf {
        self.root.join("pddgpu")
    }

    /// The bootable BIOS disk image.
    pub fn disk_image(&self) -> PathBuf {
        self.root.join("harddrive.img")
    }

    /// The serial log of one boot.
    pub fn serial_log(&self, gpu: bool) -> PathBuf {
        self.root.join(crate::serial::log_file_name(gpu))
    }
}

/// The build tree: `<cargo target dir>/redox`.
pub fn build_root() -> PathBuf {
    binaries::target_dir().join("redox")
}

/// `path` made absolute, without `..` when it exists.
fn absolute(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_sit_beside_the_repository_and_under_target() {
        let layout = Layout::new(None, None);
        if env::var_os(SNAPSHOT_ENV).is_none() {
            assert!(layout.snapshot.ends_with("shared/redox"));
        }
        assert!(layout.root.ends_with("redox"));
        assert!(layout.root.starts_with(binaries::target_dir()));
        assert_eq!(
            layout.tarball("kernel"),
            layout.snapshot.join("src/kernel.tar.gz")
        );
        assert_eq!(
            layout.lock("base_bootstrap"),
            layout.snapshot.join("locks/base_bootstrap.Cargo.lock")
        );
        // The patches' path dependencies are `../../deps/<crate>` from `src/<repo>`.
        assert_eq!(
            layout.src("kernel").join("../../deps"),
            layout.root.join("src/kernel/../../deps")
        );
        assert_eq!(layout.deps(), layout.root.join("deps"));
    }

    #[test]
    fn an_incomplete_snapshot_names_what_is_missing() {
        let dir = env::temp_dir().join(format!("pddgpu-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let layout = Layout::new(Some(dir.clone()), None);
        let err = layout.check_snapshot().unwrap_err().to_string();
        assert!(err.contains("kernel.tar.gz"), "{err}");
        assert!(err.contains("base_bootstrap.Cargo.lock"), "{err}");
        assert!(err.contains(SNAPSHOT_ENV), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
