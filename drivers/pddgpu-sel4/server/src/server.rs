//! The server: answers the clients' IPC requests with the driver core.
//!
//! Each request arrives on the one endpoint with the badge of the client's
//! endpoint capability, which the root task minted and the client can
//! neither see nor change; the badge is the client's owner id in the core.
//! So the core's ownership rules (a BO is touched only by its holders)
//! are enforced by the kernel's delivery, with nothing the client says
//! about itself involved.
//!
//! Errors are answered with the scheme's errno for the same driver error
//! (`errno` below is `scheme/src/errno.rs`, compiled here too).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pddgpu::driver::{BoCreate, BoFlags, BoId, Domain, Driver, DriverError, ExitSummary};
use pddgpu_sel4_proto::{
    errno as codes, pattern, slots, DecodeError, Request, FAULT_BADGE, PAGE_SIZE, TEXT_MAX,
};

use crate::clock::now_ms;
use crate::frames::{Frames, FRAME};
use crate::objects::root_path;
use crate::spawn::Process;
use crate::verdict::note;

/// The scheme's mapping of driver errors to errnos, the same file.
#[path = "../../../../scheme/src/errno.rs"]
mod errno;

/// A client as the server knows it.
pub struct Client {
    /// 1-based, in start order.
    pub number: u64,
    /// Its badge: its owner id in the core.
    pub badge: u64,
    /// Its address space and capabilities (taken when it is destroyed).
    pub process: Option<Process>,
    /// Next free frame slot in its CNode.
    next_slot: usize,
    /// BO id -> the frame slots given for it.
    mapped: BTreeMap<u64, (usize, usize)>,
    /// How its script ended: `Some(holding)` after `Done`.
    pub done: Option<bool>,
    /// The fault that stopped it, if one did: `(description, address)`.
    pub fault: Option<(String, u64)>,
    /// Once destroyed: how many BOs it held then, and what the core's
    /// `owner_exit` released.
    pub exit: Option<(u64, ExitSummary)>,
    /// Requests refused because they named a BO it does not hold.
    pub refused: u64,
}

impl Client {
    /// A started client.
    pub fn new(number: u64, badge: u64, process: Process) -> Self {
        Self {
            number,
            badge,
            process: Some(process),
            next_slot: slots::FIRST_FRAME,
            mapped: BTreeMap::new(),
            done: None,
            fault: None,
            exit: None,
            refused: 0,
        }
    }

    /// BOs it has been given frames of.
    pub fn mapped_bos(&self) -> usize {
        self.mapped.len()
    }
}

/// The device memory whose frames BOs are made of, per domain.
pub struct Backing<'a> {
    /// VRAM frames (the server's mapping of them is the core's VRAM).
    pub vram: &'a Frames,
    /// GTT frames.
    pub gtt: &'a Frames,
}

impl Backing<'_> {
    fn frames(&self, domain: Domain) -> &Frames {
        match domain {
            Domain::Vram => self.vram,
            Domain::Gtt => self.gtt,
        }
    }
}

/// Why serving stopped early.
pub struct ClientFailed {
    /// The client.
    pub number: u64,
    /// What it said.
    pub reason: String,
}

/// What one request asks the loop to do next.
enum Answer {
    /// Reply with label 0 and these words.
    Ok(Vec<u64>),
    /// Reply with this errno.
    Err(u64),
    /// Do not reply (the client is done or gave up).
    None,
}

/// Serves requests until every client has sent `Done` or faulted, or
/// one sent `Fail`. A fault arrives as a message from the kernel with the
/// client's fault badge: the client is dead — it is destroyed and its BOs
/// are released at once, and the others are served on.
pub fn serve(
    driver: &Driver,
    backing: &Backing<'_>,
    endpoint: sel4::cap::Endpoint,
    clients: &mut [Client],
) -> Result<(), ClientFailed> {
    while clients
        .iter()
        .any(|c| c.done.is_none() && c.fault.is_none())
    {
        let (info, badge) = endpoint.recv(());
        let owner = badge & !FAULT_BADGE;
        let Some(client) = clients.iter_mut().find(|c| c.badge == owner) else {
            note(format_args!(
                "message with unknown badge {badge:#x} ignored"
            ));
            continue;
        };
        if badge & FAULT_BADGE != 0 {
            let fault = sel4::with_ipc_buffer(|b| sel4::Fault::new(b, &info));
            let address = match &fault {
                sel4::Fault::VmFault(f) => f.inner().get_Addr(),
                _ => 0,
            };
            let text = format!("{fault:?}");
            let kind = String::from(text.split(['(', ' ']).next().unwrap_or("fault"));
            client.fault = Some((text, address));
            let (held, summary) = reap(driver, client).map_err(|e| ClientFailed {
                number: client.number,
                reason: format!("destroying it after its {kind}: {e:?}"),
            })?;
            note(format_args!(
                "{} faulted ({kind} at {address:#x}): destroyed; {} of its {held} BOs freed in one batch",
                describe(client),
                summary.freed
            ));
            continue;
        }
        let len = info.length();
        let regs: Vec<u64> = sel4::with_ipc_buffer(|b| b.msg_regs()[..len].to_vec());
        let answer = match Request::decode(info.label(), &regs) {
            Ok(Request::Fail) => {
                return Err(ClientFailed {
                    number: client.number,
                    reason: message_text(len),
                });
            }
            Ok(Request::Say) => {
                note(format_args!(
                    "client {} says: {}",
                    client.number,
                    message_text(len)
                ));
                Answer::Ok(Vec::new())
            }
            Ok(request) => handle(driver, backing, client, request),
            Err(error) => {
                refuse(client, &error);
                Answer::Err(codes::EINVAL as u64)
            }
        };
        let reply = match answer {
            Answer::Ok(words) => {
                sel4::with_ipc_buffer_mut(|b| {
                    b.msg_regs_mut()[..words.len()].copy_from_slice(&words)
                });
                sel4::MessageInfo::new(0, 0, 0, words.len())
            }
            Answer::Err(errno) => sel4::MessageInfo::new(errno, 0, 0, 0),
            Answer::None => continue,
        };
        sel4::with_ipc_buffer_mut(|b| sel4::reply(b, reply));
    }
    Ok(())
}

/// The text of a `Fail` or `Say` message of `len` words: at most
/// [`TEXT_MAX`] bytes up to the first zero, anything but printable ASCII
/// shown as `?`, so a client cannot break or forge console lines.
fn message_text(len: usize) -> String {
    sel4::with_ipc_buffer(|b| {
        let bytes = &b.msg_bytes()[..(len * 8).min(TEXT_MAX)];
        bytes
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| {
                if (b' '..=b'~').contains(&c) {
                    c as char
                } else {
                    '?'
                }
            })
            .collect()
    })
}

/// One bounded log line per malformed request.
fn refuse(client: &Client, error: &DecodeError) {
    note(format_args!(
        "client {}: malformed request refused (EINVAL): {error}",
        client.number
    ));
}

fn errno_of(error: &DriverError) -> u64 {
    errno::driver_errno(error) as u64
}

fn handle(driver: &Driver, backing: &Backing<'_>, client: &mut Client, request: Request) -> Answer {
    let owner = client.badge;
    let result = match request {
        Request::Hello => Ok(alloc::vec![
            client.number,
            driver.tunables().client_quota().unwrap_or(0)
        ]),
        Request::Create {
            size,
            domain,
            flags,
            align,
        } => create(driver, owner, size, domain, flags, align),
        Request::Free { bo } => free(driver, client, bo),
        Request::Info { bo } => driver
            .bo_info(owner, BoId(bo))
            .map(|i| {
                alloc::vec![
                    i.domain.index() as u64,
                    i.size,
                    i.allocated_size,
                    i.flags.bits().into(),
                    i.owner,
                    i.refcount.into()
                ]
            })
            .map_err(|err| errno_of(&err)),
        Request::Stats => {
            let s = driver.stats();
            Ok(alloc::vec![
                s.vram.bo_count,
                s.vram.requested_bytes,
                s.vram.allocated_bytes,
                s.gtt.bo_count,
                s.gtt.requested_bytes,
                s.gtt.allocated_bytes
            ])
        }
        Request::LeakCheck => {
            let report = driver.leak_check(now_ms());
            Ok(alloc::vec![
                report.is_clean().into(),
                report.live_bos,
                report.suspects.len() as u64
            ])
        }
        Request::Recover { domain } => driver
            .recover(domain)
            .map(|()| Vec::new())
            .map_err(|err| errno_of(&err)),
        Request::Map { bo } => map(driver, backing, client, bo),
        Request::Verify { bo, seed } => verify(driver, owner, bo, seed),
        Request::Done { holding } => {
            client.done = Some(holding);
            return Answer::None;
        }
        Request::Fail | Request::Say => unreachable!("handled by serve"),
    };
    match result {
        Ok(words) => Answer::Ok(words),
        Err(errno) => {
            if errno == codes::EPERM as u64 || errno == codes::EBADF as u64 {
                client.refused += 1;
            }
            Answer::Err(errno)
        }
    }
}

/// Creates a BO. Every BO is zeroed (clients distrust each other) and
/// page-aligned, so each page belongs to one BO and can be handed out as a
/// frame; an alignment that is not a power of two is passed on for the
/// core to refuse.
fn create(
    driver: &Driver,
    owner: u64,
    size: u64,
    domain: Domain,
    flags: BoFlags,
    align: u64,
) -> Result<Vec<u64>, u64> {
    let align = if align.is_power_of_two() || align == 0 {
        align.max(PAGE_SIZE)
    } else {
        align
    };
    let request = BoCreate {
        size,
        domain,
        flags: flags | BoFlags::CLEARED,
        align,
        label: "sel4-client",
    };
    driver
        .bo_create(owner, &request, now_ms())
        .map(|id| alloc::vec![id.0])
        .map_err(|err| errno_of(&err))
}

/// Frees the caller's BO: first its frames are taken back from the
/// caller's CNode (deleting a mapped frame capability unmaps it), then the
/// core drops the reference.
fn free(driver: &Driver, client: &mut Client, bo: u64) -> Result<Vec<u64>, u64> {
    driver
        .bo_info(client.badge, BoId(bo))
        .map_err(|err| errno_of(&err))?;
    take_back(client, bo).map_err(|_| codes::EIO as u64)?;
    driver
        .bo_unref(client.badge, BoId(bo))
        .map_err(|err| errno_of(&err))?;
    Ok(Vec::new())
}

/// Deletes the frame capabilities given to `client` for `bo`.
fn take_back(client: &mut Client, bo: u64) -> sel4::Result<()> {
    let Some((first, pages)) = client.mapped.remove(&bo) else {
        return Ok(());
    };
    let Some(process) = &client.process else {
        return Ok(());
    };
    for slot in first..first + pages {
        process.slot(slot).delete()?;
    }
    Ok(())
}

/// Copies the frames of the caller's BO into the caller's CNode.
fn map(
    driver: &Driver,
    backing: &Backing<'_>,
    client: &mut Client,
    bo: u64,
) -> Result<Vec<u64>, u64> {
    let info = driver
        .bo_info(client.badge, BoId(bo))
        .map_err(|err| errno_of(&err))?;
    if let Some(&(first, pages)) = client.mapped.get(&bo) {
        return Ok(alloc::vec![first as u64, pages as u64]);
    }
    let frames = backing.frames(info.domain);
    let mut pages = Vec::new();
    for &(_, at, len) in &info.segments {
        if at % FRAME as u64 != 0 {
            return Err(codes::EINVAL as u64);
        }
        let first = (at / FRAME as u64) as usize;
        pages.extend(first..first + (len as usize).div_ceil(FRAME));
    }
    if pages.iter().any(|&p| p >= frames.pages()) {
        return Err(codes::EIO as u64);
    }
    let first = client.next_slot;
    if first + pages.len() > slots::END_FRAME {
        return Err(codes::ENOSPC as u64);
    }
    let Some(process) = &client.process else {
        return Err(codes::EIO as u64);
    };
    for (i, &page) in pages.iter().enumerate() {
        process
            .slot(first + i)
            .copy(&root_path(frames.slot(page)), sel4::CapRights::read_write())
            .map_err(|_| codes::EIO as u64)?;
    }
    client.next_slot += pages.len();
    client.mapped.insert(bo, (first, pages.len()));
    Ok(alloc::vec![first as u64, pages.len() as u64])
}

/// Reads the caller's BO through the server's own mapping and compares it
/// with the pattern of `seed`.
fn verify(driver: &Driver, owner: u64, bo: u64, seed: u64) -> Result<Vec<u64>, u64> {
    let info = driver
        .bo_info(owner, BoId(bo))
        .map_err(|err| errno_of(&err))?;
    let mut chunk = alloc::vec![0u8; 16 << 10];
    let mut at = 0u64;
    while at < info.size {
        let n = driver
            .bo_read(owner, BoId(bo), at, &mut chunk)
            .map_err(|err| errno_of(&err))?;
        if n == 0 {
            return Err(codes::EIO as u64);
        }
        if chunk[..n]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != pattern(seed, at + i as u64))
        {
            return Err(codes::EIO as u64);
        }
        at += n as u64;
    }
    Ok(Vec::new())
}

/// `client 2 (badge 0x102)`.
pub fn describe(client: &Client) -> String {
    format!("client {} (badge {:#x})", client.number, client.badge)
}

/// Destroys `client` (its TCB, CNode — with the endpoints and every BO
/// frame it was given, which unmaps them —, VSpace and tables) and has the
/// core release everything it owned in one batch. Returns how many BOs it
/// held and the core's summary.
pub fn reap(driver: &Driver, client: &mut Client) -> sel4::Result<(u64, ExitSummary)> {
    let held = driver.owner_bos(client.badge).len() as u64;
    if let Some(process) = client.process.take() {
        let tcb = process.tcb;
        process.destroy()?;
        // The TCB object is gone: invoking its old slot fails.
        if tcb.tcb_suspend().is_ok() {
            return Err(sel4::Error::RevokeFirst);
        }
    }
    client.mapped.clear();
    let summary = driver.owner_exit(client.badge);
    client.exit = Some((held, summary));
    Ok((held, summary))
}
