//! Export tokens: the secret that lets another owner import a BO (see
//! [`super::ownership`]), and where their randomness comes from.
//!
//! A token is [`ExportToken::LEN`] bytes (128 bits) drawn from a
//! [`TokenSource`] the front end supplies, because the core is `no_std`
//! and has no random source of its own: `pddgpud` passes the operating
//! system's (`getrandom` on Linux, the `rand` scheme on Redox), so tokens
//! cannot be predicted from addresses, counters or an earlier run, and
//! guessing one takes 2^127 tries on average. Tokens are compared in
//! constant time (`subtle`), so a failed import reveals nothing about how
//! much of a guess was right.
//!
//! [`SeededTokens`] is the deterministic source for tests and in-process
//! use ([`super::Driver::new`] uses it): its tokens follow from its seed
//! and are not secret.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use subtle::ConstantTimeEq;

/// The secret of one export. Equality is constant-time; `Debug` does not
/// show the bytes.
#[derive(Clone, Copy)]
pub struct ExportToken([u8; ExportToken::LEN]);

impl ExportToken {
    /// Bytes in a token (128 bits).
    pub const LEN: usize = 16;

    /// The token with these bytes (as presented by an importer).
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        ExportToken(bytes)
    }

    /// Its bytes (to hand to the exporter).
    pub const fn to_bytes(self) -> [u8; Self::LEN] {
        self.0
    }
}

impl PartialEq for ExportToken {
    /// Constant-time: the time taken does not depend on where the tokens
    /// differ.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ExportToken {}

impl fmt::Debug for ExportToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportToken(..)")
    }
}

/// The random source could not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the random source failed (os error {0})")]
pub struct EntropyError(pub i32);

/// Where export tokens come from. Implementations must be safe to call
/// from any thread.
pub trait TokenSource: Send + Sync {
    /// Fills `out` with fresh, unpredictable bytes.
    fn fill(&self, out: &mut [u8; ExportToken::LEN]) -> Result<(), EntropyError>;
}

/// A deterministic token source: the tokens follow from the seed and a
/// counter, so runs with the same seed repeat them. For tests and
/// in-process use only — they are not secret.
#[derive(Debug)]
pub struct SeededTokens {
    seed: u64,
    counter: AtomicU64,
}

impl SeededTokens {
    /// A source whose tokens follow from `seed`.
    pub const fn new(seed: u64) -> Self {
        SeededTokens {
            seed,
            counter: AtomicU64::new(0),
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl TokenSource for SeededTokens {
    fn fill(&self, out: &mut [u8; ExportToken::LEN]) -> Result<(), EntropyError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix(self.seed ^ splitmix(n));
        let b = splitmix(a ^ 0x5555_5555_5555_5555);
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_tokens_repeat_per_seed_and_differ_otherwise() {
        let draw = |s: &SeededTokens| {
            let mut t = [0; ExportToken::LEN];
            s.fill(&mut t).unwrap();
            t
        };
        let (a, b) = (SeededTokens::new(1), SeededTokens::new(1));
        let first = draw(&a);
        assert_eq!(first, draw(&b), "the same seed repeats");
        assert_ne!(first, draw(&a), "each draw is new");
        assert_ne!(first, draw(&SeededTokens::new(2)));
    }

    #[test]
    fn tokens_compare_by_every_byte_and_hide_in_debug() {
        let t = ExportToken::from_bytes([7; ExportToken::LEN]);
        for i in 0..ExportToken::LEN {
            let mut other = t.to_bytes();
            other[i] ^= 1;
            assert_ne!(t, ExportToken::from_bytes(other), "byte {i}");
        }
        assert_eq!(t, ExportToken::from_bytes([7; ExportToken::LEN]));
        assert_eq!(alloc::format!("{t:?}"), "ExportToken(..)");
    }
}
