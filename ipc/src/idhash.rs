//! A cheap hasher for maps keyed by small integers the server hands out
//! itself (handle, owner and BO ids): a multiply-rotate mix instead of
//! SipHash. Clients cannot choose these keys, so hash flooding is not a
//! concern, and the hot request path does several lookups per request.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The hasher (FxHash-style).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
/// A map keyed by ids.
pub type IdMap<K, V> = HashMap<K, V, IdBuildHasher>;
/// A set of ids.
pub type IdSet<K> = HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_and_spread_sequential_keys() {
        let mut m: IdMap<(u64, u64), usize> = IdMap::default();
        for i in 0..1000u64 {
            m.insert((i % 7, i), i as usize);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m[&(3, 10)], 10);
        let mut buckets = [0u32; 16];
        for i in 0..1600u64 {
            let mut h = IdHasher::default();
            h.write_u64(i);
            buckets[(h.finish() >> 60) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 50), "{buckets:?}");
    }
}
