//! The guest kernel: Debian's own `linux-image-*-amd64`, downloaded with
//! `apt-get download`, unpacked with `dpkg -x`, and cached as a single
//! `vmlinuz` under the target directory.
//!
//! The guest needs no modules: PCI, sysfs, devtmpfs, Unix sockets, memfd,
//! the 8250 serial console and gzip initramfs support are all built into
//! Debian's kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::hosttools;

/// The Debian metapackage that depends on the current kernel image.
pub const METAPACKAGE: &str = "linux-image-amd64";

/// A kernel ready to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Debian package it came from (or `custom` for an explicit path).
    pub package: String,
    /// The bzImage to pass to `qemu -kernel`.
    pub vmlinuz: PathBuf,
}

/// Whether `name` looks like a concrete Debian amd64 kernel image package
/// (`linux-image-<version>-<abi>-amd64`, not signed-template, dbg, cloud or rt).
pub fn is_kernel_package(name: &str) -> bool {
    let Some(middle) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64"))
    else {
        return false;
    };
    let mut parts = middle.split('-');
    let version_ok = parts.next().is_some_and(|v| {
        !v.is_empty()
            && v.split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    let abi_ok = parts
        .next()
        .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()));
    version_ok && abi_ok && parts.next().is_none()
}

/// From `apt-cache depends linux-image-amd64` output, the concrete kernel
/// package the metapackage points at.
pub fn parse_metapackage_depends(output: &str) -> Option<String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| is_kernel_package(name))
        .map(str::to_string)
}

/// Sort key of a kernel package: its numeric version and ABI.
fn version_key(name: &str) -> Vec<u64> {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64"))
        .map(|m| {
            m.split(['.', '-'])
                .map(|n| n.parse::<u64>().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// From `apt-cache search --names-only` output (`name - description`), the
/// newest concrete kernel image package.
pub fn pick_newest(search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_kernel_package(n))
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

fn apt_cache(args: &[&str]) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(args)
        .output()
        .context("running apt-cache")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asks apt which kernel package to use: the metapackage's dependency, or
/// else the newest `linux-image-6.1.0-*-amd64`.
fn choose_package() -> Result<Option<String>> {
    if let Some(p) = parse_metapackage_depends(&apt_cache(&["depends", METAPACKAGE])?) {
        return Ok(Some(p));
    }
    Ok(pick_newest(&apt_cache(&[
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    ])?))
}

/// Kernels already in the cache, newest first.
fn cached(cache: &Path) -> Vec<Kernel> {
    let mut found: Vec<Kernel> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let package = e.file_name().to_string_lossy().into_owned();
            let vmlinuz = e.path().join("vmlinuz");
            (is_kernel_package(&package) && vmlinuz.is_file())
                .then_some(Kernel { package, vmlinuz })
        })
        .collect();
    found.sort_by_key(|k| std::cmp::Reverse(version_key(&k.package)));
    found
}

/// Returns a bootable kernel, downloading it into `cache` the first time.
///
/// With an empty apt package list it runs `apt-get update` when root, and
/// otherwise falls back to a cached kernel or says what to run.
pub fn ensure(cache: &Path) -> Result<Kernel> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut package = choose_package()?;
    if package.is_none() && hosttools::is_root() {
        hosttools::apt_update()?;
        package = choose_package()?;
    }
    let Some(package) = package else {
        if let Some(k) = cached(cache).into_iter().next() {
            return Ok(k);
        }
        bail!(
            "apt knows no {METAPACKAGE} kernel package; run `sudo apt-get update` (or pass --kernel PATH)"
        );
    };
    let dir = cache.join(&package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(Kernel { package, vmlinuz });
    }
    match download(&package, &dir) {
        Ok(()) => Ok(Kernel { package, vmlinuz }),
        // Stale package lists name a version the mirror no longer has:
        // refresh them once and try the package apt names then.
        Err(first) if hosttools::is_root() => {
            crate::reporter().say(format!("{first:#}; refreshing the package lists"));
            hosttools::apt_update()?;
            let package = choose_package()?.context("no kernel package after apt-get update")?;
            let dir = cache.join(&package);
            let vmlinuz = dir.join("vmlinuz");
            if !vmlinuz.is_file() {
                download(&package, &dir)?;
            }
            Ok(Kernel { package, vmlinuz })
        }
        Err(e) => Err(e.context("try `sudo apt-get update` (or pass --kernel PATH)")),
    }
}

/// Downloads and unpacks `package`, keeping only `boot/vmlinuz-*` as
/// `dir/vmlinuz` (and its config for reference).
fn download(package: &str, dir: &Path) -> Result<()> {
    let work = dir.with_extension(format!("download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = (|| -> Result<()> {
        crate::reporter().say(format!("downloading {package} (apt-get download)"));
        let out = Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&work)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {package} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let deb = fs::read_dir(&work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download produced no .deb")?;
        let root = work.join("root");
        let status = Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&root)
            .status()
            .context("running dpkg -x")?;
        if !status.success() {
            bail!("dpkg -x {} failed ({status})", deb.display());
        }
        let boot = root.join("boot");
        let image = fs::read_dir(&boot)
            .with_context(|| format!("{package} has no /boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
        fs::create_dir_all(dir)?;
        if let Some(config) = fs::read_dir(&boot)?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("config-"))
        }) {
            fs::copy(config, dir.join("config"))?;
        }
        let tmp = dir.join("vmlinuz.tmp");
        fs::copy(&image, &tmp)?;
        fs::rename(&tmp, dir.join("vmlinuz"))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_concrete_kernel_packages() {
        assert!(is_kernel_package("linux-image-6.1.0-56-amd64"));
        assert!(is_kernel_package("linux-image-6.12.9-1-amd64"));
        assert!(!is_kernel_package("linux-image-amd64"));
        assert!(!is_kernel_package("linux-image-6.1.0-56-amd64-unsigned"));
        assert!(!is_kernel_package("linux-image-6.1.0-56-cloud-amd64"));
        assert!(!is_kernel_package("linux-image-6.1.0-56-rt-amd64"));
        assert!(!is_kernel_package("linux-image-6.1.0-56-amd64-dbg"));
        assert!(!is_kernel_package("linux-image-6..0-56-amd64"));
    }

    #[test]
    fn metapackage_dependency() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_metapackage_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_metapackage_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn newest_by_numeric_abi() {
        let out = "linux-image-6.1.0-9-amd64 - Linux 6.1\n\
                   linux-image-6.1.0-56-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-47-amd64 - Linux 6.1 (signed)\n\
                   linux-image-6.1.0-10-amd64 - Linux 6.1 (signed)\n";
        assert_eq!(
            pick_newest(out).as_deref(),
            Some("linux-image-6.1.0-47-amd64")
        );
        assert_eq!(pick_newest(""), None);
    }

    #[test]
    fn cache_lists_newest_first() {
        let dir = std::env::temp_dir().join(format!("pddgpu-kcache-{}", std::process::id()));
        for (pkg, with_image) in [
            ("linux-image-6.1.0-9-amd64", true),
            ("linux-image-6.1.0-50-amd64", true),
            ("linux-image-6.1.0-60-amd64", false),
            ("junk", true),
        ] {
            fs::create_dir_all(dir.join(pkg)).unwrap();
            if with_image {
                fs::write(dir.join(pkg).join("vmlinuz"), b"bz").unwrap();
            }
        }
        let found: Vec<String> = cached(&dir).into_iter().map(|k| k.package).collect();
        assert_eq!(
            found,
            ["linux-image-6.1.0-50-amd64", "linux-image-6.1.0-9-amd64"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
