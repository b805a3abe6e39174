//! VRAM manager demo: a simulated 8 GiB card with a 256 MiB CPU-visible
//! window. Allocates a realistic mix of buffers, prints the statistics,
//! frees part of it, then everything, and shows the memory coalesced back.
//!
//! Run: `cargo run --release -p pddgpu --example vram_demo`

use std::time::Instant;

use pddgpu::bo::BoFlags;
use pddgpu::vram::{VramAllocation, VramConfig, VramManager, VramStats};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What a game-like client asks for: name, size, alignment, flags, count.
#[rustfmt::skip]
fn workload() -> Vec<(&'static str, u64, u64, BoFlags, usize)> {
    let rgba = |w: u64, h: u64| w * h * 4;
    // A mipmapped texture takes about 4/3 of its top level.
    let mipped = |w: u64, h: u64| rgba(w, h) * 4 / 3;
    let none = BoFlags::empty();
    let (contig, visible) = (BoFlags::CONTIGUOUS, BoFlags::VISIBLE);
    vec![
        ("scanout framebuffer 3840x2160", rgba(3840, 2160), 64 * KIB, contig | visible, 2),
        ("render target 1920x1080 RGBA8", rgba(1920, 1080), 64 * KIB, none, 6),
        ("depth buffer 1920x1080", rgba(1920, 1080), 64 * KIB, contig, 2),
        ("shadow map 4096x4096", rgba(4096, 4096), 64 * KIB, none, 4),
        ("texture 4096x4096 mipmapped", mipped(4096, 4096), 64 * KIB, none, 12),
        ("texture 2048x2048 mipmapped", mipped(2048, 2048), 64 * KIB, none, 60),
        ("texture 1024x1024 mipmapped", mipped(1024, 1024), 64 * KIB, none, 200),
        ("texture 256x256 mipmapped", mipped(256, 256), 4 * KIB, none, 800),
        ("vertex/index buffer", 3 * MIB + 123 * KIB, 4 * KIB, none, 200),
        ("uniform buffer", 16 * KIB, 4 * KIB, none, 2000),
        ("staging upload buffer (visible)", 8 * MIB, 4 * KIB, visible, 16),
        ("readback buffer (visible)", 2 * MIB, 4 * KIB, visible, 8),
        ("command ring (visible, contiguous)", 256 * KIB, 4 * KIB, visible | contig, 4),
        ("compute scratch (contiguous)", 48 * MIB, 2 * MIB, contig, 8),
    ]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn print_stats(title: &str, s: &VramStats) {
    println!("--- {title}");
    println!(
        "    state {} (healthy: {}), {} allocations in {} blocks, {} free blocks",
        s.state, s.is_healthy, s.allocations, s.block_count, s.free_block_count
    );
    println!(
        "    used {} of {} ({:.1}%), free {}",
        mib(s.used_size),
        mib(s.total_size),
        s.used_size as f64 * 100.0 / s.total_size as f64,
        mib(s.free_size)
    );
    println!(
        "    CPU-visible window: {} used of {}",
        mib(s.visible_used),
        mib(s.visible_size)
    );
    println!(
        "    largest free block {}, fragmentation {:.1}%",
        mib(s.largest_free),
        s.fragmentation_permille() as f64 / 10.0
    );
    let orders: Vec<String> = s
        .free_per_order
        .iter()
        .enumerate()
        .filter(|(_, &bytes)| bytes > 0)
        .map(|(order, &bytes)| {
            let block = s.min_block_size << order;
            let label = if block >= MIB {
                format!("{}M", block / MIB)
            } else {
                format!("{}K", block / KIB)
            };
            format!("{label}:{}", bytes / block)
        })
        .collect();
    println!("    free blocks by size: {}", orders.join(" "));
}

fn main() {
    let started = Instant::now();
    let manager = VramManager::new(VramConfig::new(8 * GIB, 256 * MIB)).expect("VRAM manager");
    println!(
        "Simulated card: {} VRAM, {} CPU-visible window, {} KiB blocks, retry policy {:?}",
        mib(manager.config().size),
        mib(manager.config().visible_size),
        manager.config().min_block_size / KIB,
        manager.retry_policy()
    );
    print_stats("fresh", &manager.get_stats());

    let mut live: Vec<(&'static str, VramAllocation)> = Vec::new();
    let mut failures = 0;
    for (name, size, align, flags, count) in workload() {
        let mut bytes = 0;
        for _ in 0..count {
            match manager.alloc(size, align, flags) {
                Ok(a) => {
                    bytes += a.allocated_size();
                    live.push((name, a));
                }
                Err(e) => {
                    failures += 1;
                    println!("    {name}: {e}");
                }
            }
        }
        println!(
            "  {count:>5} x {name:<38} {:>10} each, {:>12} total",
            mib(size),
            mib(bytes)
        );
    }
    let placed_visible = live
        .iter()
        .filter(|(_, a)| a.is_visible())
        .all(|(_, a)| a.segments().all(|(at, len)| at + len <= 256 * MIB));
    println!("  all VISIBLE buffers inside the window: {placed_visible}; failures: {failures}");
    print_stats("after loading the scene", &manager.get_stats());

    // Unload every other texture and the vertex buffers: holes appear.
    let mut kept = Vec::new();
    for (i, (name, a)) in live.into_iter().enumerate() {
        if (name.starts_with("texture") || name.starts_with("vertex")) && i % 2 == 0 {
            manager.free(&a).expect("free");
        } else {
            kept.push((name, a));
        }
    }
    print_stats(
        "after unloading half of the textures and buffers",
        &manager.get_stats(),
    );

    for (_, a) in &kept {
        manager.free(a).expect("free");
    }
    let end = manager.get_stats();
    print_stats("after freeing everything", &end);
    let coalesced =
        end.used_size == 0 && end.free_block_count == 1 && end.largest_free == end.total_size;
    println!(
        "Coalesced back into one {} block: {coalesced}  ({:.0} ms)",
        mib(end.largest_free),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if !coalesced || failures > 0 || !placed_visible {
        std::process::exit(1);
    }
}
