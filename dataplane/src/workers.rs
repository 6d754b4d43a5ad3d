//! Connection workers: single-threaded runtimes that own accepted
//! connections.
//!
//! On the multi-threaded runtime a connection's task, the backend
//! connection's task and the response body hop between threads: each hop is
//! a wake-up through the scheduler's shared queues and a cross-core cache
//! miss. A worker is one thread with its own current-thread runtime (its own
//! I/O driver and timers): a connection is handed to one worker at accept
//! and everything it spawns — hyper's tasks, the backend connection of that
//! worker's client (see `upstream`) — stays on that thread. The accept
//! loop, the control plane and everything else stay on the main runtime.
//!
//! Workers are started once per process and live as long as it does.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

/// The process's workers, once started.
static WORKERS: OnceLock<Arc<Workers>> = OnceLock::new();

thread_local! {
    /// On a worker's thread: its index.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Handles of the worker runtimes; connections are spread round robin.
pub struct Workers {
    handles: Box<[Handle]>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `n` workers (at least one), each a thread named
    /// `s3gate-worker-<i>`. A second call returns the workers of the first,
    /// whatever its `n`.
    pub fn start(n: usize) -> std::io::Result<Arc<Self>> {
        if let Some(started) = WORKERS.get() {
            return Ok(started.clone());
        }
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("s3gate-worker-{i}-blocking"))
                .build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("s3gate-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(Some(i)));
                    runtime.block_on(std::future::pending::<()>());
                })?;
        }
        let workers = Arc::new(Self {
            handles: handles.into_boxed_slice(),
            next: AtomicUsize::new(0),
        });
        // Two racing first calls: the loser's threads idle forever, which
        // costs nothing but their stacks; both callers get the winner's.
        Ok(WORKERS.get_or_init(|| workers).clone())
    }

    /// Runs `task` on the next worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }

    /// Runs `task` on worker `i`.
    #[cfg(test)]
    pub(crate) fn spawn_on<F>(&self, i: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handles[i % self.handles.len()].spawn(task));
    }

    /// The index of the worker this thread is, if it is one.
    pub fn current() -> Option<usize> {
        INDEX.with(Cell::get)
    }

    /// How many workers the process runs (0 before they start).
    pub fn count() -> usize {
        WORKERS.get().map_or(0, |w| w.handles.len())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_workers_and_know_their_index() {
        let workers = Workers::start(2).expect("workers start");
        assert_eq!(Workers::count(), 2);
        assert_eq!(Workers::current(), None);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((Workers::current(), name));
            });
        }
        let mut seen: Vec<_> = (0..4)
            .map(|_| {
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .expect("task ran")
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (Some(0), Some("s3gate-worker-0".to_owned())),
                (Some(0), Some("s3gate-worker-0".to_owned())),
                (Some(1), Some("s3gate-worker-1".to_owned())),
                (Some(1), Some("s3gate-worker-1".to_owned())),
            ]
        );
        // Started once per process.
        let again = Workers::start(5).expect("workers");
        assert!(Arc::ptr_eq(&workers, &again));
        assert_eq!(Workers::count(), 2);
    }
}
