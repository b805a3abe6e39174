//! Scale: the stress shape of the design notes — 100 client threads, each
//! creating and freeing a 4 KiB VRAM BO 1000 times — run
//!
//! - in process: 100 threads on one `Driver` (the core, no transport);
//! - over the host transport: a real host server in this process and the
//!   100 client threads spread over 1, 2 and 4 client processes (each
//!   thread with its own connection, as each would be its own client);
//!
//! each on 1 CPU and on 2 CPUs (the whole process tree is confined with
//! `sched_setaffinity` before anything starts; children inherit it).
//!
//! Prints `throughput scale/<setup>/<n>cpu <pairs per second>` (best of
//! `SCALE_BENCH_ROUNDS`, default 3) and `scaling scale/<setup> <2-CPU
//! throughput / 1-CPU throughput>`, and writes `target/scale.svg`: the
//! throughput against the number of client processes, one line per CPU
//! count, with the in-process figures as reference lines.
//!
//! Run: `cargo bench -p pddgpu-ipc --bench scale`.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, Domain, Driver};
use pddgpu_ipc::host::HostConnection;
use pddgpu_ipc::progress::{joined_span, seconds, Reporter, Step};
use rustix::thread::{sched_setaffinity, CpuSet};
use support::{alloc_free, Server};

const WORKER_ENV: &str = "PDDGPU_SCALE_WORKER";
const THREADS_ENV: &str = "PDDGPU_SCALE_THREADS";
const THREADS: usize = 100;
const PAIRS: usize = 1000;
const MIB: u64 = 1 << 20;
const PROCESS_COUNTS: [usize; 3] = [1, 2, 4];

/// Confines this thread (and every thread and process it starts from now
/// on) to the first `cpus` CPUs.
fn confine(cpus: usize) {
    let mut set = CpuSet::new();
    for cpu in 0..cpus {
        set.set(cpu);
    }
    sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// 100 threads × 1000 create+free pairs on one in-process driver; seconds.
fn in_process() -> f64 {
    let dev = SimDevice::new(SimConfig::sized(256 * MIB, 256 * MIB)).expect("simulated device");
    let d = Arc::new(Driver::new(dev.resources(), 0).expect("driver"));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (d, barrier) = (d.clone(), barrier.clone());
            thread::spawn(move || {
                let req = BoCreate::new(4096, Domain::Vram, "scale");
                barrier.wait();
                let start = Instant::now();
                for _ in 0..PAIRS {
                    let id = d.bo_create(t as u64 + 1, &req, 0).expect("bo_create");
                    d.bo_unref(t as u64 + 1, id).expect("bo_unref");
                }
                (start, Instant::now())
            })
        })
        .collect();
    joined_span(threads).as_secs_f64()
}

/// Worker process: `threads` connections, each in its own thread; runs
/// when told `go` on stdin, says `done` when all have finished.
fn worker(socket: &Path, threads: usize) {
    let conns: Vec<HostConnection> = (0..threads)
        .map(|_| HostConnection::connect(socket).expect("worker connect"))
        .collect();
    support::worker(|| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                thread::spawn(move || {
                    for _ in 0..PAIRS {
                        alloc_free(&mut c);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("client thread");
        }
    });
}

/// 100 client threads over `procs` processes against `socket`; seconds
/// from `go` to the last `done`.
fn over_transport(socket: &Path, procs: usize) -> f64 {
    let envs: Vec<_> = (0..procs)
        .map(|p| {
            // Spread the threads as evenly as they go.
            let threads = THREADS / procs + usize::from(p < THREADS % procs);
            vec![
                (WORKER_ENV, socket.display().to_string()),
                (THREADS_ENV, threads.to_string()),
            ]
        })
        .collect();
    support::run_workers(&envs)
}

/// `target/` of this build: the bench executable is `target/<profile>/deps/<name>`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `v` with an SI suffix (`20k`, `1M`).
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// The plot: throughput (pairs/s) against client processes, one line per
/// CPU count, the in-process throughput of each CPU count as a dashed line.
fn svg(cpu_counts: &[usize], transport: &[Vec<f64>], in_proc: &[f64]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 80.0, 150.0, 40.0, 50.0);
    // Logarithmic throughput axis: in-process figures are two orders of
    // magnitude above the transport's.
    let values = || transport.iter().flatten().chain(in_proc).copied();
    let lo = 10f64.powf(values().fold(f64::MAX, f64::min).max(1.0).log10().floor());
    let hi = 10f64.powf(values().fold(1.0, f64::max).log10().ceil());
    let x_of = |i: usize| left + (w - left - right) * i as f64 / (PROCESS_COUNTS.len() - 1) as f64;
    let y_of =
        |v: f64| top + (h - top - bottom) * (1.0 - (v.max(lo) / lo).log10() / (hi / lo).log10());
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{THREADS} client threads x {PAIRS} BO create+free: throughput</text>"#,
        w / 2.0
    );
    // Axes, grid and labels.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - bottom,
        h - bottom,
        w - right,
        h - bottom
    );
    let mut decade = lo;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v > hi {
                break;
            }
            let y = y_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - right,
                left - 6.0,
                y + 4.0,
                si(v)
            );
        }
        decade *= 10.0;
    }
    for (i, p) in PROCESS_COUNTS.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{p}</text>"#,
            x_of(i),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">client processes (host transport)</text>"#,
        (left + w - right) / 2.0,
        h - 8.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">create+free pairs per second (log)</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (c, &cpus) in cpu_counts.iter().enumerate() {
        let colour = colours[c % colours.len()];
        let points: Vec<String> = transport[c]
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x_of(i), y_of(v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for (i, &v) in transport[c].iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"/>"#,
                x_of(i),
                y_of(v)
            );
        }
        let y = y_of(in_proc[c]);
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="6 4"/>"#,
            w - right
        );
        let ly = top + 20.0 + 36.0 * c as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{:.1}">{cpus} CPU, transport</text>"#,
            w - right + 10.0,
            w - right + 30.0,
            w - right + 34.0,
            ly + 4.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{colour}" stroke-dasharray="6 4"/><text x="{}" y="{:.1}">{cpus} CPU, in process</text>"#,
            w - right + 10.0,
            ly + 16.0,
            w - right + 30.0,
            ly + 16.0,
            w - right + 34.0,
            ly + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The fastest of `rounds` runs of `setup` (seconds), each counted on
/// `step`; prints its throughput.
fn best_of(step: &Step<'_>, setup: &str, rounds: usize, mut run: impl FnMut() -> f64) -> f64 {
    step.message(setup);
    let best = (0..rounds)
        .map(|_| {
            let secs = run();
            step.advance(1);
            secs
        })
        .fold(f64::MAX, f64::min);
    let pairs = (THREADS * PAIRS) as f64;
    step.print_result(format!("throughput scale/{setup} {:.0}", pairs / best));
    best
}

fn main() {
    if let Some(socket) = std::env::var_os(WORKER_ENV) {
        let threads = std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(THREADS);
        worker(Path::new(&socket), threads);
        return;
    }
    // `SCALE_BENCH_CPUS=<n>` runs only that CPU count and
    // `SCALE_BENCH_IN_PROCESS_ONLY=1` only the in-process setup (profiling).
    let only_cpus: Option<usize> = std::env::var("SCALE_BENCH_CPUS")
        .ok()
        .and_then(|v| v.parse().ok());
    let in_process_only = std::env::var_os("SCALE_BENCH_IN_PROCESS_ONLY").is_some();
    let rounds: usize = std::env::var("SCALE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let available = thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_counts: Vec<usize> = [1, 2]
        .into_iter()
        .filter(|&c| c <= available && only_cpus.is_none_or(|o| o == c))
        .collect();
    let pairs = (THREADS * PAIRS) as f64;
    let setups = if in_process_only {
        1
    } else {
        1 + PROCESS_COUNTS.len()
    };
    let progress = Reporter::stderr("scale");
    let step = progress.begin_counted(
        "measure",
        format!(
            "{} setups x {} CPU counts x {rounds} rounds of {THREADS} threads x {PAIRS} pairs",
            setups,
            cpu_counts.len()
        ),
        (setups * cpu_counts.len() * rounds) as u64,
    );
    let mut in_proc = Vec::new();
    let mut transport = Vec::new();
    for &cpus in &cpu_counts {
        confine(cpus);
        let best = best_of(&step, &format!("in_process/{cpus}cpu"), rounds, in_process);
        in_proc.push(pairs / best);
        if in_process_only {
            continue;
        }
        let server = Server::start("scale");
        let mut row = Vec::new();
        for procs in PROCESS_COUNTS {
            let setup = format!("transport_{procs}proc/{cpus}cpu");
            let best = best_of(&step, &setup, rounds, || {
                over_transport(&server.socket, procs)
            });
            row.push(pairs / best);
        }
        drop(server);
        transport.push(row);
    }
    step.finish(format!("measured in {}", seconds(step.elapsed())));
    if in_process_only {
        return;
    }
    if cpu_counts.len() == 2 {
        println!("scaling scale/in_process {:.2}", in_proc[1] / in_proc[0]);
        for (i, procs) in PROCESS_COUNTS.iter().enumerate() {
            println!(
                "scaling scale/transport_{procs}proc {:.2}",
                transport[1][i] / transport[0][i]
            );
        }
    } else {
        println!("scaling: skipped (only {available} CPU available)");
    }
    let path = target_dir().join("scale.svg");
    match std::fs::write(&path, svg(&cpu_counts, &transport, &in_proc)) {
        Ok(()) => println!("plot {}", path.display()),
        Err(e) => println!("plot not written ({}): {e}", path.display()),
    }
}
