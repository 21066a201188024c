//! How many parts a worker reads at once: as many as raise its throughput, and no more.
//!
//! A worker behind a link that two parts already fill gains nothing from a sixteenth: the
//! other fourteen only sit in its claims, each moving at a sixteenth of the link, while a worker
//! that joins later (or a faster one) finds nothing to claim. So the number of parts a worker
//! reads at once (a part whose bytes are in hand only writes them, and does not count) is found
//! by climbing: start at two, double while a measured window of completed parts shows at least
//! 10% more throughput than the best level so far, settle on the best level when it does not,
//! and try one more now and then (other workers come and go, links change). On a fast link
//! throughput keeps rising and the climb reaches `--concurrency` in a few windows; on a slow one
//! it stops where the link is full. Near the end of a transfer, [`fair_share`] caps it further.

use std::time::{Duration, Instant};

/// How many more parts a worker reading `reading` parts may start, by its share of the `ready`
/// parts left split evenly among it and the `others` holding parts of the same queue. Near the
/// end of a transfer this leaves the last parts to workers whose links are free, instead of
/// one worker reading several at a fraction of its link while the others finish and wait. A
/// worker reading nothing may always start one.
pub fn fair_share(ready: u64, others: u64, reading: usize) -> usize {
    let share = ready.div_ceil(others.saturating_add(1));
    let allowed = usize::try_from(share)
        .unwrap_or(usize::MAX)
        .saturating_sub(reading);
    if reading == 0 {
        allowed.max(1)
    } else {
        allowed
    }
}

/// A window of completions is measured once it holds this many parts per part in flight...
const PARTS_PER_LEVEL: u32 = 1;
/// ...and lasts at least this long (short windows on fast links are all noise).
const MIN_WINDOW: Duration = Duration::from_millis(500);
/// A level must beat the best one by this factor to count as a gain: a part more in flight
/// lengthens every part's time in the worker's hands, so a small gain is not worth it.
const GAIN: f64 = 1.10;
/// Windows spent settled before one more part is tried again.
const SETTLED_WINDOWS: u32 = 8;

#[derive(Debug)]
pub struct Pace {
    max: usize,
    target: usize,
    best: Option<(usize, f64)>,
    settled: u32,
    /// Still doubling: no level has failed to gain yet.
    climbing: bool,
    window_start: Instant,
    window_bytes: u64,
    window_parts: u32,
    /// The first window is not measured: it holds connection set-up and TCP's slow start.
    warm: bool,
}

impl Pace {
    /// Up to `max` parts (`--concurrency`).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            target: max.min(2),
            best: None,
            settled: 0,
            climbing: true,
            window_start: Instant::now(),
            window_bytes: 0,
            window_parts: 0,
            warm: false,
        }
    }

    /// How many parts to hold now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The worker had nothing to do: the next window starts fresh (time spent idle is not a
    /// rate).
    pub fn idle(&mut self, now: Instant) {
        self.window_start = now;
        self.window_bytes = 0;
        self.window_parts = 0;
    }

    /// A part of `bytes` finished at `now` while the worker held `held` parts (a window counts
    /// only while the worker used the level it measures).
    pub fn part_done(&mut self, bytes: u64, held: usize, now: Instant) {
        self.window_bytes += bytes;
        self.window_parts += 1;
        let elapsed = now.saturating_duration_since(self.window_start);
        if self.window_parts < PARTS_PER_LEVEL * self.target as u32 || elapsed < MIN_WINDOW {
            return;
        }
        let rate = self.window_bytes as f64 / elapsed.as_secs_f64();
        let full = held + 1 >= self.target;
        self.idle(now);
        if !full {
            // Fewer parts were left to claim than the level allows: it says nothing.
            return;
        }
        if !self.warm {
            self.warm = true;
            return;
        }
        match self.best {
            Some((k, best_rate)) if rate < best_rate * GAIN => {
                // No gain: back to the best level, and stay a while.
                self.climbing = false;
                if self.target == k {
                    // Settled here: the rate of this level as measured now (links change).
                    self.best = Some((k, rate.max(best_rate * 0.9)));
                    self.settled += 1;
                    if self.settled >= SETTLED_WINDOWS && k < self.max {
                        self.settled = 0;
                        self.target = k + 1;
                    }
                } else {
                    self.target = k;
                    self.settled = 0;
                }
            }
            _ => {
                self.best = Some((self.target, rate));
                self.settled = 0;
                self.target = if self.climbing {
                    (self.target * 2).min(self.max)
                } else {
                    (self.target + 1).min(self.max)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `pace` against a link that moves `rate(k)` bytes per second with k parts in flight,
    /// `part` bytes each, for `secs` simulated seconds; the levels it used.
    fn simulate(pace: &mut Pace, rate: impl Fn(usize) -> f64, part: u64, secs: f64) -> Vec<usize> {
        let t0 = Instant::now();
        let mut t = 0.0;
        let mut levels = Vec::new();
        pace.idle(t0);
        while t < secs {
            let k = pace.target();
            // k parts finish together after k * part / rate(k) seconds.
            t += k as f64 * part as f64 / rate(k);
            let now = t0 + Duration::from_secs_f64(t);
            for _ in 0..k {
                pace.part_done(part, k - 1, now);
            }
            levels.push(k);
        }
        levels
    }

    #[test]
    fn a_slow_link_is_filled_by_few_parts() {
        // 12.5 MB/s however many parts: the link is full at one.
        let mut p = Pace::new(16);
        let levels = simulate(&mut p, |_| 12.5e6, 8 << 20, 120.0);
        let late = &levels[levels.len() / 2..];
        assert!(late.iter().all(|&k| k <= 3), "{levels:?}");
        assert!(p.target() <= 3);
    }

    #[test]
    fn a_fast_link_climbs_to_the_concurrency() {
        // Each part moves at 100 MB/s on its own; the server saturates far above 16 parts.
        let mut p = Pace::new(16);
        let levels = simulate(&mut p, |k| 100e6 * k as f64, 8 << 20, 30.0);
        assert_eq!(p.target(), 16, "{levels:?}");
        // Each level is measured over half a second (here 6 rounds of 84 ms), after one window
        // of warm-up: 16 within two seconds.
        let reached = levels.iter().position(|&k| k == 16).expect("reaches 16");
        assert!(reached <= 4 * 6, "{levels:?}");
    }

    #[test]
    fn a_link_that_saturates_at_four_settles_near_four() {
        let mut p = Pace::new(16);
        let levels = simulate(&mut p, |k| 50e6 * (k.min(4) as f64), 8 << 20, 120.0);
        let late = &levels[levels.len() / 2..];
        assert!(late.iter().all(|&k| (4..=8).contains(&k)), "{levels:?}");
    }

    #[test]
    fn the_last_parts_go_to_workers_reading_none() {
        // Plenty left: the share does not limit the pace.
        assert_eq!(fair_share(40, 3, 2), 8);
        // Seven left among four workers: two each, counting what each reads already.
        assert_eq!(fair_share(7, 3, 0), 2);
        assert_eq!(fair_share(7, 3, 1), 1);
        assert_eq!(fair_share(7, 3, 2), 0);
        // Fewer left than workers: only a worker reading nothing takes one.
        assert_eq!(fair_share(2, 3, 1), 0);
        assert_eq!(fair_share(2, 3, 0), 1);
        // Alone on the queue, a worker takes them all.
        assert_eq!(fair_share(5, 0, 1), 4);
        // Nothing ready: nothing to take, whatever the count says.
        assert_eq!(fair_share(0, 0, 2), 0);
        assert_eq!(fair_share(u64::MAX, u64::MAX, 0), 1);
    }

    #[test]
    fn one_part_at_most_is_one() {
        let mut p = Pace::new(1);
        simulate(&mut p, |_| 1e6, 1 << 20, 10.0);
        assert_eq!(p.target(), 1);
    }
}
