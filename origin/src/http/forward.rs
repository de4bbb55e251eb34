//! Forwarding: a client's request for a key another origin owns is sent on
//! to the owner, one hop, and the owner's answer goes back as it came.
//!
//! So a client or an edge whose origin list is behind the cluster's still
//! reaches the owner. The owner checks everything itself (the token, the
//! preconditions, the model), so this origin only bounds the body: one over
//! `--max-body-bytes` gets 413 here and is never sent. The forwarded
//! request carries [`FORWARDED_BY_HEADER`] with this origin's name, and a
//! request carrying it is never forwarded again: if it still reaches a
//! non-owner, the two origins disagree about who owns the key, and the
//! handler's ownership check answers 421. Failover reads (the edge's
//! [`FAILOVER_HEADER`]) are answered here from the store, and cluster calls
//! (`/_prefold/…`) are never forwarded.
//!
//! An owner that cannot be reached, or does not answer in time, gets the
//! client a 503 `origin-unavailable` with `Retry-After`; why stays in the
//! log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prefold_core::http::{FAILOVER_HEADER, FORWARDED_BY_HEADER};
use prefold_core::Origin;

use super::body::read_limited;
use super::{key_of, ApiError, AppState, HttpSettings};
use crate::base::metrics::{counters, Scrape};

/// A live origin on the cluster's network accepts a connection in
/// milliseconds; one that takes longer is taken as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Beyond the owner's own bounded waits (see [`Forwarder::new`]), the time
/// its answer may take to arrive.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// Headers that describe one connection rather than the message (RFC 9110
/// §7.6.1): each hop sets its own.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

counters! {
    /// What forwarding did.
    pub(crate) struct ForwardStats {
        forwarded: counter("forwarded_requests", "Requests for another origin's keys forwarded to their owner"),
        failed: counter("forward_failures", "Forwarded requests whose owner could not be reached or did not answer in time"),
    }
}

/// The one client that forwards (its connections to the other origins are
/// pooled and reused), and its counters.
pub(super) struct Forwarder {
    /// `None` when it could not be built (logged at start): every forward
    /// then fails as an unreachable owner does.
    client: Option<reqwest::Client>,
    /// The loop guard's value: this origin's name.
    via: HeaderValue,
    stats: ForwardStats,
}

impl Forwarder {
    /// A forwarder for an origin with these settings.
    pub(super) fn new(settings: &HttpSettings) -> Forwarder {
        // An owner answers within a store load and a `store`-durability
        // confirmation, each bounded by the store timeout: waiting less
        // would call an owner down that is only slow to confirm.
        let timeout = settings.store_timeout.saturating_mul(2) + ANSWER_MARGIN;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            // The owner's redirects are the client's to follow, and the
            // cluster's own addresses are never reached through a proxy.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build the forwarding client; requests for other origins' keys will get 503");
            })
            .ok();
        let name = settings.ownership.name().unwrap_or_default();
        Forwarder {
            client,
            via: HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("origin")),
            stats: ForwardStats::default(),
        }
    }

    /// Adds the counters to a scrape.
    pub(super) fn report(&self, scrape: &mut Scrape) {
        self.stats.report(scrape);
    }
}

/// Middleware of `/o/…`: a request for a key another origin owns goes to
/// the owner; every other request to the handlers.
pub(super) async fn to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match foreign_owner(&state.0.settings, &req) {
        Some(owner) => forward(&state, &owner, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        None => next.run(req).await,
    }
}

/// The origin to forward a request to, or `None` when the handlers answer
/// it here: this origin owns the key, the request was forwarded already (a
/// non-owner's handler refuses it with 421), it is a failover read, or it
/// gets its 400 or 405 without a hop.
fn foreign_owner(settings: &HttpSettings, req: &Request) -> Option<Origin> {
    let headers = req.headers();
    if headers.contains_key(FORWARDED_BY_HEADER) {
        return None;
    }
    let method = req.method();
    let read = *method == Method::GET || *method == Method::HEAD;
    if read && headers.contains_key(FAILOVER_HEADER) {
        return None;
    }
    let write = [Method::PUT, Method::PATCH, Method::DELETE, Method::POST].contains(method);
    if !read && !write {
        return None;
    }
    let key = key_of(req.uri()).ok()?;
    settings.ownership.other_owner(&key).cloned()
}

/// Sends the request to `owner` with the loop guard and relays the answer,
/// its body streamed as it arrives.
async fn forward(state: &AppState, owner: &Origin, req: Request) -> Result<Response, ApiError> {
    let forwarder = &state.0.forwarder;
    let (parts, body) = req.into_parts();
    let body = read_limited(&parts.headers, body, state.0.settings.max_body_bytes).await?;
    let unreachable = |sent: bool, reason: String| {
        forwarder.stats.failed.fetch_add(1, Ordering::Relaxed);
        ApiError::OwnerUnreachable {
            owner: owner.name.clone(),
            sent,
            reason,
        }
    };
    let client = forwarder
        .client
        .as_ref()
        .ok_or_else(|| unreachable(false, "no forwarding client".into()))?;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = end_to_end(parts.headers);
    // The client sends them for the body this origin got; the owner gets
    // the same bytes and takes their length from the new request.
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(FORWARDED_BY_HEADER, forwarder.via.clone());
    let mut request = client
        .request(parts.method, format!("{}{target}", owner.url))
        .headers(headers);
    if !body.is_empty() {
        request = request.body(body);
    }
    forwarder.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut answer = request
        .send()
        .await
        .map_err(|e| unreachable(!e.is_connect(), chain(&e)))?;
    let status = answer.status();
    let headers = end_to_end(std::mem::take(answer.headers_mut()));
    let chunks = futures::stream::unfold(Some((answer, owner.name.clone())), |state| async {
        let (mut answer, owner) = state?;
        match answer.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some((answer, owner)))),
            Ok(None) => None,
            Err(e) => {
                // The status is sent: all that is left is to cut the
                // client's connection, which the error does.
                tracing::warn!(%owner, error = %chain(&e), "a forwarded answer broke off");
                Some((Err(e), None))
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(chunks));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// `headers` without the hop-by-hop ones, including those the
/// `Connection` header names.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers
}

/// An error and its causes, for the log (reqwest's own text leaves out
/// why a connection failed).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
