//! `--bwlimit`: bytes per second through one process, reads and writes each held to it
//! separately (as rclone counts them), so a copy between two stores reads at the limit and
//! writes at the limit.
//!
//! A token bucket that lets a request run into debt: a request of `n` bytes takes `n` tokens
//! and waits until the bucket would have refilled what it owes. Requests are whole parts (MiB
//! each), far above any sensible burst, so waiting for them to fit a bucket would never end;
//! with debt each waits its turn and the rate over a transfer is the limit. A bucket idle for a
//! while holds at most a tenth of a second's worth, so an idle process cannot burst above it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    /// Negative: owed by the requests already let through.
    tokens: f64,
    last: Instant,
    /// Bytes per second; a transfer's limit shared by its workers changes as they come and go.
    rate: f64,
}

#[derive(Debug)]
pub struct Bandwidth {
    bucket: Mutex<Bucket>,
}

impl Bandwidth {
    /// `rate` bytes per second (at least one).
    pub fn new(rate: u64) -> Self {
        Self::starting(rate, Instant::now())
    }

    /// An empty bucket at `now`.
    fn starting(rate: u64, now: Instant) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: now,
                rate: rate.max(1) as f64,
            }),
        }
    }

    /// From now on, `rate` bytes per second (at least one).
    pub fn set_rate(&self, rate: u64) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.rate = rate.max(1) as f64;
    }

    /// How long a request of `n` bytes at `now` waits before it goes.
    pub fn charge(&self, n: u64, now: Instant) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.rate / 10.0);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / b.rate)
        }
    }

    /// Wait until `n` more bytes may go.
    pub async fn take(&self, n: u64) {
        let wait = self.charge(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A limit each way: bytes read from sources and bytes written to destinations, each held to
/// the rate on its own (one process's `--bwlimit`, or a worker's share of a transfer's).
#[derive(Debug)]
pub struct Duplex {
    reads: Bandwidth,
    writes: Bandwidth,
}

impl Duplex {
    pub fn new(rate: u64) -> Self {
        Self {
            reads: Bandwidth::new(rate),
            writes: Bandwidth::new(rate),
        }
    }

    /// From now on, `rate` bytes per second each way.
    pub fn set_rate(&self, rate: u64) {
        self.reads.set_rate(rate);
        self.writes.set_rate(rate);
    }

    /// Wait until `n` more bytes may be read.
    pub async fn read(&self, n: u64) {
        self.reads.take(n).await;
    }

    /// Wait until `n` more bytes may be written.
    pub async fn write(&self, n: u64) {
        self.writes.take(n).await;
    }

    /// Wait until `n` more bytes may be read and written at once (a streamed part, or bytes
    /// paid for ahead of their move): the two limits are paid together, not one after the
    /// other.
    pub async fn both(&self, n: u64) {
        tokio::join!(self.reads.take(n), self.writes.take(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_their_turn_and_the_rate_is_the_limit() {
        let t0 = Instant::now();
        let bw = Bandwidth::starting(10 << 20, t0);
        // Ten parts of 8 MiB asked for at once: the last waits for 80 MiB at 10 MiB/s.
        let waits: Vec<Duration> = (0..10).map(|_| bw.charge(8 << 20, t0)).collect();
        assert!((waits[0].as_secs_f64() - 0.8).abs() < 1e-6, "{waits:?}");
        assert!((waits[9].as_secs_f64() - 8.0).abs() < 1e-6, "{waits:?}");
        // Eight seconds on, the debt is paid: the next part waits for itself only.
        let w = bw.charge(8 << 20, t0 + Duration::from_secs(8));
        assert!((w.as_secs_f64() - 0.8).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn an_idle_bucket_holds_a_tenth_of_a_second() {
        let t0 = Instant::now();
        let bw = Bandwidth::starting(1000, t0);
        assert_eq!(bw.charge(0, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(bw.charge(100, t0 + Duration::from_secs(60)), Duration::ZERO);
        let w = bw.charge(100, t0 + Duration::from_secs(60));
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
    }
}
