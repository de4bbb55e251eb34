//! The stored form of one object, and where in the store it lives.
//!
//! Every object is stored as one self-describing record so that a store can
//! be read back without any other metadata, and so that the format can change
//! later without a flag day: the format byte selects the decoder, and old
//! formats keep decoding (a migration chain, one arm per format).
//!
//! Format 2 (written since the storage engine; adds the flags byte), all
//! integers big-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PFLD"
//! 4       1     format = 2
//! 5       1     flags: bit 0 = tombstone (the object was deleted)
//! 6       8     object version (u64)
//! 14      1     content-type length n (≤ 255)
//! 15      n     content type (ASCII)
//! 15+n    …     body
//! ```
//!
//! Format 1 is format 2 without the flags byte (never a tombstone); it still
//! decodes.
//!
//! A delete is stored as a tombstone rather than removed from the store, so
//! that a write-behind PUT of an older version that arrives late, or a stale
//! writer, can never bring the object back: the tombstone's version is newer.

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::key::Key;

const MAGIC: &[u8; 4] = b"PFLD";
/// The format this build writes.
pub const FORMAT: u8 = 2;
const HEADER_FIXED_V1: usize = 14;
const HEADER_FIXED: usize = 15;
const FLAG_TOMBSTONE: u8 = 1;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Monotonic per key; the strong ETag is derived from it.
    pub version: u64,
    /// The media type the object was written with.
    pub content_type: &'a str,
    /// The object's bytes, exactly as written (empty for a tombstone).
    pub body: &'a [u8],
    /// The object was deleted at this version.
    pub tombstone: bool,
}

/// Why bytes from the store could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Shorter than the fixed header or the declared content type.
    #[error("stored record is truncated")]
    Truncated,
    /// Not a prefold record at all.
    #[error("stored record has no prefold magic")]
    BadMagic,
    /// Written by a newer prefold.
    #[error("stored record has unknown format {0}")]
    UnknownFormat(u8),
    /// Content type that cannot be stored in the header.
    #[error("content type is not ASCII or longer than 255 bytes")]
    BadContentType,
}

impl<'a> Envelope<'a> {
    /// Encodes in the current [`FORMAT`].
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let ct = self.content_type.as_bytes();
        let ct_len = u8::try_from(ct.len()).map_err(|_| EnvelopeError::BadContentType)?;
        if !self.content_type.is_ascii() {
            return Err(EnvelopeError::BadContentType);
        }
        let mut out = Vec::with_capacity(HEADER_FIXED + ct.len() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(ct_len);
        out.extend_from_slice(ct);
        out.extend_from_slice(self.body);
        Ok(out)
    }

    /// Decodes any known format.
    pub fn decode(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        if bytes.len() < 5 {
            return Err(EnvelopeError::Truncated);
        }
        if &bytes[..4] != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        match bytes[4] {
            1 => Self::decode_from(bytes, 5, 0),
            2 => {
                let flags = *bytes.get(5).ok_or(EnvelopeError::Truncated)?;
                Self::decode_from(bytes, 6, flags)
            }
            other => Err(EnvelopeError::UnknownFormat(other)),
        }
    }

    /// Decodes the fields shared by formats 1 and 2, which start at `at`.
    fn decode_from(bytes: &'a [u8], at: usize, flags: u8) -> Result<Envelope<'a>, EnvelopeError> {
        let header = bytes.get(at..at + 9).ok_or(EnvelopeError::Truncated)?;
        let mut version = [0u8; 8];
        version.copy_from_slice(&header[..8]);
        let ct_len = usize::from(header[8]);
        let ct_at = at + 9;
        let ct = bytes
            .get(ct_at..ct_at + ct_len)
            .ok_or(EnvelopeError::Truncated)?;
        let content_type = std::str::from_utf8(ct).map_err(|_| EnvelopeError::BadContentType)?;
        Ok(Envelope {
            version: u64::from_be_bytes(version),
            content_type,
            body: &bytes[ct_at + ct_len..],
            tombstone: flags & FLAG_TOMBSTONE != 0,
        })
    }

    /// Where the body starts in a record of the current format, for
    /// zero-copy slicing.
    pub fn body_offset(&self) -> usize {
        HEADER_FIXED + self.content_type.len()
    }

    /// Where the body starts in `record`, whatever its format (0 if the
    /// record does not decode).
    pub fn body_offset_in(record: &[u8]) -> usize {
        match (record.get(4), Envelope::decode(record)) {
            (Some(1), Ok(e)) => HEADER_FIXED_V1 + e.content_type.len(),
            (_, Ok(e)) => e.body_offset(),
            _ => 0,
        }
    }
}

/// The separator that stands for `/` inside a stored object's name. It is not
/// a key character, so the mapping is reversible, and every key is one flat
/// name: keys `a/b` and `a/b/c` can both exist on a filesystem store.
const FLAT_SEPARATOR: char = '!';

/// The store path of a key: `o/{hh}/{key with / as !}`, where `hh` is a hash
/// byte that spreads keys over 256 prefixes (S3 partitions by prefix).
pub fn object_path(key: &Key) -> String {
    let hh = xxh3_64(key.as_str().as_bytes()) & 0xff;
    format!("o/{hh:02x}/{}", key.as_str().replace('/', "!"))
}

/// The key a store path names, if it is one of ours. The name may arrive
/// percent-encoded by the store client (`~` becomes `%7E`); key parsing
/// decodes that.
pub fn key_from_object_path(path: &str) -> Option<Key> {
    let rest = path.strip_prefix("o/")?;
    let (hh, flat) = rest.split_once('/')?;
    let key = Key::parse(&flat.replace(FLAT_SEPARATOR, "/")).ok()?;
    (object_path(&key).split('/').nth(1) == Some(hh)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            version: 0x0102_0304_0506_0708,
            content_type: "application/json",
            body: br#"{"a":1}"#,
            tombstone: false,
        };
        let bytes = e.encode().unwrap();
        assert_eq!(&bytes[..6], b"PFLD\x02\x00");
        assert_eq!(&bytes[6..14], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let d = Envelope::decode(&bytes).unwrap();
        assert_eq!(d, e);
        assert_eq!(&bytes[d.body_offset()..], e.body);
    }

    #[test]
    fn empty_body_and_content_type() {
        let e = Envelope {
            version: 1,
            content_type: "",
            body: b"",
            tombstone: true,
        };
        let bytes = e.encode().unwrap();
        assert_eq!(bytes[5], 1, "tombstone flag");
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn format_1_still_decodes() {
        // A record written by the walking skeleton: no flags byte.
        let mut v1 = b"PFLD\x01".to_vec();
        v1.extend_from_slice(&7u64.to_be_bytes());
        v1.push(16);
        v1.extend_from_slice(b"application/json");
        v1.extend_from_slice(b"[1]");
        let e = Envelope::decode(&v1).unwrap();
        assert_eq!(
            e,
            Envelope {
                version: 7,
                content_type: "application/json",
                body: b"[1]",
                tombstone: false,
            }
        );
        assert_eq!(&v1[Envelope::body_offset_in(&v1)..], b"[1]");
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Envelope::decode(b"PF"), Err(EnvelopeError::Truncated));
        assert_eq!(
            Envelope::decode(b"XXXX\x01rest"),
            Err(EnvelopeError::BadMagic)
        );
        assert_eq!(
            Envelope::decode(b"PFLD\x09rest"),
            Err(EnvelopeError::UnknownFormat(9))
        );
        assert_eq!(
            Envelope::decode(b"PFLD\x01\0\0\0"),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(Envelope::decode(b"PFLD\x02"), Err(EnvelopeError::Truncated));
        let mut short_ct = b"PFLD\x01\0\0\0\0\0\0\0\x01\x05ab".to_vec();
        assert_eq!(Envelope::decode(&short_ct), Err(EnvelopeError::Truncated));
        short_ct.truncate(3);
        let long = "a".repeat(256);
        let e = Envelope {
            version: 1,
            content_type: &long,
            body: b"",
            tombstone: false,
        };
        assert_eq!(e.encode(), Err(EnvelopeError::BadContentType));
    }

    #[test]
    fn paths_are_flat_spread_and_reversible() {
        let a = Key::parse("a/b").unwrap();
        let b = Key::parse("a/b/c").unwrap();
        let pa = object_path(&a);
        let pb = object_path(&b);
        assert!(pa.starts_with("o/") && pa.ends_with("/a!b"), "{pa}");
        assert_eq!(pa.matches('/').count(), 2);
        assert_eq!(pb.matches('/').count(), 2);
        assert_eq!(key_from_object_path(&pa), Some(a));
        assert_eq!(key_from_object_path(&pb), Some(b));
        let tilde = Key::parse("u/~x").unwrap();
        let encoded = object_path(&tilde).replace('~', "%7E");
        assert_eq!(key_from_object_path(&encoded), Some(tilde));
        assert_eq!(key_from_object_path("o/zz/a!b"), None);
        assert_eq!(key_from_object_path("other/00/a!b"), None);
    }
}
