//! The `pddgpu` command-line tool: a shell user's view of `pddgpu:`.
//!
//! Exit codes: 0 success; 1 the server refused the operation; 2 usage
//! error; 3 the server cannot be reached; 4 no space or quota exceeded;
//! 5 permission denied; 6 the audit or health check found problems.

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::model::LeakReport;
use crate::size::{format_size, parse_size};
pub use crate::stats_table::format_stats;
use crate::wire::{BoDesc, BoFlags, Domain};
use crate::{Device, Error};

/// Exit code: the server refused the operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad command line.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the server cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: no space, or the client's quota is used up.
pub const EXIT_NO_SPACE: i32 = 4;
/// Exit code: permission denied.
pub const EXIT_PERMISSION: i32 = 5;
/// Exit code: a leak audit or health check found problems.
pub const EXIT_PROBLEMS: i32 = 6;

#[derive(Parser, Debug)]
#[command(
    name = "pddgpu",
    version,
    about = "Inspect and drive the pddgpu GPU memory server (pddgpu: scheme)",
    after_help = "Exit codes: 0 ok, 1 refused, 2 usage, 3 server unreachable, 4 no space/quota, \
                  5 permission denied, 6 problems found"
)]
struct Cli {
    /// Socket of the server (host transport); default $PDDGPU_SOCKET,
    /// $XDG_RUNTIME_DIR/pddgpu.sock or /run/pddgpu/pddgpu.sock.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Memory statistics of VRAM, GTT and BOs.
    Stats {
        /// Print stats.json as the server wrote it.
        #[arg(long)]
        json: bool,
    },
    /// Print any file of the scheme (e.g. `stats`, `vram`, `config/leak_monitor`).
    Cat {
        /// Path inside pddgpu:, e.g. `health`.
        path: String,
    },
    /// List a directory of the scheme (root, `config`, `bo`).
    Ls {
        /// Directory inside pddgpu: (default: the root).
        #[arg(default_value = "")]
        path: String,
    },
    /// Allocate a BO, map it, write and verify a pattern, then free it
    /// (or keep it with --hold).
    Alloc {
        /// Size, e.g. 4096, 64K, 64M, 1G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// vram or gtt.
        #[arg(long, default_value = "vram")]
        domain: Domain,
        /// Comma-separated: contiguous, visible, topdown, cleared.
        #[arg(long, default_value = "", value_parser = crate::wire::parse_flags)]
        flags: BoFlags,
        /// Alignment (power of two), e.g. 64K.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        align: u64,
        /// Label shown in `leaks` and `clients`.
        #[arg(long, default_value = "pddgpu-cli")]
        label: String,
        /// Keep the BO until this process is interrupted.
        #[arg(long)]
        hold: bool,
        /// Print the share token so another client can import the BO.
        #[arg(long)]
        export: bool,
        /// Number of BOs to allocate (all held at once, then freed).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
    },
    /// The last leak audit.
    Leaks {
        /// Print leaks.json.
        #[arg(long)]
        json: bool,
    },
    /// Run a leak audit now (exit 6 if it finds anything).
    LeakCheck,
    /// Recover a memory manager from the error state.
    Recover {
        /// vram, gtt or all.
        #[arg(value_parser = ["vram", "gtt", "all"])]
        which: String,
    },
    /// Show all tunables, one tunable, or set one.
    Config {
        /// Tunable name.
        name: Option<String>,
        /// New value.
        value: Option<String>,
    },
    /// Per-client usage.
    Clients {
        /// Print clients.json.
        #[arg(long)]
        json: bool,
    },
    /// `ok`, or the problems found (exit 6 if not ok).
    Health,
    /// The occupancy map of a domain: every BO extent and free hole in
    /// address order, as a text picture, as JSON, or drawn as SVG.
    Map {
        /// vram or gtt.
        #[arg(long, default_value = "vram", value_parser = ["vram", "gtt"])]
        domain: String,
        /// Draw the map as SVG into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
        /// Print `<domain>.map.json`.
        #[arg(long, conflicts_with = "svg")]
        json: bool,
    },
    /// Live view: usage, rates and history per domain, the occupancy map,
    /// clients, health (keys: q quits, s sorts, p pauses).
    Top {
        /// Time between refreshes: seconds (`1`, `0.5`) or with a unit
        /// (`500ms`, `2s`).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many frames.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        frames: Option<u64>,
        /// Print frames as plain text instead of driving the terminal.
        #[arg(long)]
        plain: bool,
        /// Width of plain frames in columns.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(60..=1000))]
        width: u16,
    },
}

/// Parses a refresh interval: seconds (`1`, `0.5`) or `<n>ms` / `<n>s`;
/// between 50 ms and one hour.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an interval (try 1, 0.5, 500ms, 2s)"))?;
    let secs = value * scale;
    if !(0.05..=3600.0).contains(&secs) {
        return Err(format!(
            "`{s}`: the interval must be between 50ms and 3600s"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> i32 {
    run(std::env::args_os())
}

/// Parses a command line into `P`. On a usage error or a help or version
/// request the message is printed and the exit code returned:
/// [`EXIT_USAGE`] for an error, 0 for help and version. Shared by the
/// `pddgpu` CLI and `pddgpud`.
pub fn parse_args<P, I, T>(args: I) -> std::result::Result<P, i32>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    P::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            EXIT_USAGE
        } else {
            0
        }
    })
}

/// Runs the CLI with explicit arguments; returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match parse_args::<Cli, _, _>(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pddgpu: {e}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &Error) -> i32 {
    use syscall::error::{EACCES, EAGAIN, EDQUOT, ENOSPC, EPERM};
    match e {
        Error::Connect { .. } => EXIT_UNREACHABLE,
        Error::Scheme { errno, .. } => match *errno {
            ENOSPC | EAGAIN | EDQUOT => EXIT_NO_SPACE,
            EACCES | EPERM => EXIT_PERMISSION,
            _ => EXIT_FAILED,
        },
        Error::Invalid(_) => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

fn connect(socket: Option<std::path::PathBuf>) -> crate::Result<Device> {
    #[cfg(not(target_os = "redox"))]
    {
        match socket {
            Some(p) => Device::connect(&p),
            None => Device::open(),
        }
    }
    #[cfg(target_os = "redox")]
    {
        if socket.is_some() {
            return Err(Error::Invalid(
                "--socket is for the host transport; on Redox pddgpu uses /scheme/pddgpu".into(),
            ));
        }
        Device::open()
    }
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn execute(cli: Cli) -> crate::Result<i32> {
    if let Command::Top {
        interval,
        frames,
        plain,
        width,
    } = cli.command
    {
        // `top` connects (and reconnects) by itself: a server that is not
        // there yet, or goes away, is shown, not fatal.
        let socket = cli.socket;
        let options = crate::top::TopOptions {
            interval,
            frames,
            plain,
            width,
        };
        return crate::top::run(Box::new(move || connect(socket.clone())), &options).map_err(
            |source| Error::Io {
                op: "top",
                path: "terminal".into(),
                source,
            },
        );
    }
    let dev = connect(cli.socket)?;
    match cli.command {
        Command::Stats { json: true } => out(&dev.read_text("stats.json")?),
        Command::Stats { json: false } => out(&format_stats(&dev.stats()?)),
        Command::Cat { path } => {
            let data = dev.read_file(&path)?;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&data);
        }
        Command::Ls { path } => {
            for name in dev.list_dir(&path)? {
                out(&format!("{name}\n"));
            }
        }
        Command::Alloc {
            size,
            domain,
            flags,
            align,
            label,
            hold,
            export,
            count,
        } => {
            let desc = BoDesc {
                size,
                domain,
                flags,
                align,
                label,
                attempt: 0,
            };
            alloc(&dev, &desc, count, hold, export)?
        }
        Command::Leaks { json: true } => out(&dev.read_text("leaks.json")?),
        Command::Leaks { json: false } => out(&dev.read_text("leaks")?),
        Command::LeakCheck => {
            let report = dev.leak_check()?;
            out(&format_leaks(&report));
            if !report.clean {
                return Ok(EXIT_PROBLEMS);
            }
        }
        Command::Recover { which } => {
            dev.recover(&which)?;
            out(&format!("recovered {which}; health: {}", dev.health()?));
        }
        Command::Config { name: None, value } => {
            if value.is_some() {
                return Err(Error::Invalid(
                    "give a tunable name before the value".into(),
                ));
            }
            for name in dev.config_names()? {
                let value = dev.config(&name)?;
                out(&format!("{name} {value}\n"));
            }
        }
        Command::Config {
            name: Some(name),
            value: None,
        } => out(&format!("{}\n", dev.config(&name)?)),
        Command::Config {
            name: Some(name),
            value: Some(value),
        } => {
            dev.set_config(&name, &value)?;
            out(&format!("{name} {}\n", dev.config(&name)?));
        }
        Command::Clients { json: true } => out(&dev.read_text("clients.json")?),
        Command::Clients { json: false } => out(&dev.read_text("clients")?),
        Command::Top { .. } => unreachable!("handled before connecting"),
        Command::Map {
            domain,
            svg: None,
            json: true,
        } => out(&dev.read_text(&format!("{domain}.map.json"))?),
        Command::Map {
            domain,
            svg: None,
            json: false,
        } => out(&crate::occupancy::picture(
            &dev.occupancy_map(&domain)?,
            64,
            32,
        )),
        Command::Map {
            domain,
            svg: Some(file),
            ..
        } => {
            let map = dev.occupancy_map(&domain)?;
            let svg = crate::map_svg::render(&map);
            std::fs::write(&file, svg).map_err(|source| Error::Io {
                op: "write",
                path: file.display().to_string(),
                source,
            })?;
            let bos: std::collections::BTreeSet<u64> = map
                .extents
                .iter()
                .filter(|e| e.kind == crate::model::ExtentKind::Bo)
                .map(|e| e.bo)
                .collect();
            out(&format!(
                "wrote {}: {domain} map, {} extents, {} BOs\n",
                file.display(),
                map.extents.len(),
                bos.len()
            ));
        }
        Command::Health => {
            let health = dev.health()?;
            out(&health);
            if health.trim() != "ok" {
                return Ok(EXIT_PROBLEMS);
            }
        }
    }
    Ok(0)
}

fn alloc(dev: &Device, desc: &BoDesc, count: u32, hold: bool, export: bool) -> crate::Result<()> {
    if desc.align != 0 && !desc.align.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "--align {} is not a power of two",
            desc.align
        )));
    }
    let mut bos = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut bo = dev.create(desc)?;
        let id = bo.id();
        let segments = bo.segments()?.len();
        let pattern = (id as u8) ^ 0x5a;
        let map = bo.map()?;
        for i in 0..map.len() {
            map.store(i, pattern.wrapping_add(i as u8));
        }
        let mapped_ok = map
            .iter()
            .enumerate()
            .all(|(i, b)| b == pattern.wrapping_add(i as u8));
        // Read the tail back through the server too: the same memory.
        let mut tail = [0u8; 64];
        let at = desc.size.saturating_sub(tail.len() as u64);
        let n = bo.read_at(at, &mut tail)?;
        let server_ok = tail[..n]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern.wrapping_add((at as usize + i) as u8));
        out(&format!(
            "BO {id}: {} in {} ({} segment{}), mapped, wrote pattern, read back {}\n",
            format_size(desc.size),
            desc.domain,
            segments,
            if segments == 1 { "" } else { "s" },
            if mapped_ok && server_ok {
                "ok"
            } else {
                "MISMATCH"
            },
        ));
        if !(mapped_ok && server_ok) {
            return Err(Error::Invalid(format!(
                "BO {id} did not read back what was written"
            )));
        }
        if export {
            out(&format!("BO {id}: share token {}\n", bo.export()?));
        }
        bos.push(bo);
    }
    if hold {
        let ids: Vec<String> = bos.iter().map(|b| b.id().to_string()).collect();
        out(&format!(
            "holding BO {}; interrupt (Ctrl-C) to release\n",
            ids.join(", ")
        ));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    for bo in bos {
        let id = bo.id();
        bo.close()?;
        out(&format!("BO {id}: freed\n"));
    }
    Ok(())
}

/// Human form of a leak report.
pub fn format_leaks(r: &LeakReport) -> String {
    let mut text = format!(
        "leak audit at {} ms: {}\n",
        r.checked_ms,
        if r.clean { "clean" } else { "PROBLEMS FOUND" }
    );
    for p in &r.problems {
        text += &format!("problem: {p}\n");
    }
    for s in &r.suspects {
        text += &format!(
            "suspect: bo {} owner {} pid {} {} {} age {} ms label {:?}: {}\n",
            s.id,
            s.owner,
            s.pid,
            format_size(s.size),
            s.domain,
            s.age_ms,
            s.label,
            s.reason
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        assert_eq!(run(["pddgpu", "alloc", "--size", "12Q"]), EXIT_USAGE);
        assert_eq!(run(["pddgpu", "recover", "disk"]), EXIT_USAGE);
        assert_eq!(run(["pddgpu", "frobnicate"]), EXIT_USAGE);
        assert_eq!(run(["pddgpu", "--help"]), 0);
    }

    #[test]
    fn intervals_parse_with_units_and_bounds() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "fast", "10ms", "0", "-1", "2h", "4000"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(run(["pddgpu", "top", "--interval", "1ms"]), EXIT_USAGE);
        assert_eq!(run(["pddgpu", "top", "--frames", "0"]), EXIT_USAGE);
    }

    #[test]
    fn top_without_a_server_says_so_and_exits_3() {
        let code = run([
            "pddgpu",
            "--socket",
            "/nonexistent/pddgpu-test.sock",
            "top",
            "--plain",
            "--frames",
            "2",
            "--interval",
            "50ms",
        ]);
        assert_eq!(code, EXIT_UNREACHABLE);
    }

    #[test]
    fn unreachable_server_exits_3() {
        let code = run([
            "pddgpu",
            "--socket",
            "/nonexistent/pddgpu-test.sock",
            "stats",
        ]);
        assert_eq!(code, EXIT_UNREACHABLE);
    }
}
