//! Building the guest's programs for the host (x86-64 Linux, glibc) with
//! cargo, and finding the results.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A binary of the workspace that goes into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBinary {
    /// Cargo package.
    pub package: &'static str,
    /// Binary target name (also its file name).
    pub bin: &'static str,
}

impl GuestBinary {
    /// Binary `bin` of cargo package `package`.
    pub const fn new(package: &'static str, bin: &'static str) -> Self {
        GuestBinary { package, bin }
    }

    /// Where the binary lives in the guest.
    pub fn guest_path(&self) -> String {
        format!("/usr/bin/{}", self.bin)
    }
}

/// The driver server.
pub const PDDGPUD: GuestBinary = GuestBinary::new("pddgpud", "pddgpud");
/// The `pddgpu` CLI.
pub const CLI: GuestBinary = GuestBinary::new("pddgpu-ipc", "pddgpu");

/// Adds `bins` to a `cargo build` command line: each package once, then
/// each binary.
pub fn add_targets(cmd: &mut Command, bins: &[GuestBinary]) {
    let mut packages: Vec<&str> = bins.iter().map(|b| b.package).collect();
    packages.sort_unstable();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    for b in bins {
        cmd.args(["--bin", b.bin]);
    }
}

/// The workspace root (this crate lives in `<root>/image`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where this tool caches the kernel and writes the initramfs:
/// `<target>/pddgpu-image`.
pub fn cache_dir() -> PathBuf {
    target_dir().join("pddgpu-image")
}

/// Builds `bins` in release mode and returns each one's path.
pub fn build(bins: &[GuestBinary]) -> Result<Vec<(GuestBinary, PathBuf)>> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release"])
        .env("CARGO_TARGET_DIR", target_dir());
    add_targets(&mut cmd, bins);
    eprintln!("pddgpu-image: building {}", names(bins));
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the guest binaries failed ({status})");
    }
    bins.iter()
        .map(|b| {
            let path = target_dir().join("release").join(b.bin);
            if !path.is_file() {
                bail!("cargo built {} but {} is missing", b.bin, path.display());
            }
            Ok((*b, path))
        })
        .collect()
}

fn names(bins: &[GuestBinary]) -> String {
    bins.iter().map(|b| b.bin).collect::<Vec<_>>().join(", ")
}

/// Returns a copy of `binary` without debug info (the release profile keeps
/// line tables), using `strip` when present; the original file otherwise.
pub fn stripped(binary: &Path, scratch: &Path) -> Result<PathBuf> {
    let Some(strip) = crate::hosttools::find("strip") else {
        return Ok(binary.to_path_buf());
    };
    std::fs::create_dir_all(scratch)?;
    let out = scratch.join(binary.file_name().context("binary without a file name")?);
    let status = Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .context("running strip")?;
    if !status.success() {
        bail!("strip {} failed ({status})", binary.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_workspace() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(cache_dir().ends_with("pddgpu-image"));
        let b = GuestBinary {
            package: "pddgpud",
            bin: "pddgpud",
        };
        assert_eq!(b.guest_path(), "/usr/bin/pddgpud");
    }

    #[test]
    fn strip_keeps_an_executable() {
        let dir = std::env::temp_dir().join(format!("pddgpu-strip-{}", std::process::id()));
        let out = stripped(Path::new("/bin/sh"), &dir).unwrap();
        let status = Command::new(&out).args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(status.code(), Some(7));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
