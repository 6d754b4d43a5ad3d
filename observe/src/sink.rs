//! Where log lines go (the log on stderr, the audit log): a buffer in memory that a dedicated thread writes out
//! in batches, so that a request never waits for a `write(2)` nor for a slow
//! log consumer.
//!
//! Each formatted line (the access log is one per request) is appended to a
//! shared buffer under a mutex held only for that copy. The writer thread
//! wakes when the buffer goes from empty to non-empty, lets lines gather for
//! up to [`GATHER`] (less if [`BATCH_BYTES`] pile up first), then writes them
//! with one call. At tens of thousands of requests per second that is a few
//! dozen writes per second instead of one per request, and no wake-up per line.
//!
//! tracing-appender's non-blocking writer was tried first: its worker writes
//! and flushes each line as it arrives and spins with `sched_yield` while
//! waiting for the next, which on two cores cost more than the `write(2)` it
//! took off the request path.
//!
//! If the consumer stalls and [`MAX_PENDING_BYTES`] are waiting, new lines
//! are dropped and counted ([`LogSink::dropped_lines`]) rather than blocking
//! requests or growing memory without bound.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long lines may wait in memory before they are written.
pub const GATHER: Duration = Duration::from_millis(20);
/// Write earlier once this much is waiting.
pub const BATCH_BYTES: usize = 256 << 10;
/// Beyond this, lines are dropped (the consumer is not keeping up).
pub const MAX_PENDING_BYTES: usize = 16 << 20;

struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    /// Which stream, for the dropped-lines metric (`log`, `audit`).
    name: &'static str,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves at worst a torn line.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to tracing-subscriber. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Writes out what is still buffered and stops the writer thread when dropped.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogSink {
    /// Starts the writer thread for `out`; `name` says which stream it is
    /// in the dropped-lines metric.
    pub fn start<W: Write + Send + 'static>(
        name: &'static str,
        out: W,
    ) -> std::io::Result<(LogSink, FlushOnDrop)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(BATCH_BYTES),
                closed: false,
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            name,
        });
        let thread = std::thread::Builder::new()
            .name(format!("s3gate-{name}"))
            .spawn({
                let shared = shared.clone();
                move || write_batches(&shared, out)
            })?;
        Ok((
            LogSink {
                shared: shared.clone(),
            },
            FlushOnDrop {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Lines dropped so far because the consumer was not keeping up.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues one whole line (with its newline) without waiting.
    pub fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        let before = pending.buf.len();
        if before + line.len() > MAX_PENDING_BYTES {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics().log_line_dropped(self.shared.name);
            return;
        }
        pending.buf.extend_from_slice(line);
        let after = pending.buf.len();
        drop(pending);
        // Wake the writer only to start a batch or to cut a big one short.
        if before == 0 || (before < BATCH_BYTES && after >= BATCH_BYTES) {
            self.shared.wake.notify_one();
        }
    }
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let mut pending = shared.lock();
        while pending.buf.is_empty() && !pending.closed {
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if pending.buf.is_empty() {
            return; // closed and nothing left
        }
        if !pending.closed && pending.buf.len() < BATCH_BYTES {
            pending = shared
                .wake
                .wait_timeout_while(pending, GATHER, |p| !p.closed && p.buf.len() < BATCH_BYTES)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        std::mem::swap(&mut pending.buf, &mut batch);
        drop(pending);
        // Nowhere to report a failing log stream; the lines are lost either way.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 4 * BATCH_BYTES {
            batch = Vec::with_capacity(BATCH_BYTES);
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's bytes: tracing-subscriber formats a whole line, then writes it
/// through this with a single `write_all`.
pub struct LineWriter<'a>(&'a LogSink);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An `io::Write` that records each write call, and can be made to hang.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.writes.lock().unwrap().concat()).unwrap()
        }
        fn calls(&self) -> usize {
            self.writes.lock().unwrap().len()
        }
    }

    fn line(sink: &LogSink, s: &str) {
        sink.make_writer().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_in_order_batched_and_soon() {
        let rec = Recorder::default();
        let (sink, guard) = LogSink::start("test", rec.clone()).unwrap();
        for i in 0..1000 {
            line(&sink, &format!("line {i}\n"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while rec.text().lines().count() < 1000 {
            assert!(Instant::now() < deadline, "lines not written within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(rec.text(), expected);
        // 1000 lines written in a burst gather into a few writes.
        assert!(rec.calls() < 50, "{} writes for 1000 lines", rec.calls());
        drop(guard);
    }

    #[test]
    fn drop_flushes_what_is_pending() {
        let rec = Recorder::default();
        let (sink, guard) = LogSink::start("test", rec.clone()).unwrap();
        line(&sink, "last words\n");
        drop(guard);
        assert_eq!(rec.text(), "last words\n");
    }

    #[test]
    fn a_stalled_consumer_costs_lines_not_requests() {
        let rec = Recorder::default();
        let stall = rec.gate.lock().unwrap();
        let (sink, guard) = LogSink::start("test", rec.clone()).unwrap();
        // Let the writer thread take the first batch and block in write().
        line(&sink, "first\n");
        std::thread::sleep(GATHER * 3);
        let big = "x".repeat(1 << 20) + "\n";
        let start = Instant::now();
        for _ in 0..40 {
            line(&sink, &big);
        }
        // Never blocked on the stalled consumer...
        assert!(start.elapsed() < Duration::from_secs(2));
        // ...and bounded: 16 MiB fit, the rest is counted as dropped.
        let dropped = sink.dropped_lines();
        assert!(
            (40 - 16..=40 - 15).contains(&dropped),
            "dropped {dropped} of 40"
        );
        drop(stall);
        drop(guard);
        let text = rec.text();
        assert!(text.starts_with("first\n"));
        assert_eq!(
            text.len(),
            "first\n".len() + (40 - dropped as usize) * big.len()
        );
    }
}
