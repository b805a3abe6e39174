//! Test patterns for BO contents: every 8-byte word is a hash of a seed
//! and the word's offset in the BO, so a byte read from anywhere (the
//! client's mapping, the server, the raw VRAM BAR) can be checked on its
//! own, and bytes landing at a wrong offset or in another BO are caught.

/// SplitMix64 finalizer: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern byte at `offset` of a BO filled with `seed`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    let word = mix(seed ^ (offset & !7).wrapping_mul(0x1000_0000_01b3));
    word.to_le_bytes()[(offset & 7) as usize]
}

/// Fills `buf`, which holds the BO bytes starting at `base`, with the
/// pattern for `seed`.
pub fn fill(seed: u64, base: u64, buf: &mut [u8]) {
    let mut offset = base;
    let mut rest = buf;
    // Unaligned head byte by byte, then whole words.
    while offset % 8 != 0 && !rest.is_empty() {
        rest[0] = byte_at(seed, offset);
        rest = &mut rest[1..];
        offset += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        let value = mix(seed ^ offset.wrapping_mul(0x1000_0000_01b3));
        w.copy_from_slice(&value.to_le_bytes());
        offset += 8;
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = byte_at(seed, offset + i as u64);
    }
}

/// The BO offset of the first byte of `buf` (holding the BO bytes from
/// `base`) that differs from the pattern for `seed`, if any.
pub fn first_mismatch(seed: u64, base: u64, buf: &[u8]) -> Option<u64> {
    let mut expected = vec![0u8; buf.len().min(1 << 16)];
    let mut at = 0usize;
    while at < buf.len() {
        let n = expected.len().min(buf.len() - at);
        fill(seed, base + at as u64, &mut expected[..n]);
        if let Some(i) = (0..n).find(|&i| buf[at + i] != expected[i]) {
            return Some(base + (at + i) as u64);
        }
        at += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_agrees_with_byte_at_from_any_start() {
        for base in [0u64, 1, 7, 8, 13, 4096] {
            let mut buf = vec![0u8; 61];
            fill(42, base, &mut buf);
            for (i, b) in buf.iter().enumerate() {
                assert_eq!(*b, byte_at(42, base + i as u64), "base {base} byte {i}");
            }
            assert_eq!(first_mismatch(42, base, &buf), None);
        }
    }

    #[test]
    fn detects_flips_shifts_and_other_seeds() {
        let mut buf = vec![0u8; 200_000];
        fill(7, 0, &mut buf);
        assert_eq!(first_mismatch(7, 0, &buf), None);
        assert_eq!(first_mismatch(8, 0, &buf), Some(0));
        // The same bytes seen one word later in the BO are wrong.
        assert!(first_mismatch(7, 8, &buf).is_some());
        buf[150_001] ^= 1;
        assert_eq!(first_mismatch(7, 0, &buf), Some(150_001));
        // a zeroed BO is not a pattern
        assert_eq!(first_mismatch(7, 0, &[0u8; 64]), Some(0));
    }
}
