//! Unpacking the snapshot into `target/sel4/src`: the kernel source from
//! its tarball, rust-sel4 as a bare git repository cloned from the bundle
//! (cargo fetches it from there by git URL), and rust-sel4's
//! `x86_64-sel4` target JSON taken from that repository at the pinned
//! commit.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::layout::{Layout, RUST_SEL4_REV, TARGET};
use crate::redox::cache::Key;
use crate::redox::command::StepLog;

/// The key of the unpacked sources: the tarball, the bundle, the pin.
pub fn key(layout: &Layout) -> Result<Key> {
    let mut key = Key::new("sel4-sources");
    key.file("seL4.tar.gz", &layout.kernel_tarball())?
        .file("rust-sel4.bundle", &layout.rust_sel4_bundle())?
        .text("rust-sel4 rev", RUST_SEL4_REV);
    Ok(key)
}

/// What unpacking leaves behind.
pub fn outputs(layout: &Layout) -> Vec<PathBuf> {
    vec![
        layout.kernel_source().join("CMakeLists.txt"),
        layout.rust_sel4_git().join("HEAD"),
        target_spec(layout),
    ]
}

/// The target JSON `rustc` finds through `RUST_TARGET_PATH`.
pub fn target_spec(layout: &Layout) -> PathBuf {
    layout.target_specs().join(format!("{TARGET}.json"))
}

/// Unpacks everything afresh.
pub fn unpack(layout: &Layout, log: &StepLog) -> Result<()> {
    let src = layout.root.join("src");
    for old in [layout.kernel_source(), layout.rust_sel4_git()] {
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    fs::create_dir_all(&src)?;
    log.run(
        Command::new("tar")
            .arg("-xzf")
            .arg(layout.kernel_tarball())
            .arg("-C")
            .arg(&src),
    )?;
    log.run(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(layout.rust_sel4_bundle())
            .arg(layout.rust_sel4_git()),
    )?;
    let spec = log.output(
        Command::new("git")
            .arg("--git-dir")
            .arg(layout.rust_sel4_git())
            .arg("show")
            .arg(format!("{RUST_SEL4_REV}:support/targets/{TARGET}.json")),
    )?;
    fs::create_dir_all(layout.target_specs())?;
    fs::write(target_spec(layout), spec)
        .with_context(|| format!("writing {}", target_spec(layout).display()))?;
    Ok(())
}
