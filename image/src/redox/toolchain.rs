//! The one Rust toolchain of the Redox build: the nightly pinned in
//! `toolchain.txt` (read by `scripts/check-redox` too), with `rust-src` for
//! `-Zbuild-std`.
//!
//! Why exactly this one: the snapshot's relibc follows the compiler's
//! `VaList` API, and `patches/relibc.patch` ports upstream relibc's
//! "Support nightly 2026-05-24" change; an older or newer compiler fails in
//! relibc's variadic functions. rustup installs it when missing; when that
//! cannot be done the build stops and says so. Every command runs the
//! toolchain's own `cargo`/`rustc` (first on `PATH`, `RUSTUP_TOOLCHAIN`
//! set, which also overrides the snapshot's `rust-toolchain.toml` files)
//! with the variables an outer `cargo run` exports removed.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::hosttools;

/// `toolchain.txt`: the pinned toolchain's rustup name.
const PINNED_FILE: &str = include_str!("toolchain.txt");

/// The pinned toolchain's rustup name (`nightly-YYYY-MM-DD`).
pub fn pinned() -> &'static str {
    PINNED_FILE.trim()
}

/// The exact command that installs the pinned toolchain.
pub fn install_command() -> String {
    install_command_for(pinned())
}

/// A usable toolchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// Its rustup name.
    pub name: String,
    /// `rustc -vV` (part of every cache key).
    pub version: String,
    /// The directory with its `cargo` and `rustc`.
    pub bin: PathBuf,
}

impl Toolchain {
    /// The first line of `rustc -vV`.
    pub fn rustc_line(&self) -> &str {
        self.version.lines().next().unwrap_or_default()
    }

    /// `toolchain <name>: <rustc -vV's first line>`, for the build's log.
    pub fn summary(&self) -> String {
        format!("toolchain {}: {}", self.name, self.rustc_line())
    }

    /// `program` with the toolchain first on `PATH`, `RUSTUP_TOOLCHAIN` and
    /// `RUSTC` pointing at it, and no variables leaked from an outer cargo.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_with_path(program, &[])
    }

    /// Like [`Toolchain::command`], with the directories `extra` on `PATH`
    /// right after the toolchain's.
    pub fn command_with_path(&self, program: impl AsRef<OsStr>, extra: &[PathBuf]) -> Command {
        let mut cmd = Command::new(program);
        for var in leaked_vars(env::vars_os().map(|(k, _)| k)) {
            cmd.env_remove(var);
        }
        let mut path = vec![self.bin.clone()];
        path.extend(extra.iter().cloned());
        path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        cmd.env(
            "PATH",
            env::join_paths(path).unwrap_or_else(|_| self.bin.clone().into()),
        )
        .env("RUSTUP_TOOLCHAIN", &self.name)
        .env("RUSTC", self.bin.join("rustc"));
        cmd
    }

    /// The toolchain's `cargo`, set up like [`Toolchain::command`].
    pub fn cargo(&self) -> Command {
        self.command(self.bin.join("cargo"))
    }
}

/// The variables of this process's environment that must not reach the
/// build's commands: what `cargo run` exports for the program it runs
/// (`CARGO`, `CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, …; relibc's Makefile would
/// run `$CARGO`, the outer toolchain's cargo), a user's `RUSTFLAGS` or
/// `CARGO_TARGET_DIR`, make's job server, and `LD_LIBRARY_PATH` (cargo puts
/// the outer toolchain's libraries there). Cargo's registry and network
/// settings stay.
pub fn leaked_vars(vars: impl Iterator<Item = OsString>) -> Vec<OsString> {
    const KEEP_PREFIXES: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const DROP: [&str; 13] = [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_BOOTSTRAP",
        "RUST_TARGET_PATH",
        "RUSTUP_TOOLCHAIN",
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "LD_LIBRARY_PATH",
    ];
    vars.filter(|var| {
        let name = var.to_string_lossy();
        (name.starts_with("CARGO") && !KEEP_PREFIXES.iter().any(|p| name.starts_with(p)))
            || DROP.contains(&name.as_ref())
    })
    .collect()
}

/// Finds the pinned toolchain, installing it (and `rust-src`) with rustup
/// when missing and `install` allows; otherwise fails with the command to
/// run.
pub fn ensure(install: bool) -> Result<Toolchain> {
    ensure_named(
        pinned(),
        "relibc in ../shared/redox follows this compiler's VaList API, so another compiler \
         fails in relibc",
        install,
    )
}

/// The exact command that installs toolchain `name` with `rust-src`.
pub fn install_command_for(name: &str) -> String {
    format!("rustup toolchain install {name} --component rust-src --profile minimal")
}

/// Finds the toolchain `name` (a dated nightly some build needs exactly,
/// `why` says for what), installing it (and `rust-src`, for
/// `-Zbuild-std`) with rustup when missing and `install` allows; otherwise
/// fails with the command to run.
pub fn ensure_named(name: &str, why: &str, install: bool) -> Result<Toolchain> {
    let install_line = install_command_for(name);
    let rustup = find_rustup().with_context(|| {
        format!(
            "rustup is not installed; the build needs it for the pinned toolchain \
             (install rustup from https://rustup.rs, then run: {install_line})"
        )
    })?;
    let mut probed = probe(&rustup, name);
    if probed.is_err() && install {
        eprintln!("pddgpu-image: installing the pinned toolchain: {install_line}");
        let status = Command::new(&rustup)
            .args(["toolchain", "install", name, "--component", "rust-src"])
            .args(["--profile", "minimal"])
            .status()
            .context("running rustup")?;
        if !status.success() {
            bail!(
                "`{install_line}` failed ({status}). The build needs exactly {name}: {why}. \
                 Install it by hand and run again."
            );
        }
        probed = probe(&rustup, name);
    }
    let (toolchain, has_src) = probed.with_context(|| {
        format!("the pinned toolchain {name} is not installed; run: {install_line}")
    })?;
    if !has_src {
        if install {
            let status = Command::new(&rustup)
                .args(["component", "add", "rust-src", "--toolchain", name])
                .status()
                .context("running rustup")?;
            if status.success() {
                return Ok(toolchain);
            }
        }
        bail!(
            "the toolchain {name} lacks rust-src (needed for -Zbuild-std); run: \
             rustup component add rust-src --toolchain {name}"
        );
    }
    Ok(toolchain)
}

fn find_rustup() -> Option<PathBuf> {
    hosttools::find("rustup").or_else(|| {
        let home = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
        let path = home.join("bin/rustup");
        path.is_file().then_some(path)
    })
}

/// The toolchain `name` as rustup has it, and whether it has `rust-src`.
fn probe(rustup: &Path, name: &str) -> Result<(Toolchain, bool)> {
    let out = Command::new(rustup)
        .args(["which", "--toolchain", name, "rustc"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustup which")?;
    if !out.status.success() {
        bail!(
            "rustup has no toolchain {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rustc = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = rustc
        .parent()
        .context("rustc path without a directory")?
        .to_path_buf();
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(&rustc)
            .args(args)
            .output()
            .with_context(|| format!("running {}", rustc.display()))?;
        if !out.status.success() {
            bail!("{} {} failed", rustc.display(), args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let version = run(&["-vV"])?;
    let sysroot = PathBuf::from(run(&["--print", "sysroot"])?);
    let has_src = sysroot
        .join("lib/rustlib/src/rust/library/std/Cargo.toml")
        .is_file();
    if !bin.join("cargo").is_file() {
        bail!("the toolchain {name} has no cargo in {}", bin.display());
    }
    Ok((
        Toolchain {
            name: name.to_string(),
            version,
            bin,
        },
        has_src,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_a_dated_nightly() {
        let name = pinned();
        let date = name.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), 10, "{name}");
        assert!(install_command().contains(&format!("install {name} --component rust-src")));
    }

    #[test]
    fn outer_cargo_variables_are_dropped_and_registry_settings_kept() {
        let vars = [
            "CARGO",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
            "RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "LD_LIBRARY_PATH",
            "HOME",
            "PATH",
        ]
        .map(OsString::from);
        let dropped = leaked_vars(vars.into_iter());
        let dropped: Vec<&str> = dropped.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            dropped,
            [
                "CARGO",
                "CARGO_PKG_NAME",
                "CARGO_MANIFEST_DIR",
                "CARGO_TARGET_DIR",
                "RUSTFLAGS",
                "RUSTUP_TOOLCHAIN",
                "LD_LIBRARY_PATH"
            ]
        );
    }

    #[test]
    fn a_missing_toolchain_is_reported_not_guessed() {
        let Some(rustup) = find_rustup() else {
            return;
        };
        let err = probe(&rustup, "nightly-1999-01-01")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nightly-1999-01-01"), "{err}");
    }

    #[test]
    fn commands_run_the_pinned_toolchain() {
        let tc = Toolchain {
            name: "nightly-2026-05-24".into(),
            version: "rustc 1.98.0-nightly".into(),
            bin: "/opt/tc/bin".into(),
        };
        let cmd = tc.cargo();
        assert_eq!(cmd.get_program(), "/opt/tc/bin/cargo");
        let env: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(
            get("RUSTUP_TOOLCHAIN").as_deref(),
            Some("nightly-2026-05-24")
        );
        assert_eq!(get("RUSTC").as_deref(), Some("/opt/tc/bin/rustc"));
        assert!(get("PATH").unwrap().starts_with("/opt/tc/bin:"));
        assert_eq!(tc.rustc_line(), "rustc 1.98.0-nightly");
    }
}
