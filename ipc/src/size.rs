//! Human byte sizes: `64M`, `1G`, `4096`, `16KiB` in, `64.0 MiB` out.

/// Parses a size: decimal digits with an optional binary suffix `K`, `M`,
/// `G`, `T` (case-insensitive, optionally followed by `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits_end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("`{s}` is not a size (try 4096, 64K, 64M, 1G)"));
    }
    let value: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    // Case-insensitive without building a lowercase copy: the first letter
    // picks the unit, the rest may only be `b` or `ib`.
    let unknown = || Err(format!("`{s}` has an unknown unit (use K, M, G or T)"));
    let shift = match suffix.as_bytes().first().map(u8::to_ascii_lowercase) {
        None => 0,
        Some(b'b') if suffix.len() == 1 => 0,
        Some(unit @ (b'k' | b'm' | b'g' | b't')) => {
            // An ASCII letter, so byte 1 starts the rest.
            let rest = &suffix[1..];
            if !(rest.is_empty()
                || rest.eq_ignore_ascii_case("b")
                || rest.eq_ignore_ascii_case("ib"))
            {
                return unknown();
            }
            match unit {
                b'k' => 10,
                b'm' => 20,
                b'g' => 30,
                _ => 40,
            }
        }
        Some(_) => return unknown(),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Formats a size for people: `512 B`, `4.0 KiB`, `64.0 MiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert_eq!(parse_size("2tb"), Ok(2 << 40));
        assert_eq!(parse_size(" 8 "), Ok(8));
        assert_eq!(parse_size("8b"), Ok(8));
        assert_eq!(parse_size("3KB"), Ok(3 << 10));
        assert_eq!(parse_size("5mIb"), Ok(5 << 20));
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "12Q",
            "1bb",
            "1kbb",
            "1ib",
            "1kx",
            "1é",
            "0x10",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_size(bad).is_err(), "accepted `{bad}`");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(4096), "4.0 KiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
