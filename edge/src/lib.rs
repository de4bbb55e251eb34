//! prefold-edge: the Cloudflare Worker in front of the origins.
//!
//! Requests arrive at the edge first. A read of `/o/{key}` is answered from
//! Workers KV when the copy there is recent enough for this client (its
//! version and content type ride in the KV metadata, so the strong ETag and
//! `304 Not Modified` need no origin). Otherwise the edge computes the key's
//! owner origin by rendezvous hashing — the same function, from
//! `prefold-core`, that the origins use — and asks it, then the next origins
//! in the key's preference list, then serves the KV copy marked stale, and
//! only then answers 503 with `Retry-After` ([`read`]).
//!
//! Writes are checked here with the shared rules (token, key grammar, media
//! type, size, JSON, preconditions) and forwarded to the owner, and the
//! client gets a read-your-writes fence for what it wrote ([`write`]).
//!
//! KV is written by publication ([`publish`]): the owner origin pushes
//! changed objects to `POST /_prefold/publish`, and a Cron Trigger pulls each
//! origin's change feed from a cursor kept in KV, so a lost push is repaired
//! within a minute. Every KV write keeps Workers KV's rule of at most one
//! write per second per key, and never replaces a newer version.
//!
//! Configuration comes from Worker `[vars]` and is parsed by
//! [`prefold_core::EdgeConfig`], the one definition both sides share; the
//! token and cluster secrets come from `wrangler secret` (or `.dev.vars`
//! locally) and never appear in logs or responses.
//!
//! Routes:
//! - `GET|HEAD /o/{key}` (views and their queries too), `PUT|PATCH|DELETE|POST
//!   /o/{key}`: objects;
//! - `POST /_prefold/publish`: pushed batches (cluster token);
//! - `GET /_prefold/route/{key}`: which origin owns a key, and the failover
//!   order (for operators, and for tests that check the Wasm build routes
//!   exactly as the native one);
//! - `GET /healthz`: liveness.

mod publish;
mod read;
mod write;

use std::time::Duration;

use futures::future::{select, Either};
use prefold_core::auth::{AuthError, VAR_CLUSTER_SECRET, VAR_TOKEN_SECRET};
use prefold_core::config::EdgeConfig;
use prefold_core::http::PROBLEM_CONTENT_TYPE;
use prefold_core::publish::PUBLISH_PATH;
use prefold_core::{ConfigError, Key, KeyError, Origin, Problem, ProblemKind};
use serde::Serialize;
use worker::{
    event, AbortController, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
    Response, ScheduleContext, ScheduledEvent,
};

/// The KV namespace binding holding published objects.
const KV_BINDING: &str = "OBJECTS";

/// Everything that can go wrong at the edge. Mapped to a problem body in
/// [`EdgeError::into_response`], and only there.
#[derive(Debug)]
enum EdgeError {
    BadKey(KeyError),
    Config(ConfigError),
    Auth(AuthError),
    UnsupportedMediaType(String),
    TooLarge { limit: u32 },
    MalformedJson(String),
    BadRequest(String),
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
            EdgeError::Auth(e) => {
                let kind = if e.status() == 403 {
                    ProblemKind::Forbidden
                } else {
                    ProblemKind::Unauthorized
                };
                let mut r = problem(kind, Some(e.to_string()))?;
                r.headers_mut().set("www-authenticate", e.challenge())?;
                return Ok(r);
            }
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
            EdgeError::BadRequest(d) => (ProblemKind::InvalidRequest, Some(d), None),
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

/// What every handler needs: the bindings, the parsed configuration, the
/// secrets and the time the request arrived.
struct Edge<'a> {
    env: &'a Env,
    cfg: EdgeConfig,
    token_secret: Option<String>,
    cluster_secret: Option<String>,
    now_ms: u64,
}

impl<'a> Edge<'a> {
    fn new(env: &'a Env) -> Result<Edge<'a>, EdgeError> {
        let cfg = EdgeConfig::from_lookup(|name| env.var(name).ok().map(|v| v.to_string()))
            .map_err(EdgeError::Config)?;
        let secret = |name: &'static str| -> Result<Option<String>, EdgeError> {
            // `wrangler secret` values and `--var`s are both string bindings.
            let Some(value) = env.var(name).ok().map(|v| v.to_string()) else {
                return Ok(None);
            };
            prefold_core::auth::check_secret(name, value.as_bytes())
                .map_err(|e| EdgeError::Config(ConfigError::Secret(e)))?;
            Ok(Some(value))
        };
        Ok(Edge {
            env,
            cfg,
            token_secret: secret(VAR_TOKEN_SECRET)?,
            cluster_secret: secret(VAR_CLUSTER_SECRET)?,
            now_ms: worker::Date::now().as_millis(),
        })
    }

    fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }

    fn kv(&self) -> Result<worker::kv::KvStore, EdgeError> {
        Ok(self.env.kv(KV_BINDING)?)
    }

    /// A cluster token for a call to an origin, if the edge has the secret.
    fn cluster_token(&self) -> Option<String> {
        self.cluster_secret
            .as_ref()
            .map(|s| prefold_core::auth::mint_cluster(s.as_bytes(), self.now_secs()))
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    match route(req, &env, &ctx).await {
        Ok(r) => Ok(r),
        Err(e) => e.into_response(),
    }
}

/// The Cron Trigger: the pull half of publication.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match Edge::new(&env) {
        Ok(edge) => publish::pull(&edge).await,
        Err(e) => worker::console_error!("scheduled pull: {e:?}"),
    }
}

async fn route(req: Request, env: &Env, ctx: &Context) -> Result<Response, EdgeError> {
    // `path()` is the URL's pathname, still percent-encoded: exactly what the
    // key grammar wants to see.
    let path = req.path();
    if let Some(raw) = path.strip_prefix("/o/") {
        let key = Key::parse(raw).map_err(EdgeError::BadKey)?;
        let edge = Edge::new(env)?;
        return match req.method() {
            Method::Get | Method::Head => read::get_object(&req, &edge, ctx, key).await,
            Method::Put | Method::Patch | Method::Delete | Method::Post => {
                write::write_object(req, &edge, key).await
            }
            _ => Err(EdgeError::MethodNotAllowed(
                "GET, HEAD, PUT, PATCH, DELETE, POST",
            )),
        };
    }
    if path == PUBLISH_PATH {
        if req.method() != Method::Post {
            return Err(EdgeError::MethodNotAllowed("POST"));
        }
        let edge = Edge::new(env)?;
        return publish::accept_push(req, &edge).await;
    }
    if let Some(raw) = path.strip_prefix("/_prefold/route/") {
        let key = Key::parse(raw).map_err(EdgeError::BadKey)?;
        let edge = Edge::new(env)?;
        return route_info(&edge.cfg, &key);
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

/// The request URL's query (without `?`), if it has one.
///
/// Read from the runtime's URL string: `worker::Request::url()` parses it
/// with the `url` crate, whose IDNA and Unicode tables were a third of the
/// Wasm (about 70 KiB gzip). The runtime has already normalised the URL.
fn query_of(req: &Request) -> Option<String> {
    let url = req.inner().url();
    let after = url.split_once('?')?.1;
    let query = after.split_once('#').map_or(after, |(q, _)| q);
    (!query.is_empty()).then(|| query.to_owned())
}

/// Whether the request came over HTTPS (then cookies are `Secure`).
fn is_https(req: &Request) -> bool {
    req.inner().url().starts_with("https:")
}

/// A `GET` of `url` carrying a cluster token (and any extra headers): how
/// the edge makes the cluster's own calls to an origin.
fn cluster_get(url: &str, token: &str, extra: &[(&str, &str)]) -> Result<Request, EdgeError> {
    let headers = Headers::new();
    headers.set("authorization", &format!("Bearer {token}"))?;
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    Ok(Request::new_with_init(url, &init)?)
}

/// The headers named in `names` that `from` has, and only those: what the
/// edge passes between client and origin is a fixed list, never everything.
fn copy_headers(from: &Headers, names: &[&str]) -> Result<Headers, EdgeError> {
    let out = Headers::new();
    for name in names {
        if let Some(v) = from.get(name)? {
            out.set(name, &v)?;
        }
    }
    Ok(out)
}

/// Where an origin serves a key.
fn object_url(origin: &Origin, key: &Key) -> String {
    format!("{}/o/{}", origin.url, key.as_str())
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
