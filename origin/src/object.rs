//! One version of one object, as the hot tier, the log, the flusher and the
//! responses all share it.
//!
//! An [`Object`] is immutable and reference-counted: a write makes a new one.
//! The response headers that depend only on the version are rendered once,
//! when the version is made, rather than on every read (the read path is the
//! hot path; see `bench/README.md`).

use axum::http::HeaderValue;
use bytes::Bytes;
use prefold_core::http::etag;
use prefold_core::{Envelope, Key};

use crate::error::StoreError;

/// The media type of almost every object; shared, not allocated per object.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// One version of one object (or of its deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Strictly increasing per key, across deletes and restarts.
    pub version: u64,
    /// The object was deleted at this version: reads answer 404, and the
    /// store keeps the tombstone so that nothing older can come back.
    pub tombstone: bool,
    /// The bytes, shared without copying (empty for a tombstone).
    pub body: Bytes,
    content_type: HeaderValue,
    etag: HeaderValue,
}

impl Object {
    /// A live version of an object. The content type was checked by the
    /// caller (JSON, ASCII, at most 255 bytes).
    pub fn new(version: u64, content_type: &str, body: Bytes) -> Object {
        let content_type = if content_type == "application/json" {
            JSON
        } else {
            HeaderValue::from_str(content_type).unwrap_or(JSON)
        };
        Object {
            version,
            tombstone: false,
            body,
            content_type,
            etag: etag_header(version),
        }
    }

    /// The deletion of an object at `version`.
    pub fn tombstone(version: u64) -> Object {
        Object {
            version,
            tombstone: true,
            body: Bytes::new(),
            content_type: JSON,
            etag: etag_header(version),
        }
    }

    /// The object, unless it is a tombstone.
    pub fn live(&self) -> Option<&Object> {
        (!self.tombstone).then_some(self)
    }

    /// The strong ETag, as a header value.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The strong ETag, as text.
    pub fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }

    /// The content type, as a header value.
    pub fn content_type(&self) -> &HeaderValue {
        &self.content_type
    }

    /// The content type, as text.
    pub fn content_type_str(&self) -> &str {
        self.content_type.to_str().unwrap_or("application/json")
    }

    /// Bytes this version costs in memory, roughly (for backlog accounting).
    pub fn weight(&self) -> usize {
        self.body.len() + 160
    }

    /// The record stored for this object.
    pub fn encode(&self) -> Result<Vec<u8>, prefold_core::EnvelopeError> {
        Envelope {
            version: self.version,
            content_type: self.content_type_str(),
            body: &self.body,
            tombstone: self.tombstone,
        }
        .encode()
    }

    /// Decodes a stored record, sharing the body with the record's buffer.
    pub fn decode(key: &Key, record: Bytes) -> Result<Object, StoreError> {
        let env = Envelope::decode(&record).map_err(|source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        })?;
        if env.tombstone {
            return Ok(Object::tombstone(env.version));
        }
        let (version, content_type) = (env.version, env.content_type.to_owned());
        let body = record.slice(Envelope::body_offset_in(&record)..);
        Ok(Object::new(version, &content_type, body))
    }
}

fn etag_header(version: u64) -> HeaderValue {
    // A quoted hex number is always a valid header value.
    HeaderValue::from_str(&etag(version)).unwrap_or(HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_live_and_tombstone() {
        let key = Key::parse("t/1").unwrap();
        let live = Object::new(9, "application/ld+json", Bytes::from_static(b"[1]"));
        let back = Object::decode(&key, Bytes::from(live.encode().unwrap())).unwrap();
        assert_eq!(back, live);
        assert_eq!(back.content_type_str(), "application/ld+json");
        assert_eq!(back.etag_str(), "\"9\"");
        let dead = Object::tombstone(10);
        let back = Object::decode(&key, Bytes::from(dead.encode().unwrap())).unwrap();
        assert!(back.tombstone && back.live().is_none());
        assert_eq!(back.version, 10);
    }

    #[test]
    fn a_corrupt_record_is_an_error() {
        let key = Key::parse("t/2").unwrap();
        assert!(matches!(
            Object::decode(&key, Bytes::from_static(b"garbage")),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
