//! The origin's HTTP surface: `app(state) -> Router`.
//!
//! Routes: `GET|HEAD|PUT /o/{key}`, `GET /healthz`, `GET /readyz`. Every error
//! is an RFC 9457 problem body built from the shared catalogue in
//! `prefold_core::http`; internal errors are logged in full and answered with
//! a bare 500, so nothing internal leaks into a response.
//!
//! Keys are taken from the raw request path (still percent-encoded) rather
//! than from axum's decoded path parameters, because the shared key grammar
//! must see an encoded `/` to reject it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prefold_core::http::{
    check_json, if_none_match, is_json_media_type, PROBLEM_CONTENT_TYPE, VERSION_HEADER,
};
use prefold_core::{Key, Problem, ProblemKind};
use serde::Serialize;

use crate::error::ApiError;
use crate::flush::{Dirty, FlushStats};
use crate::hot::{HotTier, Object};

/// Header naming the durability a write met before it was acknowledged.
pub const DURABILITY_HEADER: &str = "x-prefold-durability";
/// Browsers and CDNs may keep a copy but must revalidate it (cheap: ETag/304).
const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The hot tier.
    pub hot: HotTier,
    /// Writes not yet in the store.
    pub dirty: Arc<Dirty>,
    /// Flusher counters.
    pub flush_stats: Arc<FlushStats>,
    /// Largest accepted body.
    pub max_body_bytes: u32,
    ready: AtomicBool,
}

impl AppState {
    /// Builds the state; it starts not ready.
    pub fn new(
        hot: HotTier,
        dirty: Arc<Dirty>,
        flush_stats: Arc<FlushStats>,
        max_body_bytes: u32,
    ) -> AppState {
        AppState(Arc::new(Inner {
            hot,
            dirty,
            flush_stats,
            max_body_bytes,
            ready: AtomicBool::new(false),
        }))
    }

    /// Marks the origin ready (or not) to serve objects.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Whether the origin serves objects.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// The state's parts.
    pub fn inner(&self) -> &Inner {
        &self.0
    }
}

/// The origin's router.
pub fn app(state: AppState) -> Router {
    let objects = || -> MethodRouter<AppState> {
        get(get_object).put(put_object).fallback(method_not_allowed)
    };
    Router::new()
        .route("/o/{*key}", objects())
        .route("/o/", objects())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, detail) = match &self {
            ApiError::BadKey(e) => (ProblemKind::InvalidKey, Some(e.to_string())),
            ApiError::UnsupportedMediaType(ct) => (
                ProblemKind::UnsupportedMediaType,
                Some(format!(
                    "content type {ct:?} is not JSON; send application/json"
                )),
            ),
            ApiError::TooLarge { limit } => (
                ProblemKind::PayloadTooLarge,
                Some(format!("the body exceeds the limit of {limit} bytes")),
            ),
            ApiError::MalformedJson(d) => (ProblemKind::MalformedJson, Some(d.clone())),
            ApiError::Body(_) => (
                ProblemKind::MalformedJson,
                Some("the request body could not be read".to_owned()),
            ),
            ApiError::NotFound => (ProblemKind::NotFound, None),
            ApiError::NoRoute => (ProblemKind::NotFound, Some("no such resource".to_owned())),
            ApiError::MethodNotAllowed => (
                ProblemKind::MethodNotAllowed,
                Some("allowed: GET, HEAD, PUT".to_owned()),
            ),
            ApiError::NotReady => (ProblemKind::NotReady, None),
            ApiError::Store(_) | ApiError::Encode(_) => {
                tracing::error!(error = %self, "request failed");
                (ProblemKind::Internal, None)
            }
        };
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Problem::new(kind, detail).to_json()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            }
            ApiError::NotReady => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.is_ready() {
        Ok("ready")
    } else {
        Err(ApiError::NotReady)
    }
}

fn key_of(uri: &Uri) -> Result<Key, ApiError> {
    let raw = uri.path().strip_prefix("/o/").unwrap_or_default();
    Ok(Key::parse(raw)?)
}

fn version_headers(h: &mut HeaderMap, object: &Object) {
    h.insert(header::ETAG, object.etag().clone());
    h.insert(VERSION_HEADER, HeaderValue::from(object.version));
}

// Takes the whole request rather than `Uri` and `HeaderMap` extractors: those
// clone, and this is the hot path.
async fn get_object(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let key = key_of(req.uri())?;
    let headers = req.headers();
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    let object = state.0.hot.get(&key).await?.ok_or(ApiError::NotFound)?;
    let not_modified = match (headers.get(header::IF_NONE_MATCH), object.etag().to_str()) {
        (Some(inm), Ok(tag)) => inm.to_str().is_ok_and(|inm| if_none_match(inm, tag)),
        _ => false,
    };
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(object.body.clone()).into_response();
        if let Some(ct) = object.content_type_header() {
            r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        r
    };
    let h = resp.headers_mut();
    version_headers(h, &object);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(resp)
}

/// Reads a body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(body: Body, limit: u32) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Body(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[derive(Serialize)]
struct PutAnswer<'a> {
    key: &'a str,
    version: u64,
    etag: String,
    durability: &'static str,
}

async fn put_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not ASCII)"))
        .unwrap_or_default();
    // The stored envelope keeps at most 255 bytes of content type.
    if !is_json_media_type(ct) || ct.len() > 255 {
        return Err(ApiError::UnsupportedMediaType(
            ct.chars().take(64).collect(),
        ));
    }
    let limit = state.0.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::from(limit)) {
        return Err(ApiError::TooLarge { limit });
    }
    let body = read_limited(body, limit).await?;
    check_json(&body).map_err(ApiError::MalformedJson)?;
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }

    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let written = state
        .0
        .hot
        .put(key.clone(), ct.to_owned(), body, now_micros)
        .await?;
    let answer = PutAnswer {
        key: key.as_str(),
        version: written.object.version,
        etag: written
            .object
            .etag()
            .to_str()
            .unwrap_or_default()
            .to_owned(),
        durability: "memory",
    };
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, axum::Json(answer)).into_response();
    let h = resp.headers_mut();
    version_headers(h, &written.object);
    h.insert(DURABILITY_HEADER, HeaderValue::from_static("memory"));
    Ok(resp)
}
