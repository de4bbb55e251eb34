//! Objects: `GET|HEAD|PUT|PATCH|DELETE|POST /o/{key}`.
//!
//! A read answers from the hot tier, with the ETag and `304` for a
//! matching `If-None-Match`. A write passes its checks in order — key,
//! token, owner (before the body is read), media type, size, JSON,
//! preconditions, durability, required preconditions, the model — and only
//! then reaches the engine, so a refused write changes nothing.
//!
//! A request for a key another origin owns does not get here: it is
//! forwarded to the owner (see [`super::forward`]), which checks it.

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use prefold_core::http::{
    if_none_match, is_json_media_type, is_merge_patch_media_type, DURABILITY_HEADER,
    FAILOVER_HEADER,
};
use prefold_core::{Key, Preconditions};
use serde::Serialize;
use serde_json::Value;

use super::auth::{check_cluster, write_key};
use super::body::{content_type, json_body};
use super::cluster::failover_read;
use super::views::{count, view_query};
use super::{key_of, version_headers, ApiError, AppState, OpQuery};
use crate::base::{Durability, Op};
use crate::engine::Write;

/// Browsers and CDNs may keep a copy but must revalidate it (cheap: ETag/304).
/// The edge, not the origin, sets the policy clients see.
const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

// Takes the whole request rather than `Uri` and `HeaderMap` extractors: those
// clone, and this is the hot path.
pub(super) async fn get_object(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = key_of(req.uri())?;
    let settings = &state.0.settings;
    if req.headers().contains_key(FAILOVER_HEADER) && !settings.ownership.owns(&key) {
        check_cluster(&state, req.headers())?;
        return failover_read(&state, &key, req.method() == axum::http::Method::HEAD).await;
    }
    // A text query merges every origin's words, so any origin answers it.
    let search = state.0.views.get().is_some_and(|v| v.is_search(&key));
    if !search {
        settings.ownership.check(&key)?;
    }
    if let Some(views) = state.0.views.get() {
        if let Some(view) = views.model().view(key.kind()) {
            let query = req.uri().query();
            if query.is_some() || search {
                return view_query(&state, views, &view.kind, &key, query.unwrap_or_default())
                    .await;
            }
        }
    }
    let headers = req.headers();
    let object = state
        .engine()?
        .read(&key)
        .await?
        .ok_or(ApiError::NotFound)?;
    let not_modified = headers.get(header::IF_NONE_MATCH).is_some_and(|inm| {
        inm.to_str()
            .is_ok_and(|inm| if_none_match(inm, &object.etag()))
    });
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(object.body.clone()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, object.content_type());
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

#[derive(Serialize)]
struct WriteAnswer<'a> {
    key: &'a str,
    version: u64,
    etag: &'a str,
    durability: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// The checks shared by every write, then the write itself.
async fn write(
    state: &AppState,
    key: Key,
    headers: &HeaderMap,
    op: Op,
) -> Result<Response, ApiError> {
    // Several lines of a list header are one comma-separated list
    // (RFC 9110 §5.3).
    let list = |name: header::HeaderName| {
        let lines: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    };
    let (if_match, if_none_match) = (list(header::IF_MATCH), list(header::IF_NONE_MATCH));
    let preconditions = Preconditions::parse(if_match.as_deref(), if_none_match.as_deref())?;
    let durability = match headers.get(DURABILITY_HEADER) {
        None => state.0.settings.durability,
        Some(v) => v.to_str().ok().and_then(Durability::parse).ok_or_else(|| {
            ApiError::InvalidRequest(format!("{DURABILITY_HEADER} must be memory, log or store"))
        })?,
    };
    if preconditions.is_empty() && state.0.settings.requires_precondition(&key) {
        return Err(ApiError::PreconditionRequired(key.kind().to_owned()));
    }
    let engine = state.engine()?;
    let views = state.0.views.get();
    if let Some(views) = views {
        views.admit(engine, &key, &op).await?;
    }
    let kind = op.kind();
    let applied = engine
        .write(Write {
            key: key.clone(),
            op,
            preconditions,
            durability,
        })
        .await?;
    state.count_write(kind);
    let object = &applied.object;
    if let Some(views) = views {
        views.changed(key.clone(), object.version);
    }
    let answer = WriteAnswer {
        key: key.as_str(),
        version: object.version,
        etag: &object.etag(),
        durability: durability.as_str(),
        deleted: object.tombstone,
        result: applied.result,
    };
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, axum::Json(answer)).into_response();
    let h = resp.headers_mut();
    version_headers(h, object);
    h.insert(
        DURABILITY_HEADER,
        HeaderValue::from_static(durability.as_str()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

pub(super) async fn put_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    let content_type = content_type(&headers, is_json_media_type)?;
    let body = json_body(&state, &headers, body).await?;
    let op = Op::Put { content_type, body };
    write(&state, key, &headers, op).await
}

pub(super) async fn patch_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    content_type(&headers, is_merge_patch_media_type)?;
    let body = json_body(&state, &headers, body).await?;
    let patch: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    write(&state, key, &headers, Op::Patch(patch)).await
}

pub(super) async fn delete_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    write(&state, key, &headers, Op::Delete).await
}

/// `POST /o/{key}?op=append|increment&path=/json/pointer`.
pub(super) async fn post_object(
    State(state): State<AppState>,
    uri: Uri,
    query: Result<Query<OpQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if let Some(views) = state.0.views.get().filter(|v| v.is_counter(&key)) {
        return count(&state, views, key, q, &headers, body).await;
    }
    let op_name = q.op.unwrap_or_default();
    if op_name != "append" && op_name != "increment" {
        return Err(ApiError::InvalidRequest(
            "POST needs ?op=append or ?op=increment (and &path=/json/pointer)".to_owned(),
        ));
    }
    if !q.path.is_empty() && !q.path.starts_with('/') {
        return Err(ApiError::InvalidRequest(format!(
            "path {:?} is not a JSON pointer (RFC 6901): it must be empty or start with `/`",
            q.path
        )));
    }
    content_type(&headers, is_json_media_type)?;
    let body = json_body(&state, &headers, body).await?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let op = if op_name == "append" {
        Op::Append {
            pointer: q.path,
            value,
        }
    } else {
        let Value::Number(delta) = value else {
            return Err(ApiError::InvalidRequest(
                "an increment's body must be a JSON number".to_owned(),
            ));
        };
        Op::Increment {
            pointer: q.path,
            delta,
        }
    };
    write(&state, key, &headers, op).await
}
