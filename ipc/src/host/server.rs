//! The server side of the host transport: a Unix-socket listener that runs
//! every client request through the real `redox-scheme` dispatch into any
//! [`SchemeSync`] implementation.
//!
//! The server plays the part the Redox kernel plays on Redox:
//! - it turns each frame into an `Sqe` whose pointer arguments point at
//!   buffers the server owns, converts it to a `redox_scheme::Request`, and
//!   calls `CallRequest::handle_sync`;
//! - it fills the caller's pid/uid/gid from `SO_PEERCRED`, never from the
//!   client's word;
//! - it tracks which handle ids each connection opened, rejects requests
//!   naming any other id with `EBADF`, and closes (`on_close`) every handle a
//!   connection still holds when the connection goes away — exactly what the
//!   kernel does when a process exits or dies;
//! - an `OpenResult::OtherScheme { fd }` (a file descriptor returned by the
//!   scheme, e.g. the memory backing a BO) travels to the client with
//!   `SCM_RIGHTS`.
//!
//! It is single-threaded and non-blocking: a slow or malicious client can
//! never stall the others, and a malformed frame only costs its sender the
//! connection.

use std::collections::{HashSet, VecDeque};
use std::io::{self, IoSlice, Read};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redox_scheme::scheme::{SchemeState, SchemeSync};
use redox_scheme::{Request, RequestKind, Response};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use syscall::data::Stat;
use syscall::error::{Error, EBADF, EINVAL, EOPNOTSUPP};
use syscall::schemev2::{Cqe, CqeOpcode, Opcode, Sqe, SqeFlags};

use crate::frame::{
    FrameError, RequestHeader, ResponseHeader, MAX_PAYLOAD, REQUEST_HEADER_LEN, RESPONSE_FLAG_FD,
};

/// The `fd` argument a client uses in `openat` to mean "the scheme root"
/// (what `/scheme/pddgpu` is on Redox). The server substitutes the id that
/// [`SchemeSync::scheme_root`] returned.
pub const ROOT_FD: u64 = u64::MAX;

/// What a scheme served over the host transport may learn beyond
/// [`SchemeSync`]: that a client connection ended, with every handle it
/// still held. The default closes them one by one, as a kernel would; a
/// scheme can instead release a dead client's resources in one batch.
pub trait HostScheme: SchemeSync {
    /// The connection of process `pid` ended; `handles` are the handles it
    /// still held (each must be treated as closed).
    fn on_disconnect(&mut self, pid: u32, handles: &[usize]) {
        let _ = pid;
        for &id in handles {
            self.on_close(id);
        }
    }
}

/// Limits of a [`HostServer`].
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// Handles one connection may hold open at a time (`EMFILE` beyond).
    pub max_handles_per_connection: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_handles_per_connection: 1 << 16,
        }
    }
}

/// Peer credentials of one connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id of the peer when it connected.
    pub pid: u32,
    /// User id of the peer.
    pub uid: u32,
    /// Group id of the peer.
    pub gid: u32,
}

/// One response waiting to be written.
struct OutMsg {
    bytes: Vec<u8>,
    pos: usize,
    fd: Option<OwnedFd>,
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    cred: PeerCred,
    /// Bytes received; `inbuf[..filled]` is valid.
    inbuf: Vec<u8>,
    filled: usize,
    out: VecDeque<OutMsg>,
    handles: HashSet<usize>,
    /// Set after a fatal protocol error: flush what is queued, then drop.
    closing: bool,
}

/// The host-transport server. Owns the listening socket and all client
/// connections; the scheme is passed to [`HostServer::poll_once`] so the
/// caller (the daemon) keeps it for ticks and shutdown.
pub struct HostServer {
    listener: UnixListener,
    path: Option<PathBuf>,
    conns: Vec<Conn>,
    root: Option<usize>,
    limits: ServerLimits,
    scratch_stat: Box<Stat>,
}

/// Initial size of a connection's receive buffer; grows up to one maximal
/// frame.
const INBUF_INITIAL: usize = 16 << 10;

impl HostServer {
    /// Binds a listening socket at `path`. A stale socket file left by a
    /// dead server is replaced; a live server at that path is an error
    /// (`AddrInUse`).
    pub fn bind(path: &Path, limits: ServerLimits) -> io::Result<Self> {
        if path.exists() {
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("a server is already listening on {}", path.display()),
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let listener = UnixListener::bind(path)?;
        let mut server = Self::from_listener(listener, limits)?;
        server.path = Some(path.to_path_buf());
        Ok(server)
    }

    /// Serves on an already bound listener (tests, socket activation).
    pub fn from_listener(listener: UnixListener, limits: ServerLimits) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(HostServer {
            listener,
            path: None,
            conns: Vec::new(),
            root: None,
            limits,
            scratch_stat: Box::default(),
        })
    }

    /// Number of connected clients.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// True while some response is still queued for a slow reader.
    pub fn has_pending_output(&self) -> bool {
        self.conns.iter().any(|c| !c.out.is_empty())
    }

    /// Credentials of every connected client.
    pub fn peers(&self) -> Vec<PeerCred> {
        self.conns.iter().map(|c| c.cred).collect()
    }

    /// Waits up to `timeout` (forever when `None`) for activity, then
    /// accepts new clients and serves every complete request that arrived.
    /// Returns the number of requests served. An interrupted wait (a
    /// signal) returns `Ok(0)` so the caller can check its flags.
    pub fn poll_once<S: HostScheme>(
        &mut self,
        scheme: &mut S,
        state: &mut SchemeState,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if self.root.is_none() {
            self.root = scheme.scheme_root().ok();
        }
        let ready = match self.wait(timeout) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        let (listener_ready, conn_ready) = ready;
        let mut served = 0;
        let mut dead = Vec::new();
        for (index, flags) in conn_ready {
            match self.service(index, flags, scheme, state) {
                Ok(n) => served += n,
                Err(reason) => {
                    log::debug!(
                        "client pid {} disconnected: {reason}",
                        self.conns[index].cred.pid
                    );
                    dead.push(index);
                }
            }
        }
        // Remove back to front so indices stay valid.
        dead.sort_unstable();
        for index in dead.into_iter().rev() {
            let conn = self.conns.swap_remove(index);
            Self::release(conn, scheme);
        }
        if listener_ready {
            self.accept_all();
        }
        Ok(served)
    }

    /// Disconnects every client, closing all their handles in the scheme
    /// (used at shutdown, after the scheme stopped accepting work).
    pub fn disconnect_all<S: HostScheme>(&mut self, scheme: &mut S) {
        for conn in self.conns.drain(..) {
            Self::release(conn, scheme);
        }
    }

    fn release<S: HostScheme>(conn: Conn, scheme: &mut S) {
        if conn.filled > 0 {
            log::info!(
                "client pid {} went away in the middle of a request ({} bytes unprocessed)",
                conn.cred.pid,
                conn.filled
            );
        }
        let mut ids: Vec<usize> = conn.handles.into_iter().collect();
        ids.sort_unstable();
        scheme.on_disconnect(conn.cred.pid, &ids);
    }

    /// Polls the listener and all connections. Returns whether the listener
    /// is readable and the ready connections with their events.
    #[allow(clippy::type_complexity)]
    fn wait(&self, timeout: Option<Duration>) -> io::Result<(bool, Vec<(usize, PollFlags)>)> {
        let mut fds = Vec::with_capacity(self.conns.len() + 1);
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        for conn in &self.conns {
            let mut events = PollFlags::empty();
            if conn.out.is_empty() {
                if !conn.closing {
                    events |= PollFlags::IN;
                }
            } else {
                events |= PollFlags::OUT;
            }
            fds.push(PollFd::new(&conn.stream, events));
        }
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: d.subsec_nanos().into(),
        });
        poll(&mut fds, ts.as_ref())?;
        let listener_ready = !fds[0].revents().is_empty();
        let ready = fds[1..]
            .iter()
            .enumerate()
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(i, fd)| (i, fd.revents()))
            .collect();
        Ok((listener_ready, ready))
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_connection(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream) {
        if self.conns.len() >= self.limits.max_connections {
            log::warn!(
                "refusing a client: {} connections already open",
                self.conns.len()
            );
            return;
        }
        let cred = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => PeerCred {
                pid: c.pid.as_raw_nonzero().get() as u32,
                uid: c.uid.as_raw(),
                gid: c.gid.as_raw(),
            },
            Err(e) => {
                log::warn!("refusing a client without peer credentials: {e}");
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("refusing a client: cannot make its socket non-blocking: {e}");
            return;
        }
        log::debug!("client connected: pid {} uid {}", cred.pid, cred.uid);
        self.conns.push(Conn {
            stream,
            cred,
            inbuf: vec![0; INBUF_INITIAL],
            filled: 0,
            out: VecDeque::new(),
            handles: HashSet::new(),
            closing: false,
        });
    }

    /// Serves one ready connection. `Err` means drop it.
    fn service<S: HostScheme>(
        &mut self,
        index: usize,
        flags: PollFlags,
        scheme: &mut S,
        state: &mut SchemeState,
    ) -> Result<usize, String> {
        let root = self.root;
        let limits = self.limits;
        let stat = &mut *self.scratch_stat;
        let conn = &mut self.conns[index];
        if flags.contains(PollFlags::OUT) {
            flush(conn)?;
            if conn.closing && conn.out.is_empty() {
                return Err("closed after a protocol error".into());
            }
            return Ok(0);
        }
        if flags.intersects(PollFlags::ERR | PollFlags::NVAL) {
            return Err("socket error".into());
        }
        if !flags.intersects(PollFlags::IN | PollFlags::HUP) {
            return Ok(0);
        }
        // One read per readiness keeps latency low; level-triggered poll
        // brings us back if more is pending.
        if conn.filled == conn.inbuf.len() {
            let grown = (conn.inbuf.len() * 2).min(REQUEST_HEADER_LEN + MAX_PAYLOAD);
            conn.inbuf.resize(grown, 0);
        }
        let n = match conn.stream.read(&mut conn.inbuf[conn.filled..]) {
            Ok(0) => return Err("end of stream".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(format!("read error: {e}")),
        };
        conn.filled += n;
        let mut served = 0;
        let mut consumed = 0;
        while !conn.closing {
            let avail = &conn.inbuf[consumed..conn.filled];
            if avail.len() < REQUEST_HEADER_LEN {
                break;
            }
            let header = match RequestHeader::decode(avail) {
                Ok(h) => h,
                Err(e) => {
                    let tag = u32::from_le_bytes([avail[20], avail[21], avail[22], avail[23]]);
                    log::warn!(
                        "client pid {}: malformed frame ({e}); closing",
                        conn.cred.pid
                    );
                    queue_error(conn, tag, e);
                    conn.closing = true;
                    break;
                }
            };
            let total = REQUEST_HEADER_LEN + header.payload_len as usize;
            if avail.len() < total {
                // Make room for the whole frame and wait for the rest.
                if conn.inbuf.len() < total {
                    conn.inbuf.resize(total.next_power_of_two().max(total), 0);
                }
                break;
            }
            let payload = conn.inbuf[consumed + REQUEST_HEADER_LEN..consumed + total].to_vec();
            consumed += total;
            let (resp_cqe, out_payload, fd) =
                dispatch(conn, root, limits, stat, &header, payload, scheme, state);
            push_response(conn, resp_cqe, out_payload, fd);
            served += 1;
        }
        if consumed > 0 {
            conn.inbuf.copy_within(consumed..conn.filled, 0);
            conn.filled -= consumed;
            // Give back memory after a large frame.
            if conn.filled == 0 && conn.inbuf.len() > 4 * INBUF_INITIAL {
                conn.inbuf = vec![0; INBUF_INITIAL];
            }
        }
        flush(conn)?;
        if conn.closing && conn.out.is_empty() {
            return Err("closed after a protocol error".into());
        }
        Ok(served)
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a request produced: the completion, the payload to send back, and
/// possibly a file descriptor to pass.
type Dispatched = (Cqe, Vec<u8>, Option<OwnedFd>);

fn err_cqe(tag: u32, errno: i32) -> Cqe {
    Cqe {
        flags: CqeOpcode::RespondRegular as u8,
        extra_raw: [0; 3],
        tag,
        result: Error::mux(Err(Error::new(errno))) as u64,
    }
}

fn queue_error(conn: &mut Conn, tag: u32, e: FrameError) {
    push_response(conn, err_cqe(tag, e.errno()), Vec::new(), None);
}

fn push_response(conn: &mut Conn, cqe: Cqe, payload: Vec<u8>, fd: Option<OwnedFd>) {
    let header = ResponseHeader {
        flags: if fd.is_some() { RESPONSE_FLAG_FD } else { 0 },
        payload_len: payload.len() as u32,
        cqe,
    };
    let mut bytes = Vec::with_capacity(crate::frame::RESPONSE_HEADER_LEN + payload.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&payload);
    conn.out.push_back(OutMsg { bytes, pos: 0, fd });
}

/// Writes queued responses until done or the socket is full.
fn flush(conn: &mut Conn) -> Result<(), String> {
    while let Some(msg) = conn.out.front_mut() {
        let iov = [IoSlice::new(&msg.bytes[msg.pos..])];
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        let sent = if let (0, Some(fd)) = (msg.pos, msg.fd.as_ref()) {
            let fds = [fd.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err("cannot build SCM_RIGHTS message".into());
            }
            rustix::net::sendmsg(&conn.stream, &iov, &mut control, flags)
        } else {
            rustix::net::sendmsg(
                &conn.stream,
                &iov,
                &mut SendAncillaryBuffer::default(),
                flags,
            )
        };
        match sent {
            Ok(n) => {
                // The descriptor went out with the first byte; ours is closed.
                msg.fd = None;
                msg.pos += n;
                if msg.pos == msg.bytes.len() {
                    conn.out.pop_front();
                }
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("write error: {e}")),
        }
    }
    Ok(())
}

/// Validates one request, rebuilds its `Sqe` over server-owned buffers,
/// runs it through the redox-scheme dispatch and collects the result.
#[allow(clippy::too_many_arguments)]
fn dispatch<S: SchemeSync>(
    conn: &mut Conn,
    root: Option<usize>,
    limits: ServerLimits,
    stat: &mut Stat,
    header: &RequestHeader,
    mut payload: Vec<u8>,
    scheme: &mut S,
    state: &mut SchemeState,
) -> Dispatched {
    let wire = header.sqe;
    let tag = wire.tag;
    let fail = |errno| (err_cqe(tag, errno), Vec::new(), None);
    let Some(opcode) = Opcode::try_from_raw(wire.opcode) else {
        return fail(syscall::error::ENOSYS);
    };
    if wire.sqe_flags.bits() != 0 || wire._rsvd != 0 {
        return fail(EINVAL);
    }
    let out_len = header.out_len as usize;
    let has_payload = !payload.is_empty();

    // Which handle the request names; it must be one this connection holds.
    let target = wire.args[0];
    let fd_ok = |id: u64| usize::try_from(id).is_ok_and(|id| conn.handles.contains(&id));

    if matches!(opcode, Opcode::CloseMsg) {
        if has_payload || out_len != 0 {
            return fail(EINVAL);
        }
        let Ok(id) = usize::try_from(target) else {
            return fail(EBADF);
        };
        if !conn.handles.remove(&id) {
            return fail(EBADF);
        }
        scheme.on_close(id);
        return (ok_cqe(tag, 0), Vec::new(), None);
    }

    let target = if matches!(opcode, Opcode::OpenAt) && target == ROOT_FD {
        match root {
            Some(r) => r as u64,
            None => return fail(syscall::error::ENOENT),
        }
    } else if fd_ok(target) {
        target
    } else {
        return fail(EBADF);
    };

    let creds = u64::from(conn.cred.uid) | (u64::from(conn.cred.gid) << 32);
    let mut sqe = Sqe {
        opcode: wire.opcode,
        sqe_flags: SqeFlags::empty(),
        _rsvd: 0,
        tag,
        args: [target, 0, 0, 0, 0, creds],
        caller: u64::from(conn.cred.pid),
    };
    let mut out: Vec<u8> = Vec::new();
    // What goes back as payload on success.
    enum Reply {
        None,
        OutPrefix,
        Payload,
        Stat,
    }
    let reply;
    match opcode {
        Opcode::OpenAt | Opcode::Dup => {
            if out_len != 0 {
                return fail(EINVAL);
            }
            if matches!(opcode, Opcode::OpenAt) && std::str::from_utf8(&payload).is_err() {
                return fail(EINVAL);
            }
            if conn.handles.len() >= limits.max_handles_per_connection {
                return fail(syscall::error::EMFILE);
            }
            sqe.args[1] = payload.as_ptr() as u64;
            sqe.args[2] = payload.len() as u64;
            if matches!(opcode, Opcode::OpenAt) {
                sqe.args[3] = wire.args[3];
                sqe.args[4] = wire.args[4];
            }
            reply = Reply::None;
        }
        Opcode::Read | Opcode::Fpath | Opcode::Getdents => {
            if has_payload {
                return fail(EINVAL);
            }
            out = vec![0u8; out_len];
            sqe.args[1] = out.as_mut_ptr() as u64;
            sqe.args[2] = out_len as u64;
            if !matches!(opcode, Opcode::Fpath) {
                sqe.args[3] = wire.args[3];
                sqe.args[4] = wire.args[4];
            }
            reply = Reply::OutPrefix;
        }
        Opcode::Write => {
            if out_len != 0 {
                return fail(EINVAL);
            }
            sqe.args[1] = payload.as_ptr() as u64;
            sqe.args[2] = payload.len() as u64;
            sqe.args[3] = wire.args[3];
            sqe.args[4] = wire.args[4];
            reply = Reply::None;
        }
        Opcode::Call => {
            if out_len != 0 {
                return fail(EINVAL);
            }
            sqe.args[1] = payload.as_mut_ptr() as u64;
            sqe.args[2] = payload.len() as u64;
            // metadata[0..3]; uid/gid are not available to `call` on Redox
            // either.
            sqe.args[3] = wire.args[3];
            sqe.args[4] = wire.args[4];
            sqe.args[5] = wire.args[5];
            reply = Reply::Payload;
        }
        Opcode::Fstat => {
            if has_payload || out_len != 0 {
                return fail(EINVAL);
            }
            *stat = Stat::default();
            sqe.args[1] = stat as *mut Stat as u64;
            sqe.args[2] = size_of::<Stat>() as u64;
            reply = Reply::Stat;
        }
        Opcode::Fsize | Opcode::Fsync => {
            if has_payload || out_len != 0 {
                return fail(EINVAL);
            }
            reply = Reply::None;
        }
        Opcode::Fcntl | Opcode::Ftruncate => {
            if has_payload || out_len != 0 {
                return fail(EINVAL);
            }
            sqe.args[1] = wire.args[1];
            sqe.args[2] = wire.args[2];
            reply = Reply::None;
        }
        // mmap_prep hands out server addresses: meaningless to another
        // process, so the host transport maps through a passed fd instead.
        _ => return fail(EOPNOTSUPP),
    }

    // SAFETY: `Request` is `#[repr(transparent)]` over `Sqe` (redox-scheme
    // 0.12), so the value is a valid `Request`. Every pointer argument in
    // `sqe` was set just above to a live buffer owned by this function
    // (`payload`, `out` or `stat`) with its exact length, the OpenAt path
    // was checked to be UTF-8, and all of them outlive the dispatch below.
    let request: Request = unsafe { std::mem::transmute::<Sqe, Request>(sqe) };
    let response: Response = match request.kind() {
        RequestKind::Call(call) => call.handle_sync(scheme, state),
        _ => return fail(EOPNOTSUPP),
    };
    // SAFETY: `Response` is `#[repr(transparent)]` over `Cqe`.
    let mut cqe: Cqe = unsafe { std::mem::transmute::<Response, Cqe>(response) };

    let result = Error::demux(cqe.result as usize);
    let mut fd = None;
    if cqe.flags == CqeOpcode::RespondWithFd as u8 {
        // SAFETY: the scheme returned `OpenResult::OtherScheme { fd }`,
        // whose contract (as on Redox) moves ownership of that open file
        // descriptor to the transport; nothing else closes it.
        fd = Some(unsafe { OwnedFd::from_raw_fd(cqe.result as i32) });
        cqe.result = 0;
    } else if cqe.flags == CqeOpcode::RespondWithMultipleFds as u8 {
        return fail(EOPNOTSUPP);
    } else if let (Opcode::OpenAt | Opcode::Dup, Ok(id)) = (opcode, result) {
        conn.handles.insert(id);
    }
    let payload_out = match (result, reply) {
        (Err(_), _) | (_, Reply::None) => Vec::new(),
        (Ok(n), Reply::OutPrefix) => {
            out.truncate(n.min(out_len));
            out
        }
        (Ok(_), Reply::Payload) => payload,
        (Ok(_), Reply::Stat) => stat.to_vec(),
    };
    (cqe, payload_out, fd)
}

fn ok_cqe(tag: u32, value: usize) -> Cqe {
    Cqe {
        flags: CqeOpcode::RespondRegular as u8,
        extra_raw: [0; 3],
        tag,
        result: value as u64,
    }
}
