//! `/metrics`: every layer's numbers in the OpenMetrics text format.
//!
//! Each layer reports its own (see [`crate::base::metrics`]); this file only
//! asks them, and adds the numbers the HTTP layer itself keeps.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::base::metrics::Scrape;
use crate::base::OpKind;

/// The text of one scrape.
pub(super) fn render(state: &AppState) -> String {
    let i = state.inner();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut s = Scrape::default();
    i.backlog.report(&mut s);
    i.flush_stats.report(&mut s);
    i.hot.report(&mut s);
    crate::engine::report(i.engine.get().map(|e| e.as_ref()), &mut s);
    if let Some(wal) = &i.wal {
        wal.report(&mut s);
    }
    i.changes.report(&mut s);
    i.forwarder.report(&mut s);
    if let Some(views) = i.views.get() {
        views.report(&mut s);
    }
    s.labeled_counters(
        "writes",
        "Writes acknowledged, by operation",
        "op",
        OpKind::ALL
            .iter()
            .map(|k| (k.as_str(), load(&i.writes[k.index()]))),
    );
    s.gauge(
        "warm_objects",
        "Objects loaded into the hot tier at start",
        load(&i.warm_progress),
    );
    s.gauge(
        "ready",
        "1 when the origin serves objects",
        u64::from(state.is_ready()),
    );
    s.counter(
        "object_requests",
        "Requests to /o/..., answered or refused",
        load(&i.requests),
    );
    s.finish()
}

pub(super) async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut resp = render(&state).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
