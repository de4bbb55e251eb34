//! A link: the ordered, batched, retried channel of messages from this
//! origin to one other.
//!
//! Messages are JSON values, serialized once when queued. The link's worker
//! takes what is queued (up to a batch's limits), posts it as one
//! `{"from": …, "messages": [...]}` body, and retries the same batch with
//! backoff until the other origin acknowledges it, so messages arrive in
//! the order they were queued, at least once. Delivery is acknowledged
//! once the receiver has queued the batch, not applied it: what a receiver
//! loses by crashing, it asks for again when it starts (the view engine's
//! resync).
//!
//! A link reports each acknowledged batch through [`Delivered`], so that
//! its owner can count messages as pending until they have left.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prefold_core::Origin;
use tokio::sync::mpsc;

use super::Peers;
use crate::base::{Backoff, Shutdown, Worker};

/// Messages sent in one batch, at most.
const MAX_MESSAGES: usize = 4096;
/// Bytes of one batch, about: a batch stops growing past this.
pub(crate) const MAX_BATCH_BYTES: usize = 2 << 20;
/// Pauses between attempts at one batch.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// What a link tells its owner.
pub(crate) trait Delivered: Send + Sync + 'static {
    /// `n` messages were acknowledged by the other origin.
    fn delivered(&self, n: u64);
    /// `n` messages were given up at shutdown.
    fn abandoned(&self, n: u64);
}

/// The sending end of a link: queue messages on it.
#[derive(Debug, Clone)]
pub(crate) struct LinkTx {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl LinkTx {
    /// Queues one message (a JSON value's bytes). `false` if the link has
    /// stopped.
    pub(crate) fn send(&self, message: Bytes) -> bool {
        self.tx.send(message).is_ok()
    }
}

/// The worker behind a link.
pub(crate) struct Link {
    from: String,
    to: Origin,
    path: &'static str,
    peers: Peers,
    rx: mpsc::UnboundedReceiver<Bytes>,
    report: Arc<dyn Delivered>,
}

impl Link {
    /// A link from origin `from` to `to`, posting batches to `path`.
    pub(crate) fn new(
        from: String,
        to: Origin,
        path: &'static str,
        peers: Peers,
        report: Arc<dyn Delivered>,
    ) -> (Link, LinkTx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            from,
            to,
            path,
            peers,
            rx,
            report,
        };
        (link, LinkTx { tx })
    }

    /// The next batch's messages: waits for one, then takes what is queued
    /// up to the limits.
    async fn next_batch(&mut self, shutdown: &Shutdown) -> Option<Vec<Bytes>> {
        let first = match shutdown.or(self.rx.recv()).await {
            Some(Some(m)) => m,
            Some(None) => return None,
            // Stopping: what is queued still goes, until the deadline.
            None => self.rx.try_recv().ok()?,
        };
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < MAX_MESSAGES && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(m) => {
                    bytes += m.len() + 1;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    fn body(&self, batch: &[Bytes]) -> Bytes {
        let mut out = BytesMut::with_capacity(
            batch.iter().map(|m| m.len() + 1).sum::<usize>() + self.from.len() + 32,
        );
        out.put_slice(b"{\"from\":");
        out.put_slice(&serde_json::to_vec(&self.from).unwrap_or_default());
        out.put_slice(b",\"messages\":[");
        for (i, m) in batch.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(m);
        }
        out.put_slice(b"]}");
        out.freeze()
    }
}

impl Link {
    /// Posts one batch until it is acknowledged (`true`), or until the
    /// drain deadline once the signal has fired (`false`).
    async fn deliver(&self, body: Bytes, shutdown: &Shutdown) -> bool {
        let mut retry = RETRY.retry();
        loop {
            let call = self.peers.post(&self.to, self.path, body.clone());
            let outcome = if shutdown.is_fired() {
                tokio::time::timeout_at(shutdown.drain_deadline(), call)
                    .await
                    .ok()
            } else {
                // `None`: the signal fired mid-call; try again under the deadline.
                shutdown.or(call).await
            };
            match outcome {
                Some(Ok(_)) => return true,
                Some(Err(e)) => {
                    tracing::debug!(to = %self.to.name, error = %e, "cluster link: retrying");
                    let pause = retry.next_delay();
                    if shutdown.is_fired() {
                        if tokio::time::Instant::now() + pause >= shutdown.drain_deadline() {
                            return false;
                        }
                        tokio::time::sleep(pause).await;
                    } else {
                        // Woken by the signal: the next attempt runs under the deadline.
                        shutdown.sleep(pause).await;
                    }
                }
                None if shutdown.is_fired()
                    && tokio::time::Instant::now() >= shutdown.drain_deadline() =>
                {
                    return false
                }
                None => {}
            }
        }
    }
}

impl Worker for Link {
    fn name(&self) -> &'static str {
        "cluster link"
    }

    async fn run(mut self, shutdown: Shutdown) {
        while let Some(batch) = self.next_batch(&shutdown).await {
            let n = batch.len() as u64;
            let body = self.body(&batch);
            if self.deliver(body, &shutdown).await {
                self.report.delivered(n);
                continue;
            }
            let rest = std::iter::from_fn(|| self.rx.try_recv().ok()).count() as u64;
            tracing::warn!(
                to = %self.to.name,
                messages = n + rest,
                "cluster link: stopped with messages undelivered (the receiver resyncs when it next starts)"
            );
            self.report.abandoned(n + rest);
            return;
        }
    }
}
