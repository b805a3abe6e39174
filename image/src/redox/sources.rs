//! The `sources` step: unpacks the snapshot's tarballs into
//! `target/redox/{src,deps}`, puts in the crates.io stand-ins for the
//! gitlab-only forks, applies the snapshot's patches and ours, and installs
//! the snapshot's lockfiles — the same tree `recipe.sh` builds from.
//!
//! Our own additions to the unpacked tree (nothing else changes):
//! - `patches/bootloader-default-mode.patch` (this directory): with
//!   `PDDGPU_BOOT_DEFAULT_MODE` set when the bootloader is built, it boots
//!   with the video mode Enter would pick instead of waiting in the mode
//!   menu, so a boot needs no typed input and no timing.
//! - An empty `[workspace]` table in the manifests of the kernel, the
//!   bootloader and bootstrap, which have none: unpacked under our
//!   repository's `target/`, cargo would otherwise take them for
//!   non-members of the pddgpu workspace and refuse to build them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::cache::Key;
use super::command::StepLog;
use super::layout::{Layout, LOCKS};
use super::toolchain::Toolchain;

/// Our bootloader patch (see the module documentation).
pub const BOOTLOADER_PATCH: &str = include_str!("patches/bootloader-default-mode.patch");
/// The build-time variable the bootloader patch looks for.
pub const BOOT_DEFAULT_MODE_ENV: &str = "PDDGPU_BOOT_DEFAULT_MODE";

/// A crates.io crate standing in for an unreachable git fork, with the
/// snapshot's patch for it and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandIn {
    /// Crate name.
    pub name: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// The snapshot's patch (in `patches/`).
    pub patch: &'static str,
    /// Where it is unpacked, relative to `target/redox`.
    pub dest: &'static str,
}

/// relibc's dlmalloc fork and ld_so's object fork (snapshot README).
pub const STAND_INS: [StandIn; 2] = [
    StandIn {
        name: "dlmalloc",
        version: "0.2.8",
        patch: "dlmalloc-0.2.8-c_api.patch",
        dest: "src/relibc/dlmalloc-rs",
    },
    StandIn {
        name: "object",
        version: "0.36.7",
        patch: "object-0.36.7-redox-hash-find.patch",
        dest: "deps/object-0.36.7",
    },
];

/// The upstream repositories unpacked into `src/`, and each one's snapshot patch.
const REPOS: [&str; 4] = ["kernel", "relibc", "bootloader", "base"];

/// Tarballs that unpack into a subdirectory of a repository (its git
/// submodules upstream): (tarball, repository).
const SUBMODULES: [(&str, &str); 2] = [("rmm", "kernel"), ("openlibm", "relibc")];

/// Tarballs that unpack into `deps/` and the directory name the patches use.
const DEPS: [(&str, &str); 3] = [
    ("fdt", "fdt-2fb1409"),
    ("uefi", "uefi"),
    ("cc-rs", "cc-rs-tea"),
];

/// Manifests (under `src/`) that get an empty `[workspace]` table.
const STANDALONE: [&str; 3] = ["kernel", "bootloader", "base/bootstrap"];

/// What a component is built from in the snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotInputs {
    /// Tarballs (names without `.tar.gz`).
    pub tarballs: &'static [&'static str],
    /// Patches in `patches/`.
    pub patches: &'static [&'static str],
    /// Lockfiles (names without `.Cargo.lock`).
    pub locks: &'static [&'static str],
    /// Whether the crates.io stand-ins (and their patches) are inputs.
    pub stand_ins: bool,
    /// Whether our bootloader patch is an input.
    pub bootloader_patch: bool,
}

/// The kernel: its tarball, the rmm submodule, fdt.
pub const KERNEL_INPUTS: SnapshotInputs = SnapshotInputs {
    tarballs: &["kernel", "rmm", "fdt"],
    patches: &["kernel.patch"],
    locks: &["kernel"],
    stand_ins: false,
    bootloader_patch: false,
};
/// The BIOS bootloader (uefi only resolves, fdt only for other arches).
pub const BOOTLOADER_INPUTS: SnapshotInputs = SnapshotInputs {
    tarballs: &["bootloader", "fdt", "uefi"],
    patches: &["bootloader.patch"],
    locks: &["bootloader"],
    stand_ins: false,
    bootloader_patch: true,
};
/// relibc with openlibm, the cc-rs fork and the stand-ins.
pub const RELIBC_INPUTS: SnapshotInputs = SnapshotInputs {
    tarballs: &["relibc", "openlibm", "cc-rs"],
    patches: &["relibc.patch"],
    locks: &["relibc"],
    stand_ins: true,
    bootloader_patch: false,
};
/// base (its drivers use relibc's redox-rt and redox-ioctl by path).
pub const BASE_INPUTS: SnapshotInputs = SnapshotInputs {
    tarballs: &["base", "relibc", "cc-rs"],
    patches: &["base.patch", "relibc.patch"],
    locks: &["base"],
    stand_ins: true,
    bootloader_patch: false,
};
/// bootstrap (in base, its own lockfile; redox-rt from relibc by path).
pub const BOOTSTRAP_INPUTS: SnapshotInputs = SnapshotInputs {
    tarballs: &["base", "relibc", "cc-rs"],
    patches: &["base.patch", "relibc.patch"],
    locks: &["base_bootstrap"],
    stand_ins: true,
    bootloader_patch: false,
};

impl SnapshotInputs {
    /// Feeds these inputs into `key`.
    pub fn feed(&self, layout: &Layout, key: &mut Key) -> Result<()> {
        for t in self.tarballs {
            key.file(t, &layout.tarball(t))?;
        }
        for p in self.patches {
            key.file(p, &layout.patch(p))?;
        }
        for l in self.locks {
            key.file(l, &layout.lock(l))?;
        }
        if self.stand_ins {
            for s in STAND_INS {
                key.text(s.name, s.version)
                    .file(s.patch, &layout.patch(s.patch))?;
            }
        }
        if self.bootloader_patch {
            key.text("bootloader-default-mode.patch", BOOTLOADER_PATCH);
        }
        Ok(())
    }
}

/// The key of the unpacked tree: every tarball, patch and lockfile, the
/// stand-ins, our additions.
pub fn key(layout: &Layout) -> Result<Key> {
    let mut key = Key::new("sources");
    SnapshotInputs {
        tarballs: &super::layout::TARBALLS,
        patches: &[
            "kernel.patch",
            "relibc.patch",
            "bootloader.patch",
            "base.patch",
        ],
        locks: &["kernel", "relibc", "bootloader", "base", "base_bootstrap"],
        stand_ins: true,
        bootloader_patch: true,
    }
    .feed(layout, &mut key)?;
    key.text("standalone", &STANDALONE.join(","));
    Ok(key)
}

/// Files whose presence shows the tree was unpacked.
pub fn outputs(layout: &Layout) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = REPOS
        .iter()
        .map(|r| layout.src(r).join("Cargo.toml"))
        .collect();
    out.extend(
        STAND_INS
            .iter()
            .map(|s| layout.root.join(s.dest).join("Cargo.toml")),
    );
    out
}

/// Unpacks and patches the whole tree (from scratch).
pub fn unpack(layout: &Layout, toolchain: &Toolchain, log: &StepLog) -> Result<()> {
    let src = layout.root.join("src");
    let deps = layout.deps();
    for dir in [&src, &deps] {
        remove_dir(dir)?;
        fs::create_dir_all(dir)?;
    }
    for repo in REPOS {
        untar(log, &layout.tarball(repo), &src)?;
    }
    for (tarball, repo) in SUBMODULES {
        let into = layout.src(repo);
        remove_dir(&into.join(tarball))?;
        untar(log, &layout.tarball(tarball), &into)?;
    }
    for (tarball, dir) in DEPS {
        untar(log, &layout.tarball(tarball), &deps)?;
        if tarball != dir {
            fs::rename(deps.join(tarball), deps.join(dir))
                .with_context(|| format!("renaming deps/{tarball} to deps/{dir}"))?;
        }
    }
    fetch_stand_ins(layout, toolchain, log)?;
    for repo in REPOS {
        apply_patch(
            log,
            &layout.src(repo),
            &layout.patch(&format!("{repo}.patch")),
        )?;
    }
    let ours = layout.root.join("bootloader-default-mode.patch");
    fs::write(&ours, BOOTLOADER_PATCH)?;
    apply_patch(log, &layout.src("bootloader"), &ours)?;
    for (lock, dir) in LOCKS {
        let to = layout.src(dir).join("Cargo.lock");
        fs::copy(layout.lock(lock), &to).with_context(|| format!("installing {}", to.display()))?;
    }
    for dir in STANDALONE {
        add_empty_workspace(&layout.src(dir).join("Cargo.toml"))?;
    }
    Ok(())
}

/// Fetches the stand-in crates through cargo (into its registry cache),
/// copies their sources into place and applies the snapshot's patches.
fn fetch_stand_ins(layout: &Layout, toolchain: &Toolchain, log: &StepLog) -> Result<()> {
    let project = layout.root.join("fetch");
    fs::create_dir_all(project.join("src"))?;
    fs::write(project.join("Cargo.toml"), fetch_manifest())?;
    fs::write(project.join("src/main.rs"), "fn main() {}\n")?;
    let manifest = project.join("Cargo.toml");
    log.run(
        toolchain
            .cargo()
            .arg("fetch")
            .arg("--manifest-path")
            .arg(&manifest),
    )?;
    let metadata = log.output(
        toolchain
            .cargo()
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest),
    )?;
    for stand_in in STAND_INS {
        let dir = package_dir(&metadata, stand_in.name, stand_in.version)?;
        let dest = layout.root.join(stand_in.dest);
        remove_dir(&dest)?;
        copy_tree(&dir, &dest)?;
        let _ = fs::remove_file(dest.join(".cargo_vcs_info.json"));
        apply_patch(log, &dest, &layout.patch(stand_in.patch))?;
    }
    Ok(())
}

/// The manifest of the throw-away project that makes cargo fetch the
/// stand-ins (its own workspace, not a member of ours).
pub fn fetch_manifest() -> String {
    let mut text = String::from(
        "[package]\nname = \"pddgpu-redox-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[workspace]\n\n[dependencies]\n",
    );
    for s in STAND_INS {
        text.push_str(&format!(
            "{} = {{ version = \"={}\", default-features = false }}\n",
            s.name, s.version
        ));
    }
    text
}

/// The source directory of `name` `version` in `cargo metadata` output.
pub fn package_dir(metadata: &str, name: &str, version: &str) -> Result<PathBuf> {
    let json: serde_json::Value =
        serde_json::from_str(metadata).context("parsing cargo metadata")?;
    let packages = json["packages"]
        .as_array()
        .context("cargo metadata without packages")?;
    let package = packages
        .iter()
        .find(|p| p["name"] == name && p["version"] == version)
        .with_context(|| format!("cargo metadata does not list {name} {version}"))?;
    let manifest = package["manifest_path"]
        .as_str()
        .context("package without manifest_path")?;
    Ok(Path::new(manifest)
        .parent()
        .context("manifest_path without a directory")?
        .to_path_buf())
}

fn untar(log: &StepLog, tarball: &Path, into: &Path) -> Result<()> {
    log.run(
        std::process::Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(into),
    )
}

fn apply_patch(log: &StepLog, dir: &Path, patch: &Path) -> Result<()> {
    log.run(
        std::process::Command::new("patch")
            .current_dir(dir)
            .args(["-s", "-p1", "--batch", "--forward", "-i"])
            .arg(patch),
    )
}

/// Appends `[workspace]` to a manifest that has no workspace table.
pub fn add_empty_workspace(manifest: &Path) -> Result<()> {
    let text =
        fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    if text.lines().any(|l| l.trim() == "[workspace]") {
        return Ok(());
    }
    let sep = if text.ends_with('\n') { "" } else { "\n" };
    fs::write(
        manifest,
        format!("{text}{sep}\n# added by pddgpu-image: not a member of an enclosing workspace\n[workspace]\n"),
    )
    .with_context(|| format!("writing {}", manifest.display()))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Copies the tree `from` to `to` (created): regular files with their
/// permissions, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(target, &dest)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &dest).with_context(|| {
                format!("copying {} to {}", entry.path().display(), dest.display())
            })?;
        } else {
            bail!(
                "{} is not a file, directory or symlink",
                entry.path().display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_bootloader_patch_is_a_unified_diff_of_main_rs() {
        assert!(BOOTLOADER_PATCH.starts_with("--- a/src/main.rs\n+++ b/src/main.rs\n"));
        assert!(BOOTLOADER_PATCH.contains(BOOT_DEFAULT_MODE_ENV));
        // Only additions: upstream lines are context, never removed.
        assert!(!BOOTLOADER_PATCH.lines().skip(2).any(|l| l.starts_with('-')));
    }

    /// A snapshot of empty stand-in files, every one of them distinct.
    fn fake_snapshot(dir: &Path) -> Layout {
        for sub in ["src", "patches", "locks"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let layout = Layout::new(Some(dir.to_path_buf()), None);
        for t in super::super::layout::TARBALLS {
            fs::write(layout.tarball(t), t).unwrap();
        }
        for p in [
            "kernel.patch",
            "relibc.patch",
            "bootloader.patch",
            "base.patch",
        ]
        .into_iter()
        .chain(STAND_INS.iter().map(|s| s.patch))
        {
            fs::write(layout.patch(p), p).unwrap();
        }
        for (l, _) in LOCKS {
            fs::write(layout.lock(l), l).unwrap();
        }
        layout
    }

    #[test]
    fn a_component_key_moves_only_with_its_own_inputs() {
        let dir = std::env::temp_dir().join(format!("pddgpu-inputs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = fake_snapshot(&dir);
        layout.check_snapshot().unwrap();
        let key = |inputs: SnapshotInputs| {
            let mut k = Key::new("c");
            inputs.feed(&layout, &mut k).unwrap();
            k.finish()
        };
        let keys = || {
            [
                key(KERNEL_INPUTS),
                key(BOOTLOADER_INPUTS),
                key(RELIBC_INPUTS),
                key(BASE_INPUTS),
                key(BOOTSTRAP_INPUTS),
            ]
        };
        let before = keys();
        fs::write(layout.patch("base.patch"), "changed").unwrap();
        let after = keys();
        assert_eq!(
            before[..3],
            after[..3],
            "kernel, bootloader, relibc keep their keys"
        );
        assert_ne!(before[3], after[3], "base is rebuilt");
        assert_ne!(before[4], after[4], "bootstrap (in base) is rebuilt");

        let before = after;
        fs::write(layout.tarball("relibc"), "changed").unwrap();
        let after = keys();
        assert_eq!(before[..2], after[..2]);
        assert_ne!(before[2], after[2]);
        assert_ne!(before[3], after[3], "base uses relibc's redox-rt by path");

        let before = after;
        fs::write(layout.lock("kernel"), "changed").unwrap();
        let after = keys();
        assert_ne!(before[0], after[0]);
        assert_eq!(before[1..], after[1..]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fetch_manifest_pins_the_stand_ins_in_its_own_workspace() {
        let text = fetch_manifest();
        assert!(text.contains("dlmalloc = { version = \"=0.2.8\""));
        assert!(text.contains("object = { version = \"=0.36.7\""));
        assert!(text.contains("\n[workspace]\n"));
    }

    #[test]
    fn package_dir_reads_cargo_metadata() {
        let metadata = r#"{"packages":[
            {"name":"object","version":"0.36.7","manifest_path":"/reg/object-0.36.7/Cargo.toml"},
            {"name":"dlmalloc","version":"0.2.8","manifest_path":"/reg/dlmalloc-0.2.8/Cargo.toml"}]}"#;
        assert_eq!(
            package_dir(metadata, "dlmalloc", "0.2.8").unwrap(),
            PathBuf::from("/reg/dlmalloc-0.2.8")
        );
        assert!(package_dir(metadata, "dlmalloc", "0.2.9").is_err());
    }

    #[test]
    fn empty_workspace_is_added_once() {
        let dir = std::env::temp_dir().join(format!("pddgpu-ws-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        fs::write(&manifest, "[package]\nname = \"kernel\"").unwrap();
        add_empty_workspace(&manifest).unwrap();
        add_empty_workspace(&manifest).unwrap();
        let text = fs::read_to_string(&manifest).unwrap();
        assert_eq!(text.matches("[workspace]").count(), 1, "{text}");
        assert!(text.starts_with("[package]\nname = \"kernel\"\n"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copy_tree_keeps_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pddgpu-copytree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a/etc")).unwrap();
        fs::write(dir.join("a/etc/init.rc"), "echo hi\n").unwrap();
        fs::write(dir.join("a/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("a/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("etc/init.rc", dir.join("a/link")).unwrap();
        copy_tree(&dir.join("a"), &dir.join("b")).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("b/etc/init.rc")).unwrap(),
            "echo hi\n"
        );
        let mode = fs::metadata(dir.join("b/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dir.join("b/link")).unwrap(),
            PathBuf::from("etc/init.rc")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
