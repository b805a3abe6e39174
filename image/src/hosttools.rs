//! The host tools the image needs, and installing them.
//!
//! On Debian as root the tool installs what is missing with `apt-get`;
//! anywhere else it stops with the exact command to run.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A command the tool runs and the Debian package that provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    /// Command name looked up on `PATH`.
    pub command: &'static str,
    /// Debian package that installs it.
    pub package: &'static str,
}

impl Tool {
    /// `command`, installed by Debian's `package`.
    pub const fn new(command: &'static str, package: &'static str) -> Self {
        Tool { command, package }
    }
}

/// QEMU for x86-64 guests.
pub const QEMU: Tool = Tool::new("qemu-system-x86_64", "qemu-system-x86");
/// Busybox, statically linked: the guest's shell and tools.
pub const BUSYBOX: Tool = Tool::new("busybox", "busybox-static");
/// `dpkg` (unpacks the kernel package).
pub const DPKG: Tool = Tool::new("dpkg", "dpkg");
/// `apt-get` (downloads the kernel package).
pub const APT_GET: Tool = Tool::new("apt-get", "apt");
/// `ldd` (finds the shared libraries our binaries need).
pub const LDD: Tool = Tool::new("ldd", "libc-bin");

/// Every tool `pddgpu-image qemu` needs.
pub const ALL: [Tool; 5] = [QEMU, BUSYBOX, DPKG, APT_GET, LDD];

/// Every tool the Redox image build and boot need besides rustup's
/// toolchain: the bootloader's assembler, clang and lld for relibc,
/// openlibm and the linker wrapper, binutils for linking the bootloader and
/// bootstrap and stripping, make for relibc, tar and patch for the
/// snapshot, QEMU to boot.
pub const REDOX: [Tool; 12] = [
    Tool::new("nasm", "nasm"),
    Tool::new("clang", "clang"),
    Tool::new("ld.lld", "lld"),
    Tool::new("ld", "binutils"),
    Tool::new("objcopy", "binutils"),
    Tool::new("ar", "binutils"),
    Tool::new("strip", "binutils"),
    Tool::new("make", "make"),
    Tool::new("patch", "patch"),
    Tool::new("tar", "tar"),
    Tool::new("cc", "gcc"),
    QEMU,
];

/// Whether the tool may install missing packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallPolicy {
    /// Install with apt-get when running as root on Debian.
    WhenRoot,
    /// Never install; report what is missing.
    Never,
}

/// Finds `command` on `PATH` (plus /usr/sbin and /sbin, where Debian keeps
/// some tools that are still usable by non-root users).
pub fn find(command: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether the host is Debian (or a derivative with apt-get and dpkg).
pub fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

/// The exact command that installs `packages`.
pub fn install_command(packages: &[&str]) -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// The tools from `tools` that are not installed.
pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|t| find(t.command).is_none())
        .collect()
}

/// Runs `apt-get update` (quietly); used when package lists are missing.
pub fn apt_update() -> Result<()> {
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed ({status})");
    }
    Ok(())
}

/// Installs `packages` with apt-get (after refreshing the package lists),
/// non-interactively.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    apt_update()?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", packages.join(" "));
    }
    Ok(())
}

/// Makes sure every tool in `tools` is installed, installing the missing
/// ones if `policy` allows and this is root on Debian; otherwise fails with
/// the exact install command.
pub fn ensure(tools: &[Tool], policy: InstallPolicy) -> Result<()> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    let commands: Vec<&str> = missing.iter().map(|t| t.command).collect();
    if policy == InstallPolicy::Never || !is_root() || !is_debian() {
        bail!(
            "missing host tools: {}. Install them with:\n    {}",
            commands.join(", "),
            install_command(&packages)
        );
    }
    eprintln!(
        "pddgpu-image: installing {} (missing: {})",
        packages.join(" "),
        commands.join(", ")
    );
    apt_install(&packages)?;
    let still = self::missing(tools);
    if !still.is_empty() {
        let names: Vec<&str> = still.iter().map(|t| t.command).collect();
        bail!("still missing after apt-get install: {}", names.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find("sh").is_some());
        assert!(find("pddgpu-no-such-command-xyz").is_none());
    }

    #[test]
    fn install_line_is_exact() {
        assert_eq!(
            install_command(&["qemu-system-x86", "busybox-static"]),
            "sudo apt-get update && sudo apt-get install -y --no-install-recommends qemu-system-x86 busybox-static"
        );
    }

    #[test]
    fn never_policy_reports_the_command() {
        let fake = Tool::new("pddgpu-no-such-command-xyz", "pddgpu-fake-package");
        let err = ensure(&[fake], InstallPolicy::Never)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pddgpu-no-such-command-xyz"), "{err}");
        assert!(
            err.contains("apt-get install -y --no-install-recommends pddgpu-fake-package"),
            "{err}"
        );
    }
}
