//! prefold-edge: the Cloudflare Worker in front of the origins.
//!
//! Requests arrive at the edge first. A read of `/o/{key}` is answered from
//! Workers KV when the object is there (its version and content type ride in
//! the KV metadata, so the strong ETag and `304 Not Modified` need no origin).
//! On a miss, the edge computes the owner origin of the key by rendezvous
//! hashing — the same function, from `prefold-core`, that the origins use — and
//! fetches the object from it, answers, and fills KV after the response has
//! gone out (`ctx.wait_until`). A write is validated here with the shared rules
//! (key grammar, media type, size, JSON) and forwarded to the owner; its new
//! version is then written to KV so that the next read is a hit.
//!
//! Configuration comes from Worker `[vars]` and is parsed by
//! [`prefold_core::EdgeConfig`], the one definition both sides share.
//!
//! Routes:
//! - `GET|HEAD /o/{key}`, `PUT /o/{key}`: objects;
//! - `GET /_prefold/route/{key}`: which origin owns a key, and the failover
//!   order (for operators, and for tests that check the Wasm build routes
//!   exactly as the native one);
//! - `GET /healthz`: liveness.

use std::time::Duration;

use futures::future::{select, Either};
use prefold_core::config::EdgeConfig;
use prefold_core::http::{
    check_json, etag, if_none_match, is_json_media_type, DURABILITY_HEADER,
    MERGE_PATCH_CONTENT_TYPE, PROBLEM_CONTENT_TYPE, SOURCE_HEADER, VERSION_HEADER,
};
use prefold_core::{ConfigError, Key, KeyError, Origin, Preconditions, Problem, ProblemKind};
use serde::{Deserialize, Serialize};
use worker::{
    event, js_sys, AbortController, Context, Delay, Env, Fetch, Headers, Method, Request,
    RequestInit, Response,
};

/// The KV namespace binding holding published objects.
const KV_BINDING: &str = "OBJECTS";
/// Browsers and CDNs may keep a copy but must revalidate it (cheap: ETag/304).
const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

/// What the edge stores beside each KV value.
///
/// The version is a decimal string because KV metadata is JSON read by
/// JavaScript, whose numbers lose integers above 2^53.
#[derive(Serialize, Deserialize)]
struct KvMeta {
    v: String,
    ct: String,
    /// A marker, not a copy: the object changed (or was deleted) at version
    /// `v` by a write whose result the edge has not seen. Reads go to the
    /// owner; only a fill of version `v` or newer replaces the marker, so a
    /// slower fill of an older version can never bring the old object back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
}

/// Everything that can go wrong at the edge. Mapped to a problem body in
/// [`EdgeError::into_response`], and only there.
#[derive(Debug)]
enum EdgeError {
    BadKey(KeyError),
    Config(ConfigError),
    UnsupportedMediaType(String),
    TooLarge { limit: u32 },
    MalformedJson(String),
    BadPrecondition(prefold_core::http::PreconditionError),
    NotFound,
    MethodNotAllowed(&'static str),
    OriginTimeout { origin: String },
    OriginUnreachable { origin: String, reason: String },
    OriginFailed { origin: String, status: u16 },
    Runtime(worker::Error),
}

impl From<worker::Error> for EdgeError {
    fn from(e: worker::Error) -> Self {
        EdgeError::Runtime(e)
    }
}

impl From<worker::KvError> for EdgeError {
    fn from(e: worker::KvError) -> Self {
        EdgeError::Runtime(e.into())
    }
}

impl EdgeError {
    fn into_response(self) -> worker::Result<Response> {
        let (kind, detail, retry_after) = match self {
            EdgeError::BadKey(e) => (ProblemKind::InvalidKey, Some(e.to_string()), None),
            EdgeError::UnsupportedMediaType(ct) => (
                ProblemKind::UnsupportedMediaType,
                Some(format!(
                    "content type {ct:?} is not JSON; send application/json"
                )),
                None,
            ),
            EdgeError::TooLarge { limit } => (
                ProblemKind::PayloadTooLarge,
                Some(format!("the body exceeds the limit of {limit} bytes")),
                None,
            ),
            EdgeError::MalformedJson(d) => (ProblemKind::MalformedJson, Some(d), None),
            EdgeError::BadPrecondition(e) => {
                (ProblemKind::InvalidPrecondition, Some(e.to_string()), None)
            }
            EdgeError::NotFound => (ProblemKind::NotFound, None, None),
            EdgeError::MethodNotAllowed(allow) => {
                let mut r = problem(
                    ProblemKind::MethodNotAllowed,
                    Some(format!("allowed: {allow}")),
                )?;
                r.headers_mut().set("allow", allow)?;
                return Ok(r);
            }
            EdgeError::OriginTimeout { origin } => {
                worker::console_warn!("origin {origin} timed out");
                (
                    ProblemKind::OriginUnavailable,
                    Some(format!("origin {origin} did not answer in time")),
                    Some("1"),
                )
            }
            EdgeError::OriginUnreachable { origin, reason } => {
                worker::console_warn!("origin {origin} unreachable: {reason}");
                (
                    ProblemKind::OriginUnavailable,
                    Some(format!("origin {origin} is unreachable")),
                    Some("1"),
                )
            }
            EdgeError::OriginFailed { origin, status } => {
                worker::console_warn!("origin {origin} answered {status}");
                (
                    ProblemKind::OriginUnavailable,
                    Some(format!("origin {origin} failed")),
                    Some("1"),
                )
            }
            // Internal details go to the log, never to the client.
            EdgeError::Config(e) => {
                worker::console_error!("configuration: {e}");
                (ProblemKind::Internal, None, None)
            }
            EdgeError::Runtime(e) => {
                worker::console_error!("runtime: {e}");
                (ProblemKind::Internal, None, None)
            }
        };
        let mut r = problem(kind, detail)?;
        if let Some(secs) = retry_after {
            r.headers_mut().set("retry-after", secs)?;
        }
        Ok(r)
    }
}

fn problem(kind: ProblemKind, detail: Option<String>) -> worker::Result<Response> {
    let body = Problem::new(kind, detail).to_json();
    let headers = Headers::new();
    headers.set("content-type", PROBLEM_CONTENT_TYPE)?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(kind.status())
        .with_headers(headers))
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    match route(req, &env, &ctx).await {
        Ok(r) => Ok(r),
        Err(e) => e.into_response(),
    }
}

fn config(env: &Env) -> Result<EdgeConfig, EdgeError> {
    EdgeConfig::from_lookup(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(EdgeError::Config)
}

async fn route(req: Request, env: &Env, ctx: &Context) -> Result<Response, EdgeError> {
    // `path()` is the URL's pathname, still percent-encoded: exactly what the
    // key grammar wants to see.
    let path = req.path();
    if let Some(raw) = path.strip_prefix("/o/") {
        let key = Key::parse(raw).map_err(EdgeError::BadKey)?;
        let cfg = config(env)?;
        return match req.method() {
            Method::Get | Method::Head => get_object(&req, env, ctx, &cfg, key).await,
            Method::Put | Method::Patch | Method::Delete | Method::Post => {
                write_object(req, env, ctx, &cfg, key).await
            }
            _ => Err(EdgeError::MethodNotAllowed(
                "GET, HEAD, PUT, PATCH, DELETE, POST",
            )),
        };
    }
    if let Some(raw) = path.strip_prefix("/_prefold/route/") {
        let key = Key::parse(raw).map_err(EdgeError::BadKey)?;
        let cfg = config(env)?;
        return route_info(&cfg, &key);
    }
    if path == "/healthz" {
        return Ok(Response::ok("ok")?);
    }
    Err(EdgeError::NotFound)
}

#[derive(Serialize)]
struct RouteInfo<'a> {
    algorithm: &'static str,
    key: &'a str,
    routing_part: &'a str,
    owner: &'a str,
    preference: Vec<&'a str>,
}

fn route_info(cfg: &EdgeConfig, key: &Key) -> Result<Response, EdgeError> {
    let info = RouteInfo {
        algorithm: prefold_core::routing::ALGORITHM,
        key: key.as_str(),
        routing_part: key.routing_part(),
        owner: &cfg.origins.owner(key).name,
        preference: cfg
            .origins
            .preference(key)
            .into_iter()
            .map(|o| o.name.as_str())
            .collect(),
    };
    Ok(Response::from_json(&info)?)
}

/// Builds the answer for one object version, honouring `If-None-Match`.
fn object_response(
    req: &Request,
    body: Vec<u8>,
    content_type: &str,
    version: u64,
    source: &str,
) -> Result<Response, EdgeError> {
    let tag = etag(version);
    let headers = Headers::new();
    headers.set("etag", &tag)?;
    headers.set(VERSION_HEADER, &version.to_string())?;
    headers.set(SOURCE_HEADER, source)?;
    headers.set("cache-control", CACHE_CONTROL)?;
    let not_modified = req
        .headers()
        .get("if-none-match")?
        .is_some_and(|inm| if_none_match(&inm, &tag));
    if not_modified {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    headers.set("content-type", content_type)?;
    let body = if req.method() == Method::Head {
        Vec::new()
    } else {
        body
    };
    Ok(Response::from_bytes(body)?.with_headers(headers))
}

async fn get_object(
    req: &Request,
    env: &Env,
    ctx: &Context,
    cfg: &EdgeConfig,
    key: Key,
) -> Result<Response, EdgeError> {
    // A query (a page by cursor, an index range, a text query, a set
    // membership) is answered by the view state on the owner, never by the
    // published object in KV.
    if let Some(query) = req.url().ok().and_then(|u| u.query().map(str::to_owned)) {
        return query_owner(req, cfg, &key, &query).await;
    }
    let kv = env.kv(KV_BINDING)?;
    let (value, meta) = kv.get(key.as_str()).bytes_with_metadata::<KvMeta>().await?;
    if let (Some(body), Some(meta)) = (value, meta) {
        match meta.v.parse::<u64>() {
            Ok(_) if meta.stale => {}
            Ok(version) => return object_response(req, body, &meta.ct, version, "kv"),
            Err(_) => worker::console_warn!("KV entry {key} has unreadable metadata; refetching"),
        }
    }

    let owner = cfg.origins.owner(&key);
    let url = object_url(owner, &key);
    let (resp, body) = call_origin(
        Request::new(&url, Method::Get)?,
        &owner.name,
        cfg.origin_timeout_ms,
    )
    .await?;
    match resp.status_code() {
        200 => {
            let version = header_version(&resp, &owner.name)?;
            let ct = resp
                .headers()
                .get("content-type")?
                .unwrap_or_else(|| "application/json".to_owned());
            let answer = object_response(req, body.clone(), &ct, version, "origin")?;
            fill_kv(ctx, env, key, body, version, ct)?;
            Ok(answer)
        }
        404 => Err(EdgeError::NotFound),
        status => Err(EdgeError::OriginFailed {
            origin: owner.name.clone(),
            status,
        }),
    }
}

/// Forwards a view query to the key's owner and returns its answer as it
/// came (including its 400 problem bodies); nothing is cached.
async fn query_owner(
    req: &Request,
    cfg: &EdgeConfig,
    key: &Key,
    query: &str,
) -> Result<Response, EdgeError> {
    let owner = cfg.origins.owner(key);
    let url = format!("{}?{query}", object_url(owner, key));
    let (resp, body) = call_origin(
        Request::new(&url, Method::Get)?,
        &owner.name,
        cfg.origin_timeout_ms,
    )
    .await?;
    let status = resp.status_code();
    if status >= 500 && status != 503 {
        return Err(EdgeError::OriginFailed {
            origin: owner.name.clone(),
            status,
        });
    }
    let out = Headers::new();
    for name in ["content-type", "cache-control", "retry-after"] {
        if let Some(v) = resp.headers().get(name)? {
            out.set(name, &v)?;
        }
    }
    let body = if req.method() == Method::Head {
        Vec::new()
    } else {
        body
    };
    Ok(Response::from_bytes(body)?
        .with_status(status)
        .with_headers(out))
}

/// Validates a write with the shared rules and forwards it to the key's
/// owner. A `PUT` fills KV with the body it wrote; any other write (merge
/// patch, delete, append, increment) produces a body the edge has not seen,
/// so it replaces the KV copy with a version marker and the next read fills
/// it from the owner.
async fn write_object(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &EdgeConfig,
    key: Key,
) -> Result<Response, EdgeError> {
    let method = req.method();
    let ct = req.headers().get("content-type")?.unwrap_or_default();
    // A counter increment (`POST …?op=increment`) may come without a body.
    let bodiless_post = method == Method::Post
        && ct.is_empty()
        && req
            .headers()
            .get("content-length")?
            .is_none_or(|n| n.trim() == "0");
    let has_body = method != Method::Delete && !bodiless_post;
    let ct_ok = match method {
        _ if bodiless_post => true,
        Method::Patch => ct
            .split(';')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(MERGE_PATCH_CONTENT_TYPE)),
        Method::Delete => true,
        _ => is_json_media_type(&ct),
    };
    if !ct_ok {
        return Err(EdgeError::UnsupportedMediaType(ct));
    }
    let limit = cfg.max_body_bytes;
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::from(limit)) {
        return Err(EdgeError::TooLarge { limit });
    }
    let body = if has_body {
        req.bytes().await?
    } else {
        Vec::new()
    };
    if body.len() as u64 > u64::from(limit) {
        return Err(EdgeError::TooLarge { limit });
    }
    if has_body {
        check_json(&body).map_err(EdgeError::MalformedJson)?;
    }
    let if_match = req.headers().get("if-match")?;
    let if_none_match = req.headers().get("if-none-match")?;
    Preconditions::parse(if_match.as_deref(), if_none_match.as_deref())
        .map_err(EdgeError::BadPrecondition)?;

    let owner = cfg.origins.owner(&key);
    let mut url = object_url(owner, &key);
    if let Ok(u) = req.url() {
        if let Some(q) = u.query() {
            url.push('?');
            url.push_str(q);
        }
    }
    let headers = Headers::new();
    for name in [
        "content-type",
        "if-match",
        "if-none-match",
        DURABILITY_HEADER,
    ] {
        if let Some(v) = req.headers().get(name)? {
            headers.set(name, &v)?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if has_body {
        init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    }
    let (resp, answer_body) = call_origin(
        Request::new_with_init(&url, &init)?,
        &owner.name,
        cfg.origin_timeout_ms,
    )
    .await?;
    let status = resp.status_code();
    // 503 (overloaded) and 504 (applied, not yet confirmed by the store)
    // are the owner's own answers and go back as they came.
    if status >= 500 && status != 503 && status != 504 {
        return Err(EdgeError::OriginFailed {
            origin: owner.name.clone(),
            status,
        });
    }
    // A 504 write is applied: KV must not keep the version before it. A
    // 202 (a counter increment) changes nothing yet: its view publishes
    // later, and marking KV per increment would exceed its write rate.
    if ((200..300).contains(&status) && status != 202) || status == 504 {
        let version = header_version(&resp, &owner.name).ok();
        match version {
            Some(v) if method == Method::Put && status != 504 => {
                fill_kv(ctx, env, key, body, v, ct)?
            }
            Some(v) => mark_kv_stale(ctx, env, key, v)?,
            None => mark_kv_stale(ctx, env, key, 0)?,
        }
    }
    // The origin's answer (success, or a client error or 503 with its
    // problem body) goes back as it came.
    let out = Headers::new();
    for name in [
        "content-type",
        "etag",
        VERSION_HEADER,
        DURABILITY_HEADER,
        "retry-after",
    ] {
        if let Some(v) = resp.headers().get(name)? {
            out.set(name, &v)?;
        }
    }
    Ok(Response::from_bytes(answer_body)?
        .with_status(status)
        .with_headers(out))
}

/// Replaces a key's KV copy with a marker of the version a write made,
/// after the response is sent (see [`KvMeta::stale`]).
fn mark_kv_stale(ctx: &Context, env: &Env, key: Key, version: u64) -> Result<(), EdgeError> {
    let kv = env.kv(KV_BINDING)?;
    ctx.wait_until(async move {
        let meta = KvMeta {
            v: version.to_string(),
            ct: String::new(),
            stale: true,
        };
        let put = match kv
            .put_bytes(key.as_str(), &[])
            .and_then(|p| p.metadata(meta))
        {
            Ok(put) => put.execute().await,
            Err(e) => Err(e),
        };
        if let Err(e) = put {
            worker::console_error!("KV marker for {key} failed: {e}");
        }
    });
    Ok(())
}

/// Where an origin serves a key.
fn object_url(origin: &Origin, key: &Key) -> String {
    format!("{}/o/{}", origin.url, key.as_str())
}

fn header_version(resp: &Response, origin: &str) -> Result<u64, EdgeError> {
    resp.headers()
        .get(VERSION_HEADER)?
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| EdgeError::OriginUnreachable {
            origin: origin.to_owned(),
            reason: format!("answer without a valid {VERSION_HEADER} header"),
        })
}

/// Writes a version to KV after the response is sent, unless KV already holds
/// a newer one. The check narrows, but cannot close, the window in which two
/// fills race (KV has no compare-and-set); publication driven by the owner
/// origin replaces this in the edge-publication work.
fn fill_kv(
    ctx: &Context,
    env: &Env,
    key: Key,
    body: Vec<u8>,
    version: u64,
    content_type: String,
) -> Result<(), EdgeError> {
    let kv = env.kv(KV_BINDING)?;
    ctx.wait_until(async move {
        let current = kv
            .get(key.as_str())
            .bytes_with_metadata::<KvMeta>()
            .await
            .ok()
            .and_then(|(_, m)| m)
            .and_then(|m| Some((m.v.parse::<u64>().ok()?, m.stale)));
        // Keep a newer copy, or the same version already filled; a marker
        // gives way to its own version or a newer one.
        let keep = match current {
            Some((v, false)) => v >= version,
            Some((v, true)) => v > version,
            None => false,
        };
        if keep {
            return;
        }
        let meta = KvMeta {
            v: version.to_string(),
            ct: content_type,
            stale: false,
        };
        let put = match kv
            .put_bytes(key.as_str(), &body)
            .and_then(|p| p.metadata(meta))
        {
            Ok(put) => put.execute().await,
            Err(e) => Err(e),
        };
        if let Err(e) = put {
            worker::console_error!("KV fill of {key} failed: {e}");
        }
    });
    Ok(())
}

/// Calls an origin and reads the whole answer, bounded by the timeout (the
/// request is aborted when it fires, so nothing keeps running).
async fn call_origin(
    req: Request,
    origin: &str,
    timeout_ms: u32,
) -> Result<(Response, Vec<u8>), EdgeError> {
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let call = Box::pin(async {
        let mut resp = fetch.send_with_signal(&signal).await?;
        let body = resp.bytes().await?;
        Ok::<_, worker::Error>((resp, body))
    });
    let timer = Delay::from(Duration::from_millis(u64::from(timeout_ms)));
    let outcome = select(call, timer).await;
    match outcome {
        Either::Left((Ok(done), _)) => Ok(done),
        Either::Left((Err(e), _)) => Err(EdgeError::OriginUnreachable {
            origin: origin.to_owned(),
            reason: e.to_string(),
        }),
        Either::Right(((), _)) => {
            controller.abort();
            Err(EdgeError::OriginTimeout {
                origin: origin.to_owned(),
            })
        }
    }
}
