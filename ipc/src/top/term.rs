//! The live terminal of `top`: raw mode and the alternate screen while it
//! runs (restored on every exit, panics included), drawing a [`Screen`],
//! and the keys. The backend is crossterm on the host and termion on Redox
//! (Redox's own terminal library); everything above this module is the
//! same on both.

use std::io;
use std::time::{Duration, Instant};

use ratatui::Terminal;

use super::view;
use super::watch::Screen;

/// A key `top` acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `q`, Esc or Ctrl-C.
    Quit,
    /// `s`: next sort key.
    Sort,
    /// `p`: pause or resume.
    Pause,
}

/// What a typed byte means (for byte-oriented input).
pub fn key_of_byte(b: u8) -> Option<Key> {
    match b {
        b'q' | b'Q' | 0x1b | 0x03 => Some(Key::Quit),
        b's' | b'S' => Some(Key::Sort),
        b'p' | b'P' | b' ' => Some(Key::Pause),
        _ => None,
    }
}

#[cfg(not(target_os = "redox"))]
mod backend {
    use super::*;
    use ratatui::backend::CrosstermBackend;
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use ratatui::crossterm::{cursor, execute, terminal};

    pub type Backend = CrosstermBackend<io::Stdout>;

    pub fn enter() -> io::Result<Backend> {
        terminal::enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = execute!(out, terminal::EnterAlternateScreen, cursor::Hide) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        Ok(CrosstermBackend::new(out))
    }

    pub fn leave() {
        let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }

    /// The next key typed before `deadline`, if any.
    pub fn key(_: &mut Backend, deadline: Instant) -> io::Result<Option<Key>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !event::poll(left)? {
                return Ok(None);
            }
            if let Event::Key(k) = event::read()? {
                if k.kind == KeyEventKind::Release {
                    continue;
                }
                let key = match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Some(Key::Quit)
                    }
                    KeyCode::Esc => Some(Key::Quit),
                    KeyCode::Char(c) if c.is_ascii() => key_of_byte(c as u8),
                    _ => None,
                };
                if key.is_some() {
                    return Ok(key);
                }
            }
            // A resize or another key: let the caller redraw.
            return Ok(None);
        }
    }
}

#[cfg(target_os = "redox")]
mod backend {
    use super::*;
    use io::Read;
    use ratatui::backend::TermionBackend;
    use ratatui::termion;
    use termion::raw::IntoRawMode;
    use termion::screen::IntoAlternateScreen;

    pub type Backend =
        TermionBackend<termion::screen::AlternateScreen<termion::raw::RawTerminal<io::Stdout>>>;

    thread_local! {
        static INPUT: std::cell::RefCell<Option<termion::AsyncReader>> =
            const { std::cell::RefCell::new(None) };
    }

    pub fn enter() -> io::Result<Backend> {
        let out = io::stdout().into_raw_mode()?.into_alternate_screen()?;
        INPUT.with(|i| *i.borrow_mut() = Some(termion::async_stdin()));
        let mut backend = TermionBackend::new(out);
        io::Write::write_all(&mut backend, termion::cursor::Hide.to_string().as_bytes())?;
        Ok(backend)
    }

    pub fn leave() {
        // Dropping the backend leaves the alternate screen and raw mode.
        print!("{}", termion::cursor::Show);
    }

    /// The next key typed before `deadline`, if any.
    pub fn key(_: &mut Backend, deadline: Instant) -> io::Result<Option<Key>> {
        loop {
            let mut byte = [0u8; 1];
            let n = INPUT.with(|i| match i.borrow_mut().as_mut() {
                Some(r) => r.read(&mut byte),
                None => Ok(0),
            })?;
            if n == 1 {
                if let Some(k) = key_of_byte(byte[0]) {
                    return Ok(Some(k));
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }
}

/// The terminal while `top` runs; restores it when dropped.
pub struct Term {
    terminal: Terminal<backend::Backend>,
}

impl Term {
    /// Switches the terminal to raw mode and the alternate screen.
    pub fn enter() -> io::Result<Term> {
        // Restore the terminal before a panic message is printed.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            backend::leave();
            previous(info);
        }));
        let backend = backend::enter()?;
        let terminal = match Terminal::new(backend) {
            Ok(t) => t,
            Err(e) => {
                backend::leave();
                return Err(io::Error::other(e.to_string()));
            }
        };
        Ok(Term { terminal })
    }

    /// Draws a frame.
    pub fn draw(&mut self, screen: &Screen) -> io::Result<()> {
        self.terminal
            .draw(|f| {
                let area = f.area();
                view::render(screen, area, f.buffer_mut());
            })
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Waits up to `timeout` for a key.
    pub fn key(&mut self, timeout: Duration) -> io::Result<Option<Key>> {
        backend::key(self.terminal.backend_mut(), Instant::now() + timeout)
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        backend::leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_to_keys() {
        assert_eq!(key_of_byte(b'q'), Some(Key::Quit));
        assert_eq!(key_of_byte(0x03), Some(Key::Quit));
        assert_eq!(key_of_byte(b's'), Some(Key::Sort));
        assert_eq!(key_of_byte(b'p'), Some(Key::Pause));
        assert_eq!(key_of_byte(b'x'), None);
    }
}
