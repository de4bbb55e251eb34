//! Writes: checked at the edge with the shared rules, forwarded to the
//! owner, and remembered for the client.
//!
//! Everything that can be refused without the origin is refused here, so a
//! refused write is never forwarded: the token (when the edge has the token
//! secret; the origin verifies again either way), the media type, the body
//! size, that the body is JSON, and the precondition headers. Writes are not
//! failed over: only the owner may apply a key's writes, so with the owner
//! down a write gets 503 with `Retry-After`.
//!
//! A write changes nothing in KV: the owner publishes the new version
//! itself. Until KV shows it everywhere, the client's read-your-writes fence
//! (a cookie holding the version, see [`prefold_core::fence`]) sends its own
//! reads of the written aggregate to the owner.

use prefold_core::auth::authorize_write;
use prefold_core::fence::Fences;
use prefold_core::http::{
    check_json, declared_length_exceeds, is_json_media_type, is_merge_patch_media_type,
    DURABILITY_HEADER, VERSION_HEADER,
};
use prefold_core::{Key, Origin, Preconditions};
use worker::{js_sys, Method, Request, RequestInit, Response};

use crate::read::header_version;
use crate::{call_origin, copy_headers, object_url, Edge, EdgeError};

/// The request headers the owner needs to apply a write as the client sent it.
const FORWARDED: [&str; 5] = [
    "content-type",
    "if-match",
    "if-none-match",
    "authorization",
    DURABILITY_HEADER,
];

/// The owner's answer headers the client gets back.
const RETURNED: [&str; 7] = [
    "content-type",
    "etag",
    VERSION_HEADER,
    DURABILITY_HEADER,
    "retry-after",
    "www-authenticate",
    "cache-control",
];

/// A write that passed every check the edge can make without the origin.
struct Checked {
    method: Method,
    /// `None` when the write carries no body (a `DELETE`, or a bodiless
    /// counter increment), so that none is forwarded either.
    body: Option<Vec<u8>>,
}

/// `PUT`, `PATCH`, `DELETE` or `POST` of `/o/{key}`: checked here, applied
/// by the owner.
pub(crate) async fn write_object(
    mut req: Request,
    edge: &Edge<'_>,
    key: Key,
) -> Result<Response, EdgeError> {
    let write = check(&mut req, edge, &key).await?;
    let owner = edge.cfg.origins.owner(&key);
    let (resp, answer_body) = forward(&req, edge, &key, owner, write).await?;
    answer(&req, edge, &key, owner, &resp, answer_body)
}

/// Everything the edge can refuse alone, so a refused write costs no origin
/// call. The order of the checks decides which error a request with several
/// faults gets.
async fn check(req: &mut Request, edge: &Edge<'_>, key: &Key) -> Result<Checked, EdgeError> {
    let authorization = req.headers().get("authorization")?;
    if let Some(secret) = &edge.token_secret {
        authorize_write(
            secret.as_bytes(),
            authorization.as_deref(),
            key,
            edge.now_secs(),
        )
        .map_err(EdgeError::Auth)?;
    }
    let method = req.method();
    let has_body = expects_body(req, &method)?;
    let limit = edge.cfg.max_body_bytes;
    let declared = req.headers().get("content-length")?;
    if declared_length_exceeds(declared.as_deref(), limit) {
        return Err(EdgeError::TooLarge { limit });
    }
    let body = if has_body {
        let body = req.bytes().await?;
        if body.len() as u64 > u64::from(limit) {
            return Err(EdgeError::TooLarge { limit });
        }
        check_json(&body).map_err(EdgeError::MalformedJson)?;
        Some(body)
    } else {
        None
    };
    let if_match = req.headers().get("if-match")?;
    let if_none_match = req.headers().get("if-none-match")?;
    Preconditions::parse(if_match.as_deref(), if_none_match.as_deref())
        .map_err(EdgeError::BadPrecondition)?;
    Ok(Checked { method, body })
}

/// Whether the write carries a body, once its media type is one the method
/// accepts.
fn expects_body(req: &Request, method: &Method) -> Result<bool, EdgeError> {
    let ct = req.headers().get("content-type")?.unwrap_or_default();
    // A counter increment (`POST …?op=increment`) may come without a body.
    let bodiless_post = *method == Method::Post
        && ct.is_empty()
        && req
            .headers()
            .get("content-length")?
            .is_none_or(|n| n.trim() == "0");
    let ct_ok = match method {
        _ if bodiless_post => true,
        Method::Patch => is_merge_patch_media_type(&ct),
        Method::Delete => true,
        _ => is_json_media_type(&ct),
    };
    if !ct_ok {
        return Err(EdgeError::UnsupportedMediaType(ct));
    }
    Ok(*method != Method::Delete && !bodiless_post)
}

/// Sends the write to its owner, with its query (the operation) and the
/// headers that decide how it is applied.
async fn forward(
    req: &Request,
    edge: &Edge<'_>,
    key: &Key,
    owner: &Origin,
    write: Checked,
) -> Result<(Response, Vec<u8>), EdgeError> {
    let mut url = object_url(owner, key);
    if let Some(q) = crate::query_of(req) {
        url.push('?');
        url.push_str(&q);
    }
    let headers = copy_headers(req.headers(), &FORWARDED)?;
    let mut init = RequestInit::new();
    init.with_method(write.method).with_headers(headers);
    if let Some(body) = &write.body {
        init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    }
    call_origin(
        Request::new_with_init(&url, &init)?,
        &owner.name,
        edge.cfg.origin_timeout_ms,
    )
    .await
}

/// The owner's answer for the client, with the read-your-writes fence when
/// the write was applied.
fn answer(
    req: &Request,
    edge: &Edge<'_>,
    key: &Key,
    owner: &Origin,
    resp: &Response,
    body: Vec<u8>,
) -> Result<Response, EdgeError> {
    let status = resp.status_code();
    // 503 (overloaded) and 504 (applied, not yet confirmed by the store)
    // are the owner's own answers and go back as they came.
    if status >= 500 && status != 503 && status != 504 {
        return Err(EdgeError::OriginFailed {
            origin: owner.name.clone(),
            status,
        });
    }
    // The origin's answer (success, or a client error or 503 with its
    // problem body) goes back as it came.
    let out = copy_headers(resp.headers(), &RETURNED)?;
    // An applied write (a 504 is applied, only unconfirmed by the store)
    // fences the client's later reads of its aggregate at its version.
    let applied = (200..300).contains(&status) || status == 504;
    if let (true, Ok(version)) = (applied, header_version(resp, &owner.name)) {
        if let Some(cookie) = fence_cookie(req, edge, key, version)? {
            out.set("set-cookie", &cookie)?;
        }
    }
    Ok(Response::from_bytes(body)?
        .with_status(status)
        .with_headers(out))
}

/// The `Set-Cookie` value that fences the client's later reads of the
/// written aggregate at `version`, keeping the other fences it holds; `None`
/// when read-your-writes is switched off.
fn fence_cookie(
    req: &Request,
    edge: &Edge<'_>,
    key: &Key,
    version: u64,
) -> Result<Option<String>, EdgeError> {
    let cookies = req.headers().get("cookie")?;
    let mut fences = Fences::from_cookie_header(cookies.as_deref(), edge.now_secs());
    let lifetime = u64::from(edge.cfg.ryw_secs);
    if lifetime == 0 {
        return Ok(None);
    }
    fences.note(key, version, edge.now_secs() + lifetime);
    Ok(Some(fences.set_cookie(lifetime, crate::is_https(req))))
}
