//! What one client, or many, may cost the gateway.
//!
//! A stalled or slow client must cost a bounded amount no matter how many
//! there are: connections and in-flight requests are capped, request bodies
//! that stop moving are failed after an idle timeout, a client that stops
//! accepting response bytes is disconnected (`stall.rs`), bodies the gateway
//! reads whole have a deadline, and every byte the gateway buffers on a request's
//! behalf (a DeleteObjects document, a response document it rewrites) is
//! charged to one global [`Budget`]. Streaming bodies are never buffered: the
//! verifiers hold back at most the latest frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limits, all configurable (`s3gate serve|dataplane --help`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections; past it the gateway stops accepting until
    /// one closes (new connections wait in the kernel's backlog).
    pub max_connections: usize,
    /// Requests being handled at once, counted until their response has
    /// streamed; past it a request is answered at once with 503 SlowDown,
    /// which SDKs retry with backoff.
    pub max_requests: usize,
    /// How long a client may take to send a request head, and how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a request body may send nothing before the request fails
    /// with 400 RequestTimeout and the connection is closed.
    pub body_idle_timeout: Duration,
    /// Total time for a body the gateway reads whole before acting on it
    /// (a DeleteObjects document).
    pub body_deadline: Duration,
    /// How long a client may accept no response bytes before its connection
    /// is closed (a download read slowly still moves; one not read does not).
    pub send_timeout: Duration,
    /// Bytes the gateway may buffer for all requests together; past it a
    /// request that needs to buffer gets 503 SlowDown.
    pub buffer_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_requests: 1024,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            body_deadline: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            buffer_budget: 32 << 20,
        }
    }
}

/// A global count of buffered bytes with an upper bound. Cheap: one atomic.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

/// Bytes charged to a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// An empty reservation that can grow.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Bytes charged right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }
}

impl Reservation {
    /// Charges `n` more bytes; `false` (and nothing charged) when the budget
    /// cannot cover them.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.budget.try_take(n) {
            self.held += n;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_bounded_and_given_back() {
        let budget = Budget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow(60));
        assert!(!b.grow(50), "over the budget");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
