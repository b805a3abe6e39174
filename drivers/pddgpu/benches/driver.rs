//! Driver benchmark (plain harness): `cargo bench -p pddgpu --bench driver`.
//!
//! Prints
//! - `ns bo_create+free vram <n>` / `ns bo_create+free gtt <n>`: one
//!   `bo_create` of 4 KiB plus its `bo_unref`, single thread, with 1000
//!   other BOs live, as thread CPU time (robust on a shared machine; the
//!   wall-clock figure follows on the next line);
//! - `ratio driver/stats_readers <r>`: the writer's time per create+free
//!   without readers divided by its time while 2 threads call
//!   `Driver::stats()` in a loop (≥ 0.9: readers do not slow writers).
//!   Measured as the writer thread's CPU time, so that it shows
//!   interference (cache traffic, retries), not the scheduler sharing too
//!   few cores among three busy threads; the wall-clock ratio is printed
//!   too, with the number of cores.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, BoFlags, Domain, Driver};

const MIB: u64 = 1 << 20;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn req(domain: Domain) -> BoCreate<'static> {
    BoCreate {
        size: 4096,
        domain,
        flags: BoFlags::empty(),
        align: 0,
        label: "bench",
    }
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
    let dev = SimDevice::new(SimConfig {
        vram_size: 256 * MIB,
        visible_size: 64 * MIB,
        gtt_size: 256 * MIB,
    })
    .unwrap();
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
    let n = 200_000;
    pairs(&d, &[Domain::Vram, Domain::Gtt], n / 4);
    for (name, domain) in [("vram", Domain::Vram), ("gtt", Domain::Gtt)] {
        let (wall, cpu) = best(3, || pairs(&d, &[domain], n));
        println!("ns bo_create+free {name} {cpu:.0}");
        println!("  ({name}: thread CPU time per pair; wall clock {wall:.0})");
    }

    let mixed = [Domain::Vram, Domain::Gtt];
    let (alone_wall, alone_cpu) = best(5, || pairs(&d, &mixed, n));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (d, stop, reads) = (d.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    black_box(d.stats());
                    k += 1;
                }
                reads.fetch_add(k, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    let (busy_wall, busy_cpu) = best(5, || pairs(&d, &mixed, n));
    let reads_busy = reads.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let reads_done = reads.load(Ordering::Relaxed);
    let _ = reads_busy;
    // Control: two threads spinning on private data (no shared cache
    // lines): what CPU contention alone costs the writer on this machine.
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let (ctl_wall, ctl_cpu) = best(5, || pairs(&d, &mixed, n));
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    println!("ratio driver/stats_readers {:.3}", alone_cpu / busy_cpu);
    println!(
        "ratio driver/spinning_threads {:.3} (control: 2 threads sharing nothing; wall {:.3})",
        alone_cpu / ctl_cpu,
        alone_wall / ctl_wall
    );
    println!(
        "ratio driver/stats_readers wall {:.3} (2 readers + 1 writer on {} cores)",
        alone_wall / busy_wall,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "ns bo_create+free mixed: alone {alone_cpu:.0} cpu / {alone_wall:.0} wall, with readers {busy_cpu:.0} cpu / {busy_wall:.0} wall; stats reads/s {:.0}",
        reads_done as f64 / elapsed
    );
}
