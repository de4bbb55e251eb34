//! One contract for background work.
//!
//! Every loop the origin runs beside its requests — the partition workers,
//! the log writer, the flusher, the pusher, the deriver and its collector,
//! the rolling regeneration, the counter folder — is a [`Worker`]: a named
//! value whose `run` takes a [`Shutdown`] and returns when it fires. Every
//! pause inside a worker races the signal ([`Shutdown::sleep`],
//! [`Shutdown::or`]), so a stop is never held up by a timer. Workers that
//! must finish something on the way out (the flusher stores its backlog,
//! the counter folder applies its pending sums) do it before
//! [`Shutdown::drain_deadline`].
//!
//! Workers are spawned into a [`Tasks`] group, and groups stop one after
//! another, which is how the server's shutdown order reads as a list (see
//! `server.rs`). Nothing is spawned detached: a group that is stopped waits
//! for each of its workers until the deadline and aborts, with a log line,
//! any that overstays. The shape follows garage's background `Worker`
//! (`work`, an interruptible wait, an exit deadline) and slatedb's
//! dispatcher (handlers drained on cancel).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long past its drain deadline a group waits before it aborts a
/// worker: a worker that drains until the deadline (the flusher) still gets
/// to finish its bookkeeping and log what it left.
const GRACE: Duration = Duration::from_millis(500);

/// A background loop.
pub(crate) trait Worker: Send + 'static {
    /// The name in logs.
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` fires (then drains, if it has anything to
    /// drain, until [`Shutdown::drain_deadline`]).
    fn run(self, shutdown: Shutdown) -> impl Future<Output = ()> + Send;
}

/// The stop signal of one group of workers, with the deadline by which
/// they must have drained.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shutdown {
    token: CancellationToken,
    deadline: Arc<OnceLock<Instant>>,
}

impl Shutdown {
    /// A signal that has not fired.
    pub(crate) fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Fires the signal; workers have until `drain` from now to finish.
    pub(crate) fn fire(&self, drain: Duration) {
        let _ = self.deadline.set(Instant::now() + drain);
        self.token.cancel();
    }

    /// Whether the signal has fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the signal fires.
    pub(crate) async fn fired(&self) {
        self.token.cancelled().await;
    }

    /// When draining must be over (now, if the signal has not fired: a
    /// worker that asks before the signal has nothing to wait for).
    pub(crate) fn drain_deadline(&self) -> Instant {
        self.deadline.get().copied().unwrap_or_else(Instant::now)
    }

    /// Sleeps for `pause`; `false` if the signal fired first.
    pub(crate) async fn sleep(&self, pause: Duration) -> bool {
        self.sleep_until(Instant::now() + pause).await
    }

    /// Sleeps until `at`; `false` if the signal fired first.
    pub(crate) async fn sleep_until(&self, at: Instant) -> bool {
        self.or(tokio::time::sleep_until(at)).await.is_some()
    }

    /// Runs `work` unless the signal fires first (`None`).
    pub(crate) async fn or<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = self.token.cancelled() => None,
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for (a
/// branch of a `select!` that races other wake-ups).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A group of workers that stop together.
#[derive(Debug)]
pub(crate) struct Tasks {
    group: &'static str,
    shutdown: Shutdown,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// An empty group, named for logs.
    pub(crate) fn new(group: &'static str) -> Tasks {
        Tasks {
            group,
            shutdown: Shutdown::new(),
            running: Vec::new(),
        }
    }

    /// Starts a worker in this group.
    pub(crate) fn spawn(&mut self, worker: impl Worker) {
        let name = worker.name();
        let shutdown = self.shutdown.clone();
        self.running
            .push((name, tokio::spawn(worker.run(shutdown))));
    }

    /// Fires the group's signal, gives its workers `drain` to finish (and a
    /// short grace), and aborts any that take longer. Returns whether all
    /// finished in time.
    pub(crate) async fn stop(mut self, drain: Duration) -> bool {
        self.shutdown.fire(drain);
        let deadline = self.shutdown.drain_deadline() + GRACE;
        let mut clean = true;
        for (name, mut handle) in std::mem::take(&mut self.running) {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    clean = false;
                    tracing::error!(group = self.group, worker = name, error = %e, "background worker failed");
                }
                Err(_) => {
                    clean = false;
                    tracing::warn!(
                        group = self.group,
                        worker = name,
                        "background worker did not stop in time; aborted"
                    );
                    handle.abort();
                }
            }
        }
        clean
    }
}

impl Drop for Tasks {
    /// A group dropped without [`Tasks::stop`] (a failed start, a test)
    /// still stops its workers rather than leaving them behind.
    fn drop(&mut self) {
        if !self.running.is_empty() {
            self.shutdown.fire(Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Ticker(Arc<AtomicU32>);

    impl Worker for Ticker {
        fn name(&self) -> &'static str {
            "ticker"
        }
        async fn run(self, shutdown: Shutdown) {
            while shutdown.sleep(Duration::from_secs(3600)).await {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            // Draining: counted once more on the way out.
            self.0.fetch_add(100, Ordering::SeqCst);
        }
    }

    struct Stubborn;

    impl Worker for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        async fn run(self, _shutdown: Shutdown) {
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_interrupts_every_sleep_and_lets_workers_drain() {
        let ticks = Arc::new(AtomicU32::new(0));
        let mut tasks = Tasks::new("test");
        tasks.spawn(Ticker(ticks.clone()));
        tokio::time::sleep(Duration::from_secs(2 * 3600 + 1)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 2);
        assert!(tasks.stop(Duration::from_secs(1)).await);
        assert_eq!(ticks.load(Ordering::SeqCst), 102, "stopped and drained");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_overstays_its_deadline_is_aborted() {
        let mut tasks = Tasks::new("test");
        tasks.spawn(Stubborn);
        let started = Instant::now();
        assert!(!tasks.stop(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5) + GRACE);
    }

    #[tokio::test]
    async fn the_drain_deadline_is_set_when_the_signal_fires() {
        let s = Shutdown::new();
        assert!(!s.is_fired());
        let before = Instant::now();
        s.fire(Duration::from_secs(30));
        assert!(s.is_fired());
        assert!(s.drain_deadline() >= before + Duration::from_secs(30));
        assert!(s.or(std::future::pending::<()>()).await.is_none());
    }
}
