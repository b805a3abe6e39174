//! The whole `pddgpu:` scheme in process, a fresh scheme per input over one
//! simulated device that every input must leave empty, driven through redox-scheme's dispatch by four fake clients the
//! way the kernel (or the host transport) drives it: each client names only
//! handles it opened, and a client that dies has all of its handles closed
//! at once. Client 0 is privileged (uid 0); the others are ordinary users.
//!
//! The input is a program: each step picks a client and an operation
//! (open a known or fuzzed path, close, read, write, call, dup, fstat,
//! fpath, fsize, getdents, mmap_prep, import another client's export, die).
//! Nothing may panic, and once every client is gone the device must be
//! empty again: no BO, no byte in use, a clean leak audit, `health` ok.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::Driver;
use pddgpu_ipc::host::HostScheme;
use pddgpu_ipc::wire::{BoCall, ExportWire, ShareToken};
use pddgpu_scheme::{Backing, PddgpuScheme, Region, SchemeOptions, ROOT_ID};
use redox_scheme::{Request, RequestKind, Response};
use syscall::error::Error;
use syscall::flag::{MapFlags, O_DIRECTORY, O_RDONLY, O_RDWR, O_WRONLY};
use syscall::schemev2::{Cqe, Opcode, Sqe, SqeFlags};

const CLIENTS: usize = 4;

/// Paths a client opens often (the fuzzer also builds its own).
const PATHS: &[&str] = &[
    "bo/new?size=4096&domain=vram",
    "bo/new?size=100&domain=gtt&align=1",
    "bo/new?size=512K&domain=vram&flags=contiguous",
    "bo/new?size=64K&domain=gtt&flags=topdown&label=fz",
    "bo/new?size=768K&domain=vram&flags=visible",
    "bo/new?size=2M&domain=gtt",
    "bo/",
    "",
    "stats",
    "stats.json",
    "leaks.json",
    "clients.json",
    "health",
    "vram",
    "gtt",
    "state",
    "control",
    "config",
    "config/client_quota_bytes",
    "config/gtt_retry_count",
    "bo/1",
    "bo/2",
];

/// Texts written to files (control commands and tunable values among them).
const WRITES: &[&[u8]] = &[
    b"leak-check",
    b"recover vram",
    b"recover all",
    b"shutdown",
    b"fault error",
    b"65536",
    b"0",
    b"1",
    b"bogus",
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        // Mostly small numbers, sometimes any 64 bits.
        let b = self.byte()?;
        if b & 0x80 == 0 {
            return Some(u64::from(b) * 4096 / 8);
        }
        let mut v = 0u64;
        for _ in 0..8 {
            v = v << 8 | u64::from(self.byte().unwrap_or(0));
        }
        Some(v)
    }

    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = (self.byte().unwrap_or(0) as usize)
            .min(max)
            .min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// The device and driver, made once per fuzzing process: every input
/// starts from an empty device (each one ends by checking that it is empty
/// again) with every tunable back at its default, behind a fresh scheme.
struct Device {
    sim: SimDevice,
    driver: Arc<Driver>,
}

thread_local! {
    static DEVICE: Device = {
        let sim = SimDevice::new(SimConfig {
            vram_size: 2 << 20,
            visible_size: 1 << 20,
            gtt_size: 2 << 20,
        })
        .expect("simulated device");
        let driver = Arc::new(Driver::new(sim.resources(), 0).expect("driver"));
        Device { sim, driver }
    };
}

struct Server {
    scheme: PddgpuScheme,
    driver: Arc<Driver>,
    vram: (usize, usize),
    gtt: (usize, usize),
    handles: [Vec<usize>; CLIENTS],
    tokens: Vec<ShareToken>,
}

impl Server {
    fn new(device: &Device) -> Server {
        let tunables = device.driver.tunables();
        for spec in tunables.specs() {
            tunables
                .set(spec.name, &spec.default.to_string())
                .expect("a default is always allowed");
        }
        let vram = (device.sim.vram().as_ptr() as usize, device.sim.vram().len());
        let gtt = (device.sim.gtt().as_ptr() as usize, device.sim.gtt().len());
        let backing = Backing::new(
            Region::kernel_mapped(vram.0),
            Region::kernel_mapped(gtt.0),
        );
        let scheme = PddgpuScheme::new(
            device.driver.clone(),
            backing,
            SchemeOptions::default(),
        );
        Server {
            scheme,
            driver: device.driver.clone(),
            vram,
            gtt,
            handles: Default::default(),
            tokens: Vec::new(),
        }
    }

    /// One request of `client`, through redox-scheme's dispatch.
    fn run(&mut self, client: usize, opcode: Opcode, args: [u64; 6]) -> Result<usize, i32> {
        let uid = if client == 0 { 0 } else { 1000 + client as u64 };
        let mut args = args;
        if !matches!(opcode, Opcode::Call) {
            args[5] = uid | uid << 32;
        }
        let sqe = Sqe {
            opcode: opcode as u8,
            sqe_flags: SqeFlags::empty(),
            _rsvd: 0,
            tag: 1,
            args,
            caller: 100 + client as u64,
        };
        // SAFETY: `Request` is `#[repr(transparent)]` over `Sqe`; every
        // pointer in `args` points at a live buffer of the caller of `run`
        // with its exact length, and paths are UTF-8.
        let req: Request = unsafe { std::mem::transmute::<Sqe, Request>(sqe) };
        let resp: Response = match req.kind() {
            RequestKind::Call(c) => c.handle_sync(&mut self.scheme),
            _ => unreachable!("every opcode used here is a call"),
        };
        // SAFETY: `Response` is `#[repr(transparent)]` over `Cqe`.
        let cqe: Cqe = unsafe { std::mem::transmute::<Response, Cqe>(resp) };
        if cqe.flags == syscall::schemev2::CqeOpcode::RespondWithFd as u8 {
            // A descriptor the scheme handed out (none exist on this
            // backing, but close one if it ever appears).
            drop(unsafe {
                // SAFETY: the scheme moved ownership of this descriptor to
                // the caller with `OpenResult::OtherScheme`.
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(cqe.result as i32)
            });
            return Ok(0);
        }
        Error::demux(cqe.result as usize).map_err(|e| e.errno)
    }

    fn open(&mut self, client: usize, dir: usize, path: &str, flags: usize) {
        let args = [
            dir as u64,
            path.as_ptr() as u64,
            path.len() as u64,
            flags as u64,
            0,
            0,
        ];
        if let Ok(id) = self.run(client, Opcode::OpenAt, args) {
            self.handles[client].push(id);
        }
    }

    fn pick(&self, client: usize, b: u8) -> Option<usize> {
        let hs = &self.handles[client];
        (!hs.is_empty()).then(|| hs[b as usize % hs.len()])
    }

    fn step(&mut self, input: &mut Input<'_>) -> Option<()> {
        let client = input.byte()? as usize % CLIENTS;
        let op = input.byte()?;
        let which = input.byte()?;
        let flags = [O_RDWR, O_RDONLY, O_WRONLY, O_RDONLY | O_DIRECTORY][(op >> 4) as usize % 4];
        match op % 16 {
            0 | 1 => {
                let path = PATHS[which as usize % PATHS.len()];
                self.open(client, ROOT_ID, path, flags);
            }
            2 => {
                let raw = input.bytes(200);
                let path = String::from_utf8_lossy(raw).into_owned();
                self.open(client, ROOT_ID, &path, flags);
            }
            3 => {
                if let Some(id) = self.pick(client, which) {
                    self.handles[client].retain(|&h| h != id);
                    redox_scheme::scheme::SchemeSync::on_close(&mut self.scheme, id);
                }
            }
            4 => {
                let id = self.pick(client, which)?;
                let offset = input.u64()?;
                let mut buf = vec![0u8; (input.byte()? as usize) * 64];
                let args = [
                    id as u64,
                    buf.as_mut_ptr() as u64,
                    buf.len() as u64,
                    offset,
                    0,
                    0,
                ];
                let _ = self.run(client, Opcode::Read, args);
            }
            5 => {
                let id = self.pick(client, which)?;
                let offset = input.u64()?;
                let data = match input.byte()? % 3 {
                    0 => WRITES[which as usize % WRITES.len()].to_vec(),
                    _ => input.bytes(255).to_vec(),
                };
                let args = [
                    id as u64,
                    data.as_ptr() as u64,
                    data.len() as u64,
                    offset,
                    0,
                    0,
                ];
                let _ = self.run(client, Opcode::Write, args);
            }
            6 => {
                let id = self.pick(client, which)?;
                let op = u64::from(input.byte()? % 5);
                let start = input.u64()?;
                let mut payload = vec![0u8; input.byte()? as usize % 130];
                let args = [
                    id as u64,
                    payload.as_mut_ptr() as u64,
                    payload.len() as u64,
                    op,
                    start,
                    0,
                ];
                let _ = self.run(client, Opcode::Call, args);
            }
            7 => {
                // Export properly, keeping the token for another client.
                let id = self.pick(client, which)?;
                let mut payload = [0u8; ExportWire::SIZE];
                let args = [
                    id as u64,
                    payload.as_mut_ptr() as u64,
                    payload.len() as u64,
                    BoCall::Export as u64,
                    0,
                    0,
                ];
                if self.run(client, Opcode::Call, args).is_ok() {
                    if let Some(w) = ExportWire::decode(&payload) {
                        self.tokens.push(ShareToken {
                            id: w.id,
                            token: w.token,
                        });
                    }
                }
            }
            8 => {
                // Import a token, possibly with a byte of it changed.
                let mut token = *self.tokens.get(which as usize % self.tokens.len().max(1))?;
                let tweak = input.byte()?;
                if tweak & 1 == 1 {
                    // One bit of one byte (bits 1-3 pick the bit, 4-7 the byte).
                    token.token[usize::from(tweak >> 4)] ^= 1 << ((tweak >> 1) & 7);
                }
                let path = token.to_path();
                self.open(client, ROOT_ID, &path, O_RDWR);
            }
            9 => {
                let id = self.pick(client, which)?;
                let name: &[u8] = match input.byte()? % 3 {
                    0 => b"backing",
                    1 => b"domain-backing",
                    _ => input.bytes(16),
                };
                let name = name.to_vec();
                let args = [id as u64, name.as_ptr() as u64, name.len() as u64, 0, 0, 0];
                if let Ok(new) = self.run(client, Opcode::Dup, args) {
                    if new != 0 {
                        self.handles[client].push(new);
                    }
                }
            }
            10 => {
                let id = self.pick(client, which)?;
                let mut stat = syscall::data::Stat::default();
                let args = [
                    id as u64,
                    &mut stat as *mut _ as u64,
                    std::mem::size_of::<syscall::data::Stat>() as u64,
                    0,
                    0,
                    0,
                ];
                let _ = self.run(client, Opcode::Fstat, args);
                let _ = self.run(client, Opcode::Fsize, [id as u64, 0, 0, 0, 0, 0]);
                let mut buf = [0u8; 64];
                let args = [
                    id as u64,
                    buf.as_mut_ptr() as u64,
                    buf.len() as u64,
                    0,
                    0,
                    0,
                ];
                let _ = self.run(client, Opcode::Fpath, args);
            }
            11 => {
                let id = self.pick(client, which)?;
                let mut buf = vec![0u8; 16 + input.byte()? as usize * 4];
                let header = std::mem::size_of::<syscall::dirent::DirentHeader>() as u64;
                let offset = u64::from(input.byte()?);
                let args = [
                    id as u64,
                    buf.as_mut_ptr() as u64,
                    buf.len() as u64,
                    header,
                    offset,
                    0,
                ];
                let _ = self.run(client, Opcode::Getdents, args);
            }
            12 => {
                let id = self.pick(client, which)?;
                let offset = input.u64()?;
                let len = input.u64()?;
                let flags = match input.byte()? % 3 {
                    0 => MapFlags::PROT_READ | MapFlags::MAP_SHARED,
                    1 => MapFlags::PROT_READ | MapFlags::PROT_WRITE | MapFlags::MAP_SHARED,
                    _ => MapFlags::from_bits_retain(input.u64()? as usize),
                };
                let args = [id as u64, len, flags.bits() as u64, offset, 0, 0];
                if let Ok(addr) = self.run(client, Opcode::MmapPrep, args) {
                    // What `mmap_prep` returns lies inside the device memory.
                    let inside = |(base, size): (usize, usize)| addr >= base && addr < base + size;
                    assert!(
                        inside(self.vram) || inside(self.gtt),
                        "mmap_prep returned {addr:#x} outside the device memory"
                    );
                }
            }
            13 => {
                // The client dies: its handles close in one batch.
                let handles = std::mem::take(&mut self.handles[client]);
                self.scheme.on_disconnect(100 + client, &handles);
            }
            14 => {
                // Open relative to one of the client's handles.
                let dir = self.pick(client, which)?;
                let path = PATHS[input.byte()? as usize % PATHS.len()];
                self.open(client, dir, path.trim_start_matches("bo/"), flags);
            }
            _ => {
                self.scheme.tick();
            }
        }
        Some(())
    }
}

fuzz_target!(|data: &[u8]| DEVICE.with(|device| run(device, data)));

fn run(device: &Device, data: &[u8]) {
    let mut server = Server::new(device);
    let mut input = Input(data);
    for _ in 0..256 {
        if server.step(&mut input).is_none() {
            break;
        }
    }
    for client in 0..CLIENTS {
        let handles = std::mem::take(&mut server.handles[client]);
        server.scheme.on_disconnect(100 + client, &handles);
    }
    assert_eq!(
        server.scheme.handle_count(),
        0,
        "handles outlived their clients"
    );
    let stats = server.driver.stats();
    let listed = server.driver.bo_list();
    assert!(listed.is_empty(), "BOs outlived every client: {listed:?}");
    assert_eq!(
        (stats.vram.allocated_bytes, stats.gtt.allocated_bytes),
        (0, 0),
        "memory in use after every client left"
    );
    assert_eq!(server.driver.vram_stats().used_size, 0);
    assert_eq!(server.driver.gtt_stats().used_size, 0);
    let report = server.driver.leak_check(1);
    assert!(report.is_clean(), "leak audit: {report:?}");
    assert!(
        server.driver.health().is_ok(),
        "health: {:?}",
        server.driver.health()
    );
}
