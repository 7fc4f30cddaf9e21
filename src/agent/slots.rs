//! When a rule's first tick comes: a random offset, rounded to a grid shared by every rule.
//!
//! The offset spreads a thousand rules over a second, so they do not all call SQS at once. Each
//! distinct deadline is one timer wake-up of the agent's thread, though, and at 1,000 rules a
//! wake-up per poll was a large part of the CPU per poll (BENCHMARKS.md, finding 10). On a
//! grid of `SLOT` the rules whose offsets fall in the same slot fire in one wake-up, while the
//! polls stay spread over the second. The grid is anchored at one instant per agent, so rules
//! started at different times (a reload) still share slots.

use std::time::Duration;

use tokio::time::Instant;

/// The grid step. Small against any poll interval (at least a second), large enough that a
/// thousand rules spread over a second share about ten per slot.
pub const SLOT: Duration = Duration::from_millis(10);

/// The first deadline at or after `now + offset` that lies on the grid `epoch + k * SLOT`.
pub fn first_tick(epoch: Instant, now: Instant, offset: Duration) -> Instant {
    let wanted = now + offset;
    let since = wanted.saturating_duration_since(epoch);
    let slot = SLOT.as_nanos();
    let slots = since.as_nanos().div_ceil(slot);
    // A u64 of nanoseconds is 584 years: an agent does not run that long.
    let nanos = u64::try_from(slots.saturating_mul(slot)).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_land_on_the_grid_not_before_the_wanted_instant() {
        let epoch = Instant::now();
        for (started_ms, offset_us) in [(0, 0), (3, 1), (1234, 9_999), (7, 10_000), (50, 777_777)] {
            let now = epoch + Duration::from_millis(started_ms);
            let offset = Duration::from_micros(offset_us);
            let tick = first_tick(epoch, now, offset);
            let from_epoch = tick.duration_since(epoch).as_nanos();
            assert_eq!(
                from_epoch % SLOT.as_nanos(),
                0,
                "{started_ms} ms, {offset_us} µs"
            );
            assert!(tick >= now + offset);
            assert!(tick < now + offset + SLOT);
        }
    }

    #[test]
    fn rules_started_apart_share_a_slot() {
        let epoch = Instant::now();
        let a = first_tick(
            epoch,
            epoch + Duration::from_micros(100),
            Duration::from_millis(5),
        );
        let b = first_tick(
            epoch,
            epoch + Duration::from_millis(2),
            Duration::from_millis(4),
        );
        assert_eq!(a, b);
        let c = first_tick(epoch, epoch, Duration::from_millis(11));
        assert_ne!(a, c);
    }
}
