//! The key grammar: `{type}/{id}[/{more}…]`, validated once, here.
//!
//! A key names one object. It is what follows `/o/` in a URL, it is the Workers
//! KV key at the edge, and (through [`crate::envelope::object_path`]) it names
//! the object in the store. Because all three meanings must stay safe, the
//! grammar is deliberately narrow:
//!
//! - two or more segments separated by `/`;
//! - each segment non-empty, not `.` or `..`, made only of RFC 3986 unreserved
//!   characters (`A-Z a-z 0-9 - . _ ~`);
//! - at most [`MAX_KEY_BYTES`] bytes, the Workers KV key limit.
//!
//! Input is the raw, still percent-encoded path. Percent-encoded unreserved
//! characters are decoded (RFC 3986 §6.2.2.2 says they are equivalent), so
//! `%7E` and `~` name the same key. Any other percent-encoding — above all an
//! encoded `/` or `\`, or an encoded control character — is rejected, so no
//! client can smuggle a separator past the segment checks.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// The longest key, in bytes, after decoding (the Workers KV key limit).
pub const MAX_KEY_BYTES: usize = 512;

/// A validated key in canonical (decoded) form.
///
/// Shared, not owned: one key is held at once by the hot tier, the directory
/// of existing keys and the write-behind set, so a clone is a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

/// Why a raw key was rejected. Every variant maps to `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Nothing after `/o/`.
    #[error("the key is empty")]
    Empty,
    /// Only a type, no id.
    #[error("a key needs at least two segments, `{{type}}/{{id}}`")]
    TooFewSegments,
    /// `a//b`, or a leading or trailing `/`.
    #[error("segment {index} of the key is empty")]
    EmptySegment {
        /// Zero-based segment index.
        index: usize,
    },
    /// `.` or `..` as a segment.
    #[error("segment {index} of the key is `.` or `..`")]
    DotSegment {
        /// Zero-based segment index.
        index: usize,
    },
    /// Longer than [`MAX_KEY_BYTES`] once decoded.
    #[error("the key is {len} bytes long; the limit is {MAX_KEY_BYTES}")]
    TooLong {
        /// Length seen, in bytes (may stop counting early for huge input).
        len: usize,
    },
    /// `%2F` or `%5C`: a separator hidden in percent-encoding.
    #[error("the key contains a percent-encoded `/` or `\\` at byte {position}")]
    EncodedSeparator {
        /// Byte offset in the raw key.
        position: usize,
    },
    /// A control character, raw or percent-encoded.
    #[error("the key contains a control character at byte {position}")]
    ControlCharacter {
        /// Byte offset in the raw key.
        position: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("the key has a malformed percent-encoding at byte {position}")]
    BadPercentEncoding {
        /// Byte offset in the raw key.
        position: usize,
    },
    /// Any other character outside the unreserved set.
    #[error("the key contains {found:?} at byte {position}; only A-Z a-z 0-9 - . _ ~ are allowed in a segment")]
    InvalidCharacter {
        /// The offending character (decoded, if it was percent-encoded).
        found: char,
        /// Byte offset in the raw key.
        position: usize,
    },
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Key {
    /// Validates a raw (percent-encoded) key, as it appears after `/o/`.
    ///
    /// Percent-decoding is written out here rather than taken from a crate
    /// because every decoded byte must be classified (separator, control,
    /// unreserved, other) with its position, which a generic decoder hides.
    pub fn parse(raw: &str) -> Result<Key, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        // A raw key can be at most three bytes per decoded byte; refuse early
        // so that hostile input costs nothing.
        if raw.len() > MAX_KEY_BYTES * 3 {
            return Err(KeyError::TooLong { len: raw.len() });
        }
        let bytes = raw.as_bytes();
        // Almost every key arrives unencoded and valid: check it in one pass
        // and copy it whole. Anything else (a `%`, a bad character) takes the
        // loop below, which decodes and says precisely what is wrong.
        if bytes.iter().all(|&b| is_unreserved(b) || b == b'/') {
            return Self::check_segments(raw.to_owned());
        }
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let decoded = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
                        (Some(h), Some(l)) => h * 16 + l,
                        _ => return Err(KeyError::BadPercentEncoding { position: i }),
                    },
                    _ => return Err(KeyError::BadPercentEncoding { position: i }),
                };
                match decoded {
                    b'/' | b'\\' => return Err(KeyError::EncodedSeparator { position: i }),
                    c if c.is_ascii_control() => {
                        return Err(KeyError::ControlCharacter { position: i })
                    }
                    c if is_unreserved(c) => out.push(char::from(c)),
                    c => {
                        return Err(KeyError::InvalidCharacter {
                            found: char::from(c),
                            position: i,
                        })
                    }
                }
                i += 3;
                continue;
            }
            match b {
                b'/' => out.push('/'),
                c if c.is_ascii_control() => {
                    return Err(KeyError::ControlCharacter { position: i })
                }
                c if is_unreserved(c) => out.push(char::from(c)),
                _ => {
                    let found = raw[i..].chars().next().unwrap_or('\u{fffd}');
                    return Err(KeyError::InvalidCharacter { found, position: i });
                }
            }
            i += 1;
        }
        Self::check_segments(out)
    }

    /// The checks on a decoded key: length and segments.
    fn check_segments(out: String) -> Result<Key, KeyError> {
        if out.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong { len: out.len() });
        }
        let mut count = 0;
        for (index, segment) in out.split('/').enumerate() {
            if segment.is_empty() {
                return Err(KeyError::EmptySegment { index });
            }
            if segment == "." || segment == ".." {
                return Err(KeyError::DotSegment { index });
            }
            count += 1;
        }
        if count < 2 {
            return Err(KeyError::TooFewSegments);
        }
        Ok(Key(Arc::from(out)))
    }

    /// The canonical key: decoded, every character unreserved or `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The type: the first segment.
    pub fn kind(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// The part of the key that decides its owner: the second segment, the id
    /// of the aggregate. `event/42` and `event_page/42/comments` share it, so
    /// an entity and the objects derived from it live on one origin.
    pub fn routing_part(&self) -> &str {
        self.0.split('/').nth(1).unwrap_or_default()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in [
            "user/1",
            "a-b.c_d~e/X9",
            "event/42/comments/p2",
            "t/..a",
            "t/a..",
        ] {
            assert_eq!(Key::parse(ok).map(|k| k.to_string()).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn decodes_encoded_unreserved_characters() {
        let k = Key::parse("user/%7Ebob%2d1").unwrap();
        assert_eq!(k.as_str(), "user/~bob-1");
        assert_eq!(k, Key::parse("user/~bob-1").unwrap());
    }

    #[test]
    fn rejects_each_bad_form_precisely() {
        use KeyError::*;
        let cases: &[(&str, KeyError)] = &[
            ("", Empty),
            ("user", TooFewSegments),
            ("user/", EmptySegment { index: 1 }),
            ("/user/1", EmptySegment { index: 0 }),
            ("user//1", EmptySegment { index: 1 }),
            ("user/./1", DotSegment { index: 1 }),
            ("user/..", DotSegment { index: 1 }),
            ("user/%2e%2e", DotSegment { index: 1 }),
            ("user/a%2Fb", EncodedSeparator { position: 6 }),
            ("user/a%2fb", EncodedSeparator { position: 6 }),
            ("user/a%5Cb", EncodedSeparator { position: 6 }),
            ("user/a%00b", ControlCharacter { position: 6 }),
            ("user/a\tb", ControlCharacter { position: 6 }),
            ("user/a%7F", ControlCharacter { position: 6 }),
            ("user/a%zz", BadPercentEncoding { position: 6 }),
            ("user/a%2", BadPercentEncoding { position: 6 }),
            (
                "user/a b",
                InvalidCharacter {
                    found: ' ',
                    position: 6,
                },
            ),
            (
                "user/a\\b",
                InvalidCharacter {
                    found: '\\',
                    position: 6,
                },
            ),
            (
                "user/a%20b",
                InvalidCharacter {
                    found: ' ',
                    position: 6,
                },
            ),
            (
                "user/é",
                InvalidCharacter {
                    found: 'é',
                    position: 5,
                },
            ),
            (
                "user/a?b",
                InvalidCharacter {
                    found: '?',
                    position: 6,
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(Key::parse(raw).as_ref(), Err(want), "key {raw:?}");
        }
    }

    #[test]
    fn length_limit_is_on_the_decoded_key() {
        let at_limit = format!("t/{}", "a".repeat(MAX_KEY_BYTES - 2));
        assert!(Key::parse(&at_limit).is_ok());
        let over = format!("t/{}", "a".repeat(MAX_KEY_BYTES - 1));
        assert_eq!(
            Key::parse(&over),
            Err(KeyError::TooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
        // Encoded form may be longer than the limit when it decodes within it.
        let encoded = format!("t/{}", "%61".repeat(MAX_KEY_BYTES - 2));
        assert_eq!(Key::parse(&encoded).unwrap().as_str(), at_limit);
        let huge = "a".repeat(10 * MAX_KEY_BYTES);
        assert!(matches!(Key::parse(&huge), Err(KeyError::TooLong { .. })));
    }

    #[test]
    fn parts() {
        let k = Key::parse("event_page/42/comments").unwrap();
        assert_eq!(k.kind(), "event_page");
        assert_eq!(k.routing_part(), "42");
    }
}
