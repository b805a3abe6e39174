//! The host transport against a small test scheme: real redox-scheme
//! dispatch, peer credentials, handle ownership, fd passing, malformed
//! frames.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use pddgpu_ipc::frame::{RequestHeader, MAX_PAYLOAD, REQUEST_HEADER_LEN};
use pddgpu_ipc::host::{caller_pid, HostConnection, HostScheme, HostServer, ServerLimits, ROOT_FD};
use redox_scheme::scheme::SchemeSync;
use redox_scheme::{CallerCtx, OpenResult};
use syscall::data::Stat;
use syscall::error::{Error, Result, EBADF, EINVAL, EMSGSIZE, ENOENT, EOPNOTSUPP};
use syscall::schemev2::{NewFdFlags, Opcode, Sqe, SqeFlags};

/// A scheme with named files holding bytes.
#[derive(Default)]
struct FileScheme {
    next: usize,
    open: HashMap<usize, (String, usize)>,
    files: HashMap<String, Vec<u8>>,
    closed: Arc<Mutex<Vec<usize>>>,
}

const ROOT: usize = 1000;

impl SchemeSync for FileScheme {
    fn scheme_root(&mut self) -> Result<usize> {
        Ok(ROOT)
    }
    fn openat(
        &mut self,
        dir: usize,
        path: &str,
        _flags: usize,
        _fcntl: u32,
        ctx: &CallerCtx,
    ) -> Result<OpenResult> {
        if dir != ROOT {
            return Err(Error::new(EBADF));
        }
        if path == "missing" {
            return Err(Error::new(ENOENT));
        }
        self.next += 1;
        self.files.entry(path.to_string()).or_default();
        self.open.insert(self.next, (path.to_string(), ctx.pid));
        Ok(OpenResult::ThisScheme {
            number: self.next,
            flags: NewFdFlags::POSITIONED,
        })
    }
    fn read(&mut self, id: usize, buf: &mut [u8], at: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        let (name, pid) = self.open.get(&id).ok_or(Error::new(EBADF))?;
        let content = if name == "whoami" {
            caller_pid(*pid).to_string().into_bytes()
        } else if name == "caller" {
            pid.to_string().into_bytes()
        } else {
            self.files[name].clone()
        };
        let start = (at as usize).min(content.len());
        let n = buf.len().min(content.len() - start);
        buf[..n].copy_from_slice(&content[start..start + n]);
        Ok(n)
    }
    fn write(&mut self, id: usize, buf: &[u8], at: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        let (name, _) = self.open.get(&id).ok_or(Error::new(EBADF))?;
        let file = self.files.get_mut(name).ok_or(Error::new(EBADF))?;
        let end = at as usize + buf.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[at as usize..end].copy_from_slice(buf);
        Ok(buf.len())
    }
    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let (name, _) = self.open.get(&id).ok_or(Error::new(EBADF))?;
        stat.st_size = self.files[name].len() as u64;
        stat.st_mode = 0o100644;
        Ok(())
    }
    fn call(&mut self, id: usize, buf: &mut [u8], meta: &[u64], ctx: &CallerCtx) -> Result<usize> {
        self.open.get(&id).ok_or(Error::new(EBADF))?;
        if meta[0] == 9 {
            // Who the transport says the caller is.
            return Ok(ctx.uid as usize);
        }
        if meta[0] != 7 {
            return Err(Error::new(EINVAL));
        }
        buf.reverse();
        Ok(buf.len())
    }
    fn dup(&mut self, id: usize, buf: &[u8], _ctx: &CallerCtx) -> Result<OpenResult> {
        let (name, _) = self.open.get(&id).ok_or(Error::new(EBADF))?;
        if buf != b"fd" {
            return Err(Error::new(EINVAL));
        }
        // Pass a memfd holding a copy of the file's bytes.
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|_| Error::new(EINVAL))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(&self.files[name])
            .map_err(|_| Error::new(EINVAL))?;
        Ok(OpenResult::OtherScheme {
            fd: OwnedFd::from(f).into_raw_fd() as usize,
        })
    }
    fn on_close(&mut self, id: usize) {
        self.open.remove(&id);
        self.closed.lock().unwrap().push(id);
    }
}

impl HostScheme for FileScheme {}

struct Harness {
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<usize>>>,
    thread: Option<thread::JoinHandle<()>>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start() -> Harness {
    let dir = std::env::temp_dir().join(format!(
        "pddgpu-ipc-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let scheme = FileScheme {
        closed: closed.clone(),
        ..Default::default()
    };
    let (s2, sv2) = (stop.clone(), served.clone());
    let thread = thread::spawn(move || {
        let mut server =
            HostServer::from_listener(listener, ServerLimits::default(), scheme).unwrap();
        while !s2.load(Ordering::Relaxed) {
            server.accept(Some(Duration::from_millis(20))).unwrap();
            sv2.store(server.requests_served() as usize, Ordering::Relaxed);
        }
        let _scheme = server.shutdown();
    });
    Harness {
        path,
        stop,
        served,
        closed,
        thread: Some(thread),
        _dir: TempDir(dir),
    }
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn open(c: &mut HostConnection, path: &str) -> std::result::Result<usize, i32> {
    c.request(Opcode::OpenAt, [ROOT_FD, 0, 0, 0, 0, 0], path.as_bytes(), 0)
        .unwrap()
        .result()
}

fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("condition not reached within 2.5 s");
}

#[test]
fn round_trips_through_real_dispatch() {
    let h = start();
    let mut c = HostConnection::connect(&h.path).unwrap();
    let id = open(&mut c, "a").unwrap();
    let w = c
        .request(Opcode::Write, [id as u64, 0, 0, 3, 0, 0], b"hello", 0)
        .unwrap();
    assert_eq!(w.result(), Ok(5));
    let r = c
        .request(Opcode::Read, [id as u64, 0, 0, 1, 0, 0], &[], 3)
        .unwrap();
    assert_eq!(r.result(), Ok(3));
    assert_eq!(r.payload, b"\0\0h");
    let st = c
        .request(Opcode::Fstat, [id as u64, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(st.result(), Ok(0));
    assert_eq!(st.payload.len(), std::mem::size_of::<Stat>());
    let mut stat = Stat::default();
    stat.copy_from_slice(&st.payload);
    assert_eq!(stat.st_size, 8, "st_size read back through the Stat bytes");
    assert_eq!(stat.st_mode, 0o100644);
    let call = c
        .request(Opcode::Call, [id as u64, 0, 0, 7, 0, 0], b"abc", 0)
        .unwrap();
    assert_eq!(call.result(), Ok(3));
    assert_eq!(call.payload, b"cba");
    let bad = c
        .request(Opcode::Call, [id as u64, 0, 0, 8, 0, 0], b"abc", 0)
        .unwrap();
    assert_eq!(bad.result(), Err(EINVAL));
    assert_eq!(open(&mut c, "missing"), Err(ENOENT));
    // The caller pid the scheme sees is the peer's real pid.
    let who = open(&mut c, "whoami").unwrap();
    let r = c
        .request(Opcode::Read, [who as u64, 0, 0, 0, 0, 0], &[], 32)
        .unwrap();
    assert_eq!(r.payload, std::process::id().to_string().as_bytes());
    // Close, then the id is stale.
    let cl = c
        .request(Opcode::CloseMsg, [id as u64, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(cl.result(), Ok(0));
    assert!(h.closed.lock().unwrap().contains(&id));
    let stale = c
        .request(Opcode::Read, [id as u64, 0, 0, 0, 0, 0], &[], 4)
        .unwrap();
    assert_eq!(stale.result(), Err(EBADF));
    wait_until(|| h.served.load(Ordering::Relaxed) >= 10);
}

/// A `call` sees the connection's real uid, whatever the client puts in
/// the word that carries the credentials of every other request.
#[test]
fn a_call_sees_the_connections_credentials_not_the_clients_word() {
    let h = start();
    let mut c = HostConnection::connect(&h.path).unwrap();
    let id = open(&mut c, "a").unwrap();
    let forged = 0x0bad_cafe_u64;
    let r = c
        .request(Opcode::Call, [id as u64, 0, 0, 9, 0, forged], b"", 0)
        .unwrap();
    assert_eq!(
        r.result(),
        Ok(rustix::process::getuid().as_raw() as usize),
        "the scheme saw a uid the client chose"
    );
}

#[test]
fn handles_belong_to_their_connection() {
    let h = start();
    let mut a = HostConnection::connect(&h.path).unwrap();
    let mut b = HostConnection::connect(&h.path).unwrap();
    let id = open(&mut a, "secret").unwrap();
    a.request(Opcode::Write, [id as u64, 0, 0, 0, 0, 0], b"xyz", 0)
        .unwrap();
    // b guesses a's id: the transport refuses before the scheme sees it.
    for op in [Opcode::Read, Opcode::Fstat] {
        let out = if matches!(op, Opcode::Read) { 16 } else { 0 };
        let r = b.request(op, [id as u64, 0, 0, 0, 0, 0], &[], out).unwrap();
        assert_eq!(r.result(), Err(EBADF));
    }
    let r = b
        .request(Opcode::CloseMsg, [id as u64, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(r.result(), Err(EBADF));
    assert!(!h.closed.lock().unwrap().contains(&id));
    // Each connection is a caller of its own, though both carry this
    // process's pid.
    let read = |c: &mut HostConnection, name: &str| {
        let id = open(c, name).unwrap();
        let r = c
            .request(Opcode::Read, [id as u64, 0, 0, 0, 0, 0], &[], 32)
            .unwrap();
        String::from_utf8(r.payload).unwrap()
    };
    let pid = std::process::id().to_string();
    assert_eq!(
        (read(&mut a, "whoami"), read(&mut b, "whoami")),
        (pid.clone(), pid)
    );
    assert_ne!(read(&mut a, "caller"), read(&mut b, "caller"));
    // Operations the host transport does not carry.
    let r = b
        .request(Opcode::MmapPrep, [ROOT_FD, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(r.result(), Err(EBADF));
    let own = open(&mut b, "x").unwrap();
    let r = b
        .request(Opcode::MmapPrep, [own as u64, 4096, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(r.result(), Err(EOPNOTSUPP));
}

#[test]
fn descriptors_pass_with_scm_rights() {
    let h = start();
    let mut c = HostConnection::connect(&h.path).unwrap();
    let id = open(&mut c, "piped").unwrap();
    c.request(
        Opcode::Write,
        [id as u64, 0, 0, 0, 0, 0],
        b"through a memfd",
        0,
    )
    .unwrap();
    let r = c
        .request(Opcode::Dup, [id as u64, 0, 0, 0, 0, 0], b"fd", 0)
        .unwrap();
    assert_eq!(r.result(), Ok(0));
    let fd = r.fd.expect("descriptor passed");
    let mut f = std::fs::File::from(fd);
    let mut got = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"through a memfd");
    // A dup that fails passes nothing.
    let r = c
        .request(Opcode::Dup, [id as u64, 0, 0, 0, 0, 0], b"no", 0)
        .unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    assert!(r.fd.is_none());
}

#[test]
fn disconnect_closes_every_handle() {
    let h = start();
    let mut c = HostConnection::connect(&h.path).unwrap();
    let ids: Vec<usize> = (0..5)
        .map(|i| open(&mut c, &format!("f{i}")).unwrap())
        .collect();
    drop(c);
    wait_until(|| {
        let closed = h.closed.lock().unwrap();
        ids.iter().all(|id| closed.contains(id))
    });
}

#[test]
fn malformed_frames_cost_only_their_sender() {
    let h = start();
    let mut good = HostConnection::connect(&h.path).unwrap();
    let gid = open(&mut good, "g").unwrap();

    // Garbage magic: an error response, then the connection is closed.
    let mut bad = HostConnection::connect(&h.path).unwrap();
    bad.send_raw(&[0xAB; REQUEST_HEADER_LEN]).unwrap();
    let r = bad.read_response().unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    assert!(
        bad.read_response().is_err(),
        "connection closed after garbage"
    );

    // Oversized payload announced: EMSGSIZE, closed.
    let mut big = HostConnection::connect(&h.path).unwrap();
    let mut hdr = RequestHeader {
        payload_len: 0,
        out_len: 0,
        sqe: Sqe {
            opcode: Opcode::Write as u8,
            sqe_flags: SqeFlags::empty(),
            _rsvd: 0,
            tag: 9,
            args: [0; 6],
            caller: 0,
        },
    }
    .encode();
    hdr[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    big.send_raw(&hdr).unwrap();
    let r = big.read_response().unwrap();
    assert_eq!(r.result(), Err(EMSGSIZE));
    assert_eq!(r.cqe.tag, 9);

    // Truncated: half a header, then hang up. Another: header promising a
    // payload that never comes.
    let mut trunc = HostConnection::connect(&h.path).unwrap();
    trunc.send_raw(&hdr[..20]).unwrap();
    drop(trunc);
    let mut partial = HostConnection::connect(&h.path).unwrap();
    let tid = open(&mut partial, "p").unwrap();
    let mut hdr2 = RequestHeader::default();
    hdr2.sqe.opcode = Opcode::Write as u8;
    hdr2.sqe.args[0] = tid as u64;
    hdr2.payload_len = 1000;
    partial.send_raw(&hdr2.encode()).unwrap();
    partial.send_raw(&[1; 10]).unwrap();
    drop(partial);
    wait_until(|| h.closed.lock().unwrap().contains(&tid));

    // Unknown opcode and stray payload: errors, connection stays usable.
    let r = good
        .request(Opcode::Fsync, [gid as u64, 0, 0, 0, 0, 0], b"x", 0)
        .unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    let mut raw = RequestHeader::default();
    raw.sqe.opcode = 200;
    raw.sqe.tag = 44;
    good.send_raw(&raw.encode()).unwrap();
    let r = good.read_response().unwrap();
    assert_eq!(r.result(), Err(syscall::error::ENOSYS));
    // Non-UTF-8 path.
    let r = good
        .request(Opcode::OpenAt, [ROOT_FD, 0, 0, 0, 0, 0], &[0xff, 0xfe], 0)
        .unwrap();
    assert_eq!(r.result(), Err(EINVAL));
    // The good client is still served.
    let r = good
        .request(Opcode::Write, [gid as u64, 0, 0, 0, 0, 0], b"ok", 0)
        .unwrap();
    assert_eq!(r.result(), Ok(2));
}

#[test]
fn large_transfers_cross_many_socket_buffers() {
    let h = start();
    let mut c = HostConnection::connect(&h.path).unwrap();
    let id = open(&mut c, "big").unwrap();
    let data: Vec<u8> = (0..(3 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let w = c
        .request(Opcode::Write, [id as u64, 0, 0, 0, 0, 0], &data, 0)
        .unwrap();
    assert_eq!(w.result(), Ok(data.len()));
    let r = c
        .request(Opcode::Read, [id as u64, 0, 0, 0, 0, 0], &[], data.len())
        .unwrap();
    assert_eq!(r.result(), Ok(data.len()));
    assert!(r.payload == data);
}
