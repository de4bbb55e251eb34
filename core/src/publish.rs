//! Publication: how changed objects travel from their owner origin into the
//! edge's Workers KV, and the rules the edge keeps when it writes there.
//!
//! An origin pushes batches of changed objects to the edge
//! ([`PUBLISH_PATH`]); a Cron Trigger on the edge also pulls the origin's
//! change feed ([`CHANGES_PATH`]) from a cursor kept in KV, which repairs any
//! push that was lost. Both carry the same [`Batch`] format: one JSON object
//! whose items hold the key, the version, the content type and the body
//! verbatim (objects are JSON, so a body embeds as it is, without escaping or
//! base64).
//!
//! Workers KV accepts about one write per second per key. The edge keeps that
//! rule itself with [`kv_decision`], reading the time of the last write from
//! the key's KV metadata ([`KvMeta`]); an item written too recently is
//! deferred, and the origin sends it again later with whatever is newest by
//! then, so the latest version always wins and none is written twice.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where the edge accepts pushed batches (`POST`, cluster token).
pub const PUBLISH_PATH: &str = "/_prefold/publish";
/// Where an origin serves its change feed (`GET ?after=V&limit=N`, cluster
/// token).
pub const CHANGES_PATH: &str = "/_prefold/changes";
/// The shortest interval between two KV writes of one key.
pub const KV_MIN_WRITE_INTERVAL_MS: u64 = 1_000;
/// Most items in one batch. The edge reads the current metadata of a whole
/// batch with one bulk KV read, which takes at most 100 keys, and a batch
/// then costs at most 101 of the 1,000 KV operations an invocation may make.
pub const MAX_BATCH_ITEMS: usize = 100;
/// Most body bytes in one batch (a batch always holds at least one item).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Where the edge keeps its cursor into an origin's change feed. The `!`
/// cannot occur in an object key, so no object can overwrite it.
pub fn cursor_key(origin: &str) -> String {
    format!("!cursor/{origin}")
}

/// A batch of changed objects: a push, or one page of the change feed.
#[derive(Debug, Deserialize)]
pub struct Batch<'a> {
    /// The objects, oldest change first.
    #[serde(borrow)]
    pub items: Vec<Item<'a>>,
    /// Feed pages only: the cursor to ask for next.
    #[serde(default)]
    pub next: Option<u64>,
    /// Feed pages only: whether more changes wait after `next`.
    #[serde(default)]
    pub more: bool,
}

/// One changed object.
#[derive(Debug, Deserialize)]
pub struct Item<'a> {
    /// The key (validated again by the edge).
    #[serde(borrow)]
    pub k: Cow<'a, str>,
    /// The version the object has now.
    pub v: u64,
    /// Its content type (empty for a deletion).
    #[serde(default, borrow)]
    pub ct: Cow<'a, str>,
    /// The body, verbatim; absent when the object is deleted.
    #[serde(default, borrow)]
    pub b: Option<&'a RawValue>,
}

impl Batch<'_> {
    /// Parses a batch.
    pub fn parse(bytes: &[u8]) -> Result<Batch<'_>, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a publication batch: {e}"))
    }
}

/// Writes a [`Batch`] without building it in memory first.
pub struct BatchWriter {
    buf: Vec<u8>,
    items: usize,
}

impl Default for BatchWriter {
    fn default() -> Self {
        BatchWriter {
            buf: b"{\"items\":[".to_vec(),
            items: 0,
        }
    }
}

impl BatchWriter {
    /// Adds an object; `body` is `None` for a deletion and must otherwise be
    /// one JSON value (every object is).
    pub fn push(&mut self, key: &str, version: u64, content_type: &str, body: Option<&[u8]>) {
        if self.items > 0 {
            self.buf.push(b',');
        }
        self.items += 1;
        self.buf.extend_from_slice(b"{\"k\":");
        json_string(&mut self.buf, key);
        self.buf
            .extend_from_slice(format!(",\"v\":{version}").as_bytes());
        if let Some(body) = body {
            self.buf.extend_from_slice(b",\"ct\":");
            json_string(&mut self.buf, content_type);
            self.buf.extend_from_slice(b",\"b\":");
            self.buf.extend_from_slice(body);
        }
        self.buf.push(b'}');
    }

    /// Items so far.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether no item was added.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Bytes so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Closes the batch; `next` and `more` are for feed pages.
    pub fn finish(mut self, next: Option<u64>, more: bool) -> Vec<u8> {
        self.buf.push(b']');
        if let Some(next) = next {
            self.buf
                .extend_from_slice(format!(",\"next\":{next},\"more\":{more}").as_bytes());
        }
        self.buf.push(b'}');
        self.buf
    }
}

fn json_string(buf: &mut Vec<u8>, s: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// The edge's answer to a push.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushReply {
    /// Items written to KV.
    pub written: u32,
    /// Items KV already held (at this version or a newer one).
    pub unchanged: u32,
    /// Items written less than a second ago: send them again after the
    /// given delay, with the newest version by then.
    pub deferred: Vec<Deferred>,
}

/// An item the edge did not write yet.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deferred {
    /// The key.
    pub k: String,
    /// Milliseconds until the key may be written again.
    pub after_ms: u64,
}

/// What the edge stores beside each KV value.
///
/// The version is a decimal string because KV metadata is JSON read by
/// JavaScript, whose numbers lose integers above 2^53.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMeta {
    /// The object's version.
    pub v: String,
    /// Its content type.
    #[serde(default)]
    pub ct: String,
    /// When the edge wrote this entry (milliseconds since the epoch, the
    /// edge's clock): the one-write-per-second rule is kept from it.
    #[serde(default)]
    pub t: u64,
    /// The object is deleted at version `v`: answer 404 without asking the
    /// origin, and never bring back an older version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

impl KvMeta {
    /// Metadata for a version written now.
    pub fn new(version: u64, content_type: &str, now_ms: u64, gone: bool) -> KvMeta {
        KvMeta {
            v: version.to_string(),
            ct: content_type.to_owned(),
            t: now_ms,
            gone,
        }
    }

    /// The version, if the metadata is readable.
    pub fn version(&self) -> Option<u64> {
        self.v.parse().ok()
    }
}

/// What to do with a version the edge was given for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDecision {
    /// Write it.
    Write,
    /// KV holds this version or a newer one already.
    Unchanged,
    /// KV was written less than a second ago: try again after this many
    /// milliseconds.
    Defer(u64),
}

/// Applies the edge's rules for one KV write: never go back to an older
/// version, and never write a key twice within [`KV_MIN_WRITE_INTERVAL_MS`].
pub fn kv_decision(current: Option<&KvMeta>, version: u64, now_ms: u64) -> KvDecision {
    let Some(meta) = current else {
        return KvDecision::Write;
    };
    if meta.version().is_some_and(|v| v >= version) {
        return KvDecision::Unchanged;
    }
    // A clock behind the last write (another location's) counts as "just
    // written": at worst one second of delay, never a second write.
    let since = now_ms.saturating_sub(meta.t);
    if since < KV_MIN_WRITE_INTERVAL_MS {
        KvDecision::Defer(KV_MIN_WRITE_INTERVAL_MS - since)
    } else {
        KvDecision::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_bodies_verbatim() {
        let mut w = BatchWriter::default();
        assert!(w.is_empty());
        w.push("event/e1", 7, "application/json", Some(br#"{"a": [1, 2]}"#));
        w.push("event/e2", 9, "", None);
        w.push(
            "q/x",
            10,
            "application/json; charset=\"utf-8\"",
            Some(b"\"s\""),
        );
        assert_eq!(w.len(), 3);
        let bytes = w.finish(Some(10), true);
        let b = Batch::parse(&bytes).unwrap();
        assert_eq!(b.items.len(), 3);
        assert_eq!(b.items[0].k, "event/e1");
        assert_eq!(b.items[0].v, 7);
        assert_eq!(b.items[0].b.unwrap().get(), r#"{"a": [1, 2]}"#);
        assert!(b.items[1].b.is_none());
        assert_eq!(b.items[2].ct, "application/json; charset=\"utf-8\"");
        assert_eq!((b.next, b.more), (Some(10), true));
        let push = BatchWriter::default().finish(None, false);
        let b = Batch::parse(&push).unwrap();
        assert!(b.items.is_empty() && b.next.is_none());
        assert!(Batch::parse(b"{\"items\":[{\"k\":1}]}").is_err());
    }

    #[test]
    fn kv_writes_keep_order_and_rate() {
        let now = 1_000_000;
        assert_eq!(kv_decision(None, 5, now), KvDecision::Write);
        let m = KvMeta::new(5, "application/json", now - 200, false);
        assert_eq!(kv_decision(Some(&m), 5, now), KvDecision::Unchanged);
        assert_eq!(kv_decision(Some(&m), 4, now), KvDecision::Unchanged);
        assert_eq!(kv_decision(Some(&m), 6, now), KvDecision::Defer(800));
        assert_eq!(kv_decision(Some(&m), 6, now + 800), KvDecision::Write);
        // A write stamped in the future (a clock ahead) defers, never writes.
        let ahead = KvMeta::new(5, "", now + 5_000, false);
        assert_eq!(kv_decision(Some(&ahead), 6, now), KvDecision::Defer(1_000));
        // Unreadable metadata is replaced, at the same rate.
        let bad = KvMeta {
            v: "x".into(),
            ct: String::new(),
            t: 0,
            gone: false,
        };
        assert_eq!(kv_decision(Some(&bad), 1, now), KvDecision::Write);
        // Metadata stays readable by JavaScript: the version is a string.
        let json = serde_json::to_string(&KvMeta::new(u64::MAX, "a", 1, true)).unwrap();
        assert_eq!(
            json,
            r#"{"v":"18446744073709551615","ct":"a","t":1,"gone":true}"#
        );
        assert!(cursor_key("origin-1").starts_with('!'));
    }
}
