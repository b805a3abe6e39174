//! The hostile-client suite: every attack runs against a real `pddgpud`
//! process over the real host transport, and every test ends by checking
//! that the server survived intact — still running, `health` is `ok`, a
//! leak audit is clean and no memory is in use.
//!
//! Attacks that need a second user (lock-out, reopening a read-only
//! descriptor) start the helper client as uid/gid 65534 when the suite runs
//! as root (as CI does); otherwise they check what one user can observe.

// The attacks map the descriptors the server hands out, as a hostile
// client would (the mapping edge).
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pddgpu_ipc::frame::{RequestHeader, MAX_PAYLOAD};
use pddgpu_ipc::host::{HostConnection, ROOT_FD};
use pddgpu_ipc::wire::{BoCall, BoInfoWire, SegmentWire, DUP_BACKING};
use pddgpu_ipc::{BoDesc, BoFlags, Device, Domain, ShareToken};
mod hostile_common;

use hostile_common::*;
use pddgpu_tests::{wait_until, ClientProc, Daemon, TEST_GTT, TEST_VRAM};
use rustix::mm::{MapFlags, ProtFlags};
use syscall::error::{EBADF, EDQUOT, EMFILE};
use syscall::flag::{O_RDONLY, O_RDWR};
use syscall::schemev2::{Opcode, Sqe, SqeFlags};

const PAGE: usize = 4096;

fn bo_id(c: &mut HostConnection, handle: u64) -> u64 {
    let info = [0u8; BoInfoWire::SIZE];
    let r = c
        .request(
            Opcode::Call,
            [handle, 0, 0, BoCall::Info as u64, 0, 0],
            &info,
            0,
        )
        .expect("info call");
    r.result().expect("info");
    BoInfoWire::decode(&r.payload).expect("info reply").id
}

/// The memory descriptor a BO handle hands out for mapping.
fn memory_fd(c: &mut HostConnection, handle: u64) -> Result<OwnedFd, i32> {
    let r = c
        .request(Opcode::Dup, [handle, 0, 0, 0, 0, 0], DUP_BACKING, 0)
        .map_err(|_| -1)?;
    r.result()?;
    r.fd.ok_or(-2)
}

fn fd_len(fd: &OwnedFd) -> usize {
    rustix::fs::fstat(fd).expect("fstat").st_size as usize
}

/// Maps `len` bytes of `fd` read-only and returns a copy of them.
fn read_mapped(fd: &OwnedFd, len: usize) -> Vec<u8> {
    // SAFETY: a fresh private read-only mapping chosen by the kernel,
    // copied out and unmapped before returning.
    unsafe {
        let p = rustix::mm::mmap(
            core::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED,
            fd,
            0,
        )
        .expect("mmap the descriptor");
        let copy = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        rustix::mm::munmap(p, len).expect("munmap");
        copy
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---- mapping -----------------------------------------------------------

/// A client's memory descriptor covers its own BO and nothing else: mapping
/// all of it never shows another client's bytes.
#[test]
fn a_memory_descriptor_covers_only_the_clients_own_bo() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let victim = daemon.connect();
    let secret = b"victim-secret-7f3a9c21-never-yours";
    let mut held = Vec::new();
    for domain in [Domain::Vram, Domain::Gtt] {
        let bo = victim
            .create_bo(64 << 10, domain, BoFlags::empty())
            .expect("victim BO");
        let mut data = Vec::new();
        while data.len() < (64 << 10) {
            data.extend_from_slice(secret);
        }
        data.truncate(64 << 10);
        bo.write_at(0, &data).expect("victim writes");
        held.push(bo);
    }
    let mut attacker = HostConnection::connect(daemon.socket()).unwrap();
    for domain in ["vram", "gtt"] {
        let h = open(
            &mut attacker,
            &format!("bo/new?size=4096&domain={domain}"),
            O_RDWR,
        )
        .expect("attacker BO");
        let fd = memory_fd(&mut attacker, h).expect("memory descriptor");
        let len = fd_len(&fd);
        assert_eq!(
            len, PAGE,
            "{domain}: the descriptor must cover exactly the attacker's one page"
        );
        let bytes = read_mapped(&fd, len);
        assert!(
            !contains(&bytes, secret),
            "{domain}: the attacker read the victim's bytes"
        );
        // Nothing past the end can be mapped.
        // SAFETY: a mapping attempt the kernel must refuse or that is
        // unmapped at once; never dereferenced.
        let beyond = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                PAGE,
                ProtFlags::READ,
                MapFlags::SHARED,
                &fd,
                PAGE as u64,
            )
        };
        if let Ok(p) = beyond {
            // Mapping past EOF may succeed, but touching it would fault;
            // what matters is that the file has no bytes there.
            // SAFETY: the mapping made just above, never dereferenced.
            unsafe { rustix::mm::munmap(p, PAGE).unwrap() };
        }
        close(&mut attacker, h).unwrap();
    }
    drop(held);
    drop(victim);
    drop(attacker);
    assert_server_intact(&mut daemon);
}

/// A client that keeps its memory descriptor after freeing the BO never
/// sees the bytes of the BO that reuses those pages.
#[test]
fn a_descriptor_kept_after_free_never_shows_a_later_bo() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut thief = HostConnection::connect(daemon.socket()).unwrap();
    let victim = daemon.connect();
    let secret = b"later-bo-secret-0c8e71";
    for domain in ["vram", "gtt"] {
        // Twice: once reclaimed by the overlapping create, once by the
        // periodic sweep (the victim's BO lands elsewhere first).
        for round in 0..2 {
            let h = open(
                &mut thief,
                &format!("bo/new?size=65536&domain={domain}"),
                O_RDWR,
            )
            .unwrap();
            let fd = memory_fd(&mut thief, h).expect("memory descriptor");
            close(&mut thief, h).unwrap();
            if round == 1 {
                std::thread::sleep(Duration::from_millis(300));
            }
            let d = if domain == "vram" {
                Domain::Vram
            } else {
                Domain::Gtt
            };
            let bo = victim.create_bo(65536, d, BoFlags::empty()).unwrap();
            let mut data = Vec::new();
            while data.len() < 65536 {
                data.extend_from_slice(secret);
            }
            data.truncate(65536);
            bo.write_at(0, &data).unwrap();
            let seen = read_mapped(&fd, 65536);
            assert!(
                !contains(&seen, secret),
                "{domain}: a freed BO's descriptor showed the next BO's bytes"
            );
            // The victim's bytes are intact for the victim.
            let mut back = vec![0u8; 65536];
            bo.read_at(0, &mut back).unwrap();
            assert_eq!(back, data);
        }
    }
    drop(victim);
    drop(thief);
    assert_server_intact(&mut daemon);
}

/// Truncating, growing or punching holes into a memory descriptor cannot
/// crash or corrupt the server.
#[test]
fn misusing_a_memory_descriptor_cannot_crash_the_server() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut attacker = HostConnection::connect(daemon.socket()).unwrap();
    let mut fds = Vec::new();
    for domain in ["vram", "gtt"] {
        let h = open(
            &mut attacker,
            &format!("bo/new?size=65536&domain={domain}"),
            O_RDWR,
        )
        .expect("attacker BO");
        let fd = memory_fd(&mut attacker, h).expect("memory descriptor");
        // Grow, punch, then shrink to nothing (and leave it so).
        let _ = rustix::fs::ftruncate(&fd, 1 << 30);
        let _ = rustix::fs::fallocate(
            &fd,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            4096,
        );
        let _ = rustix::fs::ftruncate(&fd, 0);
        fds.push((h, fd));
    }
    // The server now zero-fills, writes and reads memory in both domains,
    // including the attacker's own BOs.
    let dev = daemon.connect();
    for domain in [Domain::Vram, Domain::Gtt] {
        for _ in 0..8 {
            let bo = dev
                .create_bo(1 << 20, domain, BoFlags::empty())
                .expect("create after the attack");
            bo.write_at(0, &[0x5A; 4096]).expect("write");
            let mut back = [0u8; 4096];
            bo.read_at(0, &mut back).expect("read");
            assert_eq!(back, [0x5A; 4096]);
        }
    }
    for (h, _) in &fds {
        let mut buf = vec![0u8; 65536];
        let r = attacker
            .request(Opcode::Read, [*h, 0, 0, 0, 0, 0], &[], buf.len())
            .expect("the server still answers the attacker");
        assert_eq!(r.result(), Ok(65536));
        buf.copy_from_slice(&r.payload);
    }
    drop(fds);
    drop(attacker);
    drop(dev);
    assert_server_intact(&mut daemon);
}

/// A read-only handle never yields a writable mapping, and another user
/// cannot reopen its descriptor for writing.
#[test]
fn read_only_handles_never_map_writable() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let uid = is_root().then_some(OTHER_UID);
    let mut child = spawn_helper(&daemon, &["readonly-map"], uid);
    let line = first_line(&mut child);
    let _ = child.wait();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 4, "helper said {line:?}");
    assert_eq!(words[0], "map-rw");
    assert_ne!(words[1], "ok", "a read-only handle mapped writable");
    if uid.is_some() {
        assert_eq!(words[2], "reopen-rw");
        assert_ne!(
            words[3], "ok",
            "another user reopened a read-only descriptor writable"
        );
    }
    assert_server_intact(&mut daemon);
}

/// Only root or the server's user may ask for a descriptor of a whole
/// domain (what the linux-pci backend hands out for its VRAM BAR, where no
/// per-BO descriptor exists); anyone else gets `EACCES`. On the simulated
/// device even the privileged get none (`EOPNOTSUPP`): every BO there has
/// its own memory.
#[test]
fn whole_domain_descriptors_are_for_the_privileged_only() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut admin = spawn_helper(&daemon, &["domain-map"], None);
    assert_eq!(first_line(&mut admin), "domain-backing EOPNOTSUPP");
    let _ = admin.wait();
    if is_root() {
        let mut other = spawn_helper(&daemon, &["domain-map"], Some(OTHER_UID));
        assert_eq!(
            first_line(&mut other),
            "domain-backing EACCES",
            "an unprivileged user asked for a whole domain"
        );
        let _ = other.wait();
    } else {
        eprintln!("not root: the second-user half of this attack is skipped");
    }
    assert_server_intact(&mut daemon);
}

// ---- owners ----------------------------------------------------------------

/// Two connections of one process are two owners: neither reaches, lists
/// nor frees the other's BOs (an owner is a connection, never a pid, so a
/// process that gets a dead client's pid gets nothing of it either).
#[test]
fn two_connections_of_one_process_are_separate_owners() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let first = daemon.connect();
    let bo = first
        .create_bo(4096, Domain::Gtt, BoFlags::empty())
        .unwrap();
    bo.write_at(0, b"first's").unwrap();
    let mut second = HostConnection::connect(daemon.socket()).unwrap();
    assert_eq!(
        open(&mut second, &format!("bo/{}", bo.id()), O_RDWR),
        Err(syscall::error::EPERM),
        "another connection of the same process opened the BO"
    );
    let dir = open(&mut second, "bo", O_RDONLY).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = second
        .request(
            Opcode::Getdents,
            [
                dir,
                0,
                0,
                std::mem::size_of::<syscall::dirent::DirentHeader>() as u64,
                0,
                0,
            ],
            &[],
            buf.len(),
        )
        .unwrap();
    let n = r.result().unwrap() as usize;
    buf[..n].copy_from_slice(&r.payload[..n]);
    let listed: Vec<String> = syscall::dirent::DirentIter::new(&buf[..n])
        .map(|e| {
            let (_, name) = e.unwrap();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        })
        .collect();
    assert!(
        !listed.contains(&bo.id().to_string()),
        "the other connection lists the BO: {listed:?}"
    );
    // Both show up as clients with this process's pid.
    let clients = first.clients().unwrap();
    let mine = clients
        .iter()
        .filter(|c| c.pid == u64::from(std::process::id()))
        .count();
    assert!(mine >= 2, "expected two owners with our pid: {clients:?}");
    close(&mut second, dir).unwrap();
    drop(second);
    let mut back = [0u8; 7];
    bo.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"first's");
    drop(bo);
    drop(first);
    assert_server_intact(&mut daemon);
}

/// A process that hands its connection to a child (as a fork does) shares
/// its owner with it: the child reaches the BO through the same handle
/// after the parent has exited, the BO lives while the child holds the
/// connection, and it is freed when the last of them is gone.
#[test]
fn a_shared_connection_keeps_its_owner_until_the_last_process_goes() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let dev = daemon.connect();
    let mut parent = spawn_helper(&daemon, &["share-connection"], None);
    let mut out = std::io::BufReader::new(parent.stdout.take().expect("stdout"));
    let line = |out: &mut std::io::BufReader<std::process::ChildStdout>| {
        use std::io::BufRead;
        let mut l = String::new();
        let _ = out.read_line(&mut l);
        l.trim_end().to_string()
    };
    let shared = line(&mut out);
    let child_pid: i32 = shared
        .strip_prefix("shared ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("helper said {shared:?}"));
    assert!(parent.wait().unwrap().success());
    // The child's line comes once its parent is gone.
    assert_eq!(line(&mut out), "child-read shared");
    assert_eq!(
        dev.stats().unwrap().bos.count,
        1,
        "the BO lives while the child holds the connection"
    );
    let child = rustix::process::Pid::from_raw(child_pid).expect("child pid");
    rustix::process::kill_process(child, rustix::process::Signal::KILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            dev.stats().map(|s| s.bos.count == 0).unwrap_or(false)
        }),
        "the BO outlived the last process holding its connection"
    );
    drop(dev);
    assert_server_intact(&mut daemon);
}

// ---- page granularity ----------------------------------------------------

/// BOs never share a page, whatever size and alignment they ask for.
#[test]
fn bos_never_share_a_page() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let a = daemon.connect();
    let b = daemon.connect();
    for domain in [Domain::Gtt, Domain::Vram] {
        let mut desc = BoDesc::new(100, domain, BoFlags::empty());
        desc.align = 1;
        let mut pages = Vec::new();
        let mut bos = Vec::new();
        for (i, dev) in [&a, &b, &a, &b].into_iter().enumerate() {
            let bo = dev.create(&desc).expect("small BO");
            let segs: Vec<SegmentWire> = bo.segments().expect("segments");
            for s in &segs {
                assert_eq!(
                    s.backing_offset % PAGE as u64,
                    0,
                    "{domain}: BO {i} starts inside a page"
                );
                pages.push(s.backing_offset / PAGE as u64);
            }
            bos.push(bo);
        }
        let mut unique = pages.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            pages.len(),
            "{domain}: BOs share pages {pages:?}"
        );
    }
    drop((a, b));
    assert_server_intact(&mut daemon);
}

/// Every byte a client can map in a new BO is zero, including the rest of
/// its last page after the requested size.
#[test]
fn every_mappable_byte_of_a_new_bo_starts_zeroed() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let first = daemon.connect();
    let second = daemon.connect();
    for domain in [Domain::Gtt, Domain::Vram] {
        for _ in 0..4 {
            let mut bo = first
                .create_bo(8 * PAGE as u64, domain, BoFlags::empty())
                .unwrap();
            bo.map().unwrap().fill(0xEE);
            drop(bo);
            let mut small = second.create_bo(100, domain, BoFlags::empty()).unwrap();
            let map = small.map().unwrap();
            assert_eq!(map.len(), 100);
            // SAFETY: the transport maps whole pages (the BO's size rounded
            // up to the page size), so the whole page behind the BO's bytes
            // is mapped for as long as `small` keeps its mapping; it is read
            // through atomics, like the BO's own bytes.
            let page = unsafe { std::slice::from_raw_parts(map.as_atomic().as_ptr(), PAGE) };
            let bytes: Vec<u8> = page
                .iter()
                .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
                .collect();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{domain}: stale bytes after the BO's end: first at {:?}",
                bytes.iter().position(|&b| b != 0)
            );
        }
    }
    drop((first, second));
    assert_server_intact(&mut daemon);
}

// ---- export tokens ---------------------------------------------------------

/// Export tokens are 128 bits from the OS random source: they differ
/// between two runs of the server (where a counter or address-derived key
/// would repeat them) and within a run, and a forged or guessed token —
/// one bit off, all zeros, last run's, or too short — imports nothing.
#[test]
fn export_tokens_are_unguessable_and_forgeries_fail() {
    let tokens_of_one_run = || {
        let daemon = Daemon::start(&daemon_bin(), &[]);
        let dev = daemon.connect();
        let bos: Vec<_> = (0..32)
            .map(|_| dev.create_bo(4096, Domain::Gtt, BoFlags::empty()).unwrap())
            .collect();
        let tokens: Vec<ShareToken> = bos.iter().map(|bo| bo.export().unwrap()).collect();
        (daemon, dev, bos, tokens)
    };
    let (first_daemon, first_dev, first_bos, first) = tokens_of_one_run();
    drop((first_bos, first_dev));
    assert_eq!(first_daemon.stop(), Some(0));
    let (mut daemon, dev, bos, second) = tokens_of_one_run();
    for t in first.iter().chain(&second) {
        let text = t.to_string();
        let hex = text.split_once(':').unwrap().1;
        assert_eq!(hex.len(), 32, "a token is 128 bits: {text}");
    }
    // The same BOs (ids are handed out in the same order) get other tokens.
    assert_eq!(
        first.iter().map(|t| t.id).collect::<Vec<_>>(),
        second.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    for (a, b) in first.iter().zip(&second) {
        assert_ne!(a.token, b.token, "a token repeated across runs");
    }
    let mut all: Vec<[u8; 16]> = first.iter().chain(&second).map(|t| t.token).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 64, "tokens repeat within a run");
    // About half of the 8192 bits are ones (a fixed or counting pattern
    // is far off; random bits are within 6 standard deviations).
    let ones: u32 = all.iter().flatten().map(|b| b.count_ones()).sum();
    assert!((3800..=4392).contains(&ones), "{ones} of 8192 bits set");

    let mut thief = HostConnection::connect(daemon.socket()).unwrap();
    let target = second[0];
    for byte in [0, 7, 15] {
        let mut forged = target;
        forged.token[byte] ^= 0x10;
        assert_eq!(open(&mut thief, &forged.to_path(), O_RDWR), Err(EBADF));
    }
    let zeros = ShareToken {
        token: [0; 16],
        ..target
    };
    assert_eq!(open(&mut thief, &zeros.to_path(), O_RDWR), Err(EBADF));
    assert_eq!(
        open(&mut thief, &first[0].to_path(), O_RDWR),
        Err(EBADF),
        "last run's token for the same id"
    );
    assert_eq!(
        open(&mut thief, &format!("bo/{}?token=ff", target.id), O_RDWR),
        Err(syscall::error::EINVAL),
        "a short token is malformed"
    );
    assert_eq!(
        dev.stats().unwrap().bos.count,
        32,
        "no forgery imported anything"
    );
    let imported = open(&mut thief, &target.to_path(), O_RDWR).expect("the real token");
    close(&mut thief, imported).unwrap();
    drop((bos, dev, thief));
    assert_server_intact(&mut daemon);
}

// ---- bounded resources -----------------------------------------------------

/// A client holding a 16 MiB GTT BO that asks for two whole-BO reads and
/// never reads the answers: the server blocks sending to it.
fn never_reading_client(daemon: &Daemon) -> HostConnection {
    let mut stuck = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut stuck, "bo/new?size=16777216&domain=gtt", O_RDWR).expect("BO");
    let header = RequestHeader {
        payload_len: 0,
        out_len: MAX_PAYLOAD as u32,
        sqe: Sqe {
            opcode: Opcode::Read as u8,
            sqe_flags: SqeFlags::empty(),
            _rsvd: 0,
            tag: 7,
            args: [h, 0, 0, 0, 0, 0],
            caller: 0,
        },
    };
    stuck.send_raw(&header.encode()).unwrap();
    stuck.send_raw(&header.encode()).unwrap();
    stuck
}

/// A client that asks for a large answer and never reads it cannot stall
/// shutdown.
#[test]
fn shutdown_finishes_while_a_client_never_reads_its_answer() {
    let daemon = Daemon::start(&daemon_bin(), &[]);
    let stuck = never_reading_client(&daemon);
    std::thread::sleep(Duration::from_millis(300));
    let code = daemon.stop();
    assert_eq!(
        code,
        Some(0),
        "pddgpud did not finish its shutdown while a client refused to read"
    );
    drop(stuck);
}

/// A client that never reads its answers loses its connection after the
/// send timeout, and with it everything it held; the server keeps serving
/// everyone else meanwhile.
#[test]
fn a_client_that_never_reads_is_cut_off_after_the_send_timeout() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--send-timeout-ms", "300"]);
    let stuck = never_reading_client(&daemon);
    let dev = daemon.connect();
    assert_eq!(dev.health().unwrap().trim(), "ok", "others are served");
    let released = wait_until(Duration::from_secs(10), || {
        dev.stats().map(|s| s.bos.count == 0).unwrap_or(false)
    });
    assert!(
        released,
        "the BO of a client that never reads was not released"
    );
    drop(dev);
    drop(stuck);
    assert_server_intact(&mut daemon);
}

/// One user holding many connections does not lock another user out; the
/// connections beyond its share are refused with `EMFILE`.
#[test]
fn one_user_cannot_lock_out_another() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..300 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        match open(&mut c, "stats", O_RDONLY) {
            Ok(_) => held.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        refused,
        Some(EMFILE),
        "a user's connections beyond its limit must be refused with EMFILE ({} accepted)",
        held.len()
    );
    if is_root() {
        let mut other = spawn_helper(&daemon, &["create", "4096", "gtt"], Some(OTHER_UID));
        let line = first_line(&mut other);
        drop(other.stdin.take());
        let _ = other.wait();
        assert!(
            line.starts_with("ok "),
            "another user was locked out: {line:?}"
        );
    } else {
        eprintln!("not root: the second-user half of this attack is skipped");
    }
    drop(held);
    assert_server_intact(&mut daemon);
}

/// Handles are limited per user, across all of its connections.
#[test]
fn handles_are_limited_per_user() {
    // The default limit: 4096 handles per user.
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut a = HostConnection::connect(daemon.socket()).unwrap();
    let mut b = HostConnection::connect(daemon.socket()).unwrap();
    let mut opened = Vec::new();
    for i in 0..4096 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        opened.push(open(c, "stats", O_RDONLY).expect("within the limit"));
    }
    assert_eq!(open(&mut a, "stats", O_RDONLY), Err(EMFILE));
    assert_eq!(
        open(&mut b, "bo/new?size=4096&domain=gtt", O_RDWR),
        Err(EMFILE)
    );
    close(&mut a, opened[0]).unwrap();
    let again = open(&mut b, "stats", O_RDONLY).expect("a closed handle frees a slot");
    assert_eq!(open(&mut a, "stats", O_RDONLY), Err(EMFILE));
    close(&mut b, again).unwrap();
    drop((a, b));
    assert_server_intact(&mut daemon);
}

/// A connection that holds nothing and says nothing is closed after the
/// idle timeout; one that holds a handle stays; a frame left half-sent is
/// dropped after the request timeout.
#[test]
fn idle_and_stalled_connections_are_closed() {
    let mut daemon = Daemon::start(
        &daemon_bin(),
        &["--idle-timeout-ms", "300", "--request-timeout-ms", "300"],
    );
    let closed_by_server = |c: &HostConnection| {
        let mut s = c.stream();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    let library = daemon.connect();
    library.health().unwrap();
    let idle = HostConnection::connect(daemon.socket()).unwrap();
    let mut holding = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut holding, "bo/new?size=4096&domain=gtt", O_RDWR).unwrap();
    let mut stalled = HostConnection::connect(daemon.socket()).unwrap();
    let header = RequestHeader {
        payload_len: 64,
        ..RequestHeader::default()
    };
    stalled.send_raw(&header.encode()[..40]).unwrap();
    let start = Instant::now();
    assert!(closed_by_server(&idle), "the idle connection stayed open");
    assert!(closed_by_server(&stalled), "the stalled frame stayed open");
    assert!(start.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        bo_id(&mut holding, h) >> 62,
        0,
        "the holding connection still works"
    );
    close(&mut holding, h).unwrap();
    drop(holding);
    // The client library reconnects a connection closed while it held
    // nothing.
    assert_eq!(library.health().unwrap().trim(), "ok");
    assert_server_intact(&mut daemon);
}

/// The quota charges whole pages: a flood of 1-byte BOs exhausts the
/// attacker's quota after as many pages as it allows, and nobody else's.
#[test]
fn tiny_bos_exhaust_only_the_attackers_quota() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let admin = daemon.connect();
    admin.set_config("client_quota_bytes", "64K").unwrap();
    let mut attacker = HostConnection::connect(daemon.socket()).unwrap();
    let mut created = 0;
    let refused = loop {
        match open(&mut attacker, "bo/new?size=1&domain=gtt", O_RDWR) {
            Ok(_) => created += 1,
            Err(e) => break e,
        }
        assert!(created <= 1024, "1-byte BOs never hit the quota");
    };
    assert_eq!(refused, EDQUOT);
    assert_eq!(
        created, 16,
        "a 64 KiB quota holds 16 one-page BOs, however small they are asked"
    );
    let stats = admin.stats().unwrap();
    assert_eq!(stats.gtt.used, 16 * PAGE as u64, "each BO took a page");
    let victim = daemon.connect();
    let bo = victim
        .create_bo(64 << 10, Domain::Gtt, BoFlags::empty())
        .expect("another client still has its whole quota");
    drop(bo);
    drop(victim);
    drop(attacker);
    admin.set_config("client_quota_bytes", "0").unwrap();
    drop(admin);
    assert_server_intact(&mut daemon);
}

/// An import is charged to the importer: one at its quota cannot import,
/// and so cannot hold memory its quota does not pay for.
#[test]
fn an_importer_over_its_quota_cannot_import() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let admin = daemon.connect();
    admin.set_config("client_quota_bytes", "64K").unwrap();
    let exporter = daemon.connect();
    let shared = exporter
        .create_bo(32 << 10, Domain::Gtt, BoFlags::empty())
        .unwrap();
    let token = shared.export().unwrap();
    let mut importer = HostConnection::connect(daemon.socket()).unwrap();
    let own = open(&mut importer, "bo/new?size=40000&domain=vram", O_RDWR).unwrap();
    assert_eq!(
        open(&mut importer, &token.to_path(), O_RDWR),
        Err(EDQUOT),
        "40000 bytes take 40 KiB (10 pages): 32 KiB more is over 64 KiB"
    );
    close(&mut importer, own).unwrap();
    let imported = open(&mut importer, &token.to_path(), O_RDWR).expect("within the quota");
    // Holding the import, the importer has 32 KiB of quota left.
    assert_eq!(
        open(&mut importer, "bo/new?size=36K&domain=gtt", O_RDWR),
        Err(EDQUOT)
    );
    close(&mut importer, imported).unwrap();
    drop(shared);
    drop((exporter, importer));
    admin.set_config("client_quota_bytes", "0").unwrap();
    drop(admin);
    assert_server_intact(&mut daemon);
}

/// One user cannot fill the table of live BOs: beyond its BO limit, over
/// all of its connections, creates get `EDQUOT`, and another user is
/// unaffected.
#[test]
fn bos_are_limited_per_user() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-bos-per-uid", "64"]);
    let mut a = HostConnection::connect(daemon.socket()).unwrap();
    let mut b = HostConnection::connect(daemon.socket()).unwrap();
    let mut held_by_a = Vec::new();
    for i in 0..64 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let h = open(c, "bo/new?size=1&domain=gtt", O_RDWR).expect("within the limit");
        if i % 2 == 0 {
            held_by_a.push(h);
        }
    }
    assert_eq!(
        open(&mut a, "bo/new?size=1&domain=gtt", O_RDWR),
        Err(EDQUOT)
    );
    // Letting go of one makes room for exactly one more.
    close(&mut a, held_by_a[0]).unwrap();
    open(&mut b, "bo/new?size=1&domain=gtt", O_RDWR).expect("room for one again");
    assert_eq!(
        open(&mut b, "bo/new?size=1&domain=gtt", O_RDWR),
        Err(EDQUOT)
    );
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    assert_eq!(
        open(&mut c, "bo/new?size=1&domain=vram", O_RDWR),
        Err(EDQUOT),
        "a new connection of the same user is over the limit too"
    );
    if is_root() {
        let mut other = spawn_helper(&daemon, &["create", "4096", "gtt"], Some(OTHER_UID));
        let line = first_line(&mut other);
        drop(other.stdin.take());
        let _ = other.wait();
        assert!(
            line.starts_with("ok "),
            "another user could not create a BO: {line:?}"
        );
    } else {
        eprintln!("not root: the second-user half of this attack is skipped");
    }
    drop((a, b, c));
    assert_server_intact(&mut daemon);
}

/// A header that announces a large payload commits no memory before the
/// payload arrives.
#[test]
fn an_announced_payload_commits_nothing_up_front() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let pid = daemon.pid();
    let before = rss_kib(pid);
    let mut conns = Vec::new();
    for tag in 0..8u32 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        let header = RequestHeader {
            payload_len: MAX_PAYLOAD as u32,
            out_len: 0,
            sqe: Sqe {
                opcode: Opcode::OpenAt as u8,
                sqe_flags: SqeFlags::empty(),
                _rsvd: 0,
                tag,
                args: [ROOT_FD, 0, 0, 0, 0, 0],
                caller: 0,
            },
        };
        c.send_raw(&header.encode()).unwrap();
        c.send_raw(b"bo/").unwrap();
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "8 announced 16 MiB payloads grew the server by {grown} KiB before any payload arrived"
    );
    drop(conns);
    assert_server_intact(&mut daemon);
}

/// Log lines built from client input are capped.
#[test]
fn log_lines_from_client_input_are_capped() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let long = "x\n".repeat(1 << 19);
    for path in [
        long.clone(),
        format!("bo/new?size=4096&domain=gtt&label={long}"),
        format!("bo/new?size=4096&domain=gtt&{long}=1"),
        format!("config/{long}"),
        format!("bo/1?token={long}"),
    ] {
        let r = open(&mut c, &path, O_RDWR);
        assert!(r.is_err() && r != Err(-1), "{r:?}");
    }
    drop(c);
    assert_server_intact(&mut daemon);
    let log = daemon.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 1024, "a log line of {longest} bytes");
}

/// Client text in a log line cannot forge another line or reorder one:
/// line separators and bidirectional overrides in a label, a size or a
/// token are escaped in the excerpt and in the refusal reason alike.
#[test]
fn log_lines_cannot_be_forged_with_unicode_separators() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let fake =
        "\u{2028}[2026-12-02T12:00:00Z WARN  pddgpud] root: control: shutdown requested\u{2029}";
    for path in [
        format!("bo/1?token={fake}"),
        format!("bo/new?size=1{fake}"),
        format!("bo/new?size=4096&domain=gtt&label=\u{202e}{fake}&bogus"),
        "bo/new?size=4096&domain=g\u{202e}tt".to_string(),
    ] {
        let r = open(&mut c, &path, O_RDWR);
        assert!(r.is_err() && r != Err(-1), "{path}: {r:?}");
    }
    drop(c);
    assert_server_intact(&mut daemon);
    let log = daemon.log();
    for forged in ['\u{2028}', '\u{2029}', '\u{202e}'] {
        assert!(
            !log.contains(forged),
            "{forged:?} reached the log raw:\n{log}"
        );
    }
    assert!(
        log.contains("\\u{2028}"),
        "the refusals were not logged:\n{log}"
    );
}

/// A client's refusals cannot fill a log pipe that nobody reads: lines
/// about clients are limited server-wide (a few a second, see
/// `pddgpu_ipc::logline`), so a hundred thousand refusals leave the pipe
/// nearly empty and everyone else is still served. (Those lines are also
/// written after the scheme lock is released, so even a full pipe would
/// stall only the connection writing.)
#[test]
fn a_stalled_log_stalls_only_the_client_that_filled_it() {
    let dir = pddgpu_tests::TempDir::new("stalled-log");
    let socket = dir.path().join("pddgpu.sock");
    /// Kills the daemon if the test fails half-way.
    struct Reaper(Child);
    impl Drop for Reaper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut daemon = Reaper(
        Command::new(daemon_bin())
            .args(["--vram-size", TEST_VRAM, "--gtt-size", TEST_GTT])
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pddgpud"),
    );
    // The log pipe is never read while the attack runs.
    let log = daemon.0.stderr.take().expect("the log pipe");
    assert!(
        wait_until(Duration::from_secs(20), || Device::connect(&socket).is_ok()),
        "pddgpud did not start"
    );
    let flood_socket = socket.clone();
    let flooder = std::thread::spawn(move || {
        let mut c = HostConnection::connect(&flood_socket).unwrap();
        for i in 0..100_000 {
            // Each refusal is one log line of about a hundred bytes.
            if open(&mut c, &format!("no-such-file-{i}"), O_RDONLY) == Err(-1) {
                break;
            }
        }
    });
    let full = wait_until(Duration::from_secs(60), || {
        flooder.is_finished() || rustix::io::ioctl_fionread(&log).unwrap_or(0) >= 60_000
    });
    assert!(
        full && flooder.is_finished(),
        "the refusals filled the log pipe"
    );
    let logged = rustix::io::ioctl_fionread(&log).unwrap_or(0);
    assert!(
        logged < 16_000,
        "100000 refusals wrote {logged} bytes of log"
    );
    let victim_socket = socket.clone();
    let victim = std::thread::spawn(move || {
        let dev = Device::connect(&victim_socket)?;
        let bo = dev.create_bo(1 << 20, Domain::Gtt, BoFlags::empty())?;
        bo.write_at(0, b"served")?;
        let health = dev.health()?;
        drop(bo);
        Ok::<_, pddgpu_ipc::Error>(health)
    });
    let served = wait_until(Duration::from_secs(10), || victim.is_finished());
    // Unblock the flooder before judging, so nothing is left hanging (the
    // drain ends when the daemon exits).
    let drain = std::thread::spawn(move || {
        let mut log = log;
        let mut sink = Vec::new();
        let _ = log.read_to_end(&mut sink);
    });
    assert!(served, "another client was stalled by a full log pipe");
    assert_eq!(victim.join().unwrap().expect("served").trim(), "ok");
    flooder.join().unwrap();
    if let Some(pid) = rustix::process::Pid::from_raw(daemon.0.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let status = daemon.0.wait().expect("pddgpud exits");
    drain.join().unwrap();
    assert_eq!(status.code(), Some(0), "pddgpud stopped cleanly");
}

/// A create parked for lack of space wakes as soon as a killed client's BOs
/// are freed, not when its retry delay runs out.
#[test]
fn a_parked_create_wakes_when_a_killed_clients_bos_are_freed() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let dev = daemon.connect();
    dev.set_config("vram_retry_count", "1").unwrap();
    dev.set_config("vram_retry_delay_ms", "60000").unwrap();
    let hog = ClientProc::spawn(
        HOSTILE,
        daemon.socket(),
        &["hold-mapped", "1", &(64u64 << 20).to_string(), "vram"],
    );
    let mut hog = hog;
    assert_eq!(hog.line(), "ready");
    let socket = daemon.socket().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let dev = Device::connect(&socket).unwrap();
        let bo = dev.create_bo(1 << 20, Domain::Vram, BoFlags::empty());
        bo.map(|bo| bo.size())
    });
    // Let the create park, then kill the hog; no other request is sent
    // meanwhile (a served request would wake the parked one anyway).
    std::thread::sleep(Duration::from_millis(500));
    hog.kill();
    let woke = wait_until(Duration::from_secs(20), || waiter.is_finished());
    assert!(woke, "the parked create slept through the free");
    assert_eq!(waiter.join().unwrap().expect("create"), 1 << 20);
    drop(dev);
    assert_server_intact(&mut daemon);
}

/// Another user's frees that cannot help a parked create (in the other
/// domain, or too small) neither wake it nor use up its retries: with a
/// minute between retries, 200 such frees leave it parked and unretried
/// (before, each counted as a retry and it failed `ENOSPC` within
/// milliseconds: the red team's N16), and the free that does make room
/// still wakes it at once.
#[test]
fn frees_that_cannot_help_a_parked_create_do_not_spend_its_retries() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let dev = daemon.connect();
    let hog = dev
        .create_bo(48 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    dev.set_config("gtt_retry_count", "3").unwrap();
    dev.set_config("gtt_retry_delay_ms", "60000").unwrap();
    let counter = |name: &str| dev.stats().unwrap().counters[name];
    let failures = counter("gtt_failures");
    let socket = daemon.socket().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let dev = Device::connect(&socket).unwrap();
        let r = dev
            .create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
            .map(|bo| bo.size());
        tx.send(r.map_err(|e| e.to_string())).unwrap();
    });
    assert!(wait_until(Duration::from_secs(10), || counter(
        "gtt_failures"
    ) > failures));
    // The other client churns: VRAM BOs, and GTT BOs far smaller than the
    // parked request.
    let churn = daemon.connect();
    for _ in 0..100 {
        for domain in [Domain::Vram, Domain::Gtt] {
            let bo = churn.create_bo(4096, domain, BoFlags::empty()).unwrap();
            bo.close().unwrap();
        }
    }
    let early = rx.recv_timeout(Duration::from_millis(500));
    assert!(early.is_err(), "the parked create ended: {early:?}");
    assert_eq!(counter("gtt_retries"), 0, "useless frees retried it");
    hog.close().unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the free that makes room woke the parked request");
    assert_eq!(got, Ok(32 << 20));
    assert_eq!(counter("gtt_retries"), 1);
    waiter.join().unwrap();
    drop((churn, dev));
    assert_server_intact(&mut daemon);
}

// ---- malformed input -------------------------------------------------------

/// Garbage frames, forged handles and bad query strings each get an errno
/// (or cost the sender its connection) and change nothing.
#[test]
fn garbage_forged_handles_and_bad_queries_change_nothing() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let mut owner = HostConnection::connect(daemon.socket()).unwrap();
    let victim_bo = open(&mut owner, "bo/new?size=4096&domain=vram", O_RDWR).unwrap();
    owner
        .request(Opcode::Write, [victim_bo, 0, 0, 0, 0, 0], b"mine", 0)
        .unwrap();
    // Forged handles: the owner's ids, unknown ids, the root id.
    let mut thief = HostConnection::connect(daemon.socket()).unwrap();
    for id in [victim_bo, victim_bo + 1, 0, 1, 2, u64::MAX - 1, u64::MAX] {
        let r = thief
            .request(Opcode::Read, [id, 0, 0, 0, 0, 0], &[], 16)
            .unwrap();
        assert_eq!(r.result(), Err(EBADF), "read of forged handle {id}");
        assert_eq!(
            request(&mut thief, Opcode::Dup, [id, 0, 0, 0, 0, 0], DUP_BACKING),
            Err(EBADF)
        );
        assert_eq!(close(&mut thief, id), Err(EBADF));
    }
    // Bad query strings.
    for q in [
        "bo/new?size=0&domain=gtt",
        "bo/new?size=-1&domain=gtt",
        "bo/new?size=99999999999999999999&domain=gtt",
        "bo/new?size=4096&domain=gtt&align=3",
        "bo/new?size=4096&domain=gtt&align=0x",
        "bo/new?size=4096&domain=nope",
        "bo/new?size=4096&domain=gtt&flags=contiguous,bogus",
        "bo/new?size=4096&domain=gtt&size=4096",
        "bo/new?size=4096&domain=gtt&label=../../etc",
        "bo/new?size=4096&domain=gtt&attempt=-1",
        "bo/new?=&&&",
        "bo/new?size=4096&domain=gtt\u{0}",
        "bo/1?token=",
        "bo/1?token=zz",
        "bo/18446744073709551615?token=1",
        "bo/new?size=4096&domain=gtt&unknown=1",
    ] {
        let r = open(&mut thief, q, O_RDWR);
        assert!(r.is_err() && r != Err(-1), "{q:?} gave {r:?}");
    }
    // Garbage frames: each costs its sender the connection, nothing more.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..64 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        let len = 8 + (round * 37) % 300;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = c.send_raw(&junk);
        let _ = c.stream().shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = c.stream().read_to_end(&mut rest);
    }
    // The owner's BO is intact.
    let r = owner
        .request(Opcode::Read, [victim_bo, 0, 0, 0, 0, 0], &[], 4)
        .unwrap();
    assert_eq!(r.payload, b"mine");
    drop(owner);
    drop(thief);
    assert_server_intact(&mut daemon);
}

/// Many clients killed while holding mapped BOs leave nothing behind.
#[test]
fn many_killed_clients_leave_nothing_behind() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    for round in 0..3 {
        let mut clients: Vec<ClientProc> = (0..12)
            .map(|i| {
                let domain = if (i + round) % 2 == 0 { "vram" } else { "gtt" };
                ClientProc::spawn(
                    HOSTILE,
                    daemon.socket(),
                    &["hold-mapped", "4", "65536", domain],
                )
            })
            .collect();
        for c in &mut clients {
            assert_eq!(c.line(), "ready");
        }
        for c in clients {
            c.kill();
        }
        let dev = daemon.connect();
        assert!(wait_until(Duration::from_secs(20), || {
            dev.stats().map(|s| s.bos.count == 0).unwrap_or(false)
        }));
    }
    assert_server_intact(&mut daemon);
}
