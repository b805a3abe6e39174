//! Driver benchmark (plain harness): `cargo bench -p pddgpu --bench driver`.
//!
//! Prints
//! - `ns bo_create+free vram <n>` / `ns bo_create+free gtt <n>`: one
//!   `bo_create` of 4 KiB plus its `bo_unref`, single thread, with 1000
//!   other BOs live, as thread CPU time (robust on a shared machine; the
//!   wall-clock figure follows on the next line);
//! - `ratio driver/stats_readers <r>`: what statistics readers cost a
//!   writer. The writer thread (pinned to one CPU) creates and frees BOs
//!   while 2 helper threads (pinned to another CPU) either spin on private
//!   data (the control: the same CPU competition, no shared data) or call
//!   `Driver::stats()` in a loop; `r` = the writer's time per pair beside
//!   the spinners / beside the readers (1 = readers cost the writer
//!   nothing beyond any busy neighbour). Times are the writer thread's CPU
//!   time over 101 rounds of two short segments (spinning, reading; the
//!   helpers switch at once, the order alternates); the ratio is the median
//!   of the per-round ratios, so load from other processes that changes
//!   between rounds cancels out. `ratio driver/stats_readers_vs_idle`
//!   compares with blocked helpers instead (11 longer rounds). The read
//!   is the exact one the scheme's `stats` files use (see
//!   `pddgpu::stats`); it polls only the published copy of the counters,
//!   so the reads/s figure is bounded by how often writers publish;
//! - `ns stats read, writers idle <n>`: one `Driver::stats()` when no
//!   writer runs (the read waits out its polls, then reads the totals).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, Domain, Driver};
use pddgpu_ipc::progress::{seconds, Reporter};
use rustix::thread::{sched_setaffinity, CpuSet};
use rustix::time::{clock_gettime, ClockId};

const MIB: u64 = 1 << 20;

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let ts = clock_gettime(ClockId::ThreadCPUTime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn req(domain: Domain) -> BoCreate<'static> {
    BoCreate::new(4096, domain, "bench")
}

/// `n` create+free pairs; returns (wall ns, writer-thread CPU ns) per pair.
fn pairs(d: &Driver, domains: &[Domain], n: u64) -> (f64, f64) {
    let wall = Instant::now();
    let cpu = thread_cpu_ns();
    for i in 0..n {
        let domain = domains[i as usize % domains.len()];
        let id = d.bo_create(1, &req(domain), i).unwrap();
        d.bo_unref(1, black_box(id)).unwrap();
    }
    let cpu = (thread_cpu_ns() - cpu) as f64 / n as f64;
    let wall = wall.elapsed().as_nanos() as f64 / n as f64;
    (wall, cpu)
}

/// Best of `rounds` (least disturbed).
fn best(rounds: u32, mut f: impl FnMut() -> (f64, f64)) -> (f64, f64) {
    (0..rounds)
        .map(|_| f())
        .fold((f64::MAX, f64::MAX), |a, b| (a.0.min(b.0), a.1.min(b.1)))
}

fn main() {
    let dev = SimDevice::new(SimConfig::sized(256 * MIB, 256 * MIB)).unwrap();
    let d = Arc::new(Driver::new(dev.resources(), 0).unwrap());
    // Background population so the allocators are not trivially empty.
    for i in 0..1000u64 {
        let domain = if i % 2 == 0 {
            Domain::Vram
        } else {
            Domain::Gtt
        };
        let size = 4096 * (1 + i % 16);
        d.bo_create(
            2,
            &BoCreate {
                size,
                ..req(domain)
            },
            0,
        )
        .unwrap();
    }
    let progress = Reporter::stderr("driver bench");
    let n = 200_000;
    let single = progress.run("bo_create+free", "bo_create+free per domain", |step| {
        pairs(&d, &[Domain::Vram, Domain::Gtt], n / 4);
        [("vram", Domain::Vram), ("gtt", Domain::Gtt)].map(|(name, domain)| {
            step.message(name);
            (name, best(3, || pairs(&d, &[domain], n)))
        })
    });
    for (name, (wall, cpu)) in single {
        println!("ns bo_create+free {name} {cpu:.0}");
        println!("  ({name}: thread CPU time per pair; wall clock {wall:.0})");
    }

    let rounds = 101;
    let idle_rounds = 11;
    // Begun before pinning, so its ticker is not on the writer's CPU.
    let step = progress.begin_counted(
        "stats readers",
        "stats readers vs spinning and idle helpers",
        (rounds + idle_rounds) as u64,
    );
    let mixed = [Domain::Vram, Domain::Gtt];
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (writer_cpu, helper_cpu) = (0, if cpus > 1 { 1 } else { 0 });
    pin_to(writer_cpu);
    let helpers = Helpers::start(d.clone(), helper_cpu);
    // Readers against the control, in short alternating segments (the
    // helpers switch between spinning and reading at once); the ratio is
    // taken within each round and the median over rounds is reported, so
    // load from other processes, which changes between rounds, cancels out.
    let segment = 2_000;
    helpers.set(MODE_SPIN);
    pairs(&d, &mixed, segment);
    let mut ratios = Vec::with_capacity(rounds);
    let (mut spin_best, mut read_best) = (f64::MAX, f64::MAX);
    let mut read_time = 0.0;
    let reads_before = helpers.reads();
    for r in 0..rounds {
        let mut cpu = [0.0; 2];
        for k in 0..2 {
            let reading = (r + k) % 2 == 1;
            helpers.switch(if reading { MODE_READ } else { MODE_SPIN });
            let t = Instant::now();
            cpu[usize::from(reading)] = pairs(&d, &mixed, segment).1;
            if reading {
                read_time += t.elapsed().as_secs_f64();
            }
        }
        spin_best = spin_best.min(cpu[0]);
        read_best = read_best.min(cpu[1]);
        ratios.push(cpu[0] / cpu[1]);
        step.advance(1);
    }
    let read_rate = (helpers.reads() - reads_before) as f64 / read_time;
    // Against idle helpers (blocked): fewer, longer rounds, as switching
    // to and from blocking takes a while.
    let mut idle_ratios = Vec::new();
    let mut idle_best = f64::MAX;
    for r in 0..idle_rounds {
        let mut cpu = [0.0; 2];
        for k in 0..2 {
            let reading = (r + k) % 2 == 1;
            helpers.set(if reading { MODE_READ } else { MODE_IDLE });
            cpu[usize::from(reading)] = pairs(&d, &mixed, 10 * segment).1;
        }
        idle_best = idle_best.min(cpu[0]);
        idle_ratios.push(cpu[0] / cpu[1]);
        step.advance(1);
    }
    helpers.stop();
    pin_to(helper_cpu);
    let reads = 2_000u32;
    let t = Instant::now();
    for _ in 0..reads {
        black_box(d.stats());
    }
    let idle_read_ns = t.elapsed().as_nanos() as f64 / f64::from(reads);
    step.finish(format!(
        "stats readers: done in {}",
        seconds(step.elapsed())
    ));
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("ratio driver/stats_readers {:.3}", median(&mut ratios));
    println!(
        "ratio driver/stats_readers_vs_idle {:.3}",
        median(&mut idle_ratios)
    );
    println!("ns stats read, writers idle {idle_read_ns:.0}");
    println!(
        "ns bo_create+free mixed (writer CPU time, best segment): helpers idle {idle_best:.0}, spinning {spin_best:.0}, reading stats {read_best:.0}; stats reads/s while reading {read_rate:.0}; writer on CPU {writer_cpu}, helpers on CPU {helper_cpu} of {cpus}"
    );
}

const MODE_IDLE: u8 = 0;
const MODE_SPIN: u8 = 1;
const MODE_READ: u8 = 2;
const MODE_EXIT: u8 = 3;

/// Pins the calling thread to `cpu` (best effort: not where affinity is
/// unavailable).
fn pin_to(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu);
    let _ = sched_setaffinity(None, &set);
}

/// Two helper threads on one CPU: idle (blocked), spinning on private
/// data, or reading the statistics in a loop.
struct Helpers {
    mode: Arc<(Mutex<u8>, Condvar)>,
    fast: Arc<AtomicU8>,
    reads: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Helpers {
    fn start(d: Arc<Driver>, cpu: usize) -> Helpers {
        let mode = Arc::new((Mutex::new(MODE_IDLE), Condvar::new()));
        let fast = Arc::new(AtomicU8::new(MODE_IDLE));
        let reads = Arc::new(AtomicU64::new(0));
        let threads = (0..2)
            .map(|_| {
                let (d, mode, fast, reads) = (d.clone(), mode.clone(), fast.clone(), reads.clone());
                std::thread::spawn(move || {
                    pin_to(cpu);
                    loop {
                        {
                            let (lock, cv) = &*mode;
                            let mut m = lock.lock().unwrap();
                            while *m == MODE_IDLE {
                                m = cv.wait(m).unwrap();
                            }
                            if *m == MODE_EXIT {
                                return;
                            }
                        }
                        // Spin or read, as `fast` says, until told to stop.
                        let mut x = 0u64;
                        loop {
                            match fast.load(Ordering::Relaxed) {
                                MODE_SPIN => {
                                    for _ in 0..64 {
                                        x = black_box(
                                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                                        );
                                    }
                                }
                                MODE_READ => {
                                    for _ in 0..64 {
                                        black_box(d.stats());
                                    }
                                    reads.fetch_add(64, Ordering::Relaxed);
                                }
                                _ => break,
                            }
                        }
                    }
                })
            })
            .collect();
        Helpers {
            mode,
            fast,
            reads,
            threads,
        }
    }

    /// Switches the helpers to `m`, waiting until they have left a blocked
    /// state or reached one.
    fn set(&self, m: u8) {
        let (lock, cv) = &*self.mode;
        *lock.lock().unwrap() = m;
        self.fast.store(m, Ordering::Relaxed);
        cv.notify_all();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }

    /// Switches running helpers between spinning and reading, at once.
    fn switch(&self, m: u8) {
        *self.mode.0.lock().unwrap() = m;
        self.fast.store(m, Ordering::Relaxed);
    }

    /// Stats reads done so far.
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.set(MODE_EXIT);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}
