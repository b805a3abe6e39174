//! Where things are: the read-only seL4 snapshot (`../shared/sel4` beside
//! the repository), the tree this tool builds in (`target/sel4/`), and our
//! seL4 workspace (`drivers/pddgpu-sel4`).
//!
//! Nothing from the snapshot is written inside the repository's tracked
//! files: the kernel source is unpacked under `target/sel4/src`, rust-sel4
//! becomes a bare git repository there, and everything built goes under
//! `target/sel4` too.

use std::env;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::binaries;

/// Environment variable naming the snapshot directory (overrides the
/// default `<repo>/../shared/sel4`).
pub const SNAPSHOT_ENV: &str = "PDDGPU_SEL4_SNAPSHOT";

/// The rust-sel4 commit our workspace's `Cargo.toml` pins (rust-sel4 3.0.0,
/// the bundle's branch `pin-2c97867`).
pub const RUST_SEL4_REV: &str = "2c9786744900433f37e803c25ab208835a802cf3";
/// The URL our workspace names rust-sel4 by; git rewrites it to the bare
/// clone of the bundle.
pub const RUST_SEL4_URL: &str = "https://github.com/seL4/rust-sel4";
/// The custom Rust target of seL4 user space on x86-64 (a JSON file in
/// rust-sel4's `support/targets`).
pub const TARGET: &str = "x86_64-sel4";

/// All paths of one build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The read-only snapshot (`README.md`, `src/*.tar.gz`, `src/rust-sel4.bundle`).
    pub snapshot: PathBuf,
    /// The build tree, `<target>/sel4`.
    pub root: PathBuf,
    /// The pddgpu repository.
    pub workspace: PathBuf,
}

impl Layout {
    /// The layout for this checkout: `snapshot` if given, else
    /// `$PDDGPU_SEL4_SNAPSHOT`, else `../shared/sel4`.
    pub fn new(snapshot: Option<PathBuf>) -> Self {
        let workspace = binaries::workspace_root();
        let snapshot = snapshot
            .or_else(|| {
                env::var_os(SNAPSHOT_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| workspace.join("../shared/sel4"));
        let snapshot = snapshot.canonicalize().unwrap_or(snapshot);
        Self {
            snapshot,
            root: build_root(),
            workspace,
        }
    }

    /// The seL4 kernel tarball (seL4 14.0.0).
    pub fn kernel_tarball(&self) -> PathBuf {
        self.snapshot.join("src/seL4.tar.gz")
    }

    /// rust-sel4 3.0.0 as a git bundle.
    pub fn rust_sel4_bundle(&self) -> PathBuf {
        self.snapshot.join("src/rust-sel4.bundle")
    }

    /// Fails with a clear message unless the snapshot has what the build uses.
    pub fn check_snapshot(&self) -> Result<()> {
        let missing: Vec<String> = [self.kernel_tarball(), self.rust_sel4_bundle()]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the seL4 snapshot at {} is incomplete (set {SNAPSHOT_ENV} or --snapshot to the \
                 directory holding src/seL4.tar.gz and src/rust-sel4.bundle); missing:\n  {}",
                self.snapshot.display(),
                missing.join("\n  ")
            );
        }
        Ok(())
    }

    /// The unpacked kernel source.
    pub fn kernel_source(&self) -> PathBuf {
        self.root.join("src/seL4")
    }

    /// The bare clone of the rust-sel4 bundle that cargo fetches from.
    pub fn rust_sel4_git(&self) -> PathBuf {
        self.root.join("src/rust-sel4.git")
    }

    /// The directory holding `x86_64-sel4.json` (`RUST_TARGET_PATH`).
    pub fn target_specs(&self) -> PathBuf {
        self.root.join("targets")
    }

    /// The Python virtual environment of the kernel build's tools.
    pub fn python_env(&self) -> PathBuf {
        self.root.join("pyenv")
    }

    /// The kernel's build directory.
    pub fn kernel_build(&self) -> PathBuf {
        self.root.join("build/kernel")
    }

    /// Where the kernel and libsel4 are installed (`SEL4_PREFIX`).
    pub fn kernel_prefix(&self) -> PathBuf {
        self.root.join("kernel")
    }

    /// The kernel as QEMU's multiboot loader wants it (ELF32).
    pub fn kernel32(&self) -> PathBuf {
        self.kernel_prefix().join("bin/kernel32.elf")
    }

    /// Our seL4 workspace.
    pub fn our_workspace(&self) -> PathBuf {
        self.workspace.join("drivers/pddgpu-sel4")
    }

    /// Cargo's target directory for our seL4 workspace.
    pub fn cargo_target(&self) -> PathBuf {
        self.root.join("cargo")
    }

    /// The root task, copied out of cargo's tree once built.
    pub fn root_task(&self) -> PathBuf {
        self.root.join("pddgpu-sel4.elf")
    }

    /// The serial log of the boot with (`gpu`) or without a display device.
    pub fn serial_log(&self, gpu: bool) -> PathBuf {
        self.root.join(crate::serial::log_file_name(gpu))
    }
}

/// The build tree: `<cargo target dir>/sel4`.
pub fn build_root() -> PathBuf {
    binaries::target_dir().join("sel4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_sit_beside_the_repository_and_under_target() {
        let layout = Layout::new(None);
        if env::var_os(SNAPSHOT_ENV).is_none() {
            assert!(layout.snapshot.ends_with("shared/sel4"));
        }
        assert!(layout.root.starts_with(binaries::target_dir()));
        assert!(layout.kernel32().starts_with(&layout.root));
        assert!(layout.our_workspace().join("Cargo.toml").is_file());
    }

    #[test]
    fn an_incomplete_snapshot_names_what_is_missing() {
        let dir = env::temp_dir().join(format!("pddgpu-sel4-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let err = Layout::new(Some(dir.clone()))
            .check_snapshot()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("seL4.tar.gz") && err.contains("rust-sel4.bundle"),
            "{err}"
        );
        assert!(err.contains(SNAPSHOT_ENV), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
