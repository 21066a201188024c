//! A worker's Prometheus metrics: what `barge worker --metrics-addr` serves.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub bytes_moved: Counter,
    pub parts_done: Counter,
    pub parts_failed: Counter,
    pub files_completed: Counter,
    pub files_failed: Counter,
    pub retries: Counter,
    pub throttled: Counter,
    pub leases_reclaimed: Counter,
    pub parts_in_flight: Gauge,
    pub claim_seconds: Histogram,
    /// The engine counts retries and throttling itself; each scrape adds what is new since the
    /// last.
    retries_seen: AtomicU64,
    throttled_seen: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("barge");
        let m = Self {
            registry: Registry::default(),
            bytes_moved: Counter::default(),
            parts_done: Counter::default(),
            parts_failed: Counter::default(),
            files_completed: Counter::default(),
            files_failed: Counter::default(),
            retries: Counter::default(),
            throttled: Counter::default(),
            leases_reclaimed: Counter::default(),
            parts_in_flight: Gauge::default(),
            claim_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            retries_seen: AtomicU64::new(0),
            throttled_seen: AtomicU64::new(0),
        };
        registry.register(
            "bytes_moved",
            "Object bytes this worker moved through itself (server-side copies move none)",
            m.bytes_moved.clone(),
        );
        registry.register(
            "parts_done",
            "Parts moved and recorded",
            m.parts_done.clone(),
        );
        registry.register(
            "parts_failed",
            "Parts that failed after every retry",
            m.parts_failed.clone(),
        );
        registry.register(
            "files_completed",
            "Files this worker completed and verified",
            m.files_completed.clone(),
        );
        registry.register("files_failed", "Files that failed", m.files_failed.clone());
        registry.register(
            "retries",
            "Requests retried (throttling, 5xx, timeouts, dropped connections)",
            m.retries.clone(),
        );
        registry.register(
            "throttled",
            "Answers that asked for fewer requests (503 SlowDown, 429); each lowers the requests in flight to its store for a while",
            m.throttled.clone(),
        );
        registry.register(
            "leases_reclaimed",
            "Expired leases of other workers put back to work",
            m.leases_reclaimed.clone(),
        );
        registry.register(
            "tasks_in_flight",
            "Tasks (mostly parts) this worker is working on",
            m.parts_in_flight.clone(),
        );
        registry.register(
            "claim_seconds",
            "Time to claim work from the journal",
            m.claim_seconds.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text format, with the engine's retry and throttling counts brought up to
    /// date.
    pub fn render(&self, engine_retries: u64, engine_throttled: u64) -> String {
        let seen = self.retries_seen.swap(engine_retries, Ordering::Relaxed);
        self.retries.inc_by(engine_retries.saturating_sub(seen));
        let seen = self
            .throttled_seen
            .swap(engine_throttled, Ordering::Relaxed);
        self.throttled.inc_by(engine_throttled.saturating_sub(seen));
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
