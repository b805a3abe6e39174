//! What the transport benchmarks share: a host server on a simulated
//! device in a thread of the bench process, and the requests they time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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
            let mut server =
                HostServer::bind(&path, ServerLimits::default(), scheme).expect("bind");
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
