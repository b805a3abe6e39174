//! The client side of the guest scenario, shared by the Linux guest
//! (`pddgpu-guest`) and the Redox guest (`pddgpu-redox-guest`): what one
//! client process allocates and checks, how several run at once with one
//! killed while it holds its BOs, and the final idle check.
//!
//! Only where VRAM is read independently of pddgpud differs between the
//! two: a [`VramProbe`] (Linux: a read-only mapping of the sysfs BAR file;
//! Redox: a privileged checker process mapping the BAR's physical pages).
//! Both compare with [`verify_vram_segment`].

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pddgpu_ipc::model::Stats;
use pddgpu_ipc::wire::SegmentWire;
use pddgpu_ipc::{Bo, BoDesc, BoFlags, Device, Domain};

use crate::pattern;

/// The BOs one client allocates: (domain, size, flags). Sizes are not all
/// powers of two so VRAM BOs span several buddy blocks (segments).
pub const BOS: [(Domain, u64, BoFlags); 6] = [
    (Domain::Vram, 256 << 10, BoFlags::empty()),
    (Domain::Vram, (1 << 20) + (64 << 10), BoFlags::CONTIGUOUS),
    (Domain::Vram, (3 << 20) + (20 << 10), BoFlags::VISIBLE),
    (Domain::Gtt, 128 << 10, BoFlags::empty()),
    (Domain::Gtt, 2 << 20, BoFlags::empty()),
    (Domain::Gtt, (1 << 20) + (4 << 10), BoFlags::CLEARED),
];

/// Bytes of [`BOS`] in `domain`.
pub fn bytes_of(domain: Domain) -> u64 {
    BOS.iter()
        .filter(|(d, _, _)| *d == domain)
        .map(|(_, s, _)| s)
        .sum()
}

/// `bytes` in MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The pattern seed of BO `bo` of client `index`.
pub fn seed(index: u32, bo: u64) -> u64 {
    (u64::from(index) << 40) ^ bo ^ 0x5044_4447
}

/// Reads VRAM without going through pddgpud, to confirm a BO's bytes are
/// really in the device's memory where the scheme says they are.
pub trait VramProbe {
    /// Checks that VRAM holds the pattern `seed` at each of `segments` of
    /// BO `bo`.
    fn check(&mut self, bo: u64, seed: u64, segments: &[SegmentWire]) -> Result<()>;
}

/// Checks one segment of BO `bo`: `vram` holds the VRAM bytes of the
/// segment (`seg.len` of them from `seg.backing_offset`).
pub fn verify_vram_segment(bo: u64, seed: u64, seg: &SegmentWire, vram: &[u8]) -> Result<()> {
    ensure!(
        vram.len() as u64 == seg.len,
        "BO {bo}: {} VRAM bytes given for a segment of {}",
        vram.len(),
        seg.len
    );
    if let Some(bad) = pattern::first_mismatch(seed, seg.bo_offset, vram) {
        bail!(
            "BO {bo}: byte {bad} is not in VRAM at BAR offset {:#x}",
            seg.backing_offset + (bad - seg.bo_offset)
        );
    }
    Ok(())
}

/// Writes the pattern through the client's mapping, reads every byte back
/// through the scheme (`read` on the handle copies from pddgpud's own
/// mapping of the backing) and, for VRAM, has `vram` find it in the
/// device's memory. Returns the number of segments.
pub fn exercise(bo: &mut Bo, index: u32, vram: &mut dyn VramProbe) -> Result<usize> {
    let id = bo.id();
    let size = bo.size();
    let s = seed(index, id);
    let mut bytes = vec![0u8; size as usize];
    pattern::fill(s, 0, &mut bytes);
    bo.map()
        .with_context(|| format!("mapping BO {id}"))?
        .write(0, &bytes);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let n = bo.read_at(at, &mut buf[..want])?;
        ensure!(
            n == want,
            "BO {id}: short read of {n} of {want} bytes at {at}"
        );
        if let Some(bad) = pattern::first_mismatch(s, at, &buf[..n]) {
            bail!("BO {id}: byte {bad} read back through the scheme differs from what the client wrote");
        }
        at += n as u64;
    }
    let segments = bo.segments()?;
    if bo.domain() == Domain::Vram {
        vram.check(id, s, &segments)?;
    }
    Ok(segments.len())
}

/// The marker a holding client prints once it holds all its BOs.
pub const HOLDING: &str = "holding";

/// One client process: allocates [`BOS`], exercises each, then frees them,
/// or (`hold`) prints [`HOLDING`] and waits to be killed.
pub fn client(index: u32, hold: bool, vram: &mut dyn VramProbe) -> Result<()> {
    let dev = Device::open()?;
    let mut bos = Vec::new();
    let mut segs = 0;
    for (domain, size, flags) in BOS {
        let mut desc = BoDesc::new(size, domain, flags);
        desc.label = format!("guest-client-{index}");
        let mut bo = dev
            .create(&desc)
            .with_context(|| format!("client {index}: allocating {} in {domain}", mib(size)))?;
        segs += exercise(&mut bo, index, vram).with_context(|| format!("client {index}"))?;
        bos.push(bo);
    }
    println!(
        "client {index} (pid {}): {} VRAM + {} GTT in {} BOs ({segs} segments): written through the mapping, \
         read back through the scheme and, for VRAM, found in the BAR: ok",
        std::process::id(),
        mib(bytes_of(Domain::Vram)),
        mib(bytes_of(Domain::Gtt)),
        bos.len()
    );
    if hold {
        println!("client {index}: {HOLDING} {} BOs", bos.len());
        std::io::stdout().flush()?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    for bo in bos {
        bo.close()?;
    }
    Ok(())
}

/// Echoes a holding client's output (its stdout piped) until it prints
/// [`HOLDING`]; fails when it stops first.
pub fn wait_until_holding(what: &str, child: &mut Child) -> Result<()> {
    let out = child.stdout.take().context("a holding client's stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if line.contains(HOLDING) {
            return Ok(());
        }
    }
    let status = child.wait()?;
    bail!("{what} stopped before holding its BOs ({status})")
}

/// Waits (at most 10 s) until the server holds no BO, after a client that
/// held some was killed; returns the statistics then.
pub fn wait_all_freed(dev: &Device) -> Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = dev.stats()?;
        if s.bos.count == 0 || Instant::now() >= deadline {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so an early
/// error return leaves no client running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Waits for `child` at most `limit`; kills it when it takes longer.
pub fn wait_within(what: &str, child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "{what} failed ({status})");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long one client may take.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// Runs `count` client processes at once (`spawn(index, hold)` starts one;
/// a holding one must have its stdout piped). The last one holds its BOs
/// and is SIGKILLed; the server must free them.
pub fn clients(count: u32, spawn: impl Fn(u32, bool) -> Result<Child>) -> Result<()> {
    ensure!(count >= 2, "at least 2 clients");
    let victim_index = count - 1;
    // The victim starts first so it is holding while the others run.
    let mut victim = Reaped(spawn(victim_index, true)?);
    let mut others: Vec<Reaped> = (0..victim_index)
        .map(|i| spawn(i, false).map(Reaped))
        .collect::<Result<_>>()?;
    wait_until_holding(&format!("client {victim_index}"), &mut victim.0)?;
    for (i, child) in others.iter_mut().enumerate() {
        wait_within(&format!("client {i}"), &mut child.0, CLIENT_LIMIT)?;
    }
    let dev = Device::open()?;
    let n = BOS.len() as u64;
    let before = dev.stats()?;
    ensure!(
        before.bos.count == n
            && before.bos.vram_bytes == bytes_of(Domain::Vram)
            && before.bos.gtt_bytes == bytes_of(Domain::Gtt),
        "with only client {victim_index} holding, the server has {} BOs ({} VRAM, {} GTT bytes); expected {n} ({}, {})",
        before.bos.count,
        before.bos.vram_bytes,
        before.bos.gtt_bytes,
        bytes_of(Domain::Vram),
        bytes_of(Domain::Gtt)
    );
    let pid = u64::from(victim.0.id());
    let listed = dev.clients()?;
    ensure!(
        listed.iter().any(|c| c.pid == pid && c.bos == n),
        "client {victim_index} (pid {pid}) not listed with its {n} BOs in `clients`: {listed:?}"
    );
    victim.0.kill()?; // SIGKILL: no chance to clean up
    let status = victim.0.wait()?;
    let killed = Instant::now();
    println!(
        "client {victim_index} (pid {pid}) killed ({status}) holding {n} BOs ({} VRAM, {} GTT)",
        mib(before.bos.vram_bytes),
        mib(before.bos.gtt_bytes)
    );
    let after = wait_all_freed(&dev)?;
    ensure!(
        after.bos.count == 0 && after.vram.used == 0 && after.gtt.used == 0,
        "after killing client {victim_index}: {} BOs, VRAM used {}, GTT used {} (expected all freed)",
        after.bos.count,
        after.vram.used,
        after.gtt.used
    );
    let listed = dev.clients()?;
    ensure!(
        !listed.iter().any(|c| c.pid == pid && c.bos > 0),
        "the killed client (pid {pid}) is still listed with BOs in `clients`"
    );
    println!(
        "server freed the killed client's BOs in {} ms; {} other clients passed",
        killed.elapsed().as_millis(),
        others.len()
    );
    Ok(())
}

/// Leak check clean, nothing allocated, no BOs, managers healthy.
pub fn check_idle() -> Result<()> {
    let dev = Device::open()?;
    let report = dev.leak_check()?;
    ensure!(
        report.clean && report.problems.is_empty() && report.suspects.is_empty(),
        "leak check not clean: problems {:?}, {} suspect BOs",
        report.problems,
        report.suspects.len()
    );
    let s = dev.stats()?;
    ensure!(
        s.vram.used == 0 && s.vram.visible_used == 0 && s.gtt.used == 0 && s.bos.count == 0,
        "not idle: VRAM used {}, visible used {}, GTT used {}, {} BOs",
        s.vram.used,
        s.vram.visible_used,
        s.gtt.used,
        s.bos.count
    );
    ensure!(
        s.vram.healthy && s.gtt.healthy,
        "managers not healthy (VRAM {}, GTT {})",
        s.vram.state,
        s.gtt.state
    );
    println!(
        "idle: leak check clean, VRAM 0/{} used, GTT 0/{} used, 0 BOs",
        mib(s.vram.total),
        mib(s.gtt.total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_found_only_with_its_own_pattern_and_place() {
        let seg = SegmentWire {
            bo_offset: 8192,
            backing_offset: 0x30_0000,
            len: 4096,
        };
        let mut vram = vec![0u8; 4096];
        pattern::fill(99, seg.bo_offset, &mut vram);
        verify_vram_segment(7, 99, &seg, &vram).unwrap();
        // Another BO's seed, or the bytes of another BO offset: refused.
        assert!(verify_vram_segment(7, 98, &seg, &vram).is_err());
        let shifted = SegmentWire {
            bo_offset: 0,
            ..seg
        };
        assert!(verify_vram_segment(7, 99, &shifted, &vram).is_err());
        // One flipped byte names its BAR offset.
        vram[100] ^= 0x80;
        let err = verify_vram_segment(7, 99, &seg, &vram)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BAR offset 0x300064"), "{err}");
        // A view of the wrong length is an error, not a partial check.
        assert!(verify_vram_segment(7, 99, &seg, &vram[..4095]).is_err());
    }

    #[test]
    fn the_bo_set_spans_both_domains() {
        assert_eq!(bytes_of(Domain::Vram), (4 << 20) + (340 << 10));
        assert_eq!(bytes_of(Domain::Gtt), (3 << 20) + (132 << 10));
        assert_ne!(seed(0, 1), seed(1, 1));
        assert_ne!(seed(0, 1), seed(0, 2));
    }
}
