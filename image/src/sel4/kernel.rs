//! The seL4 kernel for x86_64 pc99, built with cmake and ninja from the
//! unpacked source, with the Python tools of its code generators in a
//! virtual environment (`seL4/tools/python-deps`, from PyPI).
//!
//! The options are those of rust-sel4's x86 test world (the snapshot's
//! `recipe.sh`), plus a larger root CNode: the root task holds one
//! capability per 4 KiB frame of its image, of the device memory it maps
//! and of the frames it hands to clients, which is far more than the
//! default 2^12 slots.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use super::layout::Layout;
use crate::redox::cache::Key;
use crate::redox::command::StepLog;

/// The kernel's cmake options (besides the install prefix).
pub const OPTIONS: [&str; 10] = [
    "-DKernelArch=x86",
    "-DKernelSel4Arch=x86_64",
    "-DKernelPlatform=pc99",
    "-DKernelVerificationBuild=OFF",
    "-DKernelFSGSBase=msr",
    "-DKernelSupportPCID=OFF",
    "-DKernelIOMMU=OFF",
    "-DKernelFPU=FXSAVE",
    // 2^16 slots: see the module docs.
    "-DKernelRootCNodeSizeBits=16",
    // A debug kernel: its console is our serial output
    // (seL4_DebugPutChar), and it reports thread faults.
    "-DKernelDebugBuild=ON",
];

/// The first line of `program --version` (part of the keys: the host's
/// compiler and generators shape what is built).
pub fn version_line(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("{program}: unknown version"))
}

/// The key of the Python environment: the sources and the interpreter.
pub fn python_key(sources: &str) -> Key {
    let mut key = Key::new("sel4-python");
    key.text("sources", sources)
        .text("python3", &version_line("python3"));
    key
}

/// What the Python step leaves behind.
pub fn python_outputs(layout: &Layout) -> Vec<PathBuf> {
    vec![layout.python_env().join("bin/python3")]
}

/// Creates the virtual environment and installs the kernel's Python
/// dependencies into it.
pub fn python_env(layout: &Layout, log: &StepLog) -> Result<()> {
    let env = layout.python_env();
    if env.exists() {
        std::fs::remove_dir_all(&env)?;
    }
    log.run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
    log.run(
        Command::new(env.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(layout.kernel_source().join("tools/python-deps")),
    )?;
    Ok(())
}

/// The key of the kernel: sources, Python environment, options, compilers.
pub fn key(sources: &str, python: &str) -> Key {
    let mut key = Key::new("sel4-kernel");
    key.text("sources", sources)
        .text("python", python)
        .text("options", &OPTIONS.join(" "))
        .text("gcc", &version_line("gcc"))
        .text("cmake", &version_line("cmake"))
        .text("ninja", &version_line("ninja"));
    key
}

/// What the kernel step leaves behind.
pub fn outputs(layout: &Layout) -> Vec<PathBuf> {
    vec![
        layout.kernel32(),
        layout.kernel_prefix().join("libsel4/include/sel4/sel4.h"),
    ]
}

/// Configures, builds and installs the kernel and libsel4, and writes the
/// ELF32 copy QEMU's multiboot loader boots.
pub fn build(layout: &Layout, log: &StepLog) -> Result<()> {
    let build = layout.kernel_build();
    for old in [&build, &layout.kernel_prefix()] {
        if old.exists() {
            std::fs::remove_dir_all(old)?;
        }
    }
    let path = std::env::join_paths(std::iter::once(layout.python_env().join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let with_tools = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &path);
        cmd
    };
    log.run(
        with_tools("cmake")
            .arg(format!(
                "-DCMAKE_INSTALL_PREFIX={}",
                layout.kernel_prefix().display()
            ))
            .args(OPTIONS)
            .args(["-G", "Ninja", "-S"])
            .arg(layout.kernel_source())
            .arg("-B")
            .arg(&build),
    )?;
    log.run(
        with_tools("nice")
            .arg("ninja")
            .arg("-C")
            .arg(&build)
            .arg("all"),
    )?;
    log.run(with_tools("ninja").arg("-C").arg(&build).arg("install"))?;
    log.run(
        Command::new("objcopy")
            .args(["-O", "elf32-i386"])
            .arg(layout.kernel_prefix().join("bin/kernel.elf"))
            .arg(layout.kernel32()),
    )?;
    Ok(())
}
