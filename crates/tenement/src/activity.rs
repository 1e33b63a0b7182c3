//! What counts as activity for scale to zero: requests, streams and websockets in flight, and
//! when the last one ended. Health checks are not activity. Shared by the proxy (which holds an
//! [`ActivityGuard`] for as long as a request, response body or tunnel is open) and the
//! instance actor (which puts the instance to sleep after `idle_timeout` without any).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicU32,
    last_ms: AtomicU64,
    weight: AtomicU8,
}

impl Activity {
    pub fn new(weight: u8) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            last_ms: AtomicU64::new(now_ms()),
            weight: AtomicU8::new(weight),
        }
    }

    /// Counts something in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        // No touch: while anything is in flight the instance is not idle, and the guard
        // touches when it ends.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        ActivityGuard(self.clone())
    }

    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// When the instance became idle, or `None` while something is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        Some(epoch() + Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }

    pub fn weight(&self) -> u8 {
        self.weight.load(Ordering::SeqCst)
    }

    pub fn set_weight(&self, w: u8) {
        self.weight.store(w, Ordering::SeqCst);
    }
}

/// Keeps an instance awake while it lives.
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_touch() {
        let a = Arc::new(Activity::new(100));
        let before = a.idle_since().unwrap();
        let g1 = a.begin();
        let g2 = a.begin();
        assert_eq!(a.in_flight(), 2);
        assert!(a.idle_since().is_none(), "busy while anything is in flight");
        drop(g1);
        assert!(a.idle_since().is_none());
        std::thread::sleep(Duration::from_millis(5));
        drop(g2);
        assert!(
            a.idle_since().unwrap() > before,
            "the end of the last request is the idle start"
        );
    }
}
