//! One version of one object, as the hot tier, the log, the flusher and the
//! responses all share it.
//!
//! An [`Object`] is immutable and reference-counted: a write makes a new one.
//! It is kept small because an origin holds every object it owns: the ETag
//! is rendered when a response needs it (tens of nanoseconds) rather than
//! stored, and the common content type, `application/json`, costs nothing.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use prefold_core::http::etag;
use prefold_core::{Envelope, EnvelopeError};

/// The media type of almost every object; shared, not allocated per object.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What the hot tier holds for a key: the object (maybe a tombstone), or
/// the knowledge that there is none.
pub(crate) type Slot = Option<Arc<Object>>;

/// One version of one object (or of its deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    /// Strictly increasing per key, across deletes and restarts.
    pub(crate) version: u64,
    /// The object was deleted at this version: reads answer 404, and the
    /// store keeps the tombstone so that nothing older can come back.
    pub(crate) tombstone: bool,
    /// The bytes, shared without copying (empty for a tombstone).
    pub(crate) body: Bytes,
    /// `None` means `application/json`.
    content_type: Option<Box<str>>,
}

impl Object {
    /// A live version of an object. The content type was checked by the
    /// caller (JSON, ASCII, at most 255 bytes).
    pub(crate) fn new(version: u64, content_type: &str, body: Bytes) -> Object {
        let content_type = (content_type != "application/json").then(|| content_type.into());
        Object {
            version,
            tombstone: false,
            body,
            content_type,
        }
    }

    /// The deletion of an object at `version`.
    pub(crate) fn tombstone(version: u64) -> Object {
        Object {
            version,
            tombstone: true,
            body: Bytes::new(),
            content_type: None,
        }
    }

    /// The object, unless it is a tombstone.
    pub(crate) fn live(&self) -> Option<&Object> {
        (!self.tombstone).then_some(self)
    }

    /// The strong ETag, as text.
    pub(crate) fn etag(&self) -> String {
        etag(self.version)
    }

    /// The content type, as a header value.
    pub(crate) fn content_type(&self) -> HeaderValue {
        match &self.content_type {
            None => JSON,
            // Checked to be a valid header value when the object was written.
            Some(ct) => HeaderValue::from_str(ct).unwrap_or(JSON),
        }
    }

    /// The content type, as text.
    pub(crate) fn content_type_str(&self) -> &str {
        self.content_type.as_deref().unwrap_or("application/json")
    }

    /// Bytes this version costs in memory, roughly (for backlog accounting).
    pub(crate) fn weight(&self) -> usize {
        self.body.len() + 160
    }

    /// The record stored for this object.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Envelope {
            version: self.version,
            content_type: self.content_type_str(),
            body: &self.body,
            tombstone: self.tombstone,
        }
        .encode()
    }

    /// Decodes a stored record, sharing the body with the record's buffer.
    pub(crate) fn decode(record: Bytes) -> Result<Object, EnvelopeError> {
        let env = Envelope::decode(&record)?;
        if env.tombstone {
            return Ok(Object::tombstone(env.version));
        }
        let (version, content_type) = (env.version, env.content_type.to_owned());
        let body = record.slice(Envelope::body_offset_in(&record)..);
        Ok(Object::new(version, &content_type, body))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_live_and_tombstone() {
        let live = Object::new(9, "application/ld+json", Bytes::from_static(b"[1]"));
        let back = Object::decode(Bytes::from(live.encode().unwrap())).unwrap();
        assert_eq!(back, live);
        assert_eq!(back.content_type_str(), "application/ld+json");
        assert_eq!(back.etag(), "\"9\"");
        let dead = Object::tombstone(10);
        let back = Object::decode(Bytes::from(dead.encode().unwrap())).unwrap();
        assert!(back.tombstone && back.live().is_none());
        assert_eq!(back.version, 10);
    }

    #[test]
    fn a_corrupt_record_is_an_error() {
        assert!(Object::decode(Bytes::from_static(b"garbage")).is_err());
    }
}
