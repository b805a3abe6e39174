//! A client process for the hostile-client suite (`tests/hostile.rs`). The
//! suite starts it as another user (`Command::uid`) or kills it with
//! SIGKILL; it reports on stdout in one-line messages.
//!
//! Modes (the socket comes from `PDDGPU_SOCKET`):
//! - `create <size> <vram|gtt>`: create a BO, print `ok <id>` or
//!   `err <ERRNO>`, then wait for EOF on stdin.
//! - `hold-mapped <count> <size> <vram|gtt>`: create `count` BOs, map each
//!   and fill it, print `ready`, then sleep until killed.
//! - `create-map <size> <vram|gtt>`: create a BO and map it; print `ok`
//!   or `err <ERRNO>` (of the step that failed), then wait for EOF on
//!   stdin.
//! - `export <count> <size> <vram|gtt>`: create `count` BOs, write
//!   `exported <i>` at the start of BO `i`, export each and print
//!   `tokens <id>:<token> …` on one line, then wait for EOF on stdin.
//! - `cat <file>`: read a file of the scheme; print `ok <bytes>` or
//!   `err <ERRNO>`.
//! - `readonly-map`: create a BO, open a second, read-only handle on it,
//!   ask that handle for its memory descriptor and try to map it writable,
//!   and to reopen it writable through `/proc/self/fd`; print
//!   `map-rw <ok|ERRNO> reopen-rw <ok|ERRNO>`.
//! - `share-connection`: the README's fork case. Connect, create a GTT BO
//!   holding `shared`, start a child of this program (`inherit <handle>
//!   <parent pid>`)
//!   whose stdin is the same connection, print `shared <child pid>` and
//!   exit. The child waits until its parent has exited, reads the BO
//!   through the inherited connection and handle, prints `child-read
//!   <bytes|ERRNO>`, then sleeps until killed.
//! - `fill-connections <connections> <size> <vram|gtt>`: open that many
//!   connections and on each create BOs of `size` until one is refused;
//!   print `held <bytes> refused <ERRNO>` (the last refusal), then sleep
//!   until killed.
//! - `hold-connections <count>`: open up to that many connections, each
//!   with a handle on `stats`, until one is refused (a refused connect,
//!   or a refusal frame answering the open); print `held <n> refused
//!   <ERRNO|none>`, then sleep until killed.
//! - `share-self <size> <vram|gtt>`: create a BO on one connection,
//!   export it and import it on a second connection of this process;
//!   print `import <ok|ERRNO>`, then wait for EOF on stdin.
//! - `domain-map`: create a VRAM BO and ask for a descriptor of the whole
//!   domain (`dup(bo, "domain-backing")`, for the privileged only); print
//!   `domain-backing <ok|ERRNO>`.
//! - `connect-flood <count>`: connect, open `health` and close, `count`
//!   times in a row; print `served <n> refused <n> <ERRNO,…>` (the errnos
//!   of the refusals).
//! - `refusal-flood <millis>`: on one connection, open a path that does
//!   not exist as fast as the server answers for that long (each a logged
//!   refusal); print `refused <n>`.

// Tries to map a descriptor writable, as a hostile client would (the
// mapping edge).
#![allow(unsafe_code)]

use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use pddgpu_ipc::host::{HostConnection, ROOT_FD};
use pddgpu_ipc::wire::{errno_name, BoCall, BoInfoWire, DUP_BACKING, DUP_DOMAIN_BACKING};
use pddgpu_ipc::{BoFlags, Device, Domain, Error};
use syscall::flag::{O_RDONLY, O_RDWR};
use syscall::schemev2::Opcode;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_eof() {
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
}

fn domain(s: Option<&String>) -> Result<Domain, String> {
    match s.map(String::as_str) {
        Some("vram") => Ok(Domain::Vram),
        Some("gtt") => Ok(Domain::Gtt),
        _ => Err("expected vram or gtt".into()),
    }
}

fn number(s: Option<&String>, what: &str) -> Result<u64, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad or missing {what}"))
}

fn errno_text(e: &Error) -> String {
    e.errno()
        .map_or_else(|| e.to_string(), |n| errno_name(n).into())
}

fn errno_of(e: rustix::io::Errno) -> String {
    errno_name(e.raw_os_error()).to_string()
}

/// Creates a BO and tries to gain write access to it through a read-only
/// handle.
fn readonly_map() -> Result<String, String> {
    let socket = pddgpu_ipc::default_socket_path();
    let mut c = HostConnection::connect(&socket).map_err(|e| e.to_string())?;
    let request = |c: &mut HostConnection, op, args, payload: &[u8]| {
        c.request(op, args, payload, 0)
            .map_err(|e| format!("{op:?}: {e}"))
    };
    let path = b"bo/new?size=4096&domain=gtt";
    let rw = request(
        &mut c,
        Opcode::OpenAt,
        [ROOT_FD, 0, 0, O_RDWR as u64, 0, 0],
        path,
    )?
    .result()
    .map_err(|e| format!("create: {}", errno_name(e)))? as u64;
    let mut info = [0u8; BoInfoWire::SIZE];
    let reply = request(
        &mut c,
        Opcode::Call,
        [rw, 0, 0, BoCall::Info as u64, 0, 0],
        &info,
    )?;
    info.copy_from_slice(&reply.payload);
    let id = BoInfoWire::decode(&info).ok_or("bad info")?.id;
    let path = format!("bo/{id}");
    let ro = request(
        &mut c,
        Opcode::OpenAt,
        [ROOT_FD, 0, 0, O_RDONLY as u64, 0, 0],
        path.as_bytes(),
    )?
    .result()
    .map_err(|e| format!("open read-only: {}", errno_name(e)))? as u64;
    let reply = request(&mut c, Opcode::Dup, [ro, 0, 0, 0, 0, 0], DUP_BACKING)?;
    if let Err(e) = reply.result() {
        // No descriptor at all for a read-only handle is also safe.
        return Ok(format!(
            "map-rw {} reopen-rw {}",
            errno_name(e),
            errno_name(e)
        ));
    }
    let fd: OwnedFd = reply.fd.ok_or("no descriptor passed")?;
    // SAFETY: a fresh mapping chosen by the kernel, unmapped right away;
    // nothing reads or writes through it.
    let mapped = unsafe {
        rustix::mm::mmap(
            core::ptr::null_mut(),
            4096,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )
    };
    let map_rw = match mapped {
        Ok(p) => {
            // SAFETY: the mapping made just above.
            let _ = unsafe { rustix::mm::munmap(p, 4096) };
            "ok".to_string()
        }
        Err(e) => errno_of(e),
    };
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let reopen_rw = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
    {
        Ok(_) => "ok".to_string(),
        Err(e) => e
            .raw_os_error()
            .map_or_else(|| e.to_string(), |n| errno_name(n).to_string()),
    };
    Ok(format!("map-rw {map_rw} reopen-rw {reopen_rw}"))
}

/// `share-connection`: see the module docs.
fn share_connection() -> Result<String, String> {
    let socket = pddgpu_ipc::default_socket_path();
    let mut c = HostConnection::connect(&socket).map_err(|e| e.to_string())?;
    let bo = c
        .request(
            Opcode::OpenAt,
            [ROOT_FD, 0, 0, O_RDWR as u64, 0, 0],
            b"bo/new?size=65536&domain=gtt",
            0,
        )
        .map_err(|e| e.to_string())?
        .result()
        .map_err(|e| format!("create: {}", errno_name(e)))? as u64;
    c.request(Opcode::Write, [bo, 0, 0, 0, 0, 0], b"shared", 0)
        .map_err(|e| e.to_string())?
        .result()
        .map_err(|e| format!("write: {}", errno_name(e)))?;
    let shared: OwnedFd = c.stream().try_clone().map_err(|e| e.to_string())?.into();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .args(["inherit", &bo.to_string(), &std::process::id().to_string()])
        .stdin(std::process::Stdio::from(shared))
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok(format!("shared {}", child.id()))
}

/// `inherit <handle> <parent pid>`: the child half of `share-connection`.
fn inherit(handle: u64, parent: u64) -> Result<String, String> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut c = HostConnection::from_stream(std::os::unix::net::UnixStream::from(fd));
    // Parent and child must not send on one connection at once: wait for
    // the parent to exit first (it may have exited already: then this
    // process was handed to another parent).
    while rustix::process::getppid().is_some_and(|p| p.as_raw_nonzero().get() as u64 == parent) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let reply = c
        .request(Opcode::Read, [handle, 0, 0, 0, 0, 0], &[], 6)
        .map_err(|e| e.to_string())?;
    Ok(match reply.result() {
        Ok(_) => format!("child-read {}", String::from_utf8_lossy(&reply.payload)),
        Err(e) => format!("child-read {}", errno_name(e)),
    })
}

/// Creates a BO and asks for a descriptor of its whole domain.
fn domain_map() -> Result<String, String> {
    let socket = pddgpu_ipc::default_socket_path();
    let mut c = HostConnection::connect(&socket).map_err(|e| e.to_string())?;
    let bo = c
        .request(
            Opcode::OpenAt,
            [ROOT_FD, 0, 0, O_RDWR as u64, 0, 0],
            b"bo/new?size=4096&domain=vram",
            0,
        )
        .map_err(|e| e.to_string())?
        .result()
        .map_err(|e| format!("create: {}", errno_name(e)))? as u64;
    let reply = c
        .request(Opcode::Dup, [bo, 0, 0, 0, 0, 0], DUP_DOMAIN_BACKING, 0)
        .map_err(|e| e.to_string())?;
    Ok(match (reply.result(), reply.fd) {
        (Ok(_), Some(_)) => "domain-backing ok".to_string(),
        (Ok(_), None) => "domain-backing no-descriptor".to_string(),
        (Err(e), _) => format!("domain-backing {}", errno_name(e)),
    })
}

/// `fill-connections`: see the module docs. Returns what it holds (to
/// keep) and its answer.
fn fill_connections(
    connections: u64,
    size: u64,
    domain: Domain,
) -> Result<(Vec<Device>, Vec<pddgpu_ipc::Bo>, String), String> {
    let mut devices = Vec::new();
    let mut bos = Vec::new();
    let mut refused = "none".to_string();
    for _ in 0..connections {
        let dev = Device::open().map_err(|e| e.to_string())?;
        loop {
            match dev.create_bo(size, domain, BoFlags::empty()) {
                Ok(bo) => bos.push(bo),
                Err(e) => {
                    refused = errno_text(&e);
                    break;
                }
            }
        }
        devices.push(dev);
    }
    let held = bos.len() as u64 * size;
    Ok((devices, bos, format!("held {held} refused {refused}")))
}

/// `hold-connections`: see the module docs. Returns the connections (to
/// keep) and the answer.
fn hold_connections(count: u64) -> (Vec<HostConnection>, String) {
    let socket = pddgpu_ipc::default_socket_path();
    let mut held = Vec::new();
    let mut refused = "none".to_string();
    for _ in 0..count {
        let mut c = match HostConnection::connect(&socket) {
            Ok(c) => c,
            Err(e) => {
                refused = e
                    .raw_os_error()
                    .map_or("connect".into(), |n| errno_name(n).into());
                break;
            }
        };
        let opened = c
            .request(
                Opcode::OpenAt,
                [ROOT_FD, 0, 0, O_RDONLY as u64, 0, 0],
                b"stats",
                0,
            )
            .map_err(|_| "EPIPE".to_string())
            .and_then(|r| r.result().map_err(|e| errno_name(e).to_string()));
        match opened {
            Ok(_) => held.push(c),
            Err(e) => {
                refused = e;
                break;
            }
        }
    }
    let answer = format!("held {} refused {refused}", held.len());
    (held, answer)
}

/// `share-self`: see the module docs.
fn share_self(size: u64, domain: Domain) -> Result<(Vec<pddgpu_ipc::Bo>, String), String> {
    let first = Device::open().map_err(|e| e.to_string())?;
    let second = Device::open().map_err(|e| e.to_string())?;
    let bo = first
        .create_bo(size, domain, BoFlags::empty())
        .map_err(|e| format!("create: {e}"))?;
    let token = bo.export().map_err(|e| format!("export: {e}"))?;
    Ok(match second.import(token) {
        Ok(imported) => (vec![bo, imported], "import ok".to_string()),
        Err(e) => (vec![bo], format!("import {}", errno_text(&e))),
    })
}

/// Opens `path` read-only on `c`: the server's answer (a handle or an
/// errno), or the transport's failure.
fn open_read_only(c: &mut HostConnection, path: &[u8]) -> Result<Result<usize, i32>, String> {
    let reply = c
        .request(
            Opcode::OpenAt,
            [ROOT_FD, 0, 0, O_RDONLY as u64, 0, 0],
            path,
            0,
        )
        .map_err(|e| e.to_string())?;
    Ok(reply.result())
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("create") => {
            let size = number(args.get(1), "size")?;
            let domain = domain(args.get(2))?;
            let dev = Device::open().map_err(|e| e.to_string())?;
            let bo = match dev.create_bo(size, domain, BoFlags::empty()) {
                Ok(bo) => {
                    say(&format!("ok {}", bo.id()));
                    Some(bo)
                }
                Err(e) => {
                    say(&format!("err {}", errno_text(&e)));
                    None
                }
            };
            wait_eof();
            drop(bo);
            Ok(())
        }
        Some("hold-mapped") => {
            let count = number(args.get(1), "count")?;
            let size = number(args.get(2), "size")?;
            let domain = domain(args.get(3))?;
            let dev = Device::open().map_err(|e| e.to_string())?;
            let mut bos = Vec::new();
            for i in 0..count {
                let mut bo = dev
                    .create_bo(size, domain, BoFlags::empty())
                    .map_err(|e| e.to_string())?;
                bo.map().map_err(|e| e.to_string())?.fill(i as u8 | 1);
                bos.push(bo);
            }
            say("ready");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("create-map") => {
            let size = number(args.get(1), "size")?;
            let domain = domain(args.get(2))?;
            let dev = Device::open().map_err(|e| e.to_string())?;
            let mut bo = None;
            match dev.create_bo(size, domain, BoFlags::empty()) {
                Ok(mut created) => {
                    match created.map() {
                        Ok(_) => say("ok"),
                        Err(e) => say(&format!("err {}", errno_text(&e))),
                    }
                    bo = Some(created);
                }
                Err(e) => say(&format!("err {}", errno_text(&e))),
            }
            wait_eof();
            drop(bo);
            Ok(())
        }
        Some("export") => {
            let count = number(args.get(1), "count")?;
            let size = number(args.get(2), "size")?;
            let domain = domain(args.get(3))?;
            let dev = Device::open().map_err(|e| e.to_string())?;
            let mut bos = Vec::new();
            let mut line = String::from("tokens");
            for i in 0..count {
                let bo = dev
                    .create_bo(size, domain, BoFlags::empty())
                    .map_err(|e| e.to_string())?;
                bo.write_at(0, format!("exported {i}").as_bytes())
                    .map_err(|e| e.to_string())?;
                let token = bo.export().map_err(|e| e.to_string())?;
                line.push_str(&format!(" {token}"));
                bos.push(bo);
            }
            say(&line);
            wait_eof();
            drop(bos);
            Ok(())
        }
        Some("cat") => {
            let file = args.get(1).ok_or("missing file")?;
            let dev = Device::open().map_err(|e| e.to_string())?;
            match dev.read_file(file) {
                Ok(bytes) => say(&format!("ok {}", bytes.len())),
                Err(e) => say(&format!("err {}", errno_text(&e))),
            }
            Ok(())
        }
        Some("fill-connections") => {
            let connections = number(args.get(1), "connection count")?;
            let size = number(args.get(2), "size")?;
            let domain = domain(args.get(3))?;
            let (_devices, _bos, answer) = fill_connections(connections, size, domain)?;
            say(&answer);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("hold-connections") => {
            let (_held, answer) = hold_connections(number(args.get(1), "count")?);
            say(&answer);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("share-self") => {
            let size = number(args.get(1), "size")?;
            let domain = domain(args.get(2))?;
            let (bos, answer) = share_self(size, domain)?;
            say(&answer);
            wait_eof();
            drop(bos);
            Ok(())
        }
        Some("readonly-map") => {
            say(&readonly_map()?);
            Ok(())
        }
        Some("domain-map") => {
            say(&domain_map()?);
            Ok(())
        }
        Some("connect-flood") => {
            let count = number(args.get(1), "count")?;
            let socket = pddgpu_ipc::default_socket_path();
            let (mut served, mut refused) = (0u64, std::collections::BTreeSet::new());
            let mut refusals = 0u64;
            for _ in 0..count {
                let mut c = HostConnection::connect(&socket).map_err(|e| e.to_string())?;
                match open_read_only(&mut c, b"health")? {
                    Ok(_) => served += 1,
                    Err(e) => {
                        refusals += 1;
                        refused.insert(errno_name(e));
                    }
                }
            }
            let names: Vec<&str> = refused.into_iter().collect();
            say(&format!(
                "served {served} refused {refusals} {}",
                names.join(",")
            ));
            Ok(())
        }
        Some("refusal-flood") => {
            let millis = number(args.get(1), "millis")?;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(millis);
            let socket = pddgpu_ipc::default_socket_path();
            let mut c = HostConnection::connect(&socket).map_err(|e| e.to_string())?;
            let mut refused = 0u64;
            while std::time::Instant::now() < until {
                if open_read_only(&mut c, b"no/such/file")?.is_err() {
                    refused += 1;
                }
            }
            say(&format!("refused {refused}"));
            Ok(())
        }
        Some("share-connection") => {
            say(&share_connection()?);
            Ok(())
        }
        Some("inherit") => {
            say(&inherit(
                number(args.get(1), "handle")?,
                number(args.get(2), "parent pid")?,
            )?);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => Err(
            "usage: create SIZE DOMAIN | create-map SIZE DOMAIN | export COUNT SIZE DOMAIN | cat FILE \
             | hold-mapped COUNT SIZE DOMAIN | fill-connections N SIZE DOMAIN | hold-connections N \
             | share-self SIZE DOMAIN | readonly-map | domain-map | share-connection \
             | connect-flood COUNT | refusal-flood MILLIS"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("failed {e}"));
            ExitCode::FAILURE
        }
    }
}
