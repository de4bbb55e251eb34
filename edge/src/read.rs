//! Reads: KV when its copy is recent enough for this client, else the
//! origins in preference order, else the KV copy marked stale, else 503.
//!
//! "Recent enough" is the client's read-your-writes fence
//! ([`prefold_core::fence`]): the version its own last write to this key's
//! aggregate made (cookie), or `x-prefold-min-version`. Without a fence any
//! KV copy is served, however old; publication keeps it fresh.
//!
//! Every origin call has the configured timeout. The owner is asked
//! normally; the next origins are asked for a failover read (answered from
//! the object store, which holds what the owner has flushed), with a cluster
//! token. Queries of views (pages by cursor, ranges, text search) need the
//! view state only the owner holds, so they go to the owner alone.
//!
//! Answers carry a strong ETag, honour `If-None-Match` with 304, carry a
//! `Cache-Control` with `stale-while-revalidate` and `stale-if-error`, and
//! are gzip-compressed by the runtime for clients that accept it (`Vary:
//! Accept-Encoding`).

use prefold_core::fence::{Fences, MIN_VERSION_HEADER};
use prefold_core::http::{
    etag, if_none_match, FAILOVER_HEADER, SOURCE_HEADER, STALE_HEADER, VERSION_HEADER,
};
use prefold_core::publish::{kv_decision, KvDecision, KvMeta};
use prefold_core::Key;
use worker::{Context, Headers, Method, Request, Response};

use crate::{call_origin, copy_headers, object_url, Edge, EdgeError};

/// Origins asked per read at most (the owner and two more), each within the
/// timeout: a read's time stays bounded however many origins are down.
const MAX_ORIGIN_ATTEMPTS: usize = 3;
/// Bodies smaller than this go out uncompressed: gzip's framing would eat
/// the gain.
const MIN_COMPRESS_BYTES: usize = 256;

/// An object version ready to answer with.
struct Found {
    body: Vec<u8>,
    content_type: String,
    version: u64,
    /// `kv`, `origin` or `failover-store`.
    source: &'static str,
    /// Served from KV although the client needs newer (no origin answered).
    stale: bool,
}

impl Found {
    /// The KV copy; `stale` when the client needed newer and no origin
    /// answered.
    fn kv(body: Vec<u8>, meta: KvMeta, version: u64, stale: bool) -> Found {
        Found {
            body,
            content_type: meta.ct,
            version,
            source: "kv",
            stale,
        }
    }
}

/// What the origins said about a key.
enum Fetched {
    Found(Found),
    Gone,
}

pub(crate) async fn get_object(
    req: &Request,
    edge: &Edge<'_>,
    ctx: &Context,
    key: Key,
) -> Result<Response, EdgeError> {
    // A query (a page by cursor, an index range, a text query, a set
    // membership) is answered by the view state on the owner, never by the
    // published object in KV.
    if let Some(query) = crate::query_of(req) {
        return query_owner(req, edge, &key, &query).await;
    }
    let cookies = req.headers().get("cookie")?;
    let fences = Fences::from_cookie_header(cookies.as_deref(), edge.now_secs());
    let header_min = match req.headers().get(MIN_VERSION_HEADER)? {
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            EdgeError::BadRequest(format!("{MIN_VERSION_HEADER} must be a version number"))
        })?),
        None => None,
    };
    let needed = fences.required(&key).max(header_min);

    let kv = edge.kv()?;
    let (value, meta) = kv.get(key.as_str()).bytes_with_metadata::<KvMeta>().await?;
    let copy = match (value, meta) {
        (Some(body), Some(meta)) => meta.version().map(|v| (body, meta, v)),
        _ => None,
    };
    let copy = match copy {
        Some((body, meta, version)) if needed.is_none_or(|n| version >= n) => {
            if meta.gone {
                return Err(EdgeError::NotFound);
            }
            return object_response(req, edge, Found::kv(body, meta, version, false));
        }
        older => older,
    };
    match fetch_from_origins(edge, &key).await {
        Ok(Fetched::Found(found)) => {
            if found.source == "origin" {
                fill_kv(ctx, edge, &key, copy.as_ref().map(|c| &c.1), &found)?;
            }
            object_response(req, edge, found)
        }
        Ok(Fetched::Gone) => Err(EdgeError::NotFound),
        // No origin answered: an older copy beats an error.
        Err(e) => match copy {
            Some((body, meta, version)) if !meta.gone => {
                worker::console_warn!("serving a stale copy of {key}: {e:?}");
                object_response(req, edge, Found::kv(body, meta, version, true))
            }
            _ => Err(e),
        },
    }
}

/// Asks the key's origins in preference order until one answers.
async fn fetch_from_origins(edge: &Edge<'_>, key: &Key) -> Result<Fetched, EdgeError> {
    let token = edge.cluster_token();
    let mut last = None;
    let preference = edge.cfg.origins.preference(key);
    for (i, origin) in preference.into_iter().take(MAX_ORIGIN_ATTEMPTS).enumerate() {
        let failover = i > 0;
        // A failover read must be authenticated; without the secret only
        // the owner can be asked.
        if failover && token.is_none() {
            break;
        }
        let url = object_url(origin, key);
        let req = match (failover, &token) {
            (true, Some(t)) => crate::cluster_get(&url, t, &[(FAILOVER_HEADER, "1")])?,
            _ => Request::new(&url, Method::Get)?,
        };
        let outcome = call_origin(req, &origin.name, edge.cfg.origin_timeout_ms).await;
        let failure = match outcome {
            Ok((resp, body)) => match resp.status_code() {
                200 => {
                    let version = header_version(&resp, &origin.name)?;
                    let content_type = resp
                        .headers()
                        .get("content-type")?
                        .unwrap_or_else(|| "application/json".to_owned());
                    return Ok(Fetched::Found(Found {
                        body,
                        content_type,
                        version,
                        source: if failover { "failover-store" } else { "origin" },
                        stale: false,
                    }));
                }
                404 => return Ok(Fetched::Gone),
                status => EdgeError::OriginFailed {
                    origin: origin.name.clone(),
                    status,
                },
            },
            Err(e) => e,
        };
        worker::console_warn!("read of {key} from {}: {failure:?}", origin.name);
        last = Some(failure);
    }
    Err(last.unwrap_or(EdgeError::NotFound))
}

/// Forwards a view query to the key's owner and returns its answer as it
/// came (including its 400 problem bodies); nothing is cached.
async fn query_owner(
    req: &Request,
    edge: &Edge<'_>,
    key: &Key,
    query: &str,
) -> Result<Response, EdgeError> {
    let owner = edge.cfg.origins.owner(key);
    let url = format!("{}?{query}", object_url(owner, key));
    let (resp, body) = call_origin(
        Request::new(&url, Method::Get)?,
        &owner.name,
        edge.cfg.origin_timeout_ms,
    )
    .await?;
    let status = resp.status_code();
    if status >= 500 && status != 503 {
        return Err(EdgeError::OriginFailed {
            origin: owner.name.clone(),
            status,
        });
    }
    let out = copy_headers(
        resp.headers(),
        &["content-type", "cache-control", "retry-after"],
    )?;
    let body = if req.method() == Method::Head {
        Vec::new()
    } else {
        body
    };
    Ok(Response::from_bytes(body)?
        .with_status(status)
        .with_headers(out))
}

/// Builds the answer for one object version, honouring `If-None-Match`.
fn object_response(req: &Request, edge: &Edge<'_>, found: Found) -> Result<Response, EdgeError> {
    let tag = etag(found.version);
    let headers = Headers::new();
    headers.set("etag", &tag)?;
    headers.set(VERSION_HEADER, &found.version.to_string())?;
    headers.set(SOURCE_HEADER, found.source)?;
    headers.set("vary", "Accept-Encoding")?;
    let cfg = &edge.cfg;
    headers.set(
        "cache-control",
        &format!(
            "public, max-age=0, stale-while-revalidate={}, stale-if-error={}",
            cfg.stale_while_revalidate_secs, cfg.stale_if_error_secs
        ),
    )?;
    if found.stale {
        headers.set(STALE_HEADER, "origin-unavailable")?;
    }
    let not_modified = req
        .headers()
        .get("if-none-match")?
        .is_some_and(|inm| if_none_match(&inm, &tag));
    if not_modified {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    headers.set("content-type", &found.content_type)?;
    if found.body.len() >= MIN_COMPRESS_BYTES {
        // The runtime compresses the body as it goes out (its default
        // "automatic" body encoding follows this header), and negotiates
        // with the client itself: a Worker always sees `Accept-Encoding:
        // br, gzip`, and a client that refuses gzip gets the body decoded.
        headers.set("content-encoding", "gzip")?;
    }
    let body = if req.method() == Method::Head {
        Vec::new()
    } else {
        found.body
    };
    Ok(Response::from_bytes(body)?.with_headers(headers))
}

pub(crate) fn header_version(resp: &Response, origin: &str) -> Result<u64, EdgeError> {
    resp.headers()
        .get(VERSION_HEADER)?
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| EdgeError::OriginUnreachable {
            origin: origin.to_owned(),
            reason: format!("answer without a valid {VERSION_HEADER} header"),
        })
}

/// Writes what the owner answered to KV after the response is sent, when
/// the edge's rules allow: never an older version than KV holds, never a
/// key written less than a second ago (publication will bring it).
fn fill_kv(
    ctx: &Context,
    edge: &Edge<'_>,
    key: &Key,
    current: Option<&KvMeta>,
    found: &Found,
) -> Result<(), EdgeError> {
    if kv_decision(current, found.version, edge.now_ms) != KvDecision::Write {
        return Ok(());
    }
    let kv = edge.kv()?;
    let meta = KvMeta::new(found.version, &found.content_type, edge.now_ms, false);
    let key = key.clone();
    let body = found.body.clone();
    ctx.wait_until(async move {
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
