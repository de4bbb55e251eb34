//! `/metrics`: the origin's counters in the Prometheus text format.
//!
//! The numbers live where the work happens (atomics in the flusher, the
//! backlog, the log, the hot tier); a scrape reads them into a fresh
//! `prometheus-client` registry and encodes it. Building the registry per
//! scrape costs microseconds and keeps the hot paths free of any metrics
//! library.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Everything a scrape reports.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Keys waiting for the store.
    pub backlog_keys: u64,
    /// Bytes waiting for the store.
    pub backlog_bytes: u64,
    /// Age of the oldest write waiting for the store, in seconds.
    pub backlog_oldest_seconds: f64,
    /// Successful store PUTs.
    pub store_puts: u64,
    /// PUT attempts that retried a failed one.
    pub store_retries: u64,
    /// Failed or timed-out PUTs.
    pub store_failures: u64,
    /// PUTs skipped because the store held a newer version.
    pub store_superseded: u64,
    /// Writes folded into a pending version instead of adding a PUT.
    pub coalesced: u64,
    /// Writes acknowledged, by operation.
    pub writes: Vec<(&'static str, u64)>,
    /// Reads that missed the hot tier and went to the store.
    pub store_loads: u64,
    /// Objects evicted from the hot tier for lack of room.
    pub evictions: u64,
    /// Entries in the hot tier.
    pub hot_entries: u64,
    /// Bytes in the hot tier, as weighed.
    pub hot_bytes: u64,
    /// Log fsyncs (each covers a group of writes).
    pub wal_fsyncs: u64,
    /// Log records written.
    pub wal_records: u64,
    /// Log segments deleted after their writes were stored.
    pub wal_trimmed: u64,
    /// Objects loaded by the warm-up at start.
    pub warm_objects: u64,
    /// Whether the origin answers `/readyz` with 200.
    pub ready: bool,
    /// The view engine's numbers, when a model is configured.
    pub views: Option<ViewsSnapshot>,
    /// Requests to `/o/…`, answered or refused.
    pub object_requests: u64,
    /// Publication to the edge.
    pub publication: PublicationSnapshot,
}

/// Publication's part of a scrape.
#[derive(Debug, Default, Clone)]
pub struct PublicationSnapshot {
    /// Objects the edge wrote to KV from pushes.
    pub pushed: u64,
    /// Pushed objects KV already held.
    pub unchanged: u64,
    /// Pushed objects the edge deferred.
    pub deferred: u64,
    /// Failed push requests.
    pub failures: u64,
    /// Pushes lost to fault injection.
    pub dropped: u64,
    /// Keys waiting to be pushed.
    pub pending: u64,
    /// Change feed pages served.
    pub feed_pages: u64,
    /// Objects listed by the change feed.
    pub feed_items: u64,
}

/// The view engine's part of a scrape.
#[derive(Debug, Clone)]
pub struct ViewsSnapshot {
    /// Change messages handled.
    pub changes: u64,
    /// Derivation messages handled.
    pub derivations: u64,
    /// Derivations skipped by their version stamp.
    pub skipped: u64,
    /// Derived objects written or deleted.
    pub published: u64,
    /// Failed publications (retried).
    pub publish_failures: u64,
    /// Targets repaired by the rolling regeneration.
    pub divergences: u64,
    /// Derivations lost to fault injection.
    pub dropped: u64,
    /// Messages not yet handled.
    pub pending: u64,
    /// Completed regeneration sweeps.
    pub sweeps: u64,
    /// Targets with state.
    pub targets: u64,
    /// Counter increments taken.
    pub counter_increments: u64,
    /// Counter publications written.
    pub counter_publications: u64,
    /// Write-to-publication lag.
    pub lag: Histogram,
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    r.register(name, help, g);
}

/// The Prometheus text exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("prefold");
    gauge(
        &mut r,
        "backlog_keys",
        "Keys acknowledged but not yet in the object store",
        s.backlog_keys,
    );
    gauge(
        &mut r,
        "backlog_bytes",
        "Bytes acknowledged but not yet in the object store",
        s.backlog_bytes,
    );
    let oldest: Gauge<f64, AtomicU64> = Gauge::default();
    oldest.set(s.backlog_oldest_seconds);
    r.register(
        "backlog_oldest_age_seconds",
        "Age of the oldest write not yet in the object store",
        oldest,
    );
    counter(
        &mut r,
        "store_puts",
        "Object store PUTs that succeeded",
        s.store_puts,
    );
    counter(
        &mut r,
        "store_put_retries",
        "Object store PUTs that retried a failed one",
        s.store_retries,
    );
    counter(
        &mut r,
        "store_put_failures",
        "Object store PUTs that failed or timed out (each is retried)",
        s.store_failures,
    );
    counter(
        &mut r,
        "store_put_superseded",
        "PUTs skipped because the store held a newer version",
        s.store_superseded,
    );
    counter(
        &mut r,
        "writes_coalesced",
        "Writes folded into a pending version instead of adding a PUT",
        s.coalesced,
    );
    let writes =
        prometheus_client::metrics::family::Family::<Vec<(String, String)>, Counter>::default();
    for (op, n) in &s.writes {
        writes
            .get_or_create(&vec![("op".to_owned(), (*op).to_owned())])
            .inc_by(*n);
    }
    r.register("writes", "Writes acknowledged, by operation", writes);
    counter(
        &mut r,
        "store_loads",
        "Reads that missed the hot tier and went to the store",
        s.store_loads,
    );
    counter(
        &mut r,
        "hot_evictions",
        "Objects evicted from the hot tier for lack of room",
        s.evictions,
    );
    gauge(
        &mut r,
        "hot_entries",
        "Entries in the hot tier",
        s.hot_entries,
    );
    gauge(
        &mut r,
        "hot_bytes",
        "Bytes in the hot tier, as weighed",
        s.hot_bytes,
    );
    counter(
        &mut r,
        "wal_fsyncs",
        "Write-ahead log fsyncs (each covers a group of writes)",
        s.wal_fsyncs,
    );
    counter(
        &mut r,
        "wal_records",
        "Write-ahead log records written",
        s.wal_records,
    );
    counter(
        &mut r,
        "wal_segments_trimmed",
        "Log segments deleted once their writes were stored",
        s.wal_trimmed,
    );
    gauge(
        &mut r,
        "warm_objects",
        "Objects loaded into the hot tier at start",
        s.warm_objects,
    );
    gauge(
        &mut r,
        "ready",
        "1 when the origin serves objects",
        u64::from(s.ready),
    );
    counter(
        &mut r,
        "object_requests",
        "Requests to /o/..., answered or refused",
        s.object_requests,
    );
    let p = &s.publication;
    for (name, help, n) in [
        (
            "publish_pushed",
            "Objects the edge wrote to KV from pushes",
            p.pushed,
        ),
        (
            "publish_unchanged",
            "Pushed objects KV already held",
            p.unchanged,
        ),
        (
            "publish_deferred",
            "Pushed objects the edge deferred (KV's one write per second per key)",
            p.deferred,
        ),
        (
            "publish_failures",
            "Push requests to the edge that failed (retried)",
            p.failures,
        ),
        (
            "publish_dropped",
            "Pushes lost to fault injection",
            p.dropped,
        ),
        ("feed_pages", "Change feed pages served", p.feed_pages),
        (
            "feed_items",
            "Objects listed by the change feed",
            p.feed_items,
        ),
    ] {
        counter(&mut r, name, help, n);
    }
    gauge(
        &mut r,
        "publish_pending",
        "Changed keys waiting to be pushed",
        p.pending,
    );
    if let Some(v) = &s.views {
        let c = [
            (
                "view_changes",
                "Entity changes the view engine handled (writes and sweep visits)",
                v.changes,
            ),
            (
                "view_derivations",
                "Derivation messages handled",
                v.derivations,
            ),
            (
                "view_derivations_skipped",
                "Derivations skipped by their version stamp (repeats)",
                v.skipped,
            ),
            (
                "view_published",
                "Derived objects written or deleted",
                v.published,
            ),
            (
                "view_publish_failures",
                "Derived objects whose publication failed (retried)",
                v.publish_failures,
            ),
            (
                "view_divergences",
                "Derived objects the rolling regeneration found wrong and repaired",
                v.divergences,
            ),
            (
                "view_derivations_dropped",
                "Derivations lost to fault injection",
                v.dropped,
            ),
            (
                "view_sweeps",
                "Completed rolling regeneration sweeps",
                v.sweeps,
            ),
            (
                "counter_increments",
                "Increments taken by counter views",
                v.counter_increments,
            ),
            (
                "counter_publications",
                "Counter values published",
                v.counter_publications,
            ),
        ];
        for (name, help, n) in c {
            counter(&mut r, name, help, n);
        }
        gauge(
            &mut r,
            "view_pending",
            "View engine messages not yet handled",
            v.pending,
        );
        gauge(
            &mut r,
            "view_targets",
            "Derived objects with state on this origin",
            v.targets,
        );
        r.register(
            "view_derivation_lag_seconds",
            "From an entity write to the publication of a derived object it changed",
            v.lag.clone(),
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let s = Snapshot {
            backlog_keys: 3,
            backlog_oldest_seconds: 1.5,
            store_puts: 7,
            writes: vec![("put", 5), ("patch", 2)],
            ready: true,
            ..Snapshot::default()
        };
        let text = render(&s);
        for line in [
            "prefold_backlog_keys 3",
            "prefold_backlog_oldest_age_seconds 1.5",
            "prefold_store_puts_total 7",
            "prefold_writes_total{op=\"put\"} 5",
            "prefold_writes_total{op=\"patch\"} 2",
            "prefold_ready 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
