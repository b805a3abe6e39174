//! Our programs as real `x86_64-unknown-redox` executables: `pddgpud`, the
//! `pddgpu` CLI and the guest scenario program `pddgpu-redox-guest`, built
//! with build-std (panic=abort) and linked by the wrapper against the relibc
//! built here, in their own target directory (`target/redox/pddgpu`).
//!
//! The step's key is the workspace's sources and manifests (not `target/`,
//! not `image/redox/`, which goes into the initfs as it is), the sysroot's
//! key, the toolchain and the command; cargo's own fingerprints make a
//! rebuild after a small change incremental.

use std::path::PathBuf;

use anyhow::Result;

use super::components::Ctx;
use super::layout::{Layout, REDOX_TARGET};
use crate::binaries::{self, GuestBinary};
pub use crate::binaries::{CLI, PDDGPUD};

/// The scenario program init runs in the guest.
pub const GUEST: GuestBinary = GuestBinary::new("pddgpu-image", "pddgpu-redox-guest");
/// Where the guest program's source lives (in the workspace).
pub const GUEST_SOURCE: &str = "image/src/bin/pddgpu-redox-guest.rs";

/// Every program of ours the image carries.
pub const ALL: [GuestBinary; 3] = [PDDGPUD, CLI, GUEST];

/// The built program `bin`.
pub fn program_path(layout: &Layout, bin: &str) -> PathBuf {
    layout.ours().join(REDOX_TARGET).join("release").join(bin)
}

/// Our programs that can be built in this checkout: all of [`ALL`], less
/// the guest program while its source does not exist yet.
pub fn available(layout: &Layout) -> Vec<GuestBinary> {
    ALL.iter()
        .copied()
        .filter(|b| *b != GUEST || layout.workspace.join(GUEST_SOURCE).is_file())
        .collect()
}

/// Builds `bins`; returns the step's key and each program's path.
pub fn build(
    ctx: &Ctx,
    sysroot_key: &str,
    bins: &[GuestBinary],
) -> Result<(String, Vec<(GuestBinary, PathBuf)>)> {
    let layout = ctx.layout;
    let ws = &layout.workspace;
    let mut cmd = ctx.redox_cargo();
    cmd.current_dir(ws)
        .env("CARGO_TARGET_DIR", layout.ours())
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        // Line tables are stripped from the initfs copies anyway.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .args(["build", "--locked", "--release", "--target", REDOX_TARGET])
        .arg("-Zbuild-std=std,panic_abort");
    binaries::add_targets(&mut cmd, bins);
    let mut key = ctx.key("pddgpu", None)?;
    key.text("sysroot", sysroot_key);
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "image/Cargo.toml",
        "tests/Cargo.toml",
    ] {
        key.file(file, &ws.join(file))?;
    }
    for dir in ["drivers", "scheme", "ipc", "image/src"] {
        key.tree(dir, &ws.join(dir), &["target", ".git"])?;
    }
    let outputs: Vec<PathBuf> = bins.iter().map(|b| program_path(layout, b.bin)).collect();
    let key = ctx.step("pddgpu", key, vec![cmd], &outputs, |_| Ok(()))?;
    Ok((
        key,
        bins.iter()
            .map(|b| (*b, program_path(layout, b.bin)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_is_left_out_only_while_its_source_is_missing() {
        let mut layout = Layout::new(None, None);
        let dir = std::env::temp_dir().join(format!("pddgpu-ours-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("image/src/bin")).unwrap();
        layout.workspace = dir.clone();
        assert_eq!(available(&layout), [PDDGPUD, CLI]);
        std::fs::write(dir.join(GUEST_SOURCE), "fn main() {}\n").unwrap();
        assert_eq!(available(&layout), ALL);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_land_in_their_own_target_directory() {
        let layout = Layout::new(None, None);
        let p = program_path(&layout, "pddgpud");
        assert!(p.starts_with(layout.root.join("pddgpu")));
        assert!(p.ends_with("x86_64-unknown-redox/release/pddgpud"));
    }
}
