//! Round-trip cost of the host transport, measured in one run:
//!
//! - `raw_roundtrip`: a bare request/response (72-byte request, 32-byte
//!   response: the sizes of our frame headers) between two threads over a
//!   Unix stream socket, with blocking reads and writes — the floor any IPC
//!   on this socket type pays;
//! - `bo_alloc_free_ipc`: allocating and freeing a 4 KiB BO through the
//!   `pddgpu:` scheme served by the real host server (two requests: open
//!   `bo/new?…` and close);
//! - `stats_read_ipc`: reading `stats` (open, read, close: three requests);
//! - throughput of 8 client processes allocating and freeing concurrently.
//!
//! The ratio lines divide our cost by the raw cost of the same number of
//! round trips: how much the server loop, the scheme and the driver add.
//! Raw and ours are timed in alternating short rounds and the best round of
//! each is kept, so neighbours on a busy machine do not decide the result
//! (see `compare`; the median of per-round ratios is printed too); the latency comparisons run with client and server
//! pinned to one CPU (see `pin_to_current_cpu`). A `null_request`
//! (fsync on an open handle: the transport and handle lookup only) shows
//! the transport's own share.
//!
//! Run: `cargo bench -p pddgpu-ipc --bench roundtrip`.
//!
//! Profiling: `PDDGPU_BENCH_PROFILE=<null|alloc_free|stats_read|raw>`
//! with `PDDGPU_BENCH_ITERS=<n>` runs only that workload `n` times (no
//! comparison, no figures), e.g. under
//! `valgrind --tool=callgrind --toggle-collect='*profile_loop*'` to count
//! the instructions of one request kind.

mod support;

use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Instant;

use rustix::time::{clock_gettime, ClockId};

use pddgpu_ipc::frame::{REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN};
use pddgpu_ipc::host::HostConnection;
use pddgpu_ipc::progress::{seconds, Reporter};
use support::{alloc_free, close, open, Server};
use syscall::flag::O_RDONLY;
use syscall::schemev2::Opcode;

const WORKER_ENV: &str = "PDDGPU_BENCH_WORKER";
const ROUNDS: usize = 61;
const ITERS: usize = 1_000;
const PROCS: usize = 8;
const PROC_PAIRS: usize = 5_000;

/// CPU time of this process (all its threads: client, server, raw echo),
/// in ns.
fn process_cpu_ns() -> u64 {
    let ts = clock_gettime(ClockId::ProcessCPUTime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mean ns per call of `f` over `ITERS` calls: wall time, and the CPU time
/// this process spent (with client and server pinned to one CPU, the wall
/// time minus what other processes took of that CPU meanwhile).
fn time_ns(f: &mut dyn FnMut()) -> (f64, f64) {
    let (t, cpu) = (Instant::now(), process_cpu_ns());
    for _ in 0..ITERS {
        f();
    }
    let cpu = process_cpu_ns() - cpu;
    (
        t.elapsed().as_nanos() as f64 / ITERS as f64,
        cpu as f64 / ITERS as f64,
    )
}

/// A bare request/response peer: an echo thread on a Unix stream socket
/// pair, blocking reads and writes of our frame-header sizes.
struct RawEcho {
    client: UnixStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl RawEcho {
    fn start() -> RawEcho {
        let (client, mut server) = UnixStream::pair().expect("socketpair");
        let thread = thread::spawn(move || {
            let mut req = [0u8; REQUEST_HEADER_LEN];
            let resp = [0u8; RESPONSE_HEADER_LEN];
            while server.read_exact(&mut req).is_ok() {
                if server.write_all(&resp).is_err() {
                    break;
                }
            }
        });
        RawEcho {
            client,
            thread: Some(thread),
        }
    }

    fn roundtrip(&mut self) {
        let req = [0u8; REQUEST_HEADER_LEN];
        let mut resp = [0u8; RESPONSE_HEADER_LEN];
        self.client.write_all(&req).unwrap();
        self.client.read_exact(&mut resp).unwrap();
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pins the calling thread, and every thread it starts from now on, to the
/// CPU it is running on, and returns the affinity it had before.
///
/// The latency comparisons run pinned, raw and ours alike: unpinned, on an
/// otherwise idle virtual machine, the scheduler moves a server that does a
/// few hundred ns of work to the other (idle) vCPU, and every round trip then
/// pays a cross-CPU wake-up of tens of microseconds that has nothing to do
/// with the code measured (seen here: 9–53 µs per alloc+free unpinned,
/// 7.7–8.3 µs pinned, on the same build). The throughput test with 8 client
/// processes runs unpinned.
fn pin_to_current_cpu() -> CpuSet {
    let before = sched_getaffinity(None).expect("sched_getaffinity");
    let mut one = CpuSet::new();
    one.set(sched_getcpu());
    sched_setaffinity(None, &one).expect("sched_setaffinity");
    before
}

/// Runs the raw round trip and `ours` in alternating short rounds (so both
/// see the same machine load) and keeps each one's best round: on a shared
/// machine the scheduler sometimes slows a whole round tenfold, and the
/// best round is the cost of the code rather than of the neighbours.
/// Returns raw ns, our ns, `ours / (raw * requests)` from the best rounds,
/// and the median over rounds of that ratio taken within each round (which
/// keeps the load a round saw, for comparison).
fn compare(raw: &mut RawEcho, requests: f64, ours: &mut dyn FnMut()) -> Comparison {
    for _ in 0..ITERS {
        raw.roundtrip();
        ours();
    }
    let (mut r, mut o) = (f64::MAX, f64::MAX);
    let (mut r_cpu, mut o_cpu) = (f64::MAX, f64::MAX);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let mut cpu_ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Alternate which side goes first.
        let (rr, oo) = if round % 2 == 0 {
            let rr = time_ns(&mut || raw.roundtrip());
            (rr, time_ns(ours))
        } else {
            let oo = time_ns(ours);
            (time_ns(&mut || raw.roundtrip()), oo)
        };
        r = r.min(rr.0);
        o = o.min(oo.0);
        r_cpu = r_cpu.min(rr.1);
        o_cpu = o_cpu.min(oo.1);
        ratios.push(oo.0 / (rr.0 * requests));
        cpu_ratios.push(oo.1 / (rr.1 * requests));
    }
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    Comparison {
        raw: r,
        ours: o,
        ratio: o / (r * requests),
        median: ratios[ratios.len() / 2],
        raw_cpu: r_cpu,
        ours_cpu: o_cpu,
        cpu_median: cpu_ratios[cpu_ratios.len() / 2],
        requests,
    }
}

/// The figures of one [`compare`].
struct Comparison {
    raw: f64,
    ours: f64,
    ratio: f64,
    median: f64,
    /// Process CPU time per operation in the best round of each side: on
    /// a shared machine steadier than the wall time, as the time other
    /// processes take of the pinned CPU is left out.
    raw_cpu: f64,
    ours_cpu: f64,
    /// Median over rounds of the CPU-time ratio.
    cpu_median: f64,
    /// Requests per operation of ours.
    requests: f64,
}

fn stats_read(c: &mut HostConnection) {
    let id = open(c, "stats", O_RDONLY);
    let r = c
        .request(Opcode::Read, [id, 0, 0, 0, 0, 0], &[], 8192)
        .unwrap();
    assert!(r.result().unwrap() > 0);
    close(c, id);
}

fn worker(socket: &Path) {
    let mut c = HostConnection::connect(socket).expect("worker connect");
    support::worker(|| {
        for _ in 0..PROC_PAIRS {
            alloc_free(&mut c);
        }
    });
}

fn eight_processes(socket: &Path) -> (f64, f64) {
    let env = vec![(WORKER_ENV, socket.display().to_string())];
    let secs = support::run_workers(&vec![env; PROCS]);
    let pairs = (PROCS * PROC_PAIRS) as f64;
    (pairs / secs, secs)
}

/// Runs `f` `iters` times (the loop profilers focus on).
#[inline(never)]
fn profile_loop(iters: usize, f: &mut dyn FnMut()) {
    for _ in 0..iters {
        f();
    }
}

/// `PDDGPU_BENCH_PROFILE`: one workload only, for a profiler.
fn profile(which: &str) {
    let iters: usize = std::env::var("PDDGPU_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut raw = RawEcho::start();
    let server = Server::start("bench");
    let mut c = HostConnection::connect(&server.socket).unwrap();
    let stats = open(&mut c, "stats", O_RDONLY);
    // Warm up every path once.
    alloc_free(&mut c);
    stats_read(&mut c);
    raw.roundtrip();
    // As in the timed run, alloc+free runs with no other handle open: each
    // pair is also a new owner and its end.
    if which == "alloc_free" {
        close(&mut c, stats);
    }
    match which {
        "raw" => profile_loop(iters, &mut || raw.roundtrip()),
        "null" => profile_loop(iters, &mut || {
            let r = c
                .request(Opcode::Fsync, [stats, 0, 0, 0, 0, 0], &[], 0)
                .unwrap();
            assert_eq!(r.result(), Ok(0));
        }),
        "alloc_free" => profile_loop(iters, &mut || alloc_free(&mut c)),
        "stats_read" => profile_loop(iters, &mut || stats_read(&mut c)),
        other => {
            panic!("PDDGPU_BENCH_PROFILE={other}: expected raw, null, alloc_free or stats_read")
        }
    }
    if which != "alloc_free" {
        close(&mut c, stats);
    }
}

fn main() {
    if let Some(socket) = std::env::var_os(WORKER_ENV) {
        worker(Path::new(&socket));
        return;
    }
    if let Ok(which) = std::env::var("PDDGPU_BENCH_PROFILE") {
        profile(&which);
        return;
    }
    let progress = Reporter::stderr("roundtrip");
    let step = progress.begin_counted(
        "measure",
        "measuring null_request, bo_alloc_free and stats_read against raw, then throughput",
        4,
    );
    step.message("null_request");
    let unpinned = pin_to_current_cpu();
    let mut raw = RawEcho::start();
    let server = Server::start("bench");
    let mut c = HostConnection::connect(&server.socket).unwrap();
    // A request that does nothing but find its handle: the transport alone.
    let stats = open(&mut c, "stats", O_RDONLY);
    let null = compare(&mut raw, 1.0, &mut || {
        let r = c
            .request(Opcode::Fsync, [stats, 0, 0, 0, 0, 0], &[], 0)
            .unwrap();
        assert_eq!(r.result(), Ok(0));
    });
    close(&mut c, stats);
    step.advance(1);
    step.message("bo_alloc_free");
    let af = compare(&mut raw, 2.0, &mut || alloc_free(&mut c));
    step.advance(1);
    step.message("stats_read");
    let sr = compare(&mut raw, 3.0, &mut || stats_read(&mut c));
    step.advance(1);
    step.message(format!("throughput of {PROCS} client processes"));
    drop(c);
    drop(raw);
    drop(server);
    // Throughput: a fresh server whose threads, like the client processes,
    // may run on every CPU.
    sched_setaffinity(None, &unpinned).expect("sched_setaffinity");
    let server = Server::start("bench");
    let (ops, secs) = eight_processes(&server.socket);
    drop(server);
    step.finish(format!("measured in {}", seconds(step.elapsed())));

    let raw_ns = null.raw.min(af.raw).min(sr.raw);
    println!("{raw_ns:.0} ns raw_roundtrip");
    for (name, c) in [
        ("bo_alloc_free", &af),
        ("stats_read", &sr),
        ("null_request", &null),
    ] {
        println!("{:.0} ns {name}_ipc", c.ours);
        println!("ratio ipc/{name}/raw_roundtrip {:.3}", c.ratio);
        println!(
            "  ({name}: median of per-round ratios {:.3}, raw round trip {:.0} ns in its best round)",
            c.median, c.raw
        );
        println!(
            "  ({name}: process CPU time {:.0} ns vs raw {:.0} ns, ratio {:.3}; median of per-round CPU ratios {:.3})",
            c.ours_cpu,
            c.raw_cpu,
            c.ours_cpu / (c.raw_cpu * c.requests),
            c.cpu_median
        );
    }
    println!(
        "{ops:.0} bo_alloc_free/s with {PROCS} client processes ({} pairs in {secs:.3} s)",
        PROCS * PROC_PAIRS
    );
}
