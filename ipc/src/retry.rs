//! When a create that found no space is retried: the schedule both retry
//! layers follow (the host server parking it, the client library where the
//! transport cannot park).
//!
//! The first counted retry comes `delay` (`<domain>_retry_delay_ms`) after
//! the first attempt, and each later one after twice the wait before it, up
//! to [`MAX_WAIT`] (or `delay`, when that is longer). A create parked for a
//! long time is then retried a few times a second at most, not every
//! `delay`: a crowd of parked creates costs the server next to nothing
//! while nothing is freed (a free in the create's domain wakes it at once
//! anyway).

use std::time::Duration;

/// The longest wait between two counted retries, unless the delay itself
/// is longer.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The wait before counted retry `n` (from 1) of a create whose retry
/// delay is `delay`: `delay × 2^(n-1)`, at most `max(delay, MAX_WAIT)`.
pub fn wait(delay: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    delay.saturating_mul(factor).min(delay.max(MAX_WAIT))
}

/// How long a create retried `retries` times waits in all before it
/// fails (when nothing wakes it early).
pub fn total_wait(delay: Duration, retries: u32) -> Duration {
    (1..=retries).map(|n| wait(delay, n)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<_> = (1..=10).map(|n| wait(ms(5), n)).collect();
        assert_eq!(&waits[..4], &[ms(5), ms(10), ms(20), ms(40)]);
        assert_eq!(waits[7], ms(640));
        assert_eq!(waits[8], MAX_WAIT, "capped");
        assert_eq!(waits[9], MAX_WAIT);
        assert_eq!(wait(ms(60_000), 1), ms(60_000), "a long delay is kept");
        assert_eq!(wait(ms(60_000), 5), ms(60_000), "and never grows");
        assert_eq!(wait(ms(5), u32::MAX), MAX_WAIT, "no overflow");
        assert_eq!(total_wait(ms(5), 3), ms(35));
        assert_eq!(total_wait(ms(5), 0), Duration::ZERO);
    }
}
