//! `pddgpu top`: a live view of the server — device state, usage of VRAM,
//! CPU-visible VRAM and GTT with rates and a minute of history, the coarse
//! occupancy map, the clients, health and the last leak audit.
//!
//! - [`watch`]: polls the server through the client library (so it works
//!   the same on the host and on Redox) and derives what a frame shows;
//! - [`view`]: draws a frame with ratatui, for the terminal and as text;
//! - [`term`]: the live terminal and its keys (`q`, `s`, `p`).
//!
//! `--plain` prints frames as text (no terminal control), for scripts and
//! tests; `--frames N` stops after N frames.

pub mod term;
pub mod view;
pub mod watch;

use std::io::Write;
use std::time::{Duration, Instant};

use term::{Key, Term};
use watch::{Connector, Link, Watcher};

/// How `top` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Stop after this many frames (`None`: until `q`).
    pub frames: Option<u64>,
    /// Print text frames instead of driving the terminal.
    pub plain: bool,
    /// Width of plain frames.
    pub width: u16,
}

/// The exit code after the last frame: 0 when the server answered it, else
/// [`crate::cli::EXIT_UNREACHABLE`].
fn exit_code(w: &Watcher) -> i32 {
    match w.screen().link {
        Link::Up => 0,
        _ => crate::cli::EXIT_UNREACHABLE,
    }
}

/// Runs `top`; returns the process exit code.
pub fn run(connect: Connector, options: &TopOptions) -> std::io::Result<i32> {
    let mut watcher = Watcher::new(connect, options.interval, true);
    if options.plain {
        run_plain(&mut watcher, options)
    } else {
        run_live(&mut watcher, options)
    }
}

fn run_plain(watcher: &mut Watcher, options: &TopOptions) -> std::io::Result<i32> {
    let mut frame = 0u64;
    loop {
        if frame > 0 {
            std::thread::sleep(options.interval);
        }
        watcher.poll();
        frame += 1;
        let text = view::plain(&watcher.screen(), options.width);
        let mut out = std::io::stdout().lock();
        if frame > 1 {
            out.write_all(b"\n")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if options.frames.is_some_and(|n| frame >= n) {
            return Ok(exit_code(watcher));
        }
    }
}

fn run_live(watcher: &mut Watcher, options: &TopOptions) -> std::io::Result<i32> {
    let mut term = Term::enter()?;
    let mut frame = 0u64;
    let mut next_poll = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_poll && !watcher.paused() {
            watcher.poll();
            frame += 1;
            next_poll = now + options.interval;
        }
        term.draw(&watcher.screen())?;
        if options.frames.is_some_and(|n| frame >= n) {
            break;
        }
        // Wake for the next poll, or sooner for a key (and redraw).
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        match term.key(wait)? {
            Some(Key::Quit) => break,
            Some(Key::Sort) => watcher.cycle_sort(),
            Some(Key::Pause) => {
                watcher.toggle_pause();
                if !watcher.paused() {
                    next_poll = Instant::now();
                }
            }
            None => {}
        }
    }
    drop(term);
    Ok(exit_code(watcher))
}
