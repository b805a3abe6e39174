//! The scheme driven in-process through the real redox-scheme dispatch, the
//! way the Redox kernel drives it: `Sqe`s with pointers into this process,
//! callers identified by pid, `OnClose` messages. This covers what the host
//! transport does not carry (`mmap_prep`/`munmap`, handles opened relative
//! to a directory) and checks the namespace's file operations directly.

// The harness plays the kernel: it builds requests over its own buffers
// and reads the memory `mmap_prep` points at, which takes `unsafe`.
#![allow(unsafe_code)]

use std::sync::Arc;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::Driver;
use pddgpu_ipc::wire::{BoCall, BoInfoWire, ExportWire, SegmentWire};
use pddgpu_scheme::{Backing, PddgpuScheme, Region, SchemeOptions, ROOT_ID};
use redox_scheme::scheme::SchemeSync;
use redox_scheme::{Request, RequestKind, Response};
use syscall::data::Stat;
use syscall::dirent::{DirentHeader, DirentIter};
use syscall::error::{Error, EACCES, EBADF, EINVAL, ENOENT, EOPNOTSUPP, EPERM};
use syscall::flag::{MapFlags, O_RDONLY, O_RDWR};
use syscall::schemev2::{Cqe, Opcode, Sqe, SqeFlags};

struct Harness {
    scheme: PddgpuScheme,
    driver: Arc<Driver>,
    vram_base: usize,
}

fn harness() -> Harness {
    let device = SimDevice::new(SimConfig {
        vram_size: 16 << 20,
        visible_size: 16 << 20,
        gtt_size: 16 << 20,
    })
    .unwrap();
    let driver = Arc::new(Driver::new(device.resources(), 0).unwrap());
    let vram_base = device.vram().as_ptr() as usize;
    let backing = Backing::new(
        Region::kernel_mapped(vram_base),
        Region::kernel_mapped(device.gtt().as_ptr() as usize),
    );
    let scheme = PddgpuScheme::new(driver.clone(), backing, SchemeOptions::default());
    Harness {
        scheme,
        driver,
        vram_base,
    }
}

impl Harness {
    /// Runs one request as process `pid` (uid 0) and returns its result.
    fn run(&mut self, pid: u64, opcode: Opcode, args: [u64; 6]) -> Result<usize, i32> {
        let mut args = args;
        if !matches!(opcode, Opcode::Call) {
            args[5] = 0; // uid 0, gid 0
        }
        let sqe = Sqe {
            opcode: opcode as u8,
            sqe_flags: SqeFlags::empty(),
            _rsvd: 0,
            tag: 7,
            args,
            caller: pid,
        };
        // SAFETY: `Request` is `#[repr(transparent)]` over `Sqe`; every
        // pointer in `args` points at a live buffer of the caller of `run`
        // with its exact length.
        let req: Request = unsafe { std::mem::transmute::<Sqe, Request>(sqe) };
        let resp: Response = match req.kind() {
            RequestKind::Call(c) => c.handle_sync(&mut self.scheme),
            _ => panic!("not a call"),
        };
        // SAFETY: `Response` is `#[repr(transparent)]` over `Cqe`.
        let cqe: Cqe = unsafe { std::mem::transmute::<Response, Cqe>(resp) };
        Error::demux(cqe.result as usize).map_err(|e| e.errno)
    }

    /// Runs `opcode` on handle `id` with the buffer at `ptr` (`len` bytes)
    /// in args 1 and 2 and `rest` in args 3 and 4.
    fn run_with_buffer(
        &mut self,
        pid: u64,
        opcode: Opcode,
        id: usize,
        (ptr, len): (*const u8, usize),
        rest: [u64; 2],
    ) -> Result<usize, i32> {
        let args = [id as u64, ptr as u64, len as u64, rest[0], rest[1], 0];
        self.run(pid, opcode, args)
    }

    fn open(&mut self, pid: u64, dir: usize, path: &str, flags: usize) -> Result<usize, i32> {
        let buf = (path.as_ptr(), path.len());
        self.run_with_buffer(pid, Opcode::OpenAt, dir, buf, [flags as u64, 0])
    }

    fn read(&mut self, pid: u64, id: usize, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        let buf = (buf.as_mut_ptr().cast_const(), buf.len());
        self.run_with_buffer(pid, Opcode::Read, id, buf, [offset, 0])
    }

    fn write(&mut self, pid: u64, id: usize, offset: u64, buf: &[u8]) -> Result<usize, i32> {
        let buf = (buf.as_ptr(), buf.len());
        self.run_with_buffer(pid, Opcode::Write, id, buf, [offset, 0])
    }

    fn call(
        &mut self,
        pid: u64,
        id: usize,
        payload: &mut [u8],
        meta: [u64; 2],
    ) -> Result<usize, i32> {
        let buf = (payload.as_mut_ptr().cast_const(), payload.len());
        self.run_with_buffer(pid, Opcode::Call, id, buf, meta)
    }

    fn segments(&mut self, pid: u64, id: usize) -> Vec<SegmentWire> {
        let mut info = [0u8; BoInfoWire::SIZE];
        self.call(pid, id, &mut info, [BoCall::Info as u64, 0])
            .unwrap();
        let n = BoInfoWire::decode(&info).unwrap().segment_count as usize;
        let mut buf = vec![0u8; n * SegmentWire::SIZE];
        assert_eq!(
            self.call(pid, id, &mut buf, [BoCall::Segments as u64, 0]),
            Ok(n)
        );
        buf.chunks(SegmentWire::SIZE)
            .map(|c| SegmentWire::decode(c).unwrap())
            .collect()
    }

    fn mmap_prep(&mut self, pid: u64, id: usize, offset: u64, len: usize) -> Result<usize, i32> {
        let flags = (MapFlags::PROT_READ | MapFlags::PROT_WRITE | MapFlags::MAP_SHARED).bits();
        self.mmap_prep_flags(pid, id, offset, len, flags)
    }

    fn mmap_prep_flags(
        &mut self,
        pid: u64,
        id: usize,
        offset: u64,
        len: usize,
        flags: usize,
    ) -> Result<usize, i32> {
        self.run(
            pid,
            Opcode::MmapPrep,
            [id as u64, len as u64, flags as u64, offset, 0, 0],
        )
    }

    fn read_all(&mut self, pid: u64, id: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = self.read(pid, id, out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn dirents(&mut self, pid: u64, id: usize) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let header = std::mem::size_of::<DirentHeader>() as u64;
        let args = [
            id as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            header,
            0,
            0,
        ];
        let n = self.run(pid, Opcode::Getdents, args).unwrap();
        DirentIter::new(&buf[..n])
            .map(|e| {
                let (_, name) = e.unwrap();
                let name = name.split(|&b| b == 0).next().unwrap();
                String::from_utf8(name.to_vec()).unwrap()
            })
            .collect()
    }
}

#[test]
fn mmap_prep_returns_the_segments_server_address() {
    let mut h = harness();
    // Fragment VRAM so a larger BO gets several segments: fill it with
    // 1 MiB BOs, free every other one, then ask for 4 MiB.
    let mut small = Vec::new();
    for _ in 0..16 {
        small.push(h.open(10, ROOT_ID, "bo/new?size=1M", O_RDWR).unwrap());
    }
    for (i, id) in small.iter().enumerate() {
        if i % 2 == 0 {
            h.scheme.on_close(*id);
        }
    }
    let big = h
        .open(10, ROOT_ID, "bo/new?size=4M&label=split", O_RDWR)
        .unwrap();
    let segs = h.segments(10, big);
    assert!(segs.len() >= 2, "a split BO: {segs:?}");
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(h.write(10, big, 0, &data), Ok(data.len()));
    for s in &segs {
        let addr = h.mmap_prep(10, big, s.bo_offset, s.len as usize).unwrap();
        assert_eq!(addr, h.vram_base + s.backing_offset as usize);
        // SAFETY: `addr..addr + len` lies inside the simulated VRAM this
        // test owns (checked against the base above); nothing writes it
        // concurrently.
        let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, s.len as usize) };
        let start = s.bo_offset as usize;
        assert_eq!(
            mapped,
            &data[start..start + s.len as usize],
            "the BO's bytes"
        );
        // An offset inside the segment maps from there.
        let inner = h.mmap_prep(10, big, s.bo_offset + 4096, 4096).unwrap();
        assert_eq!(inner, addr + 4096);
    }
    // A range crossing two segments cannot be one kernel mapping.
    let first = segs.iter().min_by_key(|s| s.bo_offset).unwrap();
    assert_eq!(
        h.mmap_prep(10, big, first.bo_offset, (first.len + 4096) as usize),
        Err(EINVAL)
    );
    assert_eq!(
        h.mmap_prep(10, big, 4 << 20, 4096),
        Err(EINVAL),
        "past the end"
    );
    assert_eq!(h.mmap_prep(10, big, u64::MAX - 10, 4096), Err(EINVAL));
    assert_eq!(
        h.run(10, Opcode::Munmap, [big as u64, 4096, 0, 0, 0, 0]),
        Ok(0)
    );
    // Not a BO, and a BO of a process that is not the caller's handle.
    let stats = h.open(10, ROOT_ID, "stats", O_RDONLY).unwrap();
    assert_eq!(h.mmap_prep(10, stats, 0, 4096), Err(EOPNOTSUPP));
    // dup("backing") has no descriptor to give here.
    let dup = b"backing";
    let args = [big as u64, dup.as_ptr() as u64, dup.len() as u64, 0, 0, 0];
    assert_eq!(h.run(10, Opcode::Dup, args), Err(EOPNOTSUPP));
}

#[test]
fn a_new_bo_never_shows_a_previous_owners_bytes() {
    let mut h = harness();
    let first = h.open(10, ROOT_ID, "bo/new?size=1M", O_RDWR).unwrap();
    let secret = vec![0xA5u8; 1 << 20];
    assert_eq!(h.write(10, first, 0, &secret), Ok(secret.len()));
    let placed = h.segments(10, first);
    h.scheme.on_close(first);
    // Another process gets the very same memory (no `cleared` flag asked
    // for) and must read only zeros.
    let second = h.open(11, ROOT_ID, "bo/new?size=1M", O_RDWR).unwrap();
    assert_eq!(h.segments(11, second), placed, "the same memory reused");
    let seen = h.read_all(11, second, 64 << 10);
    assert_eq!(seen.len(), 1 << 20);
    assert!(seen.iter().all(|&b| b == 0), "stale bytes leaked");
}

#[test]
fn files_directories_and_handles() {
    let mut h = harness();
    let bo = h
        .open(20, ROOT_ID, "bo/new?size=12K&domain=gtt", O_RDWR)
        .unwrap();
    // fstat and fpath of a BO.
    let mut st = Stat::default();
    let args = [
        bo as u64,
        &mut st as *mut Stat as u64,
        std::mem::size_of::<Stat>() as u64,
        0,
        0,
        0,
    ];
    h.run(20, Opcode::Fstat, args).unwrap();
    assert_eq!(st.st_size, 12 << 10);
    let mut info = [0u8; BoInfoWire::SIZE];
    h.call(20, bo, &mut info, [BoCall::Info as u64, 0]).unwrap();
    let id = BoInfoWire::decode(&info).unwrap().id;
    assert_eq!(st.st_ino, id);
    let mut path = [0u8; 64];
    let n = h
        .run(
            20,
            Opcode::Fpath,
            [bo as u64, path.as_mut_ptr() as u64, 64, 0, 0, 0],
        )
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&path[..n]).unwrap(),
        format!("pddgpu:/bo/{id}")
    );
    assert_eq!(
        h.run(20, Opcode::Fsize, [bo as u64, 0, 0, 0, 0, 0]),
        Ok(12 << 10)
    );

    // Directories: the root, and handles opened relative to `config`.
    let root = h.open(20, ROOT_ID, "", O_RDONLY).unwrap();
    let names = h.dirents(20, root);
    for want in [
        "stats",
        "stats.json",
        "leaks",
        "health",
        "control",
        "config",
        "bo",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let config = h.open(20, ROOT_ID, "config", O_RDONLY).unwrap();
    let tunables = h.dirents(20, config);
    assert!(tunables.iter().any(|n| n == "leak_monitor"), "{tunables:?}");
    let monitor = h.open(20, config, "leak_monitor", O_RDONLY).unwrap();
    assert_eq!(h.read_all(20, monitor, 64), b"on\n");
    let bos = h.open(20, ROOT_ID, "bo", O_RDONLY).unwrap();
    assert_eq!(h.dirents(20, bos), vec![id.to_string()]);
    assert_eq!(h.dirents(21, bos).len(), 1, "the listing is the opener's");
    let other = h.open(21, ROOT_ID, "bo", O_RDONLY).unwrap();
    assert!(h.dirents(21, other).is_empty(), "another client holds none");

    // Reading in small pieces gives one consistent snapshot.
    let stats = h.open(20, ROOT_ID, "stats", O_RDONLY).unwrap();
    let whole = h.read_all(20, stats, 1 << 16);
    let pieces = h.read_all(20, stats, 7);
    assert_eq!(whole, pieces);
    assert!(String::from_utf8(whole).unwrap().contains("bo_count 1\n"));

    // Another process: someone else's BO is EPERM, an unknown one ENOENT.
    assert_eq!(h.open(21, ROOT_ID, &format!("bo/{id}"), O_RDWR), Err(EPERM));
    assert_eq!(h.open(21, ROOT_ID, "bo/424242", O_RDWR), Err(ENOENT));
    // A second handle of the same process on its BO: the BO survives the
    // first close and goes with the last.
    let again = h.open(20, ROOT_ID, &format!("bo/{id}"), O_RDWR).unwrap();
    h.scheme.on_close(bo);
    assert_eq!(h.driver.stats().gtt.bo_count, 1);
    assert_eq!(h.write(20, again, 0, b"still here"), Ok(10));
    h.scheme.on_close(again);
    assert_eq!(h.driver.stats().gtt.bo_count, 0);
    for id in [root, config, monitor, bos, other, stats] {
        h.scheme.on_close(id);
    }
    assert_eq!(h.scheme.handle_count(), 0);
}

#[test]
fn handles_are_references_and_exports_end_with_the_exporters_last_handle() {
    let mut h = harness();
    let first = h.open(30, ROOT_ID, "bo/new?size=64K", O_RDWR).unwrap();
    let info = |h: &mut Harness, pid, handle| {
        let mut buf = [0u8; BoInfoWire::SIZE];
        h.call(pid, handle, &mut buf, [BoCall::Info as u64, 0])
            .unwrap();
        BoInfoWire::decode(&buf).unwrap()
    };
    let id = info(&mut h, 30, first).id;
    let second = h.open(30, ROOT_ID, &format!("bo/{id}"), O_RDWR).unwrap();
    assert_eq!(info(&mut h, 30, first).refcount, 2, "one per handle");
    let mut buf = [0u8; ExportWire::SIZE];
    h.call(30, first, &mut buf, [BoCall::Export as u64, 0])
        .unwrap();
    let token = ExportWire::decode(&buf).unwrap().token;
    let import = format!("bo/{id}?token={}", pddgpu_ipc::wire::token_to_hex(&token));
    let imported = h.open(31, ROOT_ID, &import, O_RDWR).unwrap();
    assert_eq!(info(&mut h, 31, imported).refcount, 3);
    // The exporter closes one of its two handles: it still holds the BO,
    // so the export stands.
    h.scheme.on_close(first);
    let probe = h.open(32, ROOT_ID, &import, O_RDWR).unwrap();
    h.scheme.on_close(probe);
    // Its last handle goes: the token is revoked, the importer keeps it.
    h.scheme.on_close(second);
    assert_eq!(h.open(32, ROOT_ID, &import, O_RDWR), Err(EBADF));
    let left = info(&mut h, 31, imported);
    assert_eq!((left.refcount, left.exported), (1, 0));
    h.scheme.on_close(imported);
    assert_eq!(h.driver.stats().vram.bo_count, 0);
    assert_eq!(h.scheme.handle_count(), 0);
    assert!(h.driver.leak_check(1).is_clean());
}

#[test]
fn mmap_prep_maps_only_the_bos_own_pages_and_read_only_handles_read_only() {
    let mut h = harness();
    let before = h.open(10, ROOT_ID, "bo/new?size=4096", O_RDWR).unwrap();
    let bo = h.open(10, ROOT_ID, "bo/new?size=100", O_RDWR).unwrap();
    let after = h.open(10, ROOT_ID, "bo/new?size=4096", O_RDWR).unwrap();
    let seg = h.segments(10, bo)[0];
    // The whole (only) page of a 100-byte BO maps; the next page does not,
    // nor does an unaligned offset.
    let addr = h.mmap_prep(10, bo, 0, 4096).unwrap();
    assert_eq!(addr, h.vram_base + seg.backing_offset as usize);
    assert_eq!(h.mmap_prep(10, bo, 0, 8192), Err(EINVAL));
    assert_eq!(h.mmap_prep(10, bo, 4096, 4096), Err(EINVAL));
    assert_eq!(h.mmap_prep(10, bo, 100, 4096), Err(EINVAL));
    assert_eq!(h.mmap_prep(10, bo, 0, 0), Err(EINVAL));
    // A read-only handle on the same BO maps only without PROT_WRITE.
    let id = h
        .driver
        .bo_list()
        .iter()
        .find(|r| r.size == 100)
        .unwrap()
        .id
        .0;
    let ro = h.open(10, ROOT_ID, &format!("bo/{id}"), O_RDONLY).unwrap();
    let write = (MapFlags::PROT_READ | MapFlags::PROT_WRITE | MapFlags::MAP_SHARED).bits();
    let read = (MapFlags::PROT_READ | MapFlags::MAP_SHARED).bits();
    assert_eq!(h.mmap_prep_flags(10, ro, 0, 4096, write), Err(EACCES));
    assert_eq!(h.mmap_prep_flags(10, ro, 0, 4096, read), Ok(addr));
    for id in [ro, bo, before, after] {
        h.scheme.on_close(id);
    }
}

/// Attack: on Redox, opens by absolute path come through the namespace
/// manager and carry pid 0 for every process. Two such callers must not
/// share an owner: neither reaches, lists or frees the other's BO.
#[test]
fn anonymous_callers_never_share_an_owner() {
    let mut h = harness();
    let anonymous = 0;
    let a = h
        .open(anonymous, ROOT_ID, "bo/new?size=4K&domain=gtt", O_RDWR)
        .unwrap();
    let mut info = [0u8; BoInfoWire::SIZE];
    h.call(anonymous, a, &mut info, [BoCall::Info as u64, 0])
        .unwrap();
    let id = BoInfoWire::decode(&info).unwrap().id;
    assert_eq!(h.write(anonymous, a, 0, b"secret"), Ok(6));

    // A second anonymous open is somebody else.
    assert_eq!(
        h.open(anonymous, ROOT_ID, &format!("bo/{id}"), O_RDWR),
        Err(EPERM)
    );
    let dir = h.open(anonymous, ROOT_ID, "bo", O_RDONLY).unwrap();
    let listed = h.dirents(anonymous, dir);
    assert!(
        !listed.iter().any(|n| *n == id.to_string()),
        "another anonymous caller lists {id}: {listed:?}"
    );

    // The BO is still whole through its own handle.
    let mut back = [0u8; 6];
    assert_eq!(h.read(anonymous, a, 0, &mut back), Ok(6));
    assert_eq!(&back, b"secret");
    assert_eq!(h.driver.stats().gtt.bo_count, 1);
}

/// Attack: on Redox a client opens the scheme root once and everything else
/// relative to that descriptor. Ownership follows the descriptor, not the
/// pid: a process that gets the same pid later, with its own root, reaches
/// nothing; a child that inherited the descriptor acts for the same owner.
#[test]
fn opens_relative_to_a_handle_belong_to_its_owner_not_to_a_pid() {
    let mut h = harness();
    let anonymous = 0;
    let root_a = h.open(anonymous, ROOT_ID, "", O_RDONLY).unwrap();
    let bo = h
        .open(55, root_a, "bo/new?size=4K&domain=gtt", O_RDWR)
        .unwrap();
    let mut info = [0u8; BoInfoWire::SIZE];
    h.call(55, bo, &mut info, [BoCall::Info as u64, 0]).unwrap();
    let id = BoInfoWire::decode(&info).unwrap().id;
    // Pid 55 again, through its own root or straight at the scheme root:
    // someone else.
    let root_b = h.open(anonymous, ROOT_ID, "", O_RDONLY).unwrap();
    assert_eq!(h.open(55, root_b, &format!("bo/{id}"), O_RDWR), Err(EPERM));
    assert_eq!(h.open(55, ROOT_ID, &format!("bo/{id}"), O_RDWR), Err(EPERM));
    // Whoever holds root_a acts for its owner.
    let child = h.open(56, root_a, &format!("bo/{id}"), O_RDWR).unwrap();
    for handle in [child, bo, root_a, root_b] {
        h.scheme.on_close(handle);
    }
    assert_eq!(h.driver.stats().gtt.bo_count, 0);
}

/// The `vram` and `gtt` files list the manager's state, health and usage,
/// the allocator's own rows, then fragmentation and the retry policy, one
/// `key value` a line, in that order.
#[test]
fn manager_files_list_their_keys_in_order() {
    let mut h = harness();
    let keys_and_values = |h: &mut Harness, name: &str| -> Vec<(String, String)> {
        let file = h.open(30, ROOT_ID, name, O_RDONLY).unwrap();
        let text = String::from_utf8(h.read_all(30, file, 1 << 12)).unwrap();
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let vram = keys_and_values(&mut h, "vram");
    let keys: Vec<&str> = vram.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys[..17],
        [
            "state",
            "healthy",
            "total",
            "used",
            "free",
            "visible_size",
            "visible_used",
            "largest_free",
            "min_block_size",
            "allocations",
            "blocks",
            "free_blocks",
            "fragmentation_permille",
            "retry_count",
            "retry_delay_ms",
            "bad_ranges",
            "retired_bytes",
        ]
    );
    assert!(
        keys[17..].iter().all(|k| k.starts_with("free_order_")),
        "{keys:?}"
    );
    assert_eq!(vram[0].1, "ready");
    assert_eq!(vram[2].1, (16u64 << 20).to_string());
    assert_eq!(vram[3].1, "0", "nothing in VRAM");

    let _bo = h
        .open(30, ROOT_ID, "bo/new?size=12K&domain=gtt", O_RDWR)
        .unwrap();
    let gtt = keys_and_values(&mut h, "gtt");
    let s = h.driver.gtt_stats();
    let want = [
        ("state", "ready".to_string()),
        ("healthy", "1".to_string()),
        ("total", s.total_size.to_string()),
        ("used", s.used_size.to_string()),
        ("free", s.free_size.to_string()),
        ("holes", s.hole_count.to_string()),
        ("largest_hole", s.largest_hole.to_string()),
        ("nodes", "1".to_string()),
        (
            "fragmentation_permille",
            s.fragmentation_permille().to_string(),
        ),
        ("retry_count", s.retry.count.to_string()),
        ("retry_delay_ms", s.retry.delay_ms.to_string()),
    ];
    let want: Vec<(String, String)> = want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(gtt, want);
    assert_eq!(s.used_size, 12 << 10);
}
