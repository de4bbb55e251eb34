//! HTTP rules both sides apply identically: ETags, `If-None-Match`, write
//! preconditions (`If-Match`, `If-None-Match`), accepted media types, and
//! RFC 9457 problem bodies.
//!
//! The problem catalogue lives here so that the edge and the origin answer the
//! same mistake with the same `type`, `title` and status, whichever of them
//! catches it first.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// The response header carrying an object's version as a decimal number.
pub const VERSION_HEADER: &str = "x-prefold-version";
/// The response header naming the origin that owns a misdirected key.
pub const OWNER_HEADER: &str = "x-prefold-owner";
/// The loop guard on a request one origin forwarded to a key's owner: the
/// forwarding origin's name. A request carrying it is never forwarded again.
pub const FORWARDED_BY_HEADER: &str = "x-prefold-forwarded-by";
/// The response header saying where the edge found an answer (`kv`, `origin`).
pub const SOURCE_HEADER: &str = "x-prefold-source";

/// The request and response header naming a write's durability
/// (`memory`, `log`, `store`).
pub const DURABILITY_HEADER: &str = "x-prefold-durability";
/// Marks an answer the edge served from its KV copy because no origin
/// could answer (`origin-unavailable`).
pub const STALE_HEADER: &str = "x-prefold-stale";
/// Sent by the edge to a non-owner origin when the owner failed: serve this
/// read from the store (cluster token required).
pub const FAILOVER_HEADER: &str = "x-prefold-failover";
/// The media type of a JSON merge patch (RFC 7386).
pub const MERGE_PATCH_CONTENT_TYPE: &str = "application/merge-patch+json";

/// The strong ETag of an object version.
pub fn etag(version: u64) -> String {
    format!("\"{version:x}\"")
}

/// Whether an `If-None-Match` header value matches a current ETag, so that
/// a `GET` answers 304. Uses the weak comparison RFC 9110 §13.1.2 prescribes
/// for this header: `W/"x"` matches `"x"`.
pub fn if_none_match(header: &str, current_etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current_etag)
}

/// The preconditions of one write, from its `If-Match` and `If-None-Match`
/// headers (RFC 9110 §13.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    if_match: Option<TagList>,
    if_none_match: Option<TagList>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList {
    Any,
    /// `(weak, opaque tag with quotes)`.
    Tags(Vec<(bool, String)>),
}

/// A precondition header that is not a valid entity-tag list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{header} is not `*` or a list of quoted entity tags: {value:?}")]
pub struct PreconditionError {
    /// The header name.
    pub header: &'static str,
    /// The offending value (cut to 64 characters).
    pub value: String,
}

impl TagList {
    fn parse(header: &'static str, value: &str) -> Result<TagList, PreconditionError> {
        let bad = || PreconditionError {
            header,
            value: value.chars().take(64).collect(),
        };
        let value = value.trim();
        if value == "*" {
            return Ok(TagList::Any);
        }
        let mut tags = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (weak, opaque) = match item.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            // etagc = %x21 / %x23-7E / obs-text; no quote inside.
            let inner = opaque
                .strip_prefix('"')
                .and_then(|o| o.strip_suffix('"'))
                .ok_or_else(bad)?;
            if !inner
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
            {
                return Err(bad());
            }
            tags.push((weak, opaque.to_owned()));
        }
        if tags.is_empty() {
            return Err(bad());
        }
        Ok(TagList::Tags(tags))
    }
}

impl Preconditions {
    /// Parses the two headers (either may be absent).
    pub fn parse(
        if_match: Option<&str>,
        if_none_match: Option<&str>,
    ) -> Result<Preconditions, PreconditionError> {
        Ok(Preconditions {
            if_match: if_match
                .map(|v| TagList::parse("If-Match", v))
                .transpose()?,
            if_none_match: if_none_match
                .map(|v| TagList::parse("If-None-Match", v))
                .transpose()?,
        })
    }

    /// Whether the write carries no precondition at all.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Whether the write may proceed, given the current object's ETag (`None`
    /// when there is no object, or it was deleted). `If-Match` uses the
    /// strong comparison (a weak tag never matches); `If-None-Match` the weak
    /// one, as RFC 9110 §13.1.1–2 prescribe.
    pub fn allow(&self, current_etag: Option<&str>) -> bool {
        let if_match_ok = match (&self.if_match, current_etag) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(TagList::Any), Some(_)) => true,
            (Some(TagList::Tags(tags)), Some(cur)) => {
                tags.iter().any(|(weak, t)| !*weak && t == cur)
            }
        };
        let if_none_match_ok = match (&self.if_none_match, current_etag) {
            (None, _) | (Some(_), None) => true,
            (Some(TagList::Any), Some(_)) => false,
            (Some(TagList::Tags(tags)), Some(cur)) => tags.iter().all(|(_, t)| t != cur),
        };
        if_match_ok && if_none_match_ok
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or any
/// `application/*+json`, with or without parameters.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || (sub.ends_with("+json") && sub.len() > 5),
        None => false,
    }
}

/// Whether a `Content-Type` names a JSON merge patch, the one body a `PATCH`
/// accepts: its media type, before any parameters, is
/// [`MERGE_PATCH_CONTENT_TYPE`] in any case (media types are
/// case-insensitive, RFC 9110 §8.3.1).
pub fn is_merge_patch_media_type(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|essence| {
        essence
            .trim()
            .eq_ignore_ascii_case(MERGE_PATCH_CONTENT_TYPE)
    })
}

/// Whether a `Content-Length` value declares a body larger than `limit`
/// bytes, so the write can be refused before any of it is read. An absent or
/// unparsable value says nothing: the body is measured against the limit as
/// it is read anyway.
pub fn declared_length_exceeds(content_length: Option<&str>, limit: u32) -> bool {
    content_length
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > u64::from(limit))
}

/// Checks that a body is one well-formed JSON value, and says where it is not.
pub fn check_json(body: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("the body is not valid JSON: {e}"))
}

/// Every kind of error prefold reports to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The key breaks the grammar (400).
    InvalidKey,
    /// A header or query parameter has a value the server cannot use (400).
    InvalidRequest,
    /// `If-Match` / `If-None-Match` that is not a valid entity-tag list (400).
    InvalidPrecondition,
    /// The operation does not fit the current object, e.g. incrementing a
    /// string (409).
    Conflict,
    /// `If-Match` / `If-None-Match` did not hold (412).
    PreconditionFailed,
    /// The key belongs to another origin (421); the body names it.
    Misdirected,
    /// This key's writes must carry `If-Match` or `If-None-Match` (428).
    PreconditionRequired,
    /// Too many writes are waiting for the store; retry later (503).
    Overloaded,
    /// A `store`-durability write was not confirmed by the store in time (504).
    StoreTimeout,
    /// The object store failed or timed out on a load this request needed (503).
    StoreUnavailable,
    /// The body is not valid JSON (400).
    MalformedJson,
    /// No object under this key (404).
    NotFound,
    /// The method is not allowed on this resource (405).
    MethodNotAllowed,
    /// Body larger than the configured limit (413).
    PayloadTooLarge,
    /// Content type not accepted (415).
    UnsupportedMediaType,
    /// Something failed inside; details stay in the server log (500).
    Internal,
    /// The owner origin could not be reached in time (503).
    OriginUnavailable,
    /// The server is starting or stopping (503).
    NotReady,
    /// The write is well-formed but breaks the model: a field of the wrong
    /// type, an undeclared field, a dangling reference (422).
    ModelViolation,
    /// No valid bearer token: missing, malformed, wrongly signed or expired
    /// (401).
    Unauthorized,
    /// A valid token whose scope does not cover the request (403).
    Forbidden,
}

impl ProblemKind {
    /// HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ProblemKind::InvalidKey
            | ProblemKind::MalformedJson
            | ProblemKind::InvalidRequest
            | ProblemKind::InvalidPrecondition => 400,
            ProblemKind::Conflict => 409,
            ProblemKind::PreconditionFailed => 412,
            ProblemKind::Misdirected => 421,
            ProblemKind::PreconditionRequired => 428,
            ProblemKind::NotFound => 404,
            ProblemKind::MethodNotAllowed => 405,
            ProblemKind::PayloadTooLarge => 413,
            ProblemKind::UnsupportedMediaType => 415,
            ProblemKind::Internal => 500,
            ProblemKind::OriginUnavailable | ProblemKind::NotReady | ProblemKind::Overloaded => 503,
            ProblemKind::StoreTimeout => 504,
            ProblemKind::StoreUnavailable => 503,
            ProblemKind::ModelViolation => 422,
            ProblemKind::Unauthorized => 401,
            ProblemKind::Forbidden => 403,
        }
    }

    /// A short identifier, the tail of the problem `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::InvalidKey => "invalid-key",
            ProblemKind::InvalidRequest => "invalid-request",
            ProblemKind::InvalidPrecondition => "invalid-precondition",
            ProblemKind::Conflict => "conflict",
            ProblemKind::PreconditionFailed => "precondition-failed",
            ProblemKind::Misdirected => "misdirected",
            ProblemKind::PreconditionRequired => "precondition-required",
            ProblemKind::Overloaded => "overloaded",
            ProblemKind::StoreTimeout => "store-timeout",
            ProblemKind::StoreUnavailable => "store-unavailable",
            ProblemKind::MalformedJson => "malformed-json",
            ProblemKind::NotFound => "not-found",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::Internal => "internal",
            ProblemKind::OriginUnavailable => "origin-unavailable",
            ProblemKind::NotReady => "not-ready",
            ProblemKind::ModelViolation => "model-violation",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::Forbidden => "forbidden",
        }
    }

    /// The fixed human-readable summary.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidKey => "Invalid key",
            ProblemKind::InvalidRequest => "Invalid request",
            ProblemKind::InvalidPrecondition => "Invalid precondition header",
            ProblemKind::Conflict => "Conflict with the current object",
            ProblemKind::PreconditionFailed => "Precondition failed",
            ProblemKind::Misdirected => "Key owned by another origin",
            ProblemKind::PreconditionRequired => "Precondition required",
            ProblemKind::Overloaded => "Overloaded",
            ProblemKind::StoreTimeout => "Store did not confirm in time",
            ProblemKind::StoreUnavailable => "Object store unavailable",
            ProblemKind::MalformedJson => "Malformed JSON body",
            ProblemKind::NotFound => "No such object",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::PayloadTooLarge => "Body too large",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::Internal => "Internal error",
            ProblemKind::OriginUnavailable => "Origin unavailable",
            ProblemKind::NotReady => "Not ready",
            ProblemKind::ModelViolation => "The write breaks the model",
            ProblemKind::Unauthorized => "Authentication required",
            ProblemKind::Forbidden => "Not allowed by the token's scope",
        }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem kind: `urn:prefold:problem:{slug}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Summary of the kind; the same for every occurrence.
    pub title: String,
    /// The HTTP status, repeated for clients that lose it.
    pub status: u16,
    /// What went wrong in this occurrence. Never internal error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    /// A problem of a kind, with an occurrence-specific detail.
    pub fn new(kind: ProblemKind, detail: impl Into<Option<String>>) -> Problem {
        Problem {
            kind: format!("urn:prefold:problem:{}", kind.slug()),
            title: kind.title().to_owned(),
            status: kind.status(),
            detail: detail.into(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        // A struct of strings and an integer always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_if_none_match() {
        let t = etag(255);
        assert_eq!(t, "\"ff\"");
        assert!(if_none_match("\"ff\"", &t));
        assert!(if_none_match("W/\"ff\"", &t));
        assert!(if_none_match("\"aa\", \"ff\"", &t));
        assert!(if_none_match("*", &t));
        assert!(!if_none_match("\"fe\"", &t));
        assert!(!if_none_match("ff", &t));
        assert!(!if_none_match("", &t));
    }

    #[test]
    fn preconditions() {
        let cur = Some("\"ff\"");
        let p = |m: Option<&str>, n: Option<&str>| Preconditions::parse(m, n).unwrap();
        assert!(p(None, None).is_empty());
        assert!(p(None, None).allow(cur) && p(None, None).allow(None));
        // If-Match: strong comparison, fails on absence.
        assert!(p(Some("\"ff\""), None).allow(cur));
        assert!(p(Some("\"aa\", \"ff\""), None).allow(cur));
        assert!(!p(Some("W/\"ff\""), None).allow(cur));
        assert!(!p(Some("\"fe\""), None).allow(cur));
        assert!(!p(Some("\"ff\""), None).allow(None));
        assert!(p(Some("*"), None).allow(cur));
        assert!(!p(Some("*"), None).allow(None));
        // If-None-Match: `*` means create only; tags use weak comparison.
        assert!(p(None, Some("*")).allow(None));
        assert!(!p(None, Some("*")).allow(cur));
        assert!(!p(None, Some("W/\"ff\"")).allow(cur));
        assert!(p(None, Some("\"aa\"")).allow(cur));
        // Both.
        assert!(!p(Some("\"ff\""), Some("\"ff\"")).allow(cur));
        for bad in ["ff", "\"ff", "", " , ", "\"a\"b\"", "W/ff", "\"a b\""] {
            let e = Preconditions::parse(Some(bad), None).unwrap_err();
            assert_eq!(e.header, "If-Match", "{bad:?}");
            assert!(Preconditions::parse(None, Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            "application/ld+json ;x=y",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn merge_patch_media_types() {
        for ok in [
            "application/merge-patch+json",
            "Application/Merge-Patch+JSON",
            " application/merge-patch+json ; charset=utf-8",
        ] {
            assert!(is_merge_patch_media_type(ok), "{ok}");
        }
        for bad in [
            "application/json",
            "application/merge-patch+jsonx",
            "charset=utf-8; application/merge-patch+json",
            "",
        ] {
            assert!(!is_merge_patch_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn declared_lengths() {
        assert!(!declared_length_exceeds(None, 10));
        assert!(!declared_length_exceeds(Some("10"), 10));
        assert!(declared_length_exceeds(Some("11"), 10));
        assert!(declared_length_exceeds(Some(" 11 "), 10));
        assert!(declared_length_exceeds(
            Some("18446744073709551615"),
            u32::MAX
        ));
        assert!(!declared_length_exceeds(Some("0"), 0));
        for unparsable in ["", "-1", "1e3", "ten", "18446744073709551616"] {
            assert!(
                !declared_length_exceeds(Some(unparsable), 0),
                "{unparsable:?}"
            );
        }
    }

    #[test]
    fn json_bodies() {
        assert!(check_json(br#"{"a":[1,2,{"b":null}]}"#).is_ok());
        assert!(check_json(b"42").is_ok());
        let e = check_json(b"{\"a\":").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(check_json(b"").is_err());
        assert!(check_json(b"{} {}").is_err());
    }

    #[test]
    fn problem_shape() {
        let p = Problem::new(ProblemKind::InvalidKey, Some("segment 1 is empty".into()));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["type"], "urn:prefold:problem:invalid-key");
        assert_eq!(v["status"], 400);
        assert_eq!(v["title"], "Invalid key");
        assert_eq!(v["detail"], "segment 1 is empty");
        let bare = Problem::new(ProblemKind::Internal, None);
        assert!(!bare.to_json().contains("detail"));
    }
}
