//! The C peers: Linux's drm_buddy and drm_mm, built from Debian's
//! `linux-source-6.12` when a benchmark starts and loaded with `dlopen`.
//!
//! The kernel files (`drivers/gpu/buddy.c`, the allocator behind
//! `drm_buddy.h` in this kernel, plus `drivers/gpu/drm/drm_buddy.c`,
//! `drivers/gpu/drm/drm_mm.c`, `lib/rbtree.c` and the headers they take
//! from the kernel tree) are compiled unchanged against `kshim.h` (our
//! user-space stand-ins for the kernel interfaces they use) together with
//! `peers.c` (our entry points). Nothing of this is part of the product: the
//! kernel source is GPL-2.0 (rbtree, drm_mm) or MIT (gpu_buddy), fetched and
//! compiled under `target/cpeers/` only when a benchmark runs, never
//! committed and never linked into a crate.
//!
//! Steps, each skipped when its result is already in `target/cpeers/`:
//! 1. `apt-get download linux-source-6.12` (the `.deb`);
//! 2. extract only the needed files from its source tarball;
//! 3. write the one-line stand-in headers and compile everything with `cc`
//!    (`$CC` if set) into `libcpeers-<hash of our sources and flags>.so`.
//!
//! If a step fails (no apt, no network, no C compiler), [`load`] returns
//! why, and the benchmark prints that the peer was skipped and runs the
//! rest.

#![allow(unsafe_code)]
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::ffi::{c_char, c_int, c_ulong, c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Debian package holding the kernel source.
const PACKAGE: &str = "linux-source-6.12";
/// Top directory inside its tarball.
const TREE: &str = "linux-source-6.12";
/// Kernel files compiled into the peer library.
const KERNEL_SOURCES: &[&str] = &[
    "drivers/gpu/buddy.c",
    "drivers/gpu/drm/drm_buddy.c",
    "drivers/gpu/drm/drm_mm.c",
    "lib/rbtree.c",
];
/// Kernel headers used from the kernel tree itself.
const KERNEL_HEADERS: &[&str] = &[
    "include/linux/gpu_buddy.h",
    "include/drm/drm_buddy.h",
    "include/drm/drm_mm.h",
    "include/linux/rbtree.h",
    "include/linux/rbtree_types.h",
    "include/linux/rbtree_augmented.h",
    "include/linux/interval_tree_generic.h",
];
/// Kernel headers the peers include that `kshim.h` stands in for.
const SHIMMED_HEADERS: &[&str] = &[
    "linux/export.h",
    "linux/kmemleak.h",
    "linux/module.h",
    "linux/sizes.h",
    "linux/bitops.h",
    "linux/list.h",
    "linux/slab.h",
    "linux/sched.h",
    "linux/container_of.h",
    "linux/stddef.h",
    "linux/rcupdate.h",
    "linux/compiler.h",
    "linux/seq_file.h",
    "linux/stacktrace.h",
    "linux/bug.h",
    "linux/limits.h",
    "linux/mm_types.h",
    "linux/spinlock.h",
    "linux/types.h",
    "linux/stackdepot.h",
    "kunit/test-bug.h",
    "drm/drm_print.h",
];
/// Compiler flags: the kernel's optimisation level and aliasing rules;
/// only `peers.c`'s entry points are exported.
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-fno-strict-aliasing",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-w",
];

/// Our sources of the peer library (MIT).
const SHIM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/cpeers");

/// `gpu_buddy` allocation flags (`include/linux/gpu_buddy.h`).
pub const BUDDY_RANGE: c_ulong = 1 << 0;
/// Top-down placement.
pub const BUDDY_TOPDOWN: c_ulong = 1 << 1;
/// One contiguous run (rounded up to a power of two, then trimmed).
pub const BUDDY_CONTIGUOUS: c_ulong = 1 << 2;

/// `enum drm_mm_insert_mode`.
#[derive(Clone, Copy, Debug)]
#[repr(i32)]
pub enum MmMode {
    /// `DRM_MM_INSERT_BEST`.
    Best = 0,
    /// `DRM_MM_INSERT_LOW`.
    Low = 1,
    /// `DRM_MM_INSERT_HIGH`.
    High = 2,
}

type HeapBytesFn = unsafe extern "C" fn() -> u64;
type PbNewFn = unsafe extern "C" fn(u64, u64, usize) -> *mut c_void;
type DropFn = unsafe extern "C" fn(*mut c_void);
type PbAllocFn = unsafe extern "C" fn(*mut c_void, usize, u64, u64, u64, u64, c_ulong) -> c_int;
type PbFreeFn = unsafe extern "C" fn(*mut c_void, usize) -> c_int;
type PbCountFn = unsafe extern "C" fn(*const c_void) -> u64;
type SizeFn = unsafe extern "C" fn() -> u64;
type PmNewFn = unsafe extern "C" fn(u64, u64) -> *mut c_void;
type PmInsertFn =
    unsafe extern "C" fn(*mut c_void, u64, u64, u64, u64, c_int, *mut u64) -> *mut c_void;
type PmRemoveFn = unsafe extern "C" fn(*mut c_void, *mut c_void);

/// Declares [`Peers`], one field per `peers.c` function under its C name,
/// and `resolve`, which looks each one up by that name.
macro_rules! peer_functions {
    ($($name:ident: $ty:ty,)*) => {
        /// The entry points of `peers.c`.
        pub struct Peers {
            $($name: $ty,)*
        }

        /// Every entry point, looked up with `sym`.
        fn resolve(
            sym: impl Fn(&str) -> Result<*mut c_void, String>,
        ) -> Result<Peers, String> {
            Ok(Peers {
                $(
                    // SAFETY: the symbol is the `peers.c` function of that
                    // name, whose C signature is `$ty`.
                    $name: unsafe {
                        std::mem::transmute::<*mut c_void, $ty>(sym(stringify!($name))?)
                    },
                )*
            })
        }
    };
}

peer_functions! {
    peer_heap_bytes: HeapBytesFn,
    pb_new: PbNewFn,
    pb_drop: DropFn,
    pb_alloc: PbAllocFn,
    pb_free: PbFreeFn,
    pb_live_blocks: PbCountFn,
    pb_used: PbCountFn,
    pb_block_size: SizeFn,
    pm_new: PmNewFn,
    pm_drop: DropFn,
    pm_insert: PmInsertFn,
    pm_remove: PmRemoveFn,
    pm_node_size: SizeFn,
}

/// The peer library, built and loaded once per process; `Err` says why it
/// is not available.
pub fn load() -> Result<&'static Peers, String> {
    static PEERS: OnceLock<Result<Peers, String>> = OnceLock::new();
    PEERS
        .get_or_init(build_and_open)
        .as_ref()
        .map_err(Clone::clone)
}

/// `target/` of this build: the bench executable is `target/<profile>/deps/<name>`.
fn target_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("{what} failed ({}): {last}", out.status))
    }
}

/// Makes sure the kernel files are under `dir/TREE`; returns that path.
fn kernel_tree(dir: &Path) -> Result<PathBuf, String> {
    let tree = dir.join(TREE);
    let wanted = || KERNEL_SOURCES.iter().chain(KERNEL_HEADERS);
    if wanted().all(|f| tree.join(f).is_file()) {
        return Ok(tree);
    }
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{PACKAGE}_")) && n.ends_with(".deb"))
            })
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            eprintln!(
                "cpeers: apt-get download {PACKAGE} (into {})",
                dir.display()
            );
            run(
                Command::new("apt-get")
                    .args(["download", PACKAGE])
                    .current_dir(dir),
                "apt-get download",
            )?;
            find_deb().ok_or("apt-get download left no .deb")?
        }
    };
    eprintln!(
        "cpeers: extracting {} kernel files from {}",
        wanted().count(),
        deb.display()
    );
    let members = wanted()
        .map(|f| format!("'{TREE}/{f}'"))
        .collect::<Vec<_>>()
        .join(" ");
    // The .deb holds usr/src/<TREE>.tar.xz; only the wanted members leave it.
    let script = format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/src/{TREE}.tar.xz | tar -xJ -C '{}' {members}",
        deb.display(),
        dir.display()
    );
    run(
        Command::new("bash").arg("-c").arg(&script),
        "extracting the kernel files",
    )?;
    if wanted().all(|f| tree.join(f).is_file()) {
        Ok(tree)
    } else {
        Err("the kernel tarball lacks some of the peer files".into())
    }
}

fn build_and_open() -> Result<Peers, String> {
    let dir = target_dir()?.join("cpeers");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tree = kernel_tree(&dir)?;
    let shim = Path::new(SHIM_DIR);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // The library's name carries a hash of everything that goes into it.
    let mut hasher = DefaultHasher::new();
    (&cc, CFLAGS, SHIMMED_HEADERS).hash(&mut hasher);
    for f in ["kshim.h", "peers.c"] {
        std::fs::read(shim.join(f))
            .map_err(|e| format!("{f}: {e}"))?
            .hash(&mut hasher);
    }
    for f in KERNEL_SOURCES.iter().chain(KERNEL_HEADERS) {
        std::fs::read(tree.join(f))
            .map_err(|e| format!("{f}: {e}"))?
            .hash(&mut hasher);
    }
    let lib = dir.join(format!("libcpeers-{:016x}.so", hasher.finish()));
    if !lib.is_file() {
        let include = dir.join("shim-include");
        for h in SHIMMED_HEADERS {
            let path = include.join(h);
            std::fs::create_dir_all(path.parent().expect("header in a directory"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::write(&path, "#include \"kshim.h\"\n")
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let tmp = lib.with_extension("tmp");
        let mut cmd = Command::new(&cc);
        cmd.args(CFLAGS)
            .arg(format!("-I{}", shim.display()))
            .arg(format!("-I{}", include.display()))
            .arg(format!("-I{}", tree.join("include").display()))
            .arg(shim.join("peers.c"))
            .args(KERNEL_SOURCES.iter().map(|f| tree.join(f)))
            .arg("-o")
            .arg(&tmp);
        eprintln!("cpeers: compiling drm_buddy and drm_mm with {cc}");
        run(&mut cmd, &format!("{cc} (C compiler)"))?;
        std::fs::rename(&tmp, &lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    }
    open(&lib)
}

fn open(lib: &Path) -> Result<Peers, String> {
    let path = CString::new(lib.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `path` is a NUL-terminated string; the library's constructors
    // only set up its slab cache.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".into()
        } else {
            // SAFETY: non-null, NUL-terminated (see above).
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("dlopen {}: {msg}", lib.display()));
    }
    let sym = |name: &str| -> Result<*mut c_void, String> {
        let c = CString::new(name).expect("symbol name");
        // SAFETY: `handle` is a live dlopen handle (never closed).
        let p = unsafe { libc::dlsym(handle, c.as_ptr() as *const c_char) };
        if p.is_null() {
            Err(format!("symbol {name} missing from {}", lib.display()))
        } else {
            Ok(p)
        }
    };
    resolve(sym)
}

impl Peers {
    /// Heap bytes both peers hold right now (slab objects in use and
    /// kmalloc), for metadata figures.
    pub fn heap_bytes(&self) -> u64 {
        // SAFETY: reads two counters.
        unsafe { (self.peer_heap_bytes)() }
    }

    /// `sizeof(struct gpu_buddy_block)`.
    pub fn buddy_block_size(&self) -> u64 {
        // SAFETY: returns a constant.
        unsafe { (self.pb_block_size)() }
    }

    /// `sizeof(struct drm_mm_node)`.
    pub fn mm_node_size(&self) -> u64 {
        // SAFETY: returns a constant.
        unsafe { (self.pm_node_size)() }
    }
}

/// A `gpu_buddy` (drm_buddy) allocator with a caller table of `slots`
/// block lists. Not `Sync`: callers serialise access (one lock, as drivers
/// do).
pub struct DrmBuddy {
    peers: &'static Peers,
    mm: *mut c_void,
    size: u64,
}

// SAFETY: the allocator is plain memory owned by this value; moving it to
// another thread is fine, sharing needs a lock (it is not `Sync`).
unsafe impl Send for DrmBuddy {}

impl DrmBuddy {
    /// `gpu_buddy_init(size, chunk)` plus `slots` empty block lists.
    pub fn new(peers: &'static Peers, size: u64, chunk: u64, slots: usize) -> DrmBuddy {
        // SAFETY: plain values in; a null result is checked.
        let mm = unsafe { (peers.pb_new)(size, chunk, slots) };
        assert!(
            !mm.is_null(),
            "gpu_buddy_init({size:#x}, {chunk:#x}) failed"
        );
        DrmBuddy { peers, mm, size }
    }

    /// `gpu_buddy_alloc_blocks` into the empty list of `slot`; true on
    /// success. `range` only matters with [`BUDDY_RANGE`].
    #[inline]
    pub fn alloc(
        &mut self,
        slot: usize,
        size: u64,
        min_block: u64,
        flags: c_ulong,
        range: (u64, u64),
    ) -> bool {
        let (start, end) = if flags & BUDDY_RANGE != 0 {
            range
        } else {
            (0, self.size)
        };
        // SAFETY: `mm` is live, `slot` is inside the table (checked by the
        // caller's table size; the C side indexes it).
        unsafe { (self.peers.pb_alloc)(self.mm, slot, start, end, size, min_block, flags) == 0 }
    }

    /// `gpu_buddy_free_list` of `slot`'s blocks; true if it held any.
    #[inline]
    pub fn free(&mut self, slot: usize) -> bool {
        // SAFETY: as in `alloc`.
        unsafe { (self.peers.pb_free)(self.mm, slot) != 0 }
    }

    /// Blocks held in all slots.
    pub fn live_blocks(&self) -> u64 {
        // SAFETY: `mm` is live.
        unsafe { (self.peers.pb_live_blocks)(self.mm) }
    }

    /// Bytes in allocated blocks.
    pub fn used(&self) -> u64 {
        // SAFETY: `mm` is live.
        unsafe { (self.peers.pb_used)(self.mm) }
    }
}

impl Drop for DrmBuddy {
    fn drop(&mut self) {
        // SAFETY: `mm` is live and dropped once.
        unsafe { (self.peers.pb_drop)(self.mm) }
    }
}

/// A `drm_mm` range allocator; nodes are handed out as opaque handles.
pub struct DrmMm {
    peers: &'static Peers,
    mm: *mut c_void,
}

/// A live `drm_mm` node.
#[derive(Clone, Copy, Debug)]
pub struct MmNode(*mut c_void);

impl DrmMm {
    /// `drm_mm_init(start, size)`.
    pub fn new(peers: &'static Peers, start: u64, size: u64) -> DrmMm {
        // SAFETY: plain values in; a null result is checked.
        let mm = unsafe { (peers.pm_new)(start, size) };
        assert!(!mm.is_null(), "drm_mm_init failed");
        DrmMm { peers, mm }
    }

    /// `drm_mm_insert_node_in_range`; the node and its start, or `None`.
    #[inline]
    pub fn insert(
        &mut self,
        size: u64,
        align: u64,
        range: (u64, u64),
        mode: MmMode,
    ) -> Option<(MmNode, u64)> {
        let mut start = 0u64;
        // SAFETY: `mm` is live; `start` is a valid out pointer.
        let node = unsafe {
            (self.peers.pm_insert)(
                self.mm,
                size,
                align,
                range.0,
                range.1,
                mode as c_int,
                &mut start,
            )
        };
        (!node.is_null()).then_some((MmNode(node), start))
    }

    /// `drm_mm_remove_node` of a node this allocator returned.
    #[inline]
    pub fn remove(&mut self, node: MmNode) {
        // SAFETY: the node is live in this allocator (the harness removes
        // each node it inserted exactly once).
        unsafe { (self.peers.pm_remove)(self.mm, node.0) }
    }
}

impl Drop for DrmMm {
    fn drop(&mut self) {
        // SAFETY: `mm` is live and dropped once; remaining nodes are removed.
        unsafe { (self.peers.pm_drop)(self.mm) }
    }
}
