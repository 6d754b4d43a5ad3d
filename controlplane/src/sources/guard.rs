//! What every source reached over the network (OPA, SQL, a plugin) is asked
//! through: a timeout per answer and a circuit breaker, so that a dead
//! source costs one timeout per cool-down, not one per request.
//!
//! Closed: calls go through; `FAILURES_TO_OPEN` failures in a row open it.
//! Open: calls fail at once ("cannot decide", never an allow) until the
//! cool-down has passed. Then one call at a time is let through as a probe
//! (half-open): a success closes the breaker, a failure opens it for
//! another cool-down. Lock-free: two atomics.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::SourceError;

/// Failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;

/// How long an open breaker fails calls before it lets a probe through.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

/// Timeout and breaker of one source.
pub struct Guard {
    source_name: &'static str,
    timeout: Duration,
    cool_down: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0: closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Guard {
    pub fn new(source_name: &'static str, timeout: Duration) -> Self {
        Self::with_cool_down(source_name, timeout, COOL_DOWN)
    }

    pub fn with_cool_down(
        source_name: &'static str,
        timeout: Duration,
        cool_down: Duration,
    ) -> Self {
        Self {
            source_name,
            timeout,
            cool_down,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `call` within the timeout, unless the breaker is open. A
    /// timeout or an error counts as a failure; an answer (whatever it
    /// says) as a success. Refusals ([`SourceError::refused`]) are answers.
    pub async fn run<T, F>(&self, call: F) -> Result<T, SourceError>
    where
        F: Future<Output = Result<T, SourceError>>,
    {
        self.admit()?;
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SourceError::new(
                self.source_name,
                format!("no answer within {:?}", self.timeout),
            )),
        };
        match &outcome {
            Err(e) if e.refusal.is_none() => self.failed(),
            _ => self.succeeded(),
        }
        outcome
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "closed".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Lets the call through, or fails it while the breaker is open.
    fn admit(&self) -> Result<(), SourceError> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        // Half-open: the first caller past the cool-down moves the
        // deadline on and probes; everyone else still fails fast.
        if now >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now + self.cool_down.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Ok(());
        }
        Err(SourceError::new(
            self.source_name,
            "not asked: it failed repeatedly and is cooling down",
        ))
    }

    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= FAILURES_TO_OPEN {
            let until = self.now_ms() + self.cool_down.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Release);
        }
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Acquire) != 0 {
            self.failures.store(0, Ordering::Release);
        }
        if self.open_until_ms.load(Ordering::Acquire) != 0 {
            self.open_until_ms.store(0, Ordering::Release);
        }
    }

    /// Whether calls currently fail fast (for Explain and metrics).
    pub fn is_open(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fail() -> Result<(), SourceError> {
        Err(SourceError::new("t", "down"))
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_failure_not_an_allow() {
        let guard = Guard::new("t", Duration::from_millis(20));
        let err = guard
            .run(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(true)
            })
            .await
            .unwrap_err();
        assert!(err.refusal.is_none());
        assert!(err.message.contains("no answer within"), "{err}");
    }

    #[tokio::test]
    async fn opens_after_repeated_failures_and_fails_fast() {
        let guard = Guard::with_cool_down("t", Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..FAILURES_TO_OPEN {
            guard.run(async { fail() }).await.unwrap_err();
        }
        assert!(guard.is_open());
        let asked = std::sync::atomic::AtomicBool::new(false);
        let err = guard
            .run(async {
                asked.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            !asked.load(Ordering::SeqCst),
            "an open breaker asked the source"
        );
        assert!(err.message.contains("cooling down"), "{err}");
    }

    #[tokio::test]
    async fn one_probe_after_the_cool_down_closes_it_on_success() {
        let guard = Guard::with_cool_down("t", Duration::from_secs(1), Duration::from_millis(30));
        for _ in 0..FAILURES_TO_OPEN {
            guard.run(async { fail() }).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        // The probe fails: open again for another cool-down.
        guard.run(async { fail() }).await.unwrap_err();
        assert!(guard.is_open());
        guard.run(async { Ok(()) }).await.unwrap_err();
        tokio::time::sleep(Duration::from_millis(40)).await;
        guard.run(async { Ok(()) }).await.unwrap();
        assert!(!guard.is_open());
        guard.run(async { Ok(()) }).await.unwrap();
    }

    #[tokio::test]
    async fn failures_below_the_threshold_do_not_open_it() {
        let guard = Guard::new("t", Duration::from_secs(1));
        for _ in 0..FAILURES_TO_OPEN - 1 {
            guard.run(async { fail() }).await.unwrap_err();
        }
        guard.run(async { Ok(()) }).await.unwrap();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            guard.run(async { fail() }).await.unwrap_err();
        }
        assert!(!guard.is_open());
    }
}
