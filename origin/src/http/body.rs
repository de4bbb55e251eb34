//! Request bodies: read within the limit (refused as soon as they pass it,
//! whatever `Content-Length` claimed), media types, JSON.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prefold_core::http::{check_json, declared_length_exceeds};

use super::{ApiError, AppState};

/// Reads a body, refusing it as soon as it passes `limit` bytes.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: u32,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if declared_length_exceeds(declared, limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Body(e.to_string()))?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The request's content type, if it is one of `accepted`.
pub(super) fn content_type(
    headers: &HeaderMap,
    accepted: impl Fn(&str) -> bool,
) -> Result<String, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not ASCII)"))
        .unwrap_or_default();
    // The stored envelope keeps at most 255 bytes of content type.
    if !accepted(ct) || ct.len() > 255 {
        return Err(ApiError::UnsupportedMediaType(
            ct.chars().take(64).collect(),
        ));
    }
    Ok(ct.to_owned())
}

/// A JSON body: size limit, then well-formedness.
pub(super) async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let body = read_limited(headers, body, state.0.settings.max_body_bytes).await?;
    check_json(&body).map_err(ApiError::MalformedJson)?;
    Ok(body)
}
