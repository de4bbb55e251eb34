//! Which origin owns a key: rendezvous (highest-random-weight) hashing.
//!
//! Every origin gets a score for a key's routing part; the highest score owns
//! the key, and the scores in descending order are the failover preference
//! list. Adding or removing an origin moves only the keys that origin wins or
//! held, and no shared state is needed: the edge and every origin compute the
//! same answer from the same origin list.
//!
//! The score is XXH3-64 of the routing part's UTF-8 bytes, seeded with XXH3-64
//! of the origin's *name* (not its URL, so that moving an origin to a new
//! address keeps its keys). Only explicit bytes and `u64` arithmetic are
//! involved — no `DefaultHasher`, no `usize` — so wasm32 and x86_64 agree, which
//! `testdata/routing-v1.json` checks on both targets. Ties (astronomically
//! rare) go to the lexicographically smaller name.
//!
//! The algorithm is versioned ([`ALGORITHM`]); changing it moves keys between
//! origins, so a change must come with a new version and new golden vectors.

use std::cmp::Ordering;

use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::key::Key;

/// The name of the routing algorithm implemented here.
pub const ALGORITHM: &str = "hrw-xxh3-v1";

/// One origin: a stable name (what routing hashes) and the base URL to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Stable identity, e.g. `origin-1`.
    pub name: String,
    /// Base URL without trailing `/`, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    seed: u64,
}

impl Origin {
    /// An origin with its precomputed routing seed.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Origin {
        let name = name.into();
        let seed = xxh3_64(name.as_bytes());
        Origin {
            name,
            url: url.into(),
            seed,
        }
    }

    /// This origin's score for a routing part.
    pub fn score(&self, routing_part: &str) -> u64 {
        xxh3_64_with_seed(routing_part.as_bytes(), self.seed)
    }
}

/// Why an origin list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoutingError {
    /// No origins configured.
    #[error("the origin list is empty")]
    Empty,
    /// Two origins share a name, so routing would be ambiguous.
    #[error("origin name {0:?} appears more than once")]
    DuplicateName(String),
    /// A name outside `A-Z a-z 0-9 - _ .`.
    #[error("origin name {0:?} is invalid: use 1 to 64 of A-Z a-z 0-9 - _ .")]
    InvalidName(String),
    /// Not an `http://` or `https://` URL.
    #[error("origin URL {0:?} must start with http:// or https:// and have a host")]
    InvalidUrl(String),
    /// An entry of the textual list is not `name=url`.
    #[error("origin entry {0:?} is not of the form name=url")]
    BadEntry(String),
}

/// A non-empty list of origins with unique names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginList {
    origins: Vec<Origin>,
}

impl OriginList {
    /// Checks and wraps a list of origins.
    pub fn new(origins: Vec<Origin>) -> Result<OriginList, RoutingError> {
        if origins.is_empty() {
            return Err(RoutingError::Empty);
        }
        for (i, o) in origins.iter().enumerate() {
            let name_ok = !o.name.is_empty()
                && o.name.len() <= 64
                && o.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(RoutingError::InvalidName(o.name.clone()));
            }
            let rest = o
                .url
                .strip_prefix("http://")
                .or_else(|| o.url.strip_prefix("https://"));
            if !matches!(rest, Some(host) if !host.is_empty() && !host.starts_with('/')) {
                return Err(RoutingError::InvalidUrl(o.url.clone()));
            }
            if origins[..i].iter().any(|p| p.name == o.name) {
                return Err(RoutingError::DuplicateName(o.name.clone()));
            }
        }
        Ok(OriginList { origins })
    }

    /// Parses `name=url[,name=url…]` (whitespace around entries is ignored; a
    /// trailing `/` on a URL is dropped).
    pub fn parse(text: &str) -> Result<OriginList, RoutingError> {
        let mut origins = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| RoutingError::BadEntry(entry.to_owned()))?;
            origins.push(Origin::new(name.trim(), url.trim().trim_end_matches('/')));
        }
        OriginList::new(origins)
    }

    /// The origins in configuration order.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// The owner of a key.
    pub fn owner(&self, key: &Key) -> &Origin {
        self.owner_of(key.routing_part())
    }

    /// The owner of a routing part.
    pub fn owner_of(&self, routing_part: &str) -> &Origin {
        let mut best = &self.origins[0];
        let mut best_score = best.score(routing_part);
        for o in &self.origins[1..] {
            let s = o.score(routing_part);
            if rank(s, &o.name, best_score, &best.name) == Ordering::Less {
                best = o;
                best_score = s;
            }
        }
        best
    }

    /// Every origin, best first: the owner, then whom to try if it is down.
    pub fn preference(&self, key: &Key) -> Vec<&Origin> {
        self.preference_of(key.routing_part())
    }

    /// [`OriginList::preference`] for a bare routing part.
    pub fn preference_of(&self, routing_part: &str) -> Vec<&Origin> {
        let mut scored: Vec<(u64, &Origin)> = self
            .origins
            .iter()
            .map(|o| (o.score(routing_part), o))
            .collect();
        // Names are unique, so `rank` is a total order and an unstable sort
        // gives the one answer (with less code in the Wasm build).
        scored.sort_unstable_by(|a, b| rank(a.0, &a.1.name, b.0, &b.1.name));
        scored.into_iter().map(|(_, o)| o).collect()
    }
}

/// Higher score first; on a tie, the smaller name first.
fn rank(a_score: u64, a_name: &str, b_score: u64, b_name: &str) -> Ordering {
    b_score.cmp(&a_score).then_with(|| a_name.cmp(b_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> OriginList {
        OriginList::new(
            (0..n)
                .map(|i| Origin::new(format!("origin-{i}"), format!("http://10.0.0.{i}:8080")))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn parse_and_reject() {
        let l = OriginList::parse(" a=http://127.0.0.1:1/ , b=https://x.example").unwrap();
        assert_eq!(l.origins()[0].url, "http://127.0.0.1:1");
        assert_eq!(l.origins()[1].name, "b");
        assert_eq!(OriginList::parse(""), Err(RoutingError::Empty));
        assert_eq!(
            OriginList::parse("a=http://x,a=http://y"),
            Err(RoutingError::DuplicateName("a".into()))
        );
        assert_eq!(
            OriginList::parse("http://x"),
            Err(RoutingError::BadEntry("http://x".into()))
        );
        assert_eq!(
            OriginList::parse("a=ftp://x"),
            Err(RoutingError::InvalidUrl("ftp://x".into()))
        );
        assert_eq!(
            OriginList::parse("a b=http://x"),
            Err(RoutingError::InvalidName("a b".into()))
        );
    }

    #[test]
    fn owner_is_first_of_preference_and_preference_is_a_permutation() {
        let l = list(7);
        for i in 0..500 {
            let rp = format!("id{i}");
            let pref = l.preference_of(&rp);
            assert_eq!(pref[0], l.owner_of(&rp));
            let mut names: Vec<_> = pref.iter().map(|o| o.name.clone()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), 7);
        }
    }

    #[test]
    fn removing_an_origin_moves_only_its_keys() {
        let full = list(5);
        let without: Vec<Origin> = full.origins()[..4].to_vec();
        let smaller = OriginList::new(without).unwrap();
        let mut moved = 0;
        for i in 0..2000 {
            let rp = format!("k{i}");
            let before = full.owner_of(&rp);
            let after = smaller.owner_of(&rp);
            if before.name != "origin-4" {
                assert_eq!(before, after, "key {rp} moved though its owner stayed");
            } else {
                moved += 1;
                assert_eq!(after, full.preference_of(&rp)[1], "falls to the runner-up");
            }
        }
        // About a fifth of the keys belonged to the removed origin.
        assert!((250..550).contains(&moved), "moved {moved}");
    }

    #[test]
    fn spread_is_even() {
        let l = list(4);
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            let o = l.owner_of(&format!("{i}"));
            let idx = l.origins().iter().position(|x| x == o).unwrap();
            counts[idx] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn routing_ignores_url_and_order() {
        let a = OriginList::parse("x=http://h1,y=http://h2,z=http://h3").unwrap();
        let b = OriginList::parse("z=http://other,x=http://h9,y=http://h2").unwrap();
        for i in 0..300 {
            let rp = format!("r{i}");
            assert_eq!(a.owner_of(&rp).name, b.owner_of(&rp).name);
        }
    }
}
