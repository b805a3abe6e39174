//! What the transport benchmarks share: a host server on a simulated
//! device in a thread of the bench process, and the requests they time.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pddgpu_ipc::host::{HostConnection, HostServer, ServerLimits, ROOT_FD};
use syscall::flag::O_RDWR;
use syscall::schemev2::Opcode;

/// A host server on a simulated device (256 MiB of VRAM, 256 MiB of GTT)
/// in a thread of this process; stopped, and its socket removed, on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// The socket clients connect to.
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Server {
    /// Starts the server and returns once it accepts connections. `name`
    /// keeps the sockets of different benches apart.
    pub fn start(name: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("pddgpu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket directory");
        let socket = dir.join("pddgpu.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, path) = (stop.clone(), socket.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let opts = pddgpud::Options::for_sim(256 << 20, 256 << 20);
            let device = pddgpud::backend::open(&opts).expect("simulated device");
            let scheme = device.into_scheme(&opts);
            // Every client of a bench is the same user, and `scale` opens
            // 100 connections at once: above the default per-user limit.
            let limits = ServerLimits {
                max_connections_per_uid: 256,
                ..ServerLimits::default()
            };
            let mut server = HostServer::bind(&path, limits, scheme).expect("bind");
            ready_tx.send(()).expect("ready");
            while !s.load(Ordering::Relaxed) {
                server
                    .accept(Some(Duration::from_millis(20)))
                    .expect("accept");
            }
            let _scheme = server.shutdown();
        });
        ready_rx.recv().expect("server ready");
        Server {
            stop,
            thread: Some(thread),
            socket,
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `path` from the root with `flags`; returns the handle.
pub fn open(c: &mut HostConnection, path: &str, flags: usize) -> u64 {
    let r = c
        .request(
            Opcode::OpenAt,
            [ROOT_FD, 0, 0, flags as u64, 0, 0],
            path.as_bytes(),
            0,
        )
        .expect("open request");
    r.result()
        .unwrap_or_else(|e| panic!("open {path}: errno {e}")) as u64
}

/// Closes handle `id`.
pub fn close(c: &mut HostConnection, id: u64) {
    let r = c
        .request(Opcode::CloseMsg, [id, 0, 0, 0, 0, 0], &[], 0)
        .expect("close request");
    assert_eq!(r.result(), Ok(0));
}

/// One 4 KiB VRAM BO created (open `bo/new`) and freed (close): two
/// requests.
pub fn alloc_free(c: &mut HostConnection) {
    let id = open(c, "bo/new?size=4096&domain=vram", O_RDWR);
    close(c, id);
}

/// The worker side of [`run_workers`]: says `ready`, waits for `go` on
/// stdin, runs `work`, says `done`.
pub fn worker(work: impl FnOnce()) {
    println!("ready");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("go");
    work();
    println!("done");
}

/// Starts one process of this bench executable per entry of `envs` (its
/// environment decides that it is a [`worker`]), waits until all are ready,
/// tells them to go, and returns the seconds from `go` to the last `done`.
/// Every worker must exit successfully.
pub fn run_workers(envs: &[Vec<(&str, String)>]) -> f64 {
    let exe = std::env::current_exe().expect("current_exe");
    let mut children: Vec<_> = envs
        .iter()
        .map(|env| {
            Command::new(&exe)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut outs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("worker stdout")))
        .collect();
    let expect = |o: &mut BufReader<_>, what: &str| {
        let mut line = String::new();
        o.read_line(&mut line).expect("worker line");
        assert_eq!(line.trim(), what);
    };
    for o in &mut outs {
        expect(o, "ready");
    }
    let start = Instant::now();
    for c in &mut children {
        writeln!(c.stdin.as_mut().expect("worker stdin"), "go").expect("go");
    }
    for o in &mut outs {
        expect(o, "done");
    }
    let secs = start.elapsed().as_secs_f64();
    for mut c in children {
        assert!(c.wait().expect("worker exit").success());
    }
    secs
}
