//! Requests in flight to one store, lowered when it throttles and raised as it answers clean.
//!
//! A store that answers `503 SlowDown` (or 429) is asking for fewer requests, not for the same
//! ones again after a pause: retrying each with backoff alone keeps the pressure that caused
//! it. So each store has a gate: a limit on the data requests in flight to it, halved when it
//! throttles (at most once per [`CUT_EVERY`], since every request in flight at that moment
//! tends to be refused together) and raised by one for each limit's worth of clean answers
//! (additive increase, multiplicative decrease, as TCP does), up to the `--concurrency` it
//! started at.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One cut per burst of refusals.
pub const CUT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    last_cut: Option<Instant>,
}

/// The gate of one store.
#[derive(Debug)]
pub struct Gate {
    store: String,
    max: usize,
    /// Until a store first throttles its gate only lets requests through, uncounted: a run
    /// against a store that never throttles pays no lock per request.
    closing: AtomicBool,
    state: Mutex<State>,
    wake: Notify,
}

impl Gate {
    pub fn new(store: &str, max: usize) -> Self {
        let max = max.max(1);
        Self {
            store: store.to_string(),
            max,
            closing: AtomicBool::new(false),
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                last_cut: None,
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests allowed in flight now.
    pub fn limit(&self) -> usize {
        (self.state().limit as usize).clamp(1, self.max)
    }

    /// Wait for room under the limit; the pass holds it until dropped.
    pub async fn enter(self: &Arc<Self>) -> Pass {
        if !self.closing.load(Ordering::Acquire) {
            return Pass {
                gate: self.clone(),
                counted: false,
            };
        }
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a pass dropped in between still wakes us.
            woken.as_mut().enable();
            {
                let mut s = self.state();
                if s.in_flight < (s.limit as usize).clamp(1, self.max) {
                    s.in_flight += 1;
                    return Pass {
                        gate: self.clone(),
                        counted: true,
                    };
                }
            }
            woken.await;
        }
    }

    /// The store throttled a request at `now`: halve the limit, unless it was cut within
    /// [`CUT_EVERY`]. Returns the new limit when it was cut.
    pub fn throttled(&self, now: Instant) -> Option<usize> {
        let mut s = self.state();
        if s.last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < CUT_EVERY)
        {
            return None;
        }
        s.last_cut = Some(now);
        s.limit = (s.limit / 2.0).max(1.0);
        // Requests let through uncounted before this are not in `in_flight`: for as long as
        // they run, a few more than the limit are out.
        self.closing.store(true, Ordering::Release);
        let limit = s.limit as usize;
        drop(s);
        tracing::warn!(
            "{} is throttling: requests in flight to it lowered to {limit}",
            self.store
        );
        Some(limit)
    }

    /// A request was answered without throttling: one more in flight per limit's worth.
    pub fn clean(&self) {
        if !self.closing.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.state();
        if s.limit < self.max as f64 {
            let before = s.limit as usize;
            s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
            if s.limit as usize > before {
                drop(s);
                self.wake.notify_one();
            }
        }
    }
}

/// A request's place under its store's limit.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    counted: bool,
}

impl Pass {
    /// The request was answered without throttling.
    pub fn clean(&self) {
        self.gate.clean();
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut s = self.gate.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        drop(s);
        self.gate.wake.notify_one();
    }
}

/// The gates of the stores a process talks to, by store name.
#[derive(Debug, Default)]
pub struct Gates {
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Gates {
    /// `store`'s gate, opened at `max` requests the first time.
    pub fn gate(&self, store: &str, max: usize) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gates.get(store) {
            return g.clone();
        }
        let g = Arc::new(Gate::new(store, max));
        gates.insert(store.to_string(), g.clone());
        g
    }

    /// `store`'s gate if it has one.
    pub fn get(&self, store: &str) -> Option<Arc<Gate>> {
        self.gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(store)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_halves_once_per_burst_and_clean_answers_climb_back() {
        let g = Gate::new("s", 16);
        let t0 = Instant::now();
        assert_eq!(g.throttled(t0), Some(8));
        // The rest of the burst: no further cut.
        assert_eq!(g.throttled(t0 + Duration::from_millis(300)), None);
        assert_eq!(g.limit(), 8);
        assert_eq!(g.throttled(t0 + CUT_EVERY), Some(4));
        for i in 0..20 {
            assert!(g.throttled(t0 + CUT_EVERY * (2 + i)).is_some());
        }
        assert_eq!(g.limit(), 1, "never below one");
        // Additive: about one more per limit's worth of clean answers (1/limit each).
        g.clean();
        assert_eq!(g.limit(), 2);
        g.clean();
        g.clean();
        assert_eq!(g.limit(), 2, "2.5, then 2.9");
        g.clean();
        assert_eq!(g.limit(), 3);
        for _ in 0..1000 {
            g.clean();
        }
        assert_eq!(g.limit(), 16, "never above where it started");
    }

    #[tokio::test]
    async fn a_request_waits_for_room_under_the_limit() {
        let g = Arc::new(Gate::new("s", 4));
        g.throttled(Instant::now());
        g.throttled(Instant::now() + CUT_EVERY);
        assert_eq!(g.limit(), 1);
        let first = g.enter().await;
        let waiting = tokio::spawn({
            let g = g.clone();
            async move {
                let _p = g.enter().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a second request waits at a limit of one"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("let in once the first is done")
            .expect("task");
    }

    #[test]
    fn each_store_has_its_own_gate() {
        let gates = Gates::default();
        let a = gates.gate("a", 8);
        a.throttled(Instant::now());
        assert_eq!(gates.gate("a", 8).limit(), 4);
        assert_eq!(gates.gate("b", 8).limit(), 8);
        assert!(gates.get("c").is_none());
    }
}
