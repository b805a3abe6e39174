//! Bad input of every kind gets its errno, and the server's memory state is
//! exactly what it was before (stats compared before and after).

use std::time::Duration;

use pddgpu_ipc::frame::{RequestHeader, MAX_PAYLOAD, REQUEST_HEADER_LEN};
use pddgpu_ipc::host::{HostConnection, ROOT_FD};
use pddgpu_ipc::wire::{BoCall, BoInfoWire, ExportWire, SegmentWire};
use pddgpu_ipc::{BoFlags, Device, Domain};
use pddgpu_tests::{memory_state, wait_until, Daemon};
use syscall::error::{
    EACCES, EBADF, EFBIG, EINVAL, EISDIR, EMSGSIZE, ENOENT, ENOSYS, ENOTDIR, EOPNOTSUPP, EPERM,
};
use syscall::flag::{O_RDONLY, O_RDWR, O_WRONLY};
use syscall::schemev2::Opcode;

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");

fn open(c: &mut HostConnection, path: &str, flags: usize) -> Result<u64, i32> {
    c.request(
        Opcode::OpenAt,
        [ROOT_FD, 0, 0, flags as u64, 0, 0],
        path.as_bytes(),
        0,
    )
    .unwrap()
    .result()
    .map(|v| v as u64)
}

fn call(c: &mut HostConnection, id: u64, payload: &mut [u8], meta: [u64; 3]) -> Result<usize, i32> {
    let r = c
        .request(
            Opcode::Call,
            [id, 0, 0, meta[0], meta[1], meta[2]],
            payload,
            0,
        )
        .unwrap();
    if r.payload.len() == payload.len() {
        payload.copy_from_slice(&r.payload);
    }
    r.result()
}

fn close(c: &mut HostConnection, id: u64) -> Result<usize, i32> {
    c.request(Opcode::CloseMsg, [id, 0, 0, 0, 0, 0], &[], 0)
        .unwrap()
        .result()
}

fn errno_of(dev: &Device, path: &str) -> Option<i32> {
    dev.read_file(path).err().and_then(|e| e.errno())
}

#[test]
fn every_bad_request_gets_its_errno_and_changes_nothing() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let before = memory_state(&dev);

    // Unknown paths.
    for p in [
        "nope",
        "stats/x",
        "bo/1/2",
        "config/nope",
        "bo/999999",
        "STATS",
        "a/b/c",
    ] {
        assert_eq!(errno_of(&dev, p), Some(ENOENT), "{p}");
    }
    // Malformed query strings, zero/oversize/non-numeric sizes, bad
    // alignments, bad flags and labels.
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    for p in [
        "bo/new",
        "bo/new?",
        "bo/new?size",
        "bo/new?size=",
        "bo/new?size=0",
        "bo/new?size=abc",
        "bo/new?size=-4096",
        "bo/new?size=1.5M",
        "bo/new?size=99999999999999999999",
        "bo/new?size=1T",
        "bo/new?size=65M",
        "bo/new?size=65M&domain=gtt",
        "bo/new?size=4096&size=8192",
        "bo/new?size=4096&domain=cpu",
        "bo/new?size=4096&align=3",
        "bo/new?size=4096&align=abc",
        "bo/new?size=4096&align=1G",
        "bo/new?size=4096&flags=fast",
        "bo/new?size=4096&label=a/b",
        "bo/new?size=4096&bogus=1",
        "bo/new?size=4096&&x",
        "bo/abc",
        "bo/1?tok=1",
        "bo/1?token=xyz",
        "stats?x=1",
    ] {
        assert_eq!(open(&mut c, p, O_RDWR), Err(EINVAL), "{p}");
    }
    // Non-UTF-8 path bytes never reach the scheme.
    let r = c
        .request(Opcode::OpenAt, [ROOT_FD, 0, 0, 0, 0, 0], &[b's', 0xff], 0)
        .unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    // Wrong access modes.
    assert_eq!(open(&mut c, "stats", O_WRONLY), Err(EACCES));
    assert_eq!(open(&mut c, "control", O_RDONLY), Err(EACCES));
    assert_eq!(open(&mut c, "", O_WRONLY), Err(EISDIR));

    // Garbage to control and config.
    for junk in [
        &b"frobnicate"[..],
        b"recover disk",
        b"recover",
        b"leak-check now",
        b"",
        b"\xff\xfe",
        b"fault",
        b"fault corrupt cpu",
    ] {
        let e = dev.write_file("control", junk).unwrap_err();
        assert_eq!(e.errno(), Some(EINVAL), "control <- {junk:?}");
    }
    let names = dev.config_names().unwrap();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        let value = dev.config(name).unwrap();
        for junk in [
            &b"abc"[..],
            b"-1",
            b"",
            b"99999999999999999999999",
            b"0x",
            b"\xff",
            b"1 2",
        ] {
            let e = dev.write_file(&format!("config/{name}"), junk).unwrap_err();
            assert_eq!(e.errno(), Some(EINVAL), "config/{name} <- {junk:?}");
        }
        assert_eq!(dev.config(name).unwrap(), value, "config/{name} unchanged");
    }

    // Forged and stale handles.
    for op in [Opcode::Read, Opcode::Fstat, Opcode::Fpath, Opcode::CloseMsg] {
        let out = if matches!(op, Opcode::Read | Opcode::Fpath) {
            64
        } else {
            0
        };
        let r = c.request(op, [12345, 0, 0, 0, 0, 0], &[], out).unwrap();
        assert_eq!(r.result(), Err(EBADF), "{op:?} on a forged handle");
    }
    let stats = open(&mut c, "stats", O_RDONLY).unwrap();
    close(&mut c, stats).unwrap();
    assert_eq!(close(&mut c, stats), Err(EBADF), "double close");
    let r = c
        .request(Opcode::Read, [stats, 0, 0, 0, 0, 0], &[], 16)
        .unwrap();
    assert_eq!(r.result(), Err(EBADF), "read after close");

    // Bad calls, directory misuse, BO bounds.
    let bo = open(&mut c, "bo/new?size=8192&domain=gtt", O_RDWR).unwrap();
    let mut info = [0u8; BoInfoWire::SIZE];
    call(&mut c, bo, &mut info, [BoCall::Info as u64, 0, 0]).unwrap();
    assert_eq!(BoInfoWire::decode(&info).unwrap().size, 8192);
    assert_eq!(
        call(&mut c, bo, &mut [0u8; 8], [BoCall::Info as u64, 0, 0]),
        Err(EINVAL)
    );
    assert_eq!(call(&mut c, bo, &mut info, [99, 0, 0]), Err(EINVAL));
    assert_eq!(
        call(&mut c, bo, &mut [0u8; 5], [BoCall::Segments as u64, 0, 0]),
        Err(EINVAL)
    );
    assert_eq!(
        call(&mut c, bo, &mut [], [BoCall::Segments as u64, 0, 0]),
        Err(EINVAL)
    );
    let mut seg = [0u8; SegmentWire::SIZE];
    assert_eq!(
        call(&mut c, bo, &mut seg, [BoCall::Segments as u64, 7, 0]),
        Ok(0),
        "past the last segment"
    );
    assert_eq!(
        call(&mut c, bo, &mut [0u8; 3], [BoCall::Export as u64, 0, 0]),
        Err(EINVAL)
    );
    let dir = open(&mut c, "config", O_RDONLY).unwrap();
    let mut x = [0u8; ExportWire::SIZE];
    assert_eq!(
        call(&mut c, dir, &mut x, [BoCall::Export as u64, 0, 0]),
        Err(EOPNOTSUPP)
    );
    let r = c
        .request(Opcode::Read, [dir, 0, 0, 0, 0, 0], &[], 16)
        .unwrap();
    assert_eq!(r.result(), Err(EISDIR));
    let r = c
        .request(Opcode::OpenAt, [bo, 0, 0, 0, 0, 0], b"x", 0)
        .unwrap();
    assert_eq!(r.result(), Err(ENOTDIR), "openat relative to a BO");
    let r = c
        .request(Opcode::Read, [bo, 0, 0, 8192, 0, 0], &[], 16)
        .unwrap();
    assert_eq!(r.result(), Ok(0), "read at the end");
    let r = c
        .request(Opcode::Write, [bo, 0, 0, 8192, 0, 0], b"x", 0)
        .unwrap();
    assert_eq!(r.result(), Err(EFBIG), "write past the end");
    let r = c
        .request(Opcode::Write, [bo, 0, 0, 8190, 0, 0], b"abcd", 0)
        .unwrap();
    assert_eq!(r.result(), Ok(2), "short write at the end");
    let r = c
        .request(Opcode::Dup, [bo, 0, 0, 0, 0, 0], b"nonsense", 0)
        .unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    // Another connection of ours cannot use this connection's handle, and
    // someone else's BO id is refused.
    let mut c2 = HostConnection::connect(daemon.socket()).unwrap();
    let r = c2
        .request(Opcode::Read, [bo, 0, 0, 0, 0, 0], &[], 16)
        .unwrap();
    assert_eq!(r.result(), Err(EBADF));
    close(&mut c, dir).unwrap();
    close(&mut c, bo).unwrap();

    // Truncated, oversized and foreign frames, and a client that hangs up
    // in the middle of a request. (Lines about clients share one limit of
    // a few a second: let the refusals above age out of it, so the line
    // about the half-sent request is written.)
    std::thread::sleep(Duration::from_millis(1100));
    let mut raw = HostConnection::connect(daemon.socket()).unwrap();
    let mut hdr = RequestHeader::default();
    hdr.sqe.opcode = Opcode::Write as u8;
    let mut big = hdr.encode();
    big[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    raw.send_raw(&big).unwrap();
    assert_eq!(raw.read_response().unwrap().result(), Err(EMSGSIZE));
    assert!(
        raw.read_response().is_err(),
        "closed after an oversized frame"
    );
    let mut junk = HostConnection::connect(daemon.socket()).unwrap();
    junk.send_raw(&[0x42; REQUEST_HEADER_LEN]).unwrap();
    assert_eq!(junk.read_response().unwrap().result(), Err(EINVAL));
    std::thread::sleep(Duration::from_millis(1100));
    let mut half = HostConnection::connect(daemon.socket()).unwrap();
    half.send_raw(&hdr.encode()[..30]).unwrap();
    drop(half);
    let mut midway = HostConnection::connect(daemon.socket()).unwrap();
    let held = open(&mut midway, "bo/new?size=1M", O_RDWR).unwrap();
    let mut w = RequestHeader::default();
    w.sqe.opcode = Opcode::Write as u8;
    w.sqe.args[0] = held;
    w.payload_len = 65536;
    midway.send_raw(&w.encode()).unwrap();
    midway.send_raw(&[7u8; 1000]).unwrap();
    drop(midway);
    let mut unknown = HostConnection::connect(daemon.socket()).unwrap();
    let mut u = RequestHeader::default();
    u.sqe.opcode = 250;
    unknown.send_raw(&u.encode()).unwrap();
    assert_eq!(unknown.read_response().unwrap().result(), Err(ENOSYS));
    drop(unknown);

    // Someone else's BO.
    let mine = dev.create_bo(4096, Domain::Vram, BoFlags::empty()).unwrap();
    let other = Device::connect(daemon.socket()).unwrap();
    // Another connection is another owner, even from the same process.
    assert_eq!(errno_of(&other, &format!("bo/{}", mine.id())), Some(EPERM));
    mine.close().unwrap();

    // Everything refused or released: the memory state is unchanged once
    // the hung-up connections have been cleaned up.
    drop(c);
    drop(c2);
    drop(raw);
    drop(junk);
    assert!(
        wait_until(Duration::from_secs(10), || memory_state(&dev) == before),
        "state changed:\nbefore {before}\nafter  {}",
        memory_state(&dev)
    );
    let report = dev.leak_check().unwrap();
    assert!(report.clean, "{report:?}");
    assert!(
        daemon
            .log()
            .contains("went away in the middle of a request"),
        "{}",
        daemon.log()
    );
    drop(dev);
    drop(other);
    assert_eq!(daemon.stop(), Some(0), "the server survived all of it");
}
