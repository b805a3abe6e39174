//! The Redox components built from the unpacked snapshot, in the order and
//! with the flags of the snapshot's `recipe.sh`: host tools, kernel, BIOS
//! bootloader, relibc and its sysroot (with the linker wrapper), the base
//! subset, bootstrap and the initfs archiver.
//!
//! Each function is one cached step: its key covers its snapshot inputs,
//! the toolchain, the exact commands it runs and the keys of the steps
//! whose outputs it uses; it returns its key for those downstream.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::cache::Key;
use super::command::{describe, StepLog};
use super::layout::{Layout, REDOX_TARGET};
use super::progress::Progress;
use super::sources::{self, SnapshotInputs, BOOT_DEFAULT_MODE_ENV};
use super::toolchain::Toolchain;

/// What every step needs.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// Where things are.
    pub layout: &'a Layout,
    /// The pinned toolchain.
    pub toolchain: &'a Toolchain,
    /// Step printing and caching.
    pub progress: &'a Progress,
}

/// cbindgen (relibc's headers), pinned to what built this snapshot.
pub const CBINDGEN_VERSION: &str = "0.29.4";
/// redoxfs (`redoxfs-ar` packs the filesystem), pinned like `recipe.sh`'s `~0.8`.
pub const REDOXFS_VERSION: &str = "0.8.6";

/// The base programs in the initfs (`nulld` is a copy of `zerod`, which
/// serves `null:` when started under that name).
pub const BASE_PROGRAMS: [&str; 7] = [
    "init",
    "logd",
    "ramfs",
    "randd",
    "zerod",
    "pcid",
    "pcid-spawner",
];

impl Ctx<'_> {
    /// A key with the toolchain and (if any) the component's snapshot inputs.
    pub(super) fn key(&self, name: &str, inputs: Option<SnapshotInputs>) -> Result<Key> {
        let mut key = Key::new(name);
        key.text("toolchain", &self.toolchain.version);
        if let Some(inputs) = inputs {
            inputs.feed(self.layout, &mut key)?;
        }
        Ok(key)
    }

    /// Feeds the commands into `key` and runs the cached step.
    pub(super) fn step(
        &self,
        name: &str,
        mut key: Key,
        commands: Vec<Command>,
        outputs: &[PathBuf],
        after: impl FnOnce(&StepLog) -> Result<()>,
    ) -> Result<String> {
        for cmd in &commands {
            key.text("command", &describe(cmd));
        }
        let (key, _) = self.progress.cached(name, &key, outputs, |log| {
            for mut cmd in commands {
                log.run(&mut cmd)?;
            }
            after(log)
        })?;
        Ok(key)
    }

    /// The toolchain's cargo with the Redox C compiler and linker set:
    /// clang for C in build scripts, the wrapper as the linker.
    pub fn redox_cargo(&self) -> Command {
        let layout = self.layout;
        let mut cmd = self.toolchain.cargo();
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_REDOX_LINKER", layout.linker())
            .env("CC_x86_64_unknown_redox", "clang")
            .env(
                "CFLAGS_x86_64_unknown_redox",
                format!(
                    "--target={REDOX_TARGET} -I{}",
                    layout.sysroot().join("include").display()
                ),
            );
        cmd
    }
}

/// Where `cargo install` puts the host tools' programs.
pub fn tool_bin(layout: &Layout, name: &str) -> PathBuf {
    layout.tools().join("bin").join(name)
}

/// cbindgen and redoxfs-ar from crates.io, into `target/redox/tools`.
pub fn host_tools(ctx: &Ctx) -> Result<String> {
    let root = ctx.layout.tools();
    let install = |args: &[&str]| {
        let mut cmd = ctx.toolchain.cargo();
        cmd.args(["install", "--locked", "--root"])
            .arg(&root)
            .args(args);
        cmd
    };
    let commands = vec![
        install(&["cbindgen", "--version", &format!("={CBINDGEN_VERSION}")]),
        // Only the archiver, without the FUSE mount tool (no libfuse needed).
        install(&[
            "redoxfs",
            "--version",
            &format!("={REDOXFS_VERSION}"),
            "--no-default-features",
            "--features",
            "std",
            "--bin",
            "redoxfs-ar",
        ]),
    ];
    let outputs = [
        tool_bin(ctx.layout, "cbindgen"),
        tool_bin(ctx.layout, "redoxfs-ar"),
    ];
    ctx.step(
        "host-tools",
        ctx.key("host-tools", None)?,
        commands,
        &outputs,
        |_| Ok(()),
    )
}

/// The kernel, stripped: `build/kernel/kernel`.
pub fn kernel_path(layout: &Layout) -> PathBuf {
    layout.build("kernel").join("kernel")
}

/// The kernel for its JSON target with `build-std`, linked with its own
/// linker script, then stripped of debug info.
pub fn kernel(ctx: &Ctx) -> Result<String> {
    let src = ctx.layout.src("kernel");
    let out = ctx.layout.build("kernel");
    let all = out.join("kernel.all");
    let mut build = ctx.toolchain.cargo();
    build
        .current_dir(&src)
        .env("RUST_TARGET_PATH", src.join("targets"))
        .env("CARGO_TARGET_DIR", out.join("target"))
        .args(["rustc", "--locked", "-Zjson-target-spec", "--bin", "kernel"])
        .args([
            "--target",
            "targets/x86_64-unknown-kernel.json",
            "--release",
        ])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .args(["--", "-C", "link-arg=-T", "-C"])
        .arg(format!(
            "link-arg={}",
            src.join("linkers/x86_64.ld").display()
        ))
        .args(["-C", "link-arg=-z", "-C", "link-arg=max-page-size=0x1000"])
        .arg("--emit")
        .arg(format!("link={}", all.display()));
    let mut strip = Command::new("objcopy");
    strip
        .arg("--strip-debug")
        .arg(&all)
        .arg(kernel_path(ctx.layout));
    let key = ctx.key("kernel", Some(sources::KERNEL_INPUTS))?;
    fs::create_dir_all(&out)?;
    ctx.step(
        "kernel",
        key,
        vec![build, strip],
        &[kernel_path(ctx.layout)],
        |_| Ok(()),
    )
}

/// The BIOS bootloader image: `build/bootloader/bootloader.bin`.
pub fn bootloader_path(layout: &Layout) -> PathBuf {
    layout.build("bootloader").join("bootloader.bin")
}

/// The BIOS bootloader: stage 3 in Rust (with our default-mode patch
/// switched on), linked for 32-bit x86, wrapped by the assembly stages.
pub fn bootloader(ctx: &Ctx) -> Result<String> {
    let src = ctx.layout.src("bootloader");
    let out = ctx.layout.build("bootloader");
    let lib = out.join("libbootloader.a");
    let mut build = ctx.toolchain.cargo();
    build
        .current_dir(&src)
        .env("RUST_TARGET_PATH", src.join("targets"))
        .env("CARGO_TARGET_DIR", out.join("target"))
        .env("RUSTFLAGS", "--cfg aes_force_soft")
        .env(BOOT_DEFAULT_MODE_ENV, "1")
        .args(["rustc", "--locked", "-Zjson-target-spec", "--lib"])
        .args(["--target", "targets/x86-unknown-none.json", "--release"])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .args(["--", "--emit"])
        .arg(format!("link={}", lib.display()));
    let mut link = Command::new("ld");
    link.current_dir(&out)
        .args([
            "-m",
            "elf_i386",
            "--gc-sections",
            "-z",
            "max-page-size=0x1000",
            "-T",
        ])
        .arg(src.join("linkers/x86-unknown-none.ld"))
        .args(["-o", "bootloader.elf", "libbootloader.a"]);
    let mut strip = Command::new("objcopy");
    strip
        .current_dir(&out)
        .args(["--strip-debug", "bootloader.elf"]);
    let asm = src.join("asm/x86-unknown-none");
    let mut nasm = Command::new("nasm");
    nasm.current_dir(&out)
        .args([
            "-f",
            "bin",
            "-o",
            "bootloader.bin",
            "-D",
            "STAGE3=bootloader.elf",
        ])
        .arg(format!("-i{}/", asm.display()))
        .arg(asm.join("bootloader.asm"));
    let key = ctx.key("bootloader", Some(sources::BOOTLOADER_INPUTS))?;
    fs::create_dir_all(&out)?;
    ctx.step(
        "bootloader",
        key,
        vec![build, link, strip, nasm],
        &[bootloader_path(ctx.layout)],
        |_| Ok(()),
    )
}

/// relibc's build directory for the Redox target.
fn relibc_build(layout: &Layout) -> PathBuf {
    layout.build("relibc").join("target").join(REDOX_TARGET)
}

/// relibc with its own Makefile: headers (cbindgen), the static `libc.a`
/// (with openlibm, built by host clang) and the crt objects. Nothing
/// dynamic.
pub fn relibc(ctx: &Ctx, host_tools_key: &str) -> Result<String> {
    let src = ctx.layout.src("relibc");
    let build = relibc_build(ctx.layout);
    let release = build.join("release");
    let mut make = ctx
        .toolchain
        .command_with_path("make", &[ctx.layout.tools().join("bin")]);
    make.current_dir(&src)
        // The Makefile appends --target to CARGOFLAGS from the environment.
        .env(
            "CARGOFLAGS",
            "-Z build-std=core,alloc,compiler_builtins --locked",
        )
        .arg(format!("TARGET={REDOX_TARGET}"))
        .arg(format!(
            "CARGO_TARGET_DIR={}",
            ctx.layout.build("relibc").join("target").display()
        ))
        .args(["CC=clang", "LD=ld", "AR=ar", "NM=nm", "OBJCOPY=objcopy"])
        .arg("CC_x86_64_unknown_redox=clang")
        .arg("headers");
    for obj in ["libc.a", "crt0.o", "crti.o", "crtn.o"] {
        make.arg(release.join(obj));
    }
    let mut key = ctx.key("relibc", Some(sources::RELIBC_INPUTS))?;
    key.text("host-tools", host_tools_key)
        .text("clang", &clang_version()?);
    let outputs = relibc_outputs(ctx.layout);
    ctx.step("relibc", key, vec![make], &outputs, |_| Ok(()))
}

fn relibc_outputs(layout: &Layout) -> Vec<PathBuf> {
    let build = relibc_build(layout);
    let mut out: Vec<PathBuf> = ["libc.a", "crt0.o", "crti.o", "crtn.o"]
        .iter()
        .map(|o| build.join("release").join(o))
        .collect();
    out.push(build.join("openlibm/libopenlibm.a"));
    out.push(build.join("include/stdio.h"));
    out
}

fn clang_version() -> Result<String> {
    let out = Command::new("clang")
        .arg("--version")
        .output()
        .context("running clang --version")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The no-op unwinder linked as `libgcc_eh.a`/`libunwind.a`. Without
/// Redox's gcc cross toolchain there is no libgcc_eh; our programs are built
/// with panic=abort, so nothing unwinds, and std only needs the symbols to
/// link (a backtrace just comes out empty).
pub const UNWIND_STUBS_C: &str = r#"/* pddgpu-image: no-op unwinder for panic=abort programs on Redox. */
typedef unsigned long uintptr_t;
struct _Unwind_Context;
struct _Unwind_Exception;
typedef int (*_Unwind_Trace_Fn)(struct _Unwind_Context *, void *);

/* _URC_END_OF_STACK: there are no frames to walk or handlers to find. */
#define END_OF_STACK 5

int _Unwind_Backtrace(_Unwind_Trace_Fn trace, void *arg) { (void)trace; (void)arg; return END_OF_STACK; }
int _Unwind_RaiseException(struct _Unwind_Exception *e) { (void)e; return END_OF_STACK; }
void _Unwind_Resume(struct _Unwind_Exception *e) { (void)e; __builtin_trap(); }
void _Unwind_DeleteException(struct _Unwind_Exception *e) { (void)e; }
uintptr_t _Unwind_GetIP(struct _Unwind_Context *c) { (void)c; return 0; }
uintptr_t _Unwind_GetIPInfo(struct _Unwind_Context *c, int *before) { (void)c; if (before) *before = 0; return 0; }
uintptr_t _Unwind_GetCFA(struct _Unwind_Context *c) { (void)c; return 0; }
uintptr_t _Unwind_GetRegionStart(struct _Unwind_Context *c) { (void)c; return 0; }
uintptr_t _Unwind_GetTextRelBase(struct _Unwind_Context *c) { (void)c; return 0; }
uintptr_t _Unwind_GetDataRelBase(struct _Unwind_Context *c) { (void)c; return 0; }
uintptr_t _Unwind_GetLanguageSpecificData(struct _Unwind_Context *c) { (void)c; return 0; }
void *_Unwind_FindEnclosingFunction(void *pc) { (void)pc; return 0; }
void _Unwind_SetGR(struct _Unwind_Context *c, int i, uintptr_t v) { (void)c; (void)i; (void)v; }
void _Unwind_SetIP(struct _Unwind_Context *c, uintptr_t v) { (void)c; (void)v; }
"#;

/// The linker wrapper standing in for `x86_64-unknown-redox-gcc`: clang
/// drives lld statically against the sysroot, crt objects around the
/// program, relibc and openlibm last. relibc's `libc.a` carries its own copy
/// of `core`, hence `--allow-multiple-definition`.
pub fn linker_script(sysroot: &Path) -> String {
    let lib = sysroot.join("lib");
    let lib = lib.display();
    format!(
        "#!/bin/sh\n\
         # pddgpu-image: links {REDOX_TARGET} programs against the relibc sysroot.\n\
         exec clang --target={REDOX_TARGET} -fuse-ld=lld -nostdlib -static \
         -Wl,--allow-multiple-definition -L'{lib}' '{lib}/crt0.o' '{lib}/crti.o' \"$@\" \
         -lc -lm '{lib}/crtn.o'\n"
    )
}

/// The sysroot programs link against: relibc's libraries, crt objects and
/// headers, openlibm as `libm.a`, empty `libdl`/`libpthread`/`librt`/`libgcc`,
/// the unwinder stubs, and the linker wrapper.
pub fn sysroot(ctx: &Ctx, relibc_key: &str) -> Result<String> {
    let layout = ctx.layout;
    let sysroot = layout.sysroot();
    let lib = sysroot.join("lib");
    let mut key = ctx.key("sysroot", None)?;
    key.text("relibc", relibc_key)
        .text("unwind", UNWIND_STUBS_C)
        .text("linker", &linker_script(&sysroot))
        .text("clang", &clang_version()?);
    let outputs: Vec<PathBuf> = [
        "libc.a",
        "libm.a",
        "crt0.o",
        "crt1.o",
        "crti.o",
        "crtn.o",
        "libgcc_eh.a",
        "libunwind.a",
    ]
    .iter()
    .map(|f| lib.join(f))
    .chain([layout.linker(), sysroot.join("include/stdio.h")])
    .collect();
    let (key, _) = ctx.progress.cached("sysroot", &key, &outputs, |log| {
        let _ = fs::remove_dir_all(&sysroot);
        for dir in ["lib", "include", "bin", "stubs"] {
            fs::create_dir_all(sysroot.join(dir))?;
        }
        let build = relibc_build(layout);
        for obj in ["libc.a", "crt0.o", "crti.o", "crtn.o"] {
            fs::copy(build.join("release").join(obj), lib.join(obj))?;
        }
        std::os::unix::fs::symlink("crt0.o", lib.join("crt1.o"))?;
        fs::copy(build.join("openlibm/libopenlibm.a"), lib.join("libm.a"))?;
        sources::copy_tree(&build.join("include"), &sysroot.join("include"))?;
        for empty in ["dl", "pthread", "rt", "gcc"] {
            log.run(
                Command::new("ar")
                    .arg("-rcs")
                    .arg(lib.join(format!("lib{empty}.a"))),
            )?;
        }
        let stubs = sysroot.join("stubs");
        fs::write(stubs.join("unwind.c"), UNWIND_STUBS_C)?;
        log.run(
            Command::new("clang")
                .arg(format!("--target={REDOX_TARGET}"))
                .args(["-O2", "-fno-stack-protector", "-c"])
                .arg(stubs.join("unwind.c"))
                .arg("-o")
                .arg(stubs.join("unwind.o")),
        )?;
        for archive in ["libgcc_eh.a", "libunwind.a"] {
            log.run(
                Command::new("ar")
                    .arg("crs")
                    .arg(lib.join(archive))
                    .arg(stubs.join("unwind.o")),
            )?;
        }
        let linker = layout.linker();
        fs::write(&linker, linker_script(&sysroot))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&linker, fs::Permissions::from_mode(0o755))?;
        Ok(())
    })?;
    Ok(key)
}

/// Where cargo puts the base programs.
pub fn base_program(layout: &Layout, name: &str) -> PathBuf {
    layout
        .build("base")
        .join(REDOX_TARGET)
        .join("release")
        .join(name)
}

/// The base subset: std programs with build-std, size-optimized,
/// panic=abort, linked with the wrapper.
pub fn base(ctx: &Ctx, sysroot_key: &str) -> Result<String> {
    let mut build = ctx.redox_cargo();
    build
        .current_dir(ctx.layout.src("base"))
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_TARGET_DIR", ctx.layout.build("base"))
        .args(["build", "--locked", "--release", "--target", REDOX_TARGET])
        .arg("-Zbuild-std=std,panic_abort");
    for p in BASE_PROGRAMS {
        build.args(["-p", p]);
    }
    let mut key = ctx.key("base", Some(sources::BASE_INPUTS))?;
    key.text("sysroot", sysroot_key);
    let outputs: Vec<PathBuf> = BASE_PROGRAMS
        .iter()
        .map(|p| base_program(ctx.layout, p))
        .collect();
    ctx.step("base", key, vec![build], &outputs, |_| Ok(()))
}

/// bootstrap, the first user-space code the kernel runs from the initfs.
pub fn bootstrap_path(layout: &Layout) -> PathBuf {
    layout.build("bootstrap").join("bootstrap.elf")
}

/// bootstrap: a static library with build-std (core, alloc), linked by GNU
/// ld with its own linker script.
pub fn bootstrap(ctx: &Ctx) -> Result<String> {
    let src = ctx.layout.src("base/bootstrap");
    let out = ctx.layout.build("bootstrap");
    let mut build = ctx.toolchain.cargo();
    build
        .current_dir(&src)
        .env("RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &out)
        .args(["-Zbuild-std=core,alloc,compiler_builtins"])
        .args(["-Zbuild-std-features=compiler-builtins-mem"])
        .args(["build", "--locked", "--target", REDOX_TARGET, "--release"]);
    let mut link = Command::new("ld");
    link.arg("-o")
        .arg(bootstrap_path(ctx.layout))
        .args(["--gc-sections", "-T"])
        .arg(src.join("src/x86_64.ld"))
        .args(["-z", "max-page-size=4096"])
        .arg(out.join(REDOX_TARGET).join("release/libbootstrap.a"));
    let key = ctx.key("bootstrap", Some(sources::BOOTSTRAP_INPUTS))?;
    ctx.step(
        "bootstrap",
        key,
        vec![build, link],
        &[bootstrap_path(ctx.layout)],
        |_| Ok(()),
    )
}

/// base's initfs archiver, built for the host.
pub fn initfs_ar_path(layout: &Layout) -> PathBuf {
    layout.build("initfs-tools").join("release/redox-initfs-ar")
}

/// `redox-initfs-ar` from base's `initfs/tools`, for the host.
pub fn initfs_tools(ctx: &Ctx) -> Result<String> {
    let mut build = ctx.toolchain.cargo();
    build
        .current_dir(ctx.layout.src("base"))
        .env("CARGO_TARGET_DIR", ctx.layout.build("initfs-tools"))
        .args(["build", "--locked", "--release", "-p", "redox-initfs-tools"]);
    let key = ctx.key(
        "initfs-tools",
        Some(SnapshotInputs {
            tarballs: &["base"],
            patches: &["base.patch"],
            locks: &["base"],
            ..SnapshotInputs::default()
        }),
    )?;
    ctx.step(
        "initfs-tools",
        key,
        vec![build],
        &[initfs_ar_path(ctx.layout)],
        |_| Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linker_wrapper_links_statically_against_the_sysroot() {
        let script = linker_script(Path::new("/t/redox/sysroot"));
        assert!(script.starts_with("#!/bin/sh\n"));
        let exec = script.lines().last().unwrap();
        assert!(exec.starts_with("exec clang --target=x86_64-unknown-redox -fuse-ld=lld"));
        for part in ["-nostdlib", "-static", "-Wl,--allow-multiple-definition"] {
            assert!(exec.contains(part), "{part}");
        }
        // crt0/crti before the program's objects, libc/libm/crtn after them.
        let args = exec.find("\"$@\"").unwrap();
        assert!(exec.find("/t/redox/sysroot/lib/crt0.o").unwrap() < args);
        assert!(exec.find("/t/redox/sysroot/lib/crti.o").unwrap() < args);
        assert!(exec.find("-lc -lm '/t/redox/sysroot/lib/crtn.o'").unwrap() > args);
    }

    #[test]
    fn the_unwinder_stubs_define_what_std_references() {
        for sym in [
            "_Unwind_Backtrace",
            "_Unwind_GetIP",
            "_Unwind_GetIPInfo",
            "_Unwind_GetCFA",
            "_Unwind_GetRegionStart",
            "_Unwind_GetTextRelBase",
            "_Unwind_GetDataRelBase",
            "_Unwind_GetLanguageSpecificData",
            "_Unwind_FindEnclosingFunction",
            "_Unwind_SetGR",
            "_Unwind_SetIP",
            "_Unwind_RaiseException",
            "_Unwind_Resume",
            "_Unwind_DeleteException",
        ] {
            assert!(UNWIND_STUBS_C.contains(&format!("{sym}(")), "{sym}");
        }
    }

    #[test]
    fn the_stubs_compile_for_redox_when_clang_is_here() {
        if crate::hosttools::find("clang").is_none() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("pddgpu-stubs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("u.c"), UNWIND_STUBS_C).unwrap();
        let status = Command::new("clang")
            .args(["--target=x86_64-unknown-redox", "-c", "-Wall", "-Werror"])
            .arg(dir.join("u.c"))
            .arg("-o")
            .arg(dir.join("u.o"))
            .status()
            .unwrap();
        assert!(status.success());
        fs::remove_dir_all(&dir).unwrap();
    }
}
