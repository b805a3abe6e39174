//! What the seL4 build needs from the host besides rustup's toolchain:
//! commands (cmake and ninja for the kernel, dtc and xmllint for its code
//! generators, gcc and objcopy, git for cargo's fetch of rust-sel4, tar,
//! python3, QEMU) and two library packages that provide no command
//! (`libclang-dev` for rust-sel4's bindgen of libsel4, `python3-venv` for
//! the kernel's Python tools). On Debian as root the missing ones are
//! installed with apt-get; anywhere else the build stops with the command.

use std::process::Command;

use anyhow::{bail, Result};

use crate::hosttools::{self, InstallPolicy, Tool};

/// The commands, each with the Debian package that provides it.
pub const TOOLS: [Tool; 10] = [
    Tool {
        command: "cmake",
        package: "cmake",
    },
    Tool {
        command: "ninja",
        package: "ninja-build",
    },
    Tool {
        command: "dtc",
        package: "device-tree-compiler",
    },
    Tool {
        command: "xmllint",
        package: "libxml2-utils",
    },
    Tool {
        command: "gcc",
        package: "gcc",
    },
    Tool {
        command: "objcopy",
        package: "binutils",
    },
    Tool {
        command: "git",
        package: "git",
    },
    Tool {
        command: "tar",
        package: "tar",
    },
    Tool {
        command: "python3",
        package: "python3",
    },
    hosttools::QEMU,
];

/// Library packages the build needs that install no command.
pub const LIBRARY_PACKAGES: [&str; 2] = ["libclang-dev", "python3-venv"];

/// Whether dpkg lists `package` as installed.
fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok installed")
        })
}

/// Makes sure every tool and library package is there, installing what is
/// missing when `policy` allows and this is root on Debian.
pub fn ensure(policy: InstallPolicy) -> Result<()> {
    hosttools::ensure(&TOOLS, policy)?;
    if !hosttools::is_debian() {
        // Not Debian: no package database to ask; a missing library shows
        // up as the failing step's error.
        return Ok(());
    }
    let missing: Vec<&str> = LIBRARY_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if policy == InstallPolicy::Never || !hosttools::is_root() {
        bail!(
            "missing packages: {}. Install them with:\n    {}",
            missing.join(", "),
            hosttools::install_command(&missing)
        );
    }
    eprintln!("pddgpu-image: installing {}", missing.join(" "));
    hosttools::apt_install(&missing)?;
    if let Some(still) = missing.iter().find(|p| !is_installed(p)) {
        bail!("{still} is still missing after apt-get install");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_check_sees_installed_packages_only() {
        if !hosttools::is_debian() {
            return;
        }
        assert!(is_installed("dpkg"), "dpkg is always installed on Debian");
        assert!(!is_installed("pddgpu-no-such-package"));
    }
}
