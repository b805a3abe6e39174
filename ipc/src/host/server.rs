//! The server side of the host transport: a Unix-socket listener that runs
//! every client request through the real `redox-scheme` dispatch into any
//! [`SchemeSync`] implementation.
//!
//! The server plays the part the Redox kernel plays on Redox:
//! - it turns each frame into an `Sqe` whose pointer arguments point at
//!   buffers the server owns, converts it to a `redox_scheme::Request`, and
//!   calls `CallRequest::handle_sync`;
//! - it fills the caller's uid/gid from `SO_PEERCRED`, never from the
//!   client's word, and the caller id from the connection ([`caller_id`]:
//!   every connection is a caller of its own, its pid kept for display);
//! - it tracks which handle ids each connection opened, rejects requests
//!   naming any other id with `EBADF`, and closes every handle a connection
//!   still holds when the connection goes away — exactly what the kernel
//!   does when a process exits or dies;
//! - an `OpenResult::OtherScheme { fd }` (a file descriptor returned by the
//!   scheme, e.g. the memory backing a BO) travels to the client with
//!   `SCM_RIGHTS`.
//!
//! Each connection has its own thread with blocking reads and writes (the
//! same system calls as a bare request/response exchange); the scheme sits
//! behind one mutex, taken only while a request is dispatched. A slow or
//! malicious client therefore blocks only its own thread, and a malformed
//! frame only costs its sender the connection.
//!
//! What one client can make the server spend is bounded ([`ServerLimits`]):
//! - connections: new ones per user and second
//!   ([`ServerLimits::connects_per_second_per_uid`], refused with `EAGAIN`
//!   right after `accept`, before anything is spent on them: a user
//!   connecting and closing in a loop cannot keep the accept loop busy
//!   starting threads), open ones per user (`EMFILE` beyond, sent as a
//!   refusal frame with tag [`REFUSAL_TAG`]) and in total (`ENFILE`), the last
//!   [`ServerLimits::admin_connections`] of the total kept for the admin
//!   (root or [`ServerLimits::admin_uid`]), so users acting together
//!   cannot lock the admin out;
//! - handles: per user, over all of that user's connections (`EMFILE`);
//! - time: a connection that holds no handle and sends nothing is closed
//!   after the idle timeout; a frame must arrive whole within the request
//!   timeout of its first byte, and an answer must be taken whole within
//!   the send timeout (so a trickle of bytes, either way, cannot hold a
//!   buffer for ever); either failing ends the connection;
//! - memory: a connection's receive buffer grows only as bytes arrive (a
//!   header announcing 16 MiB commits nothing), to at most one frame, and
//!   its growth beyond [`INBUF_INITIAL`] is charged to the user
//!   ([`ServerLimits::max_frame_bytes_per_uid`]) and to all users
//!   together ([`ServerLimits::max_frame_bytes`]): a frame that would grow
//!   past either is answered `ENOBUFS` and its bytes are dropped as they
//!   arrive. A request's own copy of its payload is given back as soon as
//!   it is served. The answers of one user waiting to be sent hold at
//!   most [`ServerLimits::max_answer_bytes_per_uid`], and those of all
//!   users [`ServerLimits::max_answer_bytes`]: past either, a read is
//!   answered short, with at most [`MIN_ANSWER`] bytes (a short read, as
//!   `read` allows), and a larger `call` (whose answer is its whole
//!   payload) fails with `ENOBUFS`, so a user that does not read its
//!   answers pins little;
//! - shutdown: [`HostServer::shutdown`] returns within the shutdown grace
//!   plus the time to finish the requests in progress, whatever clients
//!   do;
//! - descriptors and threads: when the server runs out of descriptors
//!   (`EMFILE`/`ENFILE` from `accept`), it closes a spare descriptor kept
//!   for the purpose, accepts the waiting client, sends it a refusal frame
//!   (`ENFILE`) and takes the spare back, so the backlog drains with
//!   answers instead of spinning; if even that fails it sleeps
//!   [`ACCEPT_BACKOFF`] before trying again, while existing connections
//!   are served as usual. A connection whose thread cannot start gets a
//!   refusal frame with `EAGAIN`;
//! - the log: refusals of connections, malformed or refused frames and
//!   connections a client ended badly share the one limit on lines about
//!   clients, with a share per user ([`crate::logline::write_limited`]),
//!   and the lines held back are counted.

use std::collections::HashMap;
use std::io::{self, IoSlice, Read};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redox_scheme::scheme::SchemeSync;
use redox_scheme::{Request, RequestKind, Response};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use syscall::data::Stat;
use syscall::error::{Error, EAGAIN, EBADF, EINVAL, EMFILE, ENFILE, EOPNOTSUPP};
use syscall::schemev2::{Cqe, CqeOpcode, Opcode, Sqe, SqeFlags};

use crate::frame::{
    split_request, Incoming, RequestHeader, ResponseHeader, MAX_PAYLOAD, REFUSAL_TAG,
    REQUEST_HEADER_LEN, RESPONSE_FLAG_FD, RESPONSE_HEADER_LEN,
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
    /// The connection whose requests carried caller id `caller` (see
    /// [`caller_id`]) ended; `handles` are the handles it still held (each
    /// must be treated as closed).
    fn on_disconnect(&mut self, caller: usize, handles: &[usize]) {
        let _ = caller;
        for &id in handles {
            self.on_close(id);
        }
    }

    /// Called right after an `openat` of `path` failed with `EAGAIN`:
    /// whether to park it (this client waits; everyone else is served).
    /// A parked request is retried `retries` times, first after `delay`,
    /// then after waits that double up to a cap ([`crate::retry`]), and in
    /// between whenever its pool's [`HostScheme::wake_epoch`] moves while
    /// [`HostScheme::free_bytes`] of the pool reach what it `needs`. `None`
    /// answers `EAGAIN` at once.
    fn park_policy(&self, path: &[u8]) -> Option<ParkPolicy> {
        let _ = path;
        None
    }

    /// The parked `openat` of `path` is about to be retried (for the
    /// scheme's statistics).
    fn on_retry(&mut self, path: &[u8]) {
        let _ = path;
    }

    /// A number that grows whenever something is given back to pool
    /// `pool` (below [`PARK_POOLS`]), e.g. a count of its frees; it never
    /// decreases.
    fn wake_epoch(&self, pool: usize) -> u64 {
        let _ = pool;
        0
    }

    /// What pool `pool` has free now (asked only after its
    /// [`HostScheme::wake_epoch`] moved), in the unit of
    /// [`ParkPolicy::needs`].
    fn free_bytes(&self, pool: usize) -> u64 {
        let _ = pool;
        u64::MAX
    }

    /// Work that request `request` needs before it is dispatched and that
    /// can be done without the scheme lock (e.g. formatting a generated
    /// file from data gathered under the lock): called under the lock; the
    /// server runs the returned [`Prework`] after releasing it, takes the
    /// lock again, gives the scheme the result ([`Install`]) and then
    /// dispatches the request. Only requests on a handle the connection
    /// holds are asked about. The default needs none.
    fn prework(&mut self, request: PreworkRequest) -> Option<Prework<Self>>
    where
        Self: Sized,
    {
        let _ = request;
        None
    }
}

/// A request a scheme may do work for outside the lock (see
/// [`HostScheme::prework`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreworkRequest {
    /// A read.
    Read {
        /// The handle read.
        id: usize,
        /// Where the read starts.
        offset: u64,
    },
    /// `fstat` or `fsize`.
    Size {
        /// The handle asked about.
        id: usize,
    },
}

/// What the result of a [`Prework`] does to the scheme, under its lock,
/// right before the request is dispatched.
pub type Install<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Work done without the scheme lock (see [`HostScheme::prework`]).
pub type Prework<S> = Box<dyn FnOnce() -> Install<S> + Send>;

/// Pools parked requests may wait on (e.g. memory domains), numbered from
/// 0.
pub const PARK_POOLS: usize = 2;

/// How a request that failed with `EAGAIN` is retried (see
/// [`HostScheme::park_policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkPolicy {
    /// Retries after the first attempt: the request waits at most
    /// [`crate::retry::total_wait`] of `delay` and `retries` in all.
    pub retries: u32,
    /// Time before the first counted retry; the waits before later ones
    /// double, up to a cap ([`crate::retry::wait`]).
    pub delay: Duration,
    /// The pool whose frees may let the request succeed (below
    /// [`PARK_POOLS`]); frees elsewhere do not wake it.
    pub pool: usize,
    /// What the request needs of its pool: a free that leaves less free
    /// does not wake it.
    pub needs: u64,
}

/// The caller id (`Sqe::caller`, `CallerCtx::pid` in the scheme) of every
/// request on connection number `serial` of process `pid`: the connection
/// serial in the high 32 bits, the pid in the low 32. Serials are never
/// reused while the server runs, so each connection is a caller of its own
/// — two connections of one process, or a process that got a dead one's
/// pid, never share one — while the pid stays readable for logs and
/// `clients` ([`caller_pid`]). A process that forks keeps sharing the
/// connection (and so the caller) with its child: it is one socket.
pub fn caller_id(serial: u64, pid: u32) -> u64 {
    (serial << 32) | u64::from(pid)
}

/// The pid of the process that opened the connection behind caller id
/// `caller` (see [`caller_id`]).
pub fn caller_pid(caller: usize) -> u32 {
    caller as u64 as u32
}

/// Limits of a [`HostServer`]: what clients may make it spend.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections open at once, all users together; beyond, a new
    /// connection gets a refusal frame with `ENFILE` and is closed.
    pub max_connections: usize,
    /// Connections one user (uid) may have open at once; beyond, a refusal
    /// frame with `EMFILE`.
    pub max_connections_per_uid: usize,
    /// Handles one user may hold open at once over all of its connections
    /// (`EMFILE` beyond).
    pub max_handles_per_uid: usize,
    /// A connection that holds no handle and sends nothing for this long
    /// is closed (it loses nothing: it holds nothing).
    pub idle_timeout: Duration,
    /// A frame not whole this long after its first byte arrived costs its
    /// sender the connection.
    pub request_timeout: Duration,
    /// An answer the client has not taken whole this long after the
    /// server began sending it is abandoned and the connection closed (its
    /// handles are released). The check runs between the sends of one
    /// answer, each of which waits at most this long, so an answer is
    /// abandoned within twice this.
    pub send_timeout: Duration,
    /// At shutdown, how long connections may take to finish their current
    /// request before their sockets are shut in both directions.
    pub shutdown_grace: Duration,
    /// Bytes the answers of one user's requests may hold while they are
    /// being sent; past it, reads are answered short (at most
    /// [`MIN_ANSWER`] bytes each) and larger `call`s fail with `ENOBUFS`.
    pub max_answer_bytes_per_uid: usize,
    /// The same for all users together, so users acting together cannot
    /// pin more (each read still gets [`MIN_ANSWER`], so at most that per
    /// connection beyond it).
    pub max_answer_bytes: usize,
    /// Bytes the receive buffers of one user's connections may hold beyond
    /// [`INBUF_INITIAL`] each (frames in flight); a frame that would grow
    /// past it is answered `ENOBUFS`.
    pub max_frame_bytes_per_uid: usize,
    /// The same for all users together.
    pub max_frame_bytes: usize,
    /// Of [`ServerLimits::max_connections`], how many only the admin may
    /// use.
    pub admin_connections: usize,
    /// The admin besides root (whose connections may use the reserved
    /// ones).
    pub admin_uid: Option<u32>,
    /// New connections one user (other than the admin) may open a
    /// second, on average; up to this many at once. Beyond, a refusal frame
    /// with `EAGAIN`.
    pub connects_per_second_per_uid: u32,
}

/// What a read gets at least when its user's answers already hold
/// [`ServerLimits::max_answer_bytes_per_uid`]: every read makes progress.
pub const MIN_ANSWER: usize = 64 << 10;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_connections_per_uid: 64,
            max_handles_per_uid: 4096,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(2),
            max_answer_bytes_per_uid: 64 << 20,
            max_answer_bytes: 512 << 20,
            max_frame_bytes_per_uid: 64 << 20,
            max_frame_bytes: 512 << 20,
            admin_connections: 8,
            admin_uid: None,
            connects_per_second_per_uid: 1000,
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

/// The scheme, behind one lock.
struct Locked<S> {
    scheme: S,
}

/// What all connection threads share.
struct Shared<S> {
    /// Released fairly after each request (`unlock_fair`: to the request
    /// that waited longest), so a request never loses its turn to ones
    /// that came later; with [`UserUsage::turn`] that shares the scheme
    /// out per user.
    locked: parking_lot::Mutex<Locked<S>>,
    root: Option<usize>,
    limits: ServerLimits,
    served: AtomicU64,
    conns: Mutex<Vec<ConnCtl>>,
    /// Bytes all receive buffers hold beyond [`INBUF_INITIAL`] each.
    frame_bytes: AtomicUsize,
    /// Bytes of all users' answers being built or sent (see
    /// [`UserUsage::answer_bytes`]).
    answer_bytes: Arc<AtomicUsize>,
    /// Connections and handles per user.
    users: Mutex<HashMap<u32, Arc<UserUsage>>>,
    /// Parked requests wait on their pool's `woken` under this lock; it
    /// holds whether the server is stopping.
    stopping: Mutex<bool>,
    /// Per pool (see [`PARK_POOLS`]).
    pools: [Pool; PARK_POOLS],
}

/// What parked requests of one pool wait on.
#[derive(Default)]
struct Pool {
    woken: Condvar,
    /// The last wake epoch published: a parked request waits while it
    /// still equals the epoch its last attempt saw.
    epoch: AtomicU64,
    /// What the pool had free when `epoch` was published. Concurrent
    /// publishers may store an older figure last; that only delays a
    /// retry to the next free or the next counted retry.
    free: AtomicU64,
    /// Requests parked on `woken` right now: a free wakes (a futex call)
    /// only when one is. A parking request counts itself (under
    /// `stopping`'s lock) before it checks `epoch`, and a freeing one moves
    /// `epoch` before it reads this count (both sequentially consistent),
    /// so one of the two always sees the other; the waker takes the lock
    /// before it notifies, so a request between its check and its wait
    /// cannot miss the notification.
    parked: AtomicUsize,
}

/// The pools' wake epochs after a request, and what each pool whose epoch
/// moved has free (read under the scheme lock, published after it).
#[derive(Clone, Copy)]
struct Freed {
    epochs: [u64; PARK_POOLS],
    free: [Option<u64>; PARK_POOLS],
}

impl Freed {
    /// Reads the epochs of `scheme`'s pools and, for those that moved
    /// past what `shared` published, their free figure.
    fn observe<S: HostScheme>(shared: &Shared<S>, scheme: &S) -> Freed {
        let epochs = std::array::from_fn(|p| scheme.wake_epoch(p));
        let free = std::array::from_fn(|p| {
            (epochs[p] > shared.pools[p].epoch.load(Ordering::Acquire))
                .then(|| scheme.free_bytes(p))
        });
        Freed { epochs, free }
    }
}

/// What one user holds at the moment. Handle counts change only under the
/// scheme lock (so a check and its increment cannot interleave with
/// another connection's); connection counts only under `Shared::users`.
#[derive(Default)]
struct UserUsage {
    connections: AtomicUsize,
    handles: AtomicUsize,
    /// Bytes of answers being built or sent. Grows only under the scheme
    /// lock (so a check and its increment cannot interleave with another
    /// connection's); shrinks when an answer has gone out.
    answer_bytes: AtomicUsize,
    /// Bytes the user's receive buffers hold beyond [`INBUF_INITIAL`]
    /// each.
    frame_bytes: AtomicUsize,
    /// The user's turn at the scheme: a request holds it while it waits
    /// for and holds the scheme lock, so at most one request of each user
    /// contends for that lock. The lock is then shared out per user, not
    /// per connection: a user flooding from many connections gets one
    /// user's turns, and another user's request waits for at most one
    /// request of each other user instead of one per connection.
    turn: Mutex<()>,
}

/// The server's grip on one connection: a second handle on its socket (to
/// end it at shutdown) and its thread.
struct ConnCtl {
    id: u64,
    stream: UnixStream,
    cred: PeerCred,
    thread: Option<JoinHandle<()>>,
}

/// Per-connection state owned by its thread.
struct ConnState {
    cred: PeerCred,
    /// The caller id requests carry (see [`caller_id`]).
    caller: u64,
    /// Looked up on every request: hashbrown's default hasher (foldhash),
    /// not std's SipHash (callgrind, the roundtrip bench's alloc+free:
    /// 13.9k -> 11.5k instructions per pair, with the scheme's handle and
    /// caller maps). The ids are the scheme's, never chosen by a client.
    handles: hashbrown::HashSet<usize>,
    user: Arc<UserUsage>,
    /// The server's count of answer bytes, all users.
    all_answers: Arc<AtomicUsize>,
    /// Bytes of the answer being built or sent, counted in the user's
    /// and the server's `answer_bytes`.
    answer_reserved: usize,
    /// Bytes of the receive buffer beyond [`INBUF_INITIAL`], counted in
    /// the user's and the server's `frame_bytes`.
    frame_charged: usize,
}

/// The host-transport server. Owns the listening socket, the scheme, and a
/// thread per client connection.
pub struct HostServer<S: HostScheme + Send + 'static> {
    listener: UnixListener,
    path: Option<PathBuf>,
    shared: Arc<Shared<S>>,
    next_conn: u64,
    /// A descriptor given up when `accept` finds none left, so a waiting
    /// client can still be accepted and told why it is refused.
    spare: Option<OwnedFd>,
    /// New connections per user, for [`ServerLimits::connects_per_second_per_uid`].
    connects: ConnectRate,
}

/// A token bucket per user: `rate` tokens a second, at most `rate` held;
/// each new connection takes one.
struct ConnectRate {
    rate: u32,
    buckets: HashMap<u32, (f64, Instant)>,
}

impl ConnectRate {
    fn new(rate: u32) -> Self {
        ConnectRate {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Whether `uid` may open a connection at `now` (and takes a token if
    /// so).
    fn admit(&mut self, uid: u32, now: Instant) -> bool {
        let rate = f64::from(self.rate.max(1));
        if self.buckets.len() > 4096 {
            // Forget users whose buckets are full again.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = self.buckets.entry(uid).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// How long the accept loop sleeps when it cannot accept for lack of
/// descriptors (and cannot free one to refuse the client).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A descriptor to hold in reserve (see [`HostServer::spare`]).
fn spare_descriptor() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// Responses up to this size (no descriptor) are sent from one stack
/// buffer.
const SMALL_RESPONSE: usize = 1024;

/// Payload bytes one `send` of a response carries at most (see
/// [`send_response`]).
const SEND_CHUNK: usize = 256 << 10;

/// Initial size of a connection's receive buffer. It doubles only when
/// full, so it never holds more than twice the bytes received, and at most
/// one maximal frame; growth beyond this is charged (see
/// [`ServerLimits::max_frame_bytes_per_uid`]).
pub const INBUF_INITIAL: usize = 16 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another connection's thread must not take the server
    // down; the data behind the lock is still consistent between requests.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: HostScheme + Send + 'static> HostServer<S> {
    /// Binds a listening socket at `path` and serves `scheme` on it. A
    /// stale socket file left by a dead server is replaced; a live server
    /// at that path is an error (`AddrInUse`).
    pub fn bind(path: &Path, limits: ServerLimits, scheme: S) -> io::Result<Self> {
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
        let mut server = Self::from_listener(listener, limits, scheme)?;
        server.path = Some(path.to_path_buf());
        Ok(server)
    }

    /// Serves `scheme` on an already bound listener (tests, socket
    /// activation).
    pub fn from_listener(
        listener: UnixListener,
        limits: ServerLimits,
        mut scheme: S,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let root = scheme.scheme_root().ok();
        Ok(HostServer {
            listener,
            path: None,
            shared: Arc::new(Shared {
                locked: parking_lot::Mutex::new(Locked { scheme }),
                root,
                limits,
                served: AtomicU64::new(0),
                conns: Mutex::new(Vec::new()),
                frame_bytes: AtomicUsize::new(0),
                answer_bytes: Default::default(),
                users: Mutex::new(HashMap::new()),
                stopping: Mutex::new(false),
                pools: Default::default(),
            }),
            next_conn: 1,
            spare: spare_descriptor(),
            connects: ConnectRate::new(limits.connects_per_second_per_uid),
        })
    }

    /// Logs a refused connection of user `uid` (`None`: unknown) at
    /// warning level, rate-limited (see [`crate::logline`]).
    fn log_refused(&mut self, uid: Option<u32>, line: impl FnOnce() -> String) {
        crate::logline::write_limited(uid, log::Level::Warn, line);
    }

    /// Runs `f` on the scheme, between requests (ticks, shutdown steps).
    pub fn with_scheme<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        let result = f(&mut self.shared.locked.lock().scheme);
        crate::logline::flush();
        result
    }

    /// Requests served so far.
    pub fn requests_served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Number of connected clients.
    pub fn connection_count(&self) -> usize {
        let mut conns = lock(&self.shared.conns);
        reap(&mut conns);
        conns.len()
    }

    /// Credentials of every connected client.
    pub fn peers(&self) -> Vec<PeerCred> {
        let mut conns = lock(&self.shared.conns);
        reap(&mut conns);
        conns.iter().map(|c| c.cred).collect()
    }

    /// Waits up to `timeout` (forever when `None`) for new clients and
    /// starts a thread for each. An interrupted wait (a signal) returns
    /// `Ok(())` so the caller can check its flags.
    pub fn accept(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: d.subsec_nanos().into(),
        });
        let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_connection(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    if self.refuse_with_spare() {
                        continue;
                    }
                    self.log_refused(None, || {
                        format!("accept failed: {e}; backing off while existing clients are served")
                    });
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return Ok(());
                }
                Err(e) => {
                    self.log_refused(None, || format!("accept failed: {e}"));
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return Ok(());
                }
            }
        }
    }

    /// Out of descriptors: gives up the spare one, accepts the waiting
    /// client, refuses it (`ENFILE`) and takes the spare back. Whether a
    /// client was refused.
    fn refuse_with_spare(&mut self) -> bool {
        if self.spare.take().is_none() {
            self.spare = spare_descriptor();
            return false;
        }
        let refused = match self.listener.accept() {
            Ok((stream, _)) => {
                refuse(stream, ENFILE);
                true
            }
            Err(_) => false,
        };
        self.spare = spare_descriptor();
        if refused {
            self.log_refused(None, || {
                "refusing a client: the server is out of descriptors".to_string()
            });
        }
        refused
    }

    /// Refuses the connection of peer `cred` with `errno`, logging why as
    /// a line about its user (`refusing pid P (uid U): why`).
    fn refuse_peer(
        &mut self,
        stream: UnixStream,
        cred: PeerCred,
        errno: i32,
        why: impl FnOnce() -> String,
    ) {
        self.log_refused(Some(cred.uid), || {
            format!("refusing pid {} (uid {}): {}", cred.pid, cred.uid, why())
        });
        refuse(stream, errno);
    }

    fn add_connection(&mut self, stream: UnixStream) {
        let cred = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => PeerCred {
                pid: c.pid.as_raw_nonzero().get() as u32,
                uid: c.uid.as_raw(),
                gid: c.gid.as_raw(),
            },
            Err(e) => {
                // Linux gives no credentials (pid 0) to a peer in another
                // pid namespace.
                self.log_refused(None, || {
                    format!(
                        "refusing a client whose credentials the kernel does not give \
                         (outside the server's pid namespace?): {}",
                        e.raw_os_error()
                    )
                });
                refuse(stream, syscall::error::EPERM);
                return;
            }
        };
        let is_admin = cred.uid == 0 || Some(cred.uid) == self.shared.limits.admin_uid;
        if !is_admin && !self.connects.admit(cred.uid, Instant::now()) {
            let rate = self.shared.limits.connects_per_second_per_uid;
            self.refuse_peer(stream, cred, EAGAIN, || {
                format!("more than {rate} new connections a second")
            });
            return;
        }
        let mut conns = lock(&self.shared.conns);
        reap(&mut conns);
        let limits = &self.shared.limits;
        let open_to_caller = if is_admin {
            limits.max_connections
        } else {
            limits
                .max_connections
                .saturating_sub(limits.admin_connections)
        };
        if conns.len() >= open_to_caller {
            let open = conns.len();
            drop(conns);
            self.refuse_peer(stream, cred, ENFILE, || {
                format!("{open} connections open, the limit")
            });
            return;
        }
        let Some(user) = self.shared.join_user(cred.uid) else {
            drop(conns);
            let limit = self.shared.limits.max_connections_per_uid;
            self.refuse_peer(stream, cred, EMFILE, || {
                format!("the user has {limit} connections open, the limit")
            });
            return;
        };
        let configured = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(self.shared.read_timeout())))
            .and_then(|()| {
                stream.set_write_timeout(Some(at_least_1ms(self.shared.limits.send_timeout)))
            })
            .and_then(|()| stream.try_clone());
        let ctl = match configured {
            Ok(ctl) => ctl,
            Err(e) => {
                drop(conns);
                self.shared.leave_user(cred.uid, &user, 0);
                self.refuse_peer(stream, cred, ENFILE, || e.to_string());
                return;
            }
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let shared = self.shared.clone();
        let thread_user = user.clone();
        // The thread gets the stream only once it runs: when it cannot
        // start, the stream is still here to send the refusal on.
        let (handoff, taken) = std::sync::mpsc::sync_channel::<UnixStream>(1);
        let thread = std::thread::Builder::new()
            .name(format!("pddgpu-client-{}", cred.pid))
            .stack_size(256 << 10)
            .spawn(move || {
                if let Ok(stream) = taken.recv() {
                    serve_connection(shared, stream, cred, id, thread_user);
                }
            });
        match thread {
            Ok(thread) => {
                log::debug!("client connected: pid {} uid {}", cred.pid, cred.uid);
                // The receiver lives until the thread has taken the stream.
                let _ = handoff.send(stream);
                conns.push(ConnCtl {
                    id,
                    stream: ctl,
                    cred,
                    thread: Some(thread),
                });
            }
            Err(e) => {
                drop(conns);
                self.shared.leave_user(cred.uid, &user, 0);
                self.refuse_peer(stream, cred, EAGAIN, || {
                    format!("cannot start its thread: {e}")
                });
            }
        }
    }

    /// Stops serving: no new connections; every client's reading side is
    /// shut, so each thread finishes the request it is on, sends its
    /// answer, releases the client's handles and ends. A connection still
    /// busy after the shutdown grace (e.g. a client that does not read its
    /// answer) is shut in both directions, which ends its send at once.
    /// Returns the scheme.
    pub fn shutdown(self) -> S {
        let shared = self.shared.clone();
        // Dropping the server ends every connection and joins its thread,
        // so `shared` is the last reference.
        drop(self);
        let shared = Arc::try_unwrap(shared)
            .unwrap_or_else(|_| panic!("a connection thread outlived the server"));
        shared.locked.into_inner().scheme
    }
}

impl<S> Shared<S> {
    /// The receive timeout of every connection: its reads wake at least
    /// this often to check the idle and request timeouts.
    fn read_timeout(&self) -> Duration {
        at_least_1ms(self.limits.idle_timeout.min(self.limits.request_timeout))
    }

    /// Counts a new connection of `uid`, unless the user is at its limit.
    fn join_user(&self, uid: u32) -> Option<Arc<UserUsage>> {
        let mut users = lock(&self.users);
        let user = users.entry(uid).or_default();
        if user.connections.load(Ordering::Relaxed) >= self.limits.max_connections_per_uid {
            if user.connections.load(Ordering::Relaxed) == 0 {
                users.remove(&uid);
            }
            return None;
        }
        user.connections.fetch_add(1, Ordering::Relaxed);
        Some(user.clone())
    }

    /// Uncounts a connection of `uid` that held `handles` handles.
    fn leave_user(&self, uid: u32, user: &Arc<UserUsage>, handles: usize) {
        let mut users = lock(&self.users);
        user.handles.fetch_sub(handles, Ordering::Relaxed);
        if user.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            users.remove(&uid);
        }
    }

    /// Publishes the pools' new wake epochs (the scheme freed something)
    /// and wakes the requests parked on the pools that moved.
    fn publish(&self, freed: &Freed) {
        for (p, pool) in self.pools.iter().enumerate() {
            let Some(free) = freed.free[p] else {
                // Most requests free nothing.
                continue;
            };
            let epoch = freed.epochs[p];
            pool.free.store(free, Ordering::SeqCst);
            // No wake-up (a futex call) unless a request is parked (see
            // `parked`). Concurrent publishers may arrive out of order:
            // the epoch only ever moves forward.
            if pool.epoch.fetch_max(epoch, Ordering::SeqCst) < epoch
                && pool.parked.load(Ordering::SeqCst) != 0
            {
                let _parked = lock(&self.stopping);
                pool.woken.notify_all();
            }
        }
    }
}

fn at_least_1ms(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Tells a client why its connection is refused (a response with tag
/// [`REFUSAL_TAG`] and `errno`), then closes it. Never blocks.
fn refuse(stream: UnixStream, errno: i32) {
    let _ = stream.set_nonblocking(true);
    let header = ResponseHeader {
        flags: 0,
        payload_len: 0,
        cqe: err_cqe(REFUSAL_TAG, errno),
    }
    .encode();
    let _ = rustix::net::send(&stream, &header, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
}

/// Forgets connections whose thread has ended.
fn reap(conns: &mut Vec<ConnCtl>) {
    conns.retain_mut(|c| {
        let done = c.thread.as_ref().is_none_or(|t| t.is_finished());
        if done {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
        !done
    });
}

/// Runs one request; an `openat` that fails with `EAGAIN` is parked and
/// retried as the scheme's [`HostScheme::park_policy`] says, blocking only
/// this connection's thread: counted retries on the schedule of
/// [`crate::retry`] (after `delay`, then after waits that double up to a
/// cap, so a parked request costs next to nothing while nothing is freed),
/// and uncounted ones in between when a free in the request's own pool
/// leaves enough room, so frees that cannot help (another pool, too
/// little) neither wake it nor use up its retries, and it waits
/// [`crate::retry::total_wait`] at most.
fn serve_request<S: HostScheme>(
    shared: &Shared<S>,
    conn: &mut ConnState,
    header: &RequestHeader,
    payload: &mut Vec<u8>,
) -> Dispatched {
    let parkable = header.sqe.opcode == Opcode::OpenAt as u8;
    let prework_request = prework_request(conn, header);
    let run = |conn: &mut ConnState, payload: &mut Vec<u8>, retry: bool| {
        let user = conn.user.clone();
        let turn = lock(&user.turn);
        let mut guard = shared.locked.lock();
        if let Some(job) = prework_request.and_then(|r| guard.scheme.prework(r)) {
            // The lock is free while the work runs: other connections'
            // requests go on meanwhile.
            parking_lot::MutexGuard::unlock_fair(guard);
            crate::logline::flush();
            let install = job();
            guard = shared.locked.lock();
            install(&mut guard.scheme);
        }
        let Locked { scheme } = &mut *guard;
        if retry {
            scheme.on_retry(payload);
        }
        let done = dispatch(conn, shared.root, shared.limits, header, payload, scheme);
        let policy = if parkable && is_errno(&done.0, EAGAIN) {
            scheme.park_policy(payload)
        } else {
            None
        };
        let freed = Freed::observe(shared, scheme);
        // Handed to the request that waited longest (one per user, see
        // `UserUsage::turn`), never taken back by a request that came
        // later: the scheme is shared out in turns.
        parking_lot::MutexGuard::unlock_fair(guard);
        drop(turn);
        crate::logline::flush();
        shared.served.fetch_add(1, Ordering::Relaxed);
        // Wake parked requests if this one freed something.
        shared.publish(&freed);
        (done, policy, freed.epochs)
    };
    let (mut done, policy, epochs) = run(conn, payload, false);
    let Some(policy) = policy else {
        return done;
    };
    let pool_index = policy.pool.min(PARK_POOLS - 1);
    let pool = &shared.pools[pool_index];
    let mut seen = epochs[pool_index];
    let mut due = Instant::now();
    for counted in 1..=policy.retries {
        due += crate::retry::wait(policy.delay, counted);
        loop {
            // Wait for the counted retry's time, or a free in the pool
            // that leaves what the request needs.
            let mut stopping = lock(&shared.stopping);
            pool.parked.fetch_add(1, Ordering::SeqCst);
            let mut early = false;
            while !*stopping {
                if pool.epoch.load(Ordering::SeqCst) > seen
                    && pool.free.load(Ordering::SeqCst) >= policy.needs
                {
                    early = true;
                    break;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                stopping = pool
                    .woken
                    .wait_timeout(stopping, due - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            pool.parked.fetch_sub(1, Ordering::SeqCst);
            if *stopping {
                return (
                    err_cqe(header.sqe.tag, syscall::error::ESHUTDOWN),
                    Vec::new(),
                    None,
                );
            }
            drop(stopping);
            let (again, _, epochs) = run(conn, payload, true);
            done = again;
            seen = epochs[pool_index];
            if !is_errno(&done.0, EAGAIN) {
                return done;
            }
            if !early {
                // The counted retry failed: on to the next.
                break;
            }
        }
    }
    // Out of retries: no space.
    (
        err_cqe(header.sqe.tag, syscall::error::ENOSPC),
        Vec::new(),
        None,
    )
}

/// What the scheme may do work for outside the lock before serving
/// `header` (see [`HostScheme::prework`]): reads, `fstat` and `fsize` of a
/// handle this connection holds.
fn prework_request(conn: &ConnState, header: &RequestHeader) -> Option<PreworkRequest> {
    let sqe = &header.sqe;
    let id = usize::try_from(sqe.args[0]).ok()?;
    if !conn.handles.contains(&id) {
        return None;
    }
    match Opcode::try_from_raw(sqe.opcode)? {
        Opcode::Read => Some(PreworkRequest::Read {
            id,
            offset: sqe.args[3],
        }),
        Opcode::Fstat | Opcode::Fsize => Some(PreworkRequest::Size { id }),
        _ => None,
    }
}

fn is_errno(cqe: &Cqe, errno: i32) -> bool {
    Error::demux(cqe.result as usize).is_err_and(|e| e.errno == errno)
}

/// One connection's thread: read frames, dispatch each under the scheme
/// lock, write the answer; on the end of the stream, a fatal protocol
/// error or a timeout, release everything the client still holds.
fn serve_connection<S: HostScheme>(
    shared: Arc<Shared<S>>,
    mut stream: UnixStream,
    cred: PeerCred,
    serial: u64,
    user: Arc<UserUsage>,
) {
    let mut conn = ConnState {
        cred,
        caller: caller_id(serial, cred.pid),
        handles: hashbrown::HashSet::default(),
        user,
        all_answers: shared.answer_bytes.clone(),
        answer_reserved: 0,
        frame_charged: 0,
    };
    let limits = shared.limits;
    let mut inbuf = vec![0u8; INBUF_INITIAL];
    let mut filled = 0usize;
    // Bytes of a refused frame still to be read and dropped.
    let mut discard = 0usize;
    let mut payload = Vec::new();
    let mut last_byte = Instant::now();
    // When the first byte of the frame being received (or dropped)
    // arrived: the frame must be whole within the request timeout of it.
    let mut frame_start: Option<Instant> = None;
    let reason = 'serve: loop {
        if discard == 0 && filled == inbuf.len() {
            // Full: double, but never beyond one maximal frame. The buffer
            // grows only as bytes arrive, whatever a header announced, and
            // only within the user's and the server's budgets.
            let grown = (inbuf.len() * 2).min(REQUEST_HEADER_LEN + MAX_PAYLOAD);
            if let Err(refusal) = conn.charge_frame_bytes(&shared, grown - inbuf.len()) {
                // A full buffer holds the valid header of an incomplete
                // frame (complete frames were served): refuse that frame
                // and drop the rest of its bytes as they come.
                let Ok(header) = RequestHeader::decode(&inbuf[..filled]) else {
                    break 'serve "protocol error";
                };
                discard = REQUEST_HEADER_LEN + header.payload_len as usize - filled;
                filled = 0;
                inbuf = vec![0u8; INBUF_INITIAL];
                conn.release_frame_bytes(&shared);
                crate::logline::write_limited(Some(cred.uid), log::Level::Warn, || {
                    format!(
                        "client pid {} (uid {}): refusing a frame of {} bytes: {refusal}",
                        cred.pid, cred.uid, header.payload_len
                    )
                });
                let refused = err_cqe(header.sqe.tag, syscall::error::ENOBUFS);
                if send_response(&stream, refused, &[], None, limits.send_timeout).is_err() {
                    break 'serve "the answer could not be sent (timeout or closed)";
                }
                continue;
            }
            inbuf.resize(grown, 0);
        }
        let room = if discard > 0 {
            let len = discard.min(inbuf.len());
            &mut inbuf[..len]
        } else {
            &mut inbuf[filled..]
        };
        let n = match stream.read(room) {
            Ok(0) => break 'serve "end of stream",
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if frame_start.is_some_and(|t| t.elapsed() >= limits.request_timeout) {
                    break 'serve "request timed out";
                }
                if frame_start.is_none()
                    && conn.handles.is_empty()
                    && last_byte.elapsed() >= limits.idle_timeout
                {
                    break 'serve "idle";
                }
                continue;
            }
            Err(_) => break 'serve "read error",
        };
        last_byte = Instant::now();
        let started = *frame_start.get_or_insert(last_byte);
        if discard > 0 {
            discard -= n;
            if discard == 0 {
                frame_start = None;
            } else if started.elapsed() >= limits.request_timeout {
                break 'serve "request timed out";
            }
            continue;
        }
        filled += n;
        let mut consumed = 0;
        loop {
            let avail = &inbuf[consumed..filled];
            let (header, total) = match split_request(avail) {
                Ok(Incoming::Request { header, len }) => (header, len),
                Ok(Incoming::Incomplete) => break,
                Err(e) => {
                    let tag = u32::from_le_bytes([avail[20], avail[21], avail[22], avail[23]]);
                    crate::logline::write_limited(Some(cred.uid), log::Level::Warn, || {
                        format!("client pid {}: malformed frame ({e}); closing", cred.pid)
                    });
                    let refused = err_cqe(tag, e.errno());
                    let _ = send_response(&stream, refused, &[], None, limits.send_timeout);
                    break 'serve "protocol error";
                }
            };
            payload.clear();
            payload.extend_from_slice(&inbuf[consumed + REQUEST_HEADER_LEN..consumed + total]);
            consumed += total;
            let (cqe, out, fd) = serve_request(&shared, &mut conn, &header, &mut payload);
            if payload.capacity() > INBUF_INITIAL {
                // Give back the memory of a large request at once: the
                // copy is charged to no budget, so it must not outlive
                // the request (held by every idle connection, it would
                // add up past the frame budgets).
                payload = Vec::new();
            }
            let sent = send_response(&stream, cqe, &out, fd, limits.send_timeout);
            drop(out);
            conn.release_answer();
            if sent.is_err() {
                break 'serve "the answer could not be sent (timeout or closed)";
            }
        }
        if consumed > 0 {
            inbuf.copy_within(consumed..filled, 0);
            filled -= consumed;
            if filled == 0 && inbuf.len() > 4 * INBUF_INITIAL {
                inbuf = vec![0u8; INBUF_INITIAL];
                conn.release_frame_bytes(&shared);
            }
            // The bytes left over begin the next frame.
            frame_start = (filled > 0).then(Instant::now);
        } else if started.elapsed() >= limits.request_timeout {
            // Bytes keep trickling in, but the frame is overdue.
            break 'serve "request timed out";
        }
    };
    conn.release_frame_bytes(&shared);
    if filled > 0 && reason == "end of stream" {
        crate::logline::write_limited(Some(cred.uid), log::Level::Info, || {
            format!(
                "client pid {} went away in the middle of a request ({filled} bytes unprocessed)",
                cred.pid
            )
        });
    }
    if reason != "end of stream" {
        crate::logline::write_limited(Some(cred.uid), log::Level::Info, || {
            format!("client pid {} disconnected: {reason}", cred.pid)
        });
    }
    let mut ids: Vec<usize> = conn.handles.into_iter().collect();
    ids.sort_unstable();
    let freed = {
        let mut guard = shared.locked.lock();
        guard.scheme.on_disconnect(conn.caller as usize, &ids);
        Freed::observe(&shared, &guard.scheme)
    };
    crate::logline::flush();
    // What the client held is free now: parked creates may succeed.
    shared.publish(&freed);
    shared.leave_user(cred.uid, &conn.user, ids.len());
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // Keep `stream` alive until here so the peer sees EOF only after the
    // release.
    drop(stream);
}

impl ConnState {
    /// What another answer may hold within the user's and the server's
    /// answer budgets, but at least [`MIN_ANSWER`].
    fn answer_room(&self, limits: &ServerLimits) -> usize {
        let user = self.user.answer_bytes.load(Ordering::Relaxed);
        let all = self.all_answers.load(Ordering::Relaxed);
        let room = limits.max_answer_bytes_per_uid.saturating_sub(user);
        room.min(limits.max_answer_bytes.saturating_sub(all))
            .max(MIN_ANSWER)
    }

    /// Counts `bytes` of answer against the user's and the server's
    /// budgets.
    fn count_answer(&mut self, bytes: usize) {
        self.user.answer_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.all_answers.fetch_add(bytes, Ordering::Relaxed);
        self.answer_reserved += bytes;
    }

    /// Counts an answer of up to `wanted` bytes and returns how many it may
    /// have: all of them while the user's and all users' answers stay
    /// within their budgets, else at most [`MIN_ANSWER`]. Call under the
    /// scheme lock.
    fn reserve_answer(&mut self, wanted: usize, limits: &ServerLimits) -> usize {
        let granted = wanted.min(self.answer_room(limits));
        self.count_answer(granted);
        granted
    }

    /// Counts an answer of exactly `wanted` bytes: whether it may have
    /// them (always, up to [`MIN_ANSWER`], as a read gets at least that).
    /// Call under the scheme lock.
    fn try_reserve_answer(&mut self, wanted: usize, limits: &ServerLimits) -> bool {
        if wanted > self.answer_room(limits) {
            return false;
        }
        self.count_answer(wanted);
        true
    }

    /// The answer went out (or never will): its bytes no longer count.
    fn release_answer(&mut self) {
        let n = std::mem::take(&mut self.answer_reserved);
        self.user.answer_bytes.fetch_sub(n, Ordering::Relaxed);
        self.all_answers.fetch_sub(n, Ordering::Relaxed);
    }

    /// Charges `more` bytes of receive buffer to the user and the server,
    /// unless either would pass its budget; then charges nothing and says
    /// which budget is spent.
    fn charge_frame_bytes<S>(&mut self, shared: &Shared<S>, more: usize) -> Result<(), String> {
        let limits = &shared.limits;
        let user = self.user.frame_bytes.fetch_add(more, Ordering::Relaxed) + more;
        if user > limits.max_frame_bytes_per_uid {
            self.user.frame_bytes.fetch_sub(more, Ordering::Relaxed);
            return Err(format!(
                "the user's frames in flight would hold {user} bytes, over the limit of {}",
                limits.max_frame_bytes_per_uid
            ));
        }
        let all = shared.frame_bytes.fetch_add(more, Ordering::Relaxed) + more;
        if all > limits.max_frame_bytes {
            shared.frame_bytes.fetch_sub(more, Ordering::Relaxed);
            self.user.frame_bytes.fetch_sub(more, Ordering::Relaxed);
            return Err(format!(
                "all users' frames in flight would hold {all} bytes, over the limit of {}",
                limits.max_frame_bytes
            ));
        }
        self.frame_charged += more;
        Ok(())
    }

    /// The receive buffer is back to [`INBUF_INITIAL`] (or gone): its
    /// growth no longer counts.
    fn release_frame_bytes<S>(&mut self, shared: &Shared<S>) {
        let n = std::mem::take(&mut self.frame_charged);
        self.user.frame_bytes.fetch_sub(n, Ordering::Relaxed);
        shared.frame_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

impl<S: HostScheme + Send + 'static> Drop for HostServer<S> {
    fn drop(&mut self) {
        // Parked requests give up (ESHUTDOWN) instead of waiting out their
        // delays.
        *lock(&self.shared.stopping) = true;
        for pool in &self.shared.pools {
            pool.woken.notify_all();
        }
        let conns: Vec<ConnCtl> = std::mem::take(&mut *lock(&self.shared.conns));
        for c in &conns {
            let _ = c.stream.shutdown(std::net::Shutdown::Read);
        }
        // Let each connection finish the request it is on; one that is still
        // busy after the grace (typically blocked sending to a client that
        // does not read) has its socket shut both ways, which fails that
        // send at once.
        let deadline = Instant::now() + self.shared.limits.shutdown_grace;
        for c in &conns {
            while c.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if c.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                log::warn!(
                    "connection {} of pid {} still busy at shutdown; cutting it off",
                    c.id,
                    c.cred.pid
                );
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        for mut c in conns {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
            log::debug!("connection {} of pid {} closed", c.id, c.cred.pid);
        }
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
/// Writes one response (blocking), passing `fd` with its first byte. A
/// response not sent whole within `timeout` (checked between sends, each
/// of which waits at most the socket's send timeout) fails with
/// `TimedOut`: a client that takes its answer a trickle at a time cannot
/// hold it for ever.
fn send_response(
    stream: &UnixStream,
    cqe: Cqe,
    payload: &[u8],
    fd: Option<OwnedFd>,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let header = ResponseHeader {
        flags: if fd.is_some() { RESPONSE_FLAG_FD } else { 0 },
        payload_len: payload.len() as u32,
        cqe,
    }
    .encode();
    let total = RESPONSE_HEADER_LEN + payload.len();
    // The common case — no descriptor, a small payload — goes out as one
    // contiguous `send` (a bare header straight from its array).
    if fd.is_none() && payload.is_empty() {
        return send_all(stream, &header, deadline);
    }
    if fd.is_none() && total <= SMALL_RESPONSE {
        let mut buf = [0u8; SMALL_RESPONSE];
        buf[..RESPONSE_HEADER_LEN].copy_from_slice(&header);
        buf[RESPONSE_HEADER_LEN..total].copy_from_slice(payload);
        return send_all(stream, &buf[..total], deadline);
    }
    let mut sent = 0usize;
    let mut fd = fd;
    while sent < total {
        if sent > 0 && Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // At most SEND_CHUNK payload bytes per call: a blocking send
        // waits afresh for every piece of socket buffer, so only between
        // calls can the deadline be checked.
        let at = sent.saturating_sub(RESPONSE_HEADER_LEN);
        let piece = &payload[at..payload.len().min(at + SEND_CHUNK)];
        let iov_storage;
        let iov: &[IoSlice<'_>] = if sent < RESPONSE_HEADER_LEN {
            iov_storage = [IoSlice::new(&header[sent..]), IoSlice::new(piece)];
            &iov_storage
        } else {
            iov_storage = [IoSlice::new(piece), IoSlice::new(&[])];
            &iov_storage[..1]
        };
        let flags = SendFlags::NOSIGNAL;
        let result = if let Some(f) = fd.as_ref() {
            let fds = [f.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("cannot build SCM_RIGHTS message"));
            }
            rustix::net::sendmsg(stream, iov, &mut control, flags)
        } else {
            rustix::net::sendmsg(stream, iov, &mut SendAncillaryBuffer::default(), flags)
        };
        match result {
            Ok(n) => {
                // The descriptor went out with the first byte; ours closes.
                fd = None;
                sent += n;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends all of `bytes` with `send` calls, failing with `TimedOut` when
/// `deadline` passes before they are all out.
fn send_all(stream: &UnixStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        if sent > 0 && Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match rustix::net::send(stream, &bytes[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Validates one request, rebuilds its `Sqe` over server-owned buffers,
/// runs it through the redox-scheme dispatch and collects the result.
///
/// Here the server plays the kernel's part in the request ABI: it lends
/// the scheme its own buffers as the kernel maps the caller's, and adopts
/// the descriptor a scheme passes back for mapping. That takes `unsafe`
/// (the ABI types have no safe constructors), as in the mapping modules.
#[allow(clippy::too_many_arguments, unsafe_code)]
fn dispatch<S: SchemeSync>(
    conn: &mut ConnState,
    root: Option<usize>,
    limits: ServerLimits,
    header: &RequestHeader,
    payload: &mut Vec<u8>,
    scheme: &mut S,
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
        conn.user.handles.fetch_sub(1, Ordering::Relaxed);
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
        caller: conn.caller,
    };
    // The buffer the server lends the scheme in args[1] and args[2].
    enum Lend {
        Nothing,
        /// The request's payload (path, data to write, call payload).
        Payload,
        /// A zeroed buffer of `out_len` bytes for the scheme to fill.
        Out,
        /// A `Stat` for the scheme to fill.
        Stat,
    }
    // What goes back as payload on success.
    enum Reply {
        None,
        OutPrefix,
        Payload,
        Stat,
    }
    // Per opcode: what is lent, which of the client's arguments pass
    // through unchanged (the others are the server's), what is replied.
    let (lend, pass, reply) = match opcode {
        Opcode::OpenAt => (Lend::Payload, 3..5, Reply::None),
        Opcode::Dup => (Lend::Payload, 0..0, Reply::None),
        Opcode::Read | Opcode::Getdents => (Lend::Out, 3..5, Reply::OutPrefix),
        Opcode::Fpath => (Lend::Out, 0..0, Reply::OutPrefix),
        Opcode::Write => (Lend::Payload, 3..5, Reply::None),
        // metadata[0] and [1] come from the client. The third word is
        // where the caller's uid and gid travel in every other request; it
        // carries the connection's real credentials here too, never the
        // client's word, so `CallerCtx` is always true (a `call` gets no
        // metadata[2] over this transport).
        Opcode::Call => (Lend::Payload, 3..5, Reply::Payload),
        Opcode::Fstat => (Lend::Stat, 0..0, Reply::Stat),
        Opcode::Fsize | Opcode::Fsync => (Lend::Nothing, 0..0, Reply::None),
        Opcode::Fcntl | Opcode::Ftruncate => (Lend::Nothing, 1..3, Reply::None),
        // mmap_prep hands out server addresses: meaningless to another
        // process, so the host transport maps through a passed fd instead.
        _ => return fail(EOPNOTSUPP),
    };
    // Only a lent payload may come with the request, and only a lent
    // output buffer may be asked for.
    if (has_payload && !matches!(lend, Lend::Payload))
        || (out_len != 0 && !matches!(lend, Lend::Out))
    {
        return fail(EINVAL);
    }
    if matches!(opcode, Opcode::OpenAt) && std::str::from_utf8(payload).is_err() {
        return fail(EINVAL);
    }
    if matches!(opcode, Opcode::OpenAt | Opcode::Dup)
        && conn.user.handles.load(Ordering::Relaxed) >= limits.max_handles_per_uid
    {
        return fail(EMFILE);
    }
    // Every answer counts against the user's answer budget until sent: a
    // read's is cut short to fit (below); a `call` answers with its whole
    // payload, so one that does not fit is refused.
    match reply {
        Reply::Payload if !conn.try_reserve_answer(payload.len(), &limits) => {
            return fail(syscall::error::ENOBUFS);
        }
        Reply::Stat => {
            conn.reserve_answer(size_of::<Stat>(), &limits);
        }
        _ => {}
    }
    let mut out: Vec<u8> = Vec::new();
    let mut stat = Stat::default();
    match lend {
        Lend::Nothing => {}
        Lend::Payload => {
            sqe.args[1] = payload.as_mut_ptr() as u64;
            sqe.args[2] = payload.len() as u64;
        }
        Lend::Out => {
            let granted = conn.reserve_answer(out_len, &limits);
            out = vec![0u8; granted];
            sqe.args[1] = out.as_mut_ptr() as u64;
            sqe.args[2] = granted as u64;
        }
        Lend::Stat => {
            sqe.args[1] = &mut stat as *mut Stat as u64;
            sqe.args[2] = size_of::<Stat>() as u64;
        }
    }
    sqe.args[pass.clone()].copy_from_slice(&wire.args[pass]);

    // SAFETY: `Request` is `#[repr(transparent)]` over `Sqe` (redox-scheme
    // 0.9), so the value is a valid `Request`. Every pointer argument in
    // `sqe` was set just above to a live buffer owned by this function
    // (`payload`, `out` or `stat`) with its exact length, the OpenAt path
    // was checked to be UTF-8, and all of them outlive the dispatch below.
    let request: Request = unsafe { std::mem::transmute::<Sqe, Request>(sqe) };
    let response: Response = match request.kind() {
        RequestKind::Call(call) => call.handle_sync(scheme),
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
        if conn.handles.insert(id) {
            conn.user.handles.fetch_add(1, Ordering::Relaxed);
        }
    }
    let payload_out = match (result, reply) {
        (Err(_), _) | (_, Reply::None) => Vec::new(),
        (Ok(n), Reply::OutPrefix) => {
            out.truncate(n.min(out_len));
            out
        }
        (Ok(_), Reply::Payload) => std::mem::take(payload),
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
