//! Hybrid logical clock: wall-clock nanoseconds plus a counter, so timestamps stay
//! close to real time yet never go backwards on one node, even if the wall clock does.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in hybrid logical time. Ordered by (wall, counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Nanoseconds since the Unix epoch (the physical part).
    pub wall_ns: u64,
    /// Tie breaker when the physical part does not advance.
    pub counter: u32,
}

impl Hlc {
    /// The next timestamp after `last`, given the current wall clock.
    pub fn tick(last: Hlc, now_ns: u64) -> Hlc {
        if now_ns > last.wall_ns {
            Hlc {
                wall_ns: now_ns,
                counter: 0,
            }
        } else {
            match last.counter.checked_add(1) {
                Some(counter) => Hlc {
                    wall_ns: last.wall_ns,
                    counter,
                },
                None => Hlc {
                    wall_ns: last.wall_ns.saturating_add(1),
                    counter: 0,
                },
            }
        }
    }

    /// Merge a timestamp seen in a received record so later local ticks order after
    /// it. A timestamp more than a day ahead of our wall clock is not adopted (a
    /// peer with a broken clock, or a hostile one, must not drag ours into the
    /// future); the record is still kept and ordered by its own timestamp.
    pub fn observe(last: Hlc, seen: Hlc) -> Hlc {
        const MAX_AHEAD_NS: u64 = 24 * 3600 * 1_000_000_000;
        if seen.wall_ns > now_ns().saturating_add(MAX_AHEAD_NS) {
            return last;
        }
        last.max(seen)
    }

    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_nanos(self.wall_ns)
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let a = Hlc::tick(Hlc::default(), 100);
        let b = Hlc::tick(a, 50);
        let c = Hlc::tick(b, 50);
        assert!(a < b && b < c);
        let d = Hlc::tick(c, 200);
        assert_eq!(
            d,
            Hlc {
                wall_ns: 200,
                counter: 0
            }
        );
    }
}
