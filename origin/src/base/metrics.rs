//! The metrics vocabulary: how a layer reports its numbers to `/metrics`.
//!
//! Numbers live where the work happens (atomics in the flusher, the
//! backlog, the log, the hot tier, the view engine). Each component that
//! owns some has a `report(&self, &mut Scrape)` that adds them, each metric
//! one line with its name and help, so adding a metric is one edit in the
//! layer that counts it. A scrape builds a fresh `prometheus-client`
//! registry and encodes it; that costs microseconds and keeps the hot paths
//! free of any metrics library. [`counters!`](crate::base::metrics::counters)
//! declares a struct of atomic counters and its report in one place.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// One scrape being assembled.
pub(crate) struct Scrape(Registry);

impl Default for Scrape {
    fn default() -> Self {
        Scrape(Registry::with_prefix("prefold"))
    }
}

impl Scrape {
    /// A counter (rendered with the `_total` suffix).
    pub(crate) fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.0.register(name, help, c);
    }

    /// An integer gauge.
    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        self.0.register(name, help, g);
    }

    /// A gauge in seconds or another fractional unit.
    pub(crate) fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        self.0.register(name, help, g);
    }

    /// A family of counters told apart by one label.
    pub(crate) fn labeled_counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        for (l, n) in values {
            family
                .get_or_create(&vec![(label.to_owned(), l.to_owned())])
                .inc_by(n);
        }
        self.0.register(name, help, family);
    }

    /// A histogram (shared, not copied: prometheus-client histograms are
    /// reference-counted).
    pub(crate) fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.0.register(name, help, h.clone());
    }

    /// The OpenMetrics text of everything added.
    pub(crate) fn finish(self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.0);
        out
    }
}

/// Declares a struct of `AtomicU64` counters and gauges, each field with its
/// metric name and help, and a `report` that adds them all to a [`Scrape`]:
///
/// ```text
/// counters! {
///     /// Counters of the flusher's work.
///     pub(crate) struct FlushStats {
///         puts: counter("store_puts", "Object store PUTs that succeeded"),
///         pending: gauge("flush_pending", "Keys in the current round"),
///     }
/// }
/// ```
///
/// Written here rather than taken from a crate because it is only the
/// pairing of a field with its name and help; the registry and the encoding
/// are `prometheus-client`'s.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $field:ident : $kind:ident ( $metric:literal, $help:literal ) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $(
                #[doc = $help]
                pub(crate) $field: ::std::sync::atomic::AtomicU64,
            )*
        }

        impl $name {
            /// Adds every number of this struct to a scrape.
            pub(crate) fn report(&self, scrape: &mut $crate::base::metrics::Scrape) {
                $(
                    scrape.$kind(
                        $metric,
                        $help,
                        self.$field.load(::std::sync::atomic::Ordering::Relaxed),
                    );
                )*
            }
        }
    };
}
pub(crate) use counters;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    counters! {
        /// Test numbers.
        struct Numbers {
            puts: counter("store_puts", "Object store PUTs that succeeded"),
            keys: gauge("backlog_keys", "Keys acknowledged but not yet in the object store"),
        }
    }

    #[test]
    fn renders_every_family() {
        let n = Numbers::default();
        n.puts.fetch_add(7, Ordering::Relaxed);
        n.keys.store(3, Ordering::Relaxed);
        let mut s = Scrape::default();
        n.report(&mut s);
        s.gauge_f64("backlog_oldest_age_seconds", "Age", 1.5);
        s.labeled_counters("writes", "Writes", "op", [("put", 5), ("patch", 2)]);
        s.gauge("ready", "1 when ready", 1);
        let text = s.finish();
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
