//! A client process for the multi-process tests. Every mode talks to the
//! server through the public client library only, and reports on stdout in
//! one-line, easily parsed messages.
//!
//! Modes (the socket comes from `PDDGPU_SOCKET`):
//! - `churn <iters> <seed>`: create/map/write/verify/free `iters` BOs.
//! - `hold <count> <size>`: create `count` BOs, fill them, print
//!   `ready <id,id,…>`, then sleep until killed.
//! - `export <size> <byte>`: create a BO filled with `byte`, print
//!   `token <id:hex>`, wait for a line on stdin, close the BO, print
//!   `closed`, wait for EOF on stdin.
//! - `import <token> <byte>`: import, map, check every byte, print
//!   `ok <size>`; then wait for EOF on stdin.
//! - `open <path>`: open and read a scheme path; print `ok` or
//!   `err <ERRNO>`.
//! - `write <path> <value>`: write a scheme file; print `ok` or
//!   `err <ERRNO>`.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use pddgpu_ipc::wire::errno_name;
use pddgpu_ipc::{BoFlags, Device, Domain, Error, ShareToken};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}"))
}

/// A small deterministic generator (xorshift) so runs are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn churn(dev: &Device, iters: u64, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let sizes = [4096u64, 12 << 10, 64 << 10, 256 << 10, 1 << 20];
    for i in 0..iters {
        let size = sizes[(rng.next() % sizes.len() as u64) as usize];
        let domain = if rng.next() % 4 == 0 {
            Domain::Gtt
        } else {
            Domain::Vram
        };
        let mut bo = dev
            .create_bo(size, domain, BoFlags::empty())
            .map_err(|e| format!("iteration {i}: {e}"))?;
        let tag = (rng.next() & 0xff) as u8;
        {
            let map = bo.map().map_err(|e| format!("iteration {i}: {e}"))?;
            for j in 0..map.len() {
                map.store(j, tag ^ (j as u8));
            }
            if let Some(j) = map
                .iter()
                .enumerate()
                .position(|(j, b)| b != tag ^ (j as u8))
            {
                return Err(format!("iteration {i}: mapped byte {j} did not read back"));
            }
        }
        // The server sees the same bytes through its own mapping.
        let mut probe = [0u8; 16];
        let at = size - 16;
        bo.read_at(at, &mut probe)
            .map_err(|e| format!("iteration {i}: {e}"))?;
        for (k, b) in probe.iter().enumerate() {
            if *b != tag ^ ((at as usize + k) as u8) {
                return Err(format!(
                    "iteration {i}: server read of byte {} differs",
                    at as usize + k
                ));
            }
        }
        bo.close().map_err(|e| format!("iteration {i}: {e}"))?;
    }
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let dev = Device::open().map_err(|e| e.to_string())?;
    match args.first().map(String::as_str) {
        Some("churn") => {
            let iters: u64 = arg(args, 1, "iteration count")?;
            let seed: u64 = arg(args, 2, "seed")?;
            churn(&dev, iters, seed)?;
            say(&format!("ok {iters}"));
        }
        Some("hold") => {
            let count: usize = arg(args, 1, "count")?;
            let size: u64 = arg(args, 2, "size")?;
            let mut held = Vec::with_capacity(count);
            for i in 0..count {
                let domain = if i % 2 == 0 {
                    Domain::Vram
                } else {
                    Domain::Gtt
                };
                let mut bo = dev
                    .create_bo(size, domain, BoFlags::empty())
                    .map_err(|e| e.to_string())?;
                bo.map().map_err(|e| e.to_string())?.fill(i as u8);
                held.push(bo);
            }
            let ids: Vec<String> = held.iter().map(|b| b.id().to_string()).collect();
            say(&format!("ready {}", ids.join(",")));
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("export") => {
            let size: u64 = arg(args, 1, "size")?;
            let byte: u8 = arg(args, 2, "byte")?;
            let mut bo = dev
                .create_bo(size, Domain::Vram, BoFlags::empty())
                .map_err(|e| e.to_string())?;
            bo.map().map_err(|e| e.to_string())?.fill(byte);
            let token = bo.export().map_err(|e| e.to_string())?;
            say(&format!("token {token}"));
            wait_line();
            bo.close().map_err(|e| e.to_string())?;
            say("closed");
            wait_line();
        }
        Some("import") => {
            let token: ShareToken = arg(args, 1, "token")?;
            let byte: u8 = arg(args, 2, "byte")?;
            let mut bo = dev.import(token).map_err(|e| e.to_string())?;
            let size = bo.size();
            let map = bo.map().map_err(|e| e.to_string())?;
            if let Some(i) = map.iter().position(|b| b != byte) {
                return Err(format!(
                    "imported byte {i} is {:#x}, not {byte:#x}",
                    map.load(i)
                ));
            }
            say(&format!("ok {size}"));
            wait_line();
            // Still readable after the exporter closed its handle.
            let map = bo.map().map_err(|e| e.to_string())?;
            if map.iter().any(|b| b != byte) {
                return Err("imported bytes changed".into());
            }
            say("still ok");
            wait_line();
        }
        Some("write") => {
            let path: String = arg(args, 1, "path")?;
            let value: String = arg(args, 2, "value")?;
            match dev.write_file(&path, value.as_bytes()) {
                Ok(()) => say("ok"),
                Err(Error::Scheme { errno, .. }) => say(&format!("err {}", errno_name(errno))),
                Err(e) => return Err(e.to_string()),
            }
        }
        Some("open") => {
            let path: String = arg(args, 1, "path")?;
            match dev.read_file(&path) {
                Ok(_) => say("ok"),
                Err(Error::Scheme { errno, .. }) => say(&format!("err {}", errno_name(errno))),
                Err(e) => return Err(e.to_string()),
            }
        }
        _ => return Err("usage: pddgpu-test-client churn|hold|export|import|open …".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pddgpu-test-client: {e}");
            say(&format!("error {e}"));
            ExitCode::FAILURE
        }
    }
}
