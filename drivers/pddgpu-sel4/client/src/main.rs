//! # pddgpu-sel4-client — a client of the pddgpu seL4 server
//!
//! Started by the root task in its own VSpace and CSpace. Its CNode holds
//! the badged endpoint to the server, its own CNode and VSpace roots, and
//! whatever BO frames the server copies in; nothing else. The script:
//! hostile requests first (each must fail with the scheme's errno), then
//! BOs in both domains — created, described, mapped through the frames the
//! server gives, filled with a pattern the server verifies — then attacks
//! on every other BO id, statistics, the leak check and a refused
//! recovery. Client 1 frees its BOs and checks their frames were taken
//! back; client 2 ends holding its BOs, for the root task to destroy it;
//! client 3 reads a BO it freed through its old mapping and is stopped by
//! the kernel with a VM fault while holding another BO.
//!
//! Progress lines are sent to the server (`Say`), which prints them whole
//! as `pddgpu-sel4: client <n> says: …`; a failure is sent to the server
//! (`Fail`), which prints the verdict.
#![no_std]
#![no_main]

extern crate alloc;

mod mapping;
mod rpc;
mod runtime;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pddgpu::driver::{BoFlags, Domain};
use pddgpu_sel4_proto::{errno, pattern, slots, Op, Request, PAGE_SIZE};

use mapping::Window;
use rpc::call;

/// Ids the attack tries besides the client's own: every id the server can
/// have handed out by then (ids count up from 1, two per client so far).
const ATTACK_IDS: u64 = 64;

fn main() -> ! {
    let (number, quota) = match call(Request::Hello) {
        Ok(r) => (r[0], r[1]),
        Err(e) => rpc::fail(&format!("hello refused with errno {e}")),
    };
    if number == 3 {
        let Err(reason) = use_after_free(number);
        rpc::fail(&format!("client {number}: {reason}"));
    }
    match script(number, quota) {
        Ok(holding) => {
            say(number, "done");
            let _ = call(Request::Done { holding });
            unreachable!("the server answered Done")
        }
        Err(reason) => rpc::fail(&format!("client {number}: {reason}")),
    }
}

/// A progress line; the server prints it (with the client's number, which
/// it knows from the badge).
fn say(_number: u64, text: &str) {
    rpc::say(text);
}

/// One BO of the script.
struct Bo {
    id: u64,
    size: u64,
    seed: u64,
}

/// Runs the script; returns whether the client ends holding BOs.
fn script(number: u64, quota: u64) -> Result<bool, String> {
    hostile_requests()?;
    say(number, "malformed requests refused");

    let vram_flags = BoFlags::CONTIGUOUS | BoFlags::VISIBLE | BoFlags::CLEARED;
    let mut bos = Vec::new();
    for (size, domain, flags) in [
        (256 << 10, Domain::Vram, vram_flags),
        (64 << 10, Domain::Gtt, BoFlags::CLEARED),
    ] {
        let id = call(Request::Create {
            size,
            domain,
            flags,
            align: 0,
        })
        .map_err(|e| format!("create {size} B in {domain}: errno {e}"))?[0];
        let info =
            call(Request::Info { bo: id }).map_err(|e| format!("info of BO {id}: errno {e}"))?;
        check(
            info[0] == domain.index() as u64 && info[1] == size && info[2] >= size,
            format!("BO {id} described as {:?}", &info[..3]),
        )?;
        bos.push(Bo {
            id,
            size,
            seed: number << 32 | id,
        });
    }
    say(
        number,
        &format!("created BOs {} (VRAM) and {} (GTT)", bos[0].id, bos[1].id),
    );

    let mut window = Window::new();
    let mut mapped = Vec::new();
    for bo in &bos {
        let r =
            call(Request::Map { bo: bo.id }).map_err(|e| format!("map BO {}: errno {e}", bo.id))?;
        let (first_slot, pages) = (r[0] as usize, r[1] as usize);
        check(
            pages as u64 == bo.size.div_ceil(PAGE_SIZE),
            format!("BO {} of {} B came as {pages} frames", bo.id, bo.size),
        )?;
        let m = window
            .map(first_slot, pages)
            .map_err(|e| format!("mapping the frames of BO {}: {e:?}", bo.id))?;
        mapping::fill(&m, bo.size, |i| pattern(bo.seed, i));
        call(Request::Verify {
            bo: bo.id,
            seed: bo.seed,
        })
        .map_err(|e| {
            format!(
                "the server did not find the pattern in BO {}: errno {e}",
                bo.id
            )
        })?;
        expect_errno(
            "verify with another seed",
            call(Request::Verify {
                bo: bo.id,
                seed: !bo.seed,
            }),
            &[errno::EIO as u64],
        )?;
        mapped.push(m);
    }
    say(
        number,
        "patterns written through the mapped frames and verified by the server",
    );
    if number == 1 {
        // Memory it was not given: empty slots, its VSpace root, and the
        // slot after its last frame. (The endpoint slots are not tried:
        // invoking an endpoint is a message to the server, not a map.)
        let next = mapped
            .last()
            .map_or(slots::FIRST_FRAME, |m| m.first_slot + m.pages);
        for slot in [0, 2, slots::VSPACE, slots::FIRST_FRAME - 1, next] {
            check(
                window.map(slot, 1).is_err(),
                format!("slot {slot} mapped as memory although the server put no frame there"),
            )?;
        }
        say(
            number,
            "no memory mapped from slots the server gave no frame",
        );
    }

    exhaust(number, quota, bos.iter().map(|b| b.size).sum())?;

    let own: Vec<u64> = bos.iter().map(|b| b.id).collect();
    let mut refused = 0;
    for id in (1..=ATTACK_IDS).filter(|id| !own.contains(id)) {
        for request in [
            Request::Info { bo: id },
            Request::Map { bo: id },
            Request::Verify { bo: id, seed: 0 },
            Request::Free { bo: id },
        ] {
            expect_errno(
                "a request on a BO this client does not hold",
                call(request),
                &[errno::EPERM as u64, errno::EBADF as u64],
            )?;
            refused += 1;
        }
    }
    say(number, &format!("{refused} requests on other ids refused"));

    let stats = call(Request::Stats).map_err(|e| format!("stats: errno {e}"))?;
    check(
        stats[0] >= 1 && stats[3] >= 1 && stats[1] >= bos[0].size,
        format!("stats miss this client's BOs: {:?}", &stats[..6]),
    )?;
    call(Request::LeakCheck).map_err(|e| format!("leak check: errno {e}"))?;
    expect_errno(
        "recovering a healthy domain",
        call(Request::Recover {
            domain: Domain::Vram,
        }),
        &[errno::EBUSY as u64],
    )?;

    if number == 1 {
        for (bo, m) in bos.iter().zip(&mapped) {
            call(Request::Free { bo: bo.id })
                .map_err(|e| format!("free BO {}: errno {e}", bo.id))?;
            // The first and last frame slot (each probe of an empty slot
            // is a line on the debug kernel's console).
            check(
                [m.first_slot, m.first_slot + m.pages - 1]
                    .into_iter()
                    .all(|s| !mapping::holds_frame(s)),
                format!("BO {} freed but its frames are still in this CNode", bo.id),
            )?;
            expect_errno(
                "a freed BO",
                call(Request::Info { bo: bo.id }),
                &[errno::EBADF as u64, errno::EPERM as u64],
            )?;
        }
        say(
            number,
            "BOs freed; their frame capabilities are gone from this CNode",
        );
        Ok(false)
    } else {
        say(number, "keeping its BOs");
        Ok(true)
    }
}

/// The crashing client: holds a GTT BO, frees a mapped VRAM BO and then
/// reads the freed BO's old mapping. The server took the frames back at
/// free, so the kernel stops this thread with a VM fault and tells the
/// server; returning at all is the failure.
fn use_after_free(number: u64) -> Result<core::convert::Infallible, String> {
    let mut window = Window::new();
    let mut mapped = Vec::new();
    for (size, domain) in [(64 << 10, Domain::Vram), (64 << 10, Domain::Gtt)] {
        let id = call(Request::Create {
            size,
            domain,
            flags: BoFlags::CLEARED,
            align: 0,
        })
        .map_err(|e| format!("create in {domain}: errno {e}"))?[0];
        let r = call(Request::Map { bo: id }).map_err(|e| format!("map BO {id}: errno {e}"))?;
        let m = window
            .map(r[0] as usize, r[1] as usize)
            .map_err(|e| format!("mapping BO {id}: {e:?}"))?;
        mapping::fill(&m, size, |i| pattern(number, i));
        call(Request::Verify {
            bo: id,
            seed: number,
        })
        .map_err(|e| format!("verify BO {id}: errno {e}"))?;
        mapped.push((id, m));
    }
    let (victim, m) = mapped[0];
    call(Request::Free { bo: victim }).map_err(|e| format!("free BO {victim}: errno {e}"))?;
    say(
        number,
        &format!(
            "holding one BO, reading freed BO {victim} at its old address {:#x}",
            m.base
        ),
    );
    let byte = mapping::read_revoked(&m);
    Err(format!(
        "read {byte:#x} from freed BO {victim}'s old mapping: the frames were not taken back"
    ))
}

/// Creates 1 MiB VRAM BOs until the quota refuses one (`EDQUOT`) — after
/// exactly as many as fit beside the `held` bytes — then frees them: one
/// client cannot take the device's memory from the others.
fn exhaust(number: u64, quota: u64, held: u64) -> Result<(), String> {
    const STEP: u64 = 1 << 20;
    check(
        quota > held,
        format!("quota {quota} B is not above the {held} B held"),
    )?;
    let fits = (quota - held) / STEP;
    let mut extra = Vec::new();
    let refused = loop {
        let r = call(Request::Create {
            size: STEP,
            domain: Domain::Vram,
            flags: BoFlags::CLEARED,
            align: 0,
        });
        match r {
            Ok(r) if (extra.len() as u64) < fits => extra.push(r[0]),
            Ok(_) => break None,
            Err(e) => break Some(e),
        }
    };
    check(
        refused == Some(errno::EDQUOT as u64) && extra.len() as u64 == fits,
        format!(
            "{} BOs of 1 MiB created before the quota of {quota} B refused one \
             (expected {fits}, then EDQUOT; got {refused:?})",
            extra.len()
        ),
    )?;
    for id in extra {
        call(Request::Free { bo: id }).map_err(|e| format!("free BO {id}: errno {e}"))?;
    }
    say(
        number,
        &format!("quota: {fits} more MiB BOs fit in {quota} B, the next got EDQUOT"),
    );
    Ok(())
}

/// Requests no well-behaved client sends; each must be refused with
/// `EINVAL` and change nothing.
fn hostile_requests() -> Result<(), String> {
    let einval = [errno::EINVAL as u64];
    expect_errno("an unknown operation", rpc::call_raw(99, &[]), &einval)?;
    expect_errno(
        "a short create",
        rpc::call_raw(Op::Create as u64, &[4096]),
        &einval,
    )?;
    expect_errno(
        "domain 7",
        rpc::call_raw(Op::Create as u64, &[4096, 7, 0, 0]),
        &einval,
    )?;
    expect_errno(
        "unknown flag bits",
        rpc::call_raw(Op::Create as u64, &[4096, 0, 1 << 20, 0]),
        &einval,
    )?;
    for (size, align) in [(0, 0), (4096, 3), (u64::MAX, 0)] {
        let r = call(Request::Create {
            size,
            domain: Domain::Gtt,
            flags: BoFlags::empty(),
            align,
        });
        expect_errno(
            "a create with a bad size or alignment",
            r,
            &[
                errno::EINVAL as u64,
                errno::ENOSPC as u64,
                errno::EAGAIN as u64,
            ],
        )?;
    }
    Ok(())
}

fn check(ok: bool, otherwise: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(otherwise)
    }
}

fn expect_errno(what: &str, reply: rpc::Reply, allowed: &[u64]) -> Result<(), String> {
    match reply {
        Err(e) if allowed.contains(&e) => Ok(()),
        Err(e) => Err(format!("{what}: errno {e}, expected one of {allowed:?}")),
        Ok(r) => Err(format!("{what} was accepted (reply {:?})", &r[..2])),
    }
}
