//! Which shared libraries a host binary needs inside the guest.
//!
//! Static musl builds are usually not available offline, so the guest gets
//! the host's glibc-linked binaries plus the exact libraries `ldd` resolves
//! for them (and the dynamic loader), copied to the same paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Parses `ldd` output into the absolute paths of the libraries to copy,
/// dynamic loader included, in order of appearance without duplicates.
/// A static binary gives an empty list; an unresolved library is an error.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    if output.contains("not a dynamic executable") || output.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                bail!("shared library `{}` not found on the host", name.trim());
            }
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"; the vDSO
            // has "=>" with nothing after it on some systems.
            match rest.split_whitespace().next() {
                Some(p) if p.starts_with('/') => p,
                _ => continue,
            }
        } else {
            // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)"
            match line.split_whitespace().next() {
                Some(p) if p.starts_with('/') => p,
                _ => continue,
            }
        };
        let path = PathBuf::from(path);
        if !libs.contains(&path) {
            libs.push(path);
        }
    }
    Ok(libs)
}

/// Runs `ldd` on `binary` and returns the libraries it needs (see
/// [`parse_ldd`]).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // ldd exits non-zero for static binaries; that case parses to "no libraries".
    let libs = parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))?;
    if !out.status.success() && !libs.is_empty() {
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_glibc_binary() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd8a5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2f6f3a0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2f6f1bf000)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2f6f0e0000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f2f6f45c000)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn static_binary_needs_nothing() {
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn missing_library_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"));
    }

    #[test]
    fn real_ldd_on_a_host_binary() {
        // /bin/sh is dynamically linked on Debian; its libraries must exist.
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(!libs.is_empty());
        for lib in libs {
            assert!(lib.is_absolute() && lib.exists(), "{}", lib.display());
        }
    }
}
