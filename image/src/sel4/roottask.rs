//! Our root task (`drivers/pddgpu-sel4`), built for `x86_64-sel4` with the
//! toolchain rust-sel4 3.0.0 pins and `-Zbuild-std`, against the installed
//! libsel4 (`SEL4_PREFIX`). The client program is built first: the root
//! task embeds its ELF (`PDDGPU_SEL4_CLIENT_ELF`) and loads it into each
//! client's address space.
//!
//! Our workspace names rust-sel4 by its GitHub URL and commit, like every
//! rust-sel4 user. Cargo fetches git dependencies with the git CLI here
//! (`CARGO_NET_GIT_FETCH_WITH_CLI`), and git rewrites that URL to the bare
//! clone of the bundle (`url.<dir>.insteadOf`, passed as `GIT_CONFIG_*`
//! variables), so nothing but crates.io is reached over the network.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::layout::{Layout, RUST_SEL4_URL, TARGET};
use crate::redox::cache::Key;
use crate::redox::command::StepLog;
use crate::redox::toolchain::Toolchain;

/// The toolchain rust-sel4 3.0.0 is built with (its `rust-toolchain.toml`).
pub const TOOLCHAIN: &str = "nightly-2025-10-20";
/// Why exactly that one (for the message when it cannot be installed).
pub const TOOLCHAIN_WHY: &str = "rust-sel4 3.0.0 and its x86_64-sel4 target JSON are written \
     for it (newer nightlies changed the target-spec format)";

/// The package and binary of the root task.
pub const PACKAGE: &str = "pddgpu-sel4";
/// The package and binary of the client.
pub const CLIENT_PACKAGE: &str = "pddgpu-sel4-client";
/// The package of the IPC protocol.
pub const PROTOCOL_PACKAGE: &str = "pddgpu-sel4-proto";
/// The variable naming the client ELF for the root task's build.
pub const CLIENT_ELF_ENV: &str = "PDDGPU_SEL4_CLIENT_ELF";

/// The key of the root task: the kernel (libsel4 and its configuration),
/// the toolchain, our seL4 workspace and the core it compiles.
pub fn key(layout: &Layout, kernel: &str, toolchain: &Toolchain) -> Result<Key> {
    let core = layout.workspace.join("drivers/pddgpu");
    let mut key = Key::new("sel4-root-task");
    key.text("kernel", kernel)
        .text("rustc", &toolchain.version)
        .tree("pddgpu-sel4", &layout.our_workspace(), &["target"])?
        .tree("pddgpu core", &core.join("src"), &[])?
        .file("pddgpu core manifest", &core.join("Cargo.toml"))?
        // The server compiles the scheme's errno mapping.
        .file(
            "scheme errno",
            &layout.workspace.join("scheme/src/errno.rs"),
        )?
        // The core inherits its dependencies' versions from the workspace.
        .file("workspace manifest", &layout.workspace.join("Cargo.toml"))?;
    Ok(key)
}

/// What the step leaves behind.
pub fn outputs(layout: &Layout) -> Vec<PathBuf> {
    vec![layout.root_task()]
}

/// `cargo` of `toolchain` (under `nice`: the machine is shared), set up to
/// build our seL4 workspace with rust-sel4 fetched from the bundle.
pub fn cargo(layout: &Layout, toolchain: &Toolchain) -> Command {
    let mut cmd = toolchain.command("nice");
    cmd.args(["-n", "10"])
        .arg(toolchain.bin.join("cargo"))
        .current_dir(layout.our_workspace())
        .env("CARGO_NET_GIT_FETCH_WITH_CLI", "true")
        .env("GIT_CONFIG_COUNT", "1")
        .env(
            "GIT_CONFIG_KEY_0",
            format!("url.{}.insteadOf", layout.rust_sel4_git().display()),
        )
        .env("GIT_CONFIG_VALUE_0", RUST_SEL4_URL)
        .env("RUST_TARGET_PATH", layout.target_specs())
        .env("SEL4_PREFIX", layout.kernel_prefix());
    cmd
}

/// The `-Zbuild-std` flags every cargo command of this workspace needs.
const BUILD_STD: [&str; 2] = [
    "-Zbuild-std=core,alloc,compiler_builtins",
    "-Zbuild-std-features=compiler-builtins-mem",
];

/// Builds the client, then the root task that embeds it, and copies the
/// root task to [`Layout::root_task`].
pub fn build(layout: &Layout, toolchain: &Toolchain, log: &StepLog) -> Result<()> {
    let built = |package: &str| {
        layout
            .cargo_target()
            .join(TARGET)
            .join("release")
            .join(format!("{package}.elf"))
    };
    for package in [CLIENT_PACKAGE, PACKAGE] {
        let mut cmd = cargo(layout, toolchain);
        cmd.args(["build", "--release", "-p", package, "--target", TARGET])
            .args(BUILD_STD)
            .arg("--target-dir")
            .arg(layout.cargo_target())
            .env(CLIENT_ELF_ENV, built(CLIENT_PACKAGE));
        log.run(&mut cmd)?;
    }
    std::fs::copy(built(PACKAGE), layout.root_task())
        .with_context(|| format!("copying {}", built(PACKAGE).display()))?;
    Ok(())
}

/// Runs clippy with `-D warnings` over the whole seL4 workspace (server,
/// client, protocol) for its real target, adding the toolchain's clippy
/// component first when it is missing. Run after [`build`]: the server's
/// check needs the client ELF.
pub fn lint(layout: &Layout, toolchain: &Toolchain, log: &StepLog) -> Result<()> {
    if !toolchain.bin.join("cargo-clippy").is_file() {
        log.run(
            Command::new("rustup")
                .args(["component", "add", "clippy", "--toolchain"])
                .arg(&toolchain.name),
        )?;
    }
    let client = layout
        .cargo_target()
        .join(TARGET)
        .join("release")
        .join(format!("{CLIENT_PACKAGE}.elf"));
    let mut cmd = cargo(layout, toolchain);
    cmd.args(["clippy", "--release", "--workspace", "--target", TARGET])
        .args(BUILD_STD)
        .arg("--target-dir")
        .arg(layout.cargo_target())
        .env(CLIENT_ELF_ENV, client)
        .args(["--", "-D", "warnings"]);
    log.run(&mut cmd)
}

/// The host target the protocol's unit tests run on.
pub const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Runs the protocol crate's unit tests on the host (its encoding and
/// validation have nothing seL4-specific).
pub fn test_protocol(layout: &Layout, toolchain: &Toolchain, log: &StepLog) -> Result<()> {
    let mut cmd = cargo(layout, toolchain);
    cmd.args(["test", "-p", PROTOCOL_PACKAGE, "--target", HOST_TARGET])
        .arg("--target-dir")
        .arg(layout.cargo_target());
    log.run(&mut cmd)
}
