//! View reads and counter increments at `/o/{view}/{id}`.
//!
//! A view's materialized object is read like any object (see
//! [`super::objects`]); what it cannot answer — a page by cursor, an index
//! range, a text query, a set membership — view state answers here. A
//! counter view takes `POST ?op=increment` here, in memory.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prefold_core::http::{check_json, is_json_media_type};
use prefold_core::model::ViewKind;
use prefold_core::Key;
use serde::Deserialize;

use super::body::{content_type, read_limited};
use super::{query_params, ApiError, AppState, OpQuery};
use crate::base::OpKind;
use crate::views::{PageQuery, Query as ViewQuery, Views};

/// Query parameters of a view read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ViewParams {
    after: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
    from: Option<String>,
    to: Option<String>,
    member: Option<String>,
    q: Option<String>,
}

/// A read that view state answers rather than a published object: a page
/// by cursor, an index range, a text query, a set membership check.
pub(super) async fn view_query(
    state: &AppState,
    views: &Views,
    kind: &ViewKind,
    key: &Key,
    query: &str,
) -> Result<Response, ApiError> {
    // Refuse before asking the engine anything.
    state.engine()?;
    let p: ViewParams = query_params(query)?;
    let q = match kind {
        ViewKind::Text(_) if key.routing_part() == "_search" => {
            if p.after.is_some()
                || p.before.is_some()
                || p.member.is_some()
                || p.from.is_some()
                || p.to.is_some()
            {
                return Err(ApiError::InvalidRequest(
                    "`_search` takes `q` and `limit`".into(),
                ));
            }
            let q =
                p.q.ok_or_else(|| ApiError::InvalidRequest("`_search` needs `q`".into()))?;
            let answer = views.search(key.kind(), &q, p.limit).await?;
            return Ok(no_cache(axum::Json(answer).into_response()));
        }
        ViewKind::Set(_) => {
            let member = p.member.filter(|_| {
                p.after.is_none()
                    && p.before.is_none()
                    && p.limit.is_none()
                    && p.q.is_none()
                    && p.from.is_none()
                    && p.to.is_none()
            });
            ViewQuery::Member(
                key.clone(),
                member.ok_or_else(|| {
                    ApiError::InvalidRequest("a set view takes `member=ID`".into())
                })?,
            )
        }
        ViewKind::List(_) | ViewKind::Index(_) | ViewKind::Text(_) => {
            if p.member.is_some() || p.q.is_some() {
                return Err(ApiError::InvalidRequest(
                    "pages take `after`, `before`, `limit` (and `from`, `to` for index views)"
                        .into(),
                ));
            }
            ViewQuery::Page(
                key.clone(),
                PageQuery {
                    after: p.after,
                    before: p.before,
                    limit: p.limit,
                    from: p.from,
                    to: p.to,
                },
            )
        }
        ViewKind::Embed(_) | ViewKind::Aggregate(_) | ViewKind::Counter(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "a `{}` view takes no query parameters",
                kind.name()
            )))
        }
    };
    let answer = views.query(q).await?;
    Ok(no_cache(axum::Json(answer).into_response()))
}

fn no_cache(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `POST /o/{counter_view}/{id}?op=increment` with an optional JSON integer
/// body (default 1): taken in memory, published within the view's period.
pub(super) async fn count(
    state: &AppState,
    views: &Views,
    key: Key,
    q: OpQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if q.op.as_deref() != Some("increment") || !q.path.is_empty() {
        return Err(ApiError::InvalidRequest(
            "a counter takes POST ?op=increment, with an optional integer body".into(),
        ));
    }
    state.engine()?;
    let body = read_limited(headers, body, state.0.settings.max_body_bytes).await?;
    let by = if body.iter().all(u8::is_ascii_whitespace) {
        1
    } else {
        content_type(headers, is_json_media_type)?;
        check_json(&body).map_err(ApiError::MalformedJson)?;
        serde_json::from_slice::<i64>(&body)
            .ok()
            .filter(|n| n.unsigned_abs() <= 1 << 53)
            .ok_or_else(|| {
                ApiError::InvalidRequest("a counter increment is an integer of at most 2^53".into())
            })?
    };
    views.counters().add(&key, by);
    state.count_write(OpKind::Increment);
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"key": key.as_str(), "accepted": by})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
