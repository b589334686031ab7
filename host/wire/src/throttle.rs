//! Rate-limited warnings for input a peer controls.
//!
//! A node warns about every malformed request, and a peer that floods it
//! with garbage would otherwise flood the log too. [`warn_throttled!`] lets
//! through at most [`BURST`] warnings per call site per second and then says
//! how many it suppressed.
//!
//! [`warn_throttled!`]: crate::warn_throttled

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Warnings let through per call site per second.
pub const BURST: u32 = 10;

/// One call site's budget (approximate under races, never blocking).
#[derive(Debug, Default)]
pub struct Throttle {
    window_ms: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

/// Milliseconds on a process-local clock that starts an hour in, so that a
/// fresh budget (window 0) always opens a new window.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 3_600_000
}

impl Throttle {
    /// A fresh budget.
    pub const fn new() -> Self {
        Throttle {
            window_ms: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this event may be logged, `n` being how many were
    /// suppressed since the last one that was; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let start = self.window_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= 1000
            && self
                .window_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `tracing::warn!`, at most [`BURST`] times per second at this call site.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle = $crate::throttle::Throttle::new();
        if let Some(suppressed) = THROTTLE.allow() {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, "similar warnings suppressed");
            }
            ::tracing::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts() {
        let t = Throttle::new();
        for _ in 0..BURST {
            assert_eq!(t.allow(), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        // A new window reports what was suppressed.
        t.window_ms.store(now_ms() - 1000, Ordering::Relaxed);
        assert_eq!(t.allow(), Some(5));
    }
}
