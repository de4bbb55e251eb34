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
    check_json, is_json_media_type, DURABILITY_HEADER, MERGE_PATCH_CONTENT_TYPE, VERSION_HEADER,
};
use prefold_core::{Key, Preconditions};
use worker::{js_sys, Headers, Method, Request, RequestInit, Response};

use crate::read::header_version;
use crate::{call_origin, object_url, Edge, EdgeError};

pub(crate) async fn write_object(
    mut req: Request,
    edge: &Edge<'_>,
    key: Key,
) -> Result<Response, EdgeError> {
    let authorization = req.headers().get("authorization")?;
    if let Some(secret) = &edge.token_secret {
        authorize_write(
            secret.as_bytes(),
            authorization.as_deref(),
            &key,
            edge.now_secs(),
        )
        .map_err(EdgeError::Auth)?;
    }
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
    let limit = edge.cfg.max_body_bytes;
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

    let owner = edge.cfg.origins.owner(&key);
    let mut url = object_url(owner, &key);
    let https = crate::is_https(&req);
    if let Some(q) = crate::query_of(&req) {
        url.push('?');
        url.push_str(&q);
    }
    let headers = Headers::new();
    for name in [
        "content-type",
        "if-match",
        "if-none-match",
        "authorization",
        DURABILITY_HEADER,
    ] {
        if let Some(v) = req.headers().get(name)? {
            headers.set(name, &v)?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if has_body {
        init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    }
    let (resp, answer_body) = call_origin(
        Request::new_with_init(&url, &init)?,
        &owner.name,
        edge.cfg.origin_timeout_ms,
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
    // The origin's answer (success, or a client error or 503 with its
    // problem body) goes back as it came.
    let out = Headers::new();
    for name in [
        "content-type",
        "etag",
        VERSION_HEADER,
        DURABILITY_HEADER,
        "retry-after",
        "www-authenticate",
        "cache-control",
    ] {
        if let Some(v) = resp.headers().get(name)? {
            out.set(name, &v)?;
        }
    }
    // An applied write (a 504 is applied, only unconfirmed by the store)
    // fences the client's later reads of its aggregate at its version.
    let applied = (200..300).contains(&status) || status == 504;
    if let (true, Ok(version)) = (applied, header_version(&resp, &owner.name)) {
        let cookies = req.headers().get("cookie")?;
        let mut fences = Fences::from_cookie_header(cookies.as_deref(), edge.now_secs());
        let lifetime = u64::from(edge.cfg.ryw_secs);
        if lifetime > 0 {
            fences.note(&key, version, edge.now_secs() + lifetime);
            out.set("set-cookie", &fences.set_cookie(lifetime, https))?;
        }
    }
    Ok(Response::from_bytes(answer_body)?
        .with_status(status)
        .with_headers(out))
}
