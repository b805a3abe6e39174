//! The operating system's random source, from which the driver draws export
//! tokens (`pddgpu::driver::token`): `getrandom(2)` on Linux and other
//! hosts, the `rand` scheme (`/scheme/rand`, served by randd) on Redox.
//!
//! On Redox the scheme is opened once, when the device is opened: after
//! that pddgpud enters the null namespace and could not open it any more.
//! The descriptor is kept for the life of the process and read for every
//! token.

use pddgpu::driver::{DriverOptions, EntropyError, ExportToken, TokenSource};

/// The operating system's random source.
#[derive(Debug)]
pub struct OsRandom {
    #[cfg(target_os = "redox")]
    rand: std::fs::File,
}

/// The Redox scheme path of the random source.
#[cfg(target_os = "redox")]
const RAND_SCHEME: &str = "/scheme/rand";

impl OsRandom {
    /// Opens the source and draws from it once, so a missing or broken
    /// source stops the daemon at start instead of failing every export.
    pub fn open() -> Result<OsRandom, String> {
        #[cfg(target_os = "redox")]
        let source = OsRandom {
            rand: std::fs::File::open(RAND_SCHEME)
                .map_err(|e| format!("cannot open {RAND_SCHEME}: {e}"))?,
        };
        #[cfg(not(target_os = "redox"))]
        let source = OsRandom {};
        let mut probe = [0; ExportToken::LEN];
        source
            .fill(&mut probe)
            .map_err(|e| format!("random source: {e}"))?;
        Ok(source)
    }

    /// Driver options whose export tokens come from a newly opened OS
    /// random source.
    pub fn driver_options() -> Result<DriverOptions, String> {
        Ok(DriverOptions::with_token_source(Box::new(Self::open()?)))
    }
}

impl TokenSource for OsRandom {
    #[cfg(not(target_os = "redox"))]
    fn fill(&self, out: &mut [u8; ExportToken::LEN]) -> Result<(), EntropyError> {
        use rustix::rand::{getrandom, GetRandomFlags};
        let mut filled = 0;
        while filled < out.len() {
            match getrandom(&mut out[filled..], GetRandomFlags::empty()) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(EntropyError(e.raw_os_error())),
            }
        }
        Ok(())
    }

    #[cfg(target_os = "redox")]
    fn fill(&self, out: &mut [u8; ExportToken::LEN]) -> Result<(), EntropyError> {
        use std::io::Read;
        (&self.rand)
            .read_exact(out)
            .map_err(|e| EntropyError(e.raw_os_error().unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        let source = OsRandom::open().unwrap();
        let mut a = [0; ExportToken::LEN];
        let mut b = [0; ExportToken::LEN];
        source.fill(&mut a).unwrap();
        source.fill(&mut b).unwrap();
        assert_ne!(a, b, "two 128-bit draws from the OS collided");
    }
}
