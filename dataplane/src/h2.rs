//! HTTP/2 connections get the limits HTTP/1.1 ones have, per stream.
//!
//! On HTTP/1.1 one connection carries one request at a time, so the
//! connection's own timeouts bound a request: the header timeout closes an
//! idle connection, and a client that accepts no response bytes stalls the
//! socket until `stall::SendTimeout` closes it. On HTTP/2 many streams share
//! one socket, and a client can stop reading one stream (by granting it no
//! flow-control window) while the socket stays busy with others; hyper then
//! simply stops polling that response body, and the request would hold its
//! in-flight permit and its backend connection for as long as the client
//! liked. So, per HTTP/2 connection:
//!
//! - every response body is pumped through a one-frame channel
//!   ([`send_deadline`]); a frame the client's stream does not take within
//!   the send timeout ends the request (its permit and backend connection
//!   go) and closes the connection, as on HTTP/1.1;
//! - [`Activity`] counts the open streams, and a connection without any for
//!   the header timeout is closed (GOAWAY), as an idle HTTP/1.1 keep-alive
//!   connection is.
//!
//! Request bodies need nothing extra: the body idle timeout (`TimedBody`)
//! is per request already, and so is the in-flight cap.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::body::Body;
use crate::error::BoxError;

/// The streams of one HTTP/2 connection, as far as idling and stalling go.
pub(crate) struct Activity {
    start: Instant,
    /// Streams whose request is being handled or whose response streams.
    open: AtomicUsize,
    /// When `open` last dropped to zero, in ms since `start`.
    idle_since_ms: AtomicU64,
    /// A stream's client took no response bytes within the send timeout.
    stalled: AtomicBool,
    changed: Notify,
}

/// One open stream; dropping it closes the stream's account.
pub(crate) struct StreamGuard(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    pub(crate) fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves when the connection should end: [`Ending::Idle`] after
    /// `idle` without an open stream, [`Ending::Stalled`] once a stream
    /// stalled.
    pub(crate) async fn ending(&self, idle: Duration) -> Ending {
        loop {
            if self.stalled.load(Ordering::Acquire) {
                return Ending::Stalled;
            }
            if self.open.load(Ordering::Acquire) == 0 {
                let since = self.idle_since_ms.load(Ordering::Acquire);
                let deadline = self.start + Duration::from_millis(since) + idle;
                if Instant::now() >= deadline {
                    // Still idle: nothing opened since (a stream that opened
                    // and closed in between moved `idle_since`).
                    if self.open.load(Ordering::Acquire) == 0
                        && self.idle_since_ms.load(Ordering::Acquire) == since
                    {
                        return Ending::Idle;
                    }
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.changed.notified() => {}
                }
            } else {
                // `notify_one` keeps a wake-up for a waiter that is not
                // waiting yet, so a change between the check and here is
                // not lost.
                self.changed.notified().await;
            }
        }
    }
}

/// Why [`Activity::ending`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Idle,
    Stalled,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.0.now_ms();
            self.0.idle_since_ms.store(now, Ordering::Release);
            self.0.changed.notify_one();
        }
    }
}

/// `body`, handed to hyper one frame at a time by a task of its own, which
/// gives up when hyper has not taken the previous frame within `timeout`
/// (the client's stream window stayed shut): the body, with whatever it
/// holds (the in-flight permit, the backend connection), is dropped, the
/// stream fails, and `guard`'s connection is told to close.
pub(crate) fn send_deadline(body: Body, timeout: Duration, guard: StreamGuard) -> Body {
    let hint = body.size_hint();
    if body.is_end_stream() {
        return crate::body::holding(body, guard);
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    tokio::spawn(async move {
        let mut body = body;
        loop {
            let permit = match tokio::time::timeout(timeout, tx.reserve()).await {
                Ok(Ok(permit)) => permit,
                // hyper dropped the body: the stream is gone.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(
                        "HTTP/2 client accepted no response bytes within the send timeout; closing the connection"
                    );
                    guard.0.stall();
                    return;
                }
            };
            match body.frame().await {
                Some(Ok(frame)) => permit.send(Ok(frame)),
                Some(Err(e)) => {
                    permit.send(Err(e));
                    return;
                }
                None => {
                    done.store(true, Ordering::Release);
                    return;
                }
            }
        }
    });
    Pumped {
        rx,
        finished,
        failed: false,
        hint,
    }
    .boxed_unsync()
}

struct Pumped {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    /// Set by the pump when the body ended; a channel closed without it
    /// means the pump gave up, and the stream must fail, not end short.
    finished: Arc<AtomicBool>,
    /// The failure was reported: the body is over.
    failed: bool,
    hint: SizeHint,
}

impl HttpBody for Pumped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) if self.finished.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => {
                self.failed = true;
                Poll::Ready(Some(Err(
                    "the client accepted no response bytes within the send timeout".into(),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_ends_after_the_idle_time() {
        let activity = Activity::new();
        let guard = activity.open();
        let ending = tokio::spawn({
            let a = activity.clone();
            async move { a.ending(Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!ending.is_finished(), "ended with a stream open");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!ending.is_finished(), "ended before the idle time");
        // A stream that comes and goes restarts the clock.
        drop(activity.open());
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            !ending.is_finished(),
            "a stream did not restart the idle clock"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ending.await.unwrap(), Ending::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_takes_is_dropped_after_the_send_timeout() {
        struct Held(Arc<AtomicBool>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let frames = crate::body::frames(b"x", 3, false);
        let inner = crate::body::holding(frames, Held(dropped.clone()));
        let activity = Activity::new();
        let mut body = send_deadline(inner, Duration::from_secs(60), activity.open());
        // One frame is taken; then nobody reads.
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"x"));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!dropped.load(Ordering::Acquire));
        tokio::time::sleep(Duration::from_secs(62)).await;
        assert!(dropped.load(Ordering::Acquire), "the stalled body was kept");
        assert_eq!(
            activity.ending(Duration::from_secs(3600)).await,
            Ending::Stalled
        );
        // What was already queued is delivered; then the stream fails
        // instead of ending short.
        let mut results = Vec::new();
        while let Some(item) = body.frame().await {
            results.push(item.is_ok());
            assert!(results.len() < 10, "the body does not end: {results:?}");
        }
        assert_eq!(results, [true, false]);
    }

    #[tokio::test]
    async fn a_body_read_to_the_end_ends() {
        let activity = Activity::new();
        let body = send_deadline(
            crate::body::frames(b"x", 5, false),
            Duration::from_secs(60),
            activity.open(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"xxxxx");
    }
}
