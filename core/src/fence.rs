//! Read-your-writes fences: the versions a client has written, carried by
//! the client so any edge location can honour them.
//!
//! Workers KV is eventually consistent: a location can serve the copy from
//! before a client's write for a minute or more. So the edge answers every
//! write with a cookie ([`FENCE_COOKIE`]) that lists, per routing part, the
//! version the write made; a later read of any key with that routing part
//! whose KV copy is older goes to the owner origin instead. Keying fences by
//! the routing part rather than the key is what makes the page a write
//! changes follow it: objects of one aggregate — an event, its comments
//! (`route = "event"`) and the views over them — share a routing part, and
//! every version an origin assigns later is larger (versions are the origin's
//! clock in microseconds).
//!
//! Clients that do not keep cookies can send [`MIN_VERSION_HEADER`] with the
//! version a write returned; it applies to the key read.
//!
//! The cookie value is `part:version:until` entries joined by `!` (neither
//! `:` nor `!` can occur in a key, and all three are valid cookie octets);
//! `until` is in seconds since the epoch. Entries that do not parse are
//! dropped: a fence is only ever a reason to ask the origin.

use crate::key::Key;

/// The cookie that carries a client's fences.
pub const FENCE_COOKIE: &str = "prefold_ryw";
/// A request header: the version the read key must have at least.
pub const MIN_VERSION_HEADER: &str = "x-prefold-min-version";
/// Most fences one client carries (the oldest give way).
pub const MAX_FENCES: usize = 16;
/// The longest cookie value written, in bytes (browsers keep 4 KiB per
/// cookie).
pub const MAX_COOKIE_BYTES: usize = 3_000;

/// One fence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    part: String,
    version: u64,
    until: u64,
}

/// A client's fences, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences(Vec<Fence>);

impl Fences {
    /// The unexpired fences in a `Cookie` header.
    pub fn from_cookie_header(header: Option<&str>, now_secs: u64) -> Fences {
        let Some(value) = header.and_then(|h| {
            h.split(';').find_map(|c| {
                let (name, value) = c.trim().split_once('=')?;
                (name == FENCE_COOKIE).then_some(value)
            })
        }) else {
            return Fences::default();
        };
        let fences = value
            .split('!')
            .filter_map(|e| {
                let mut it = e.split(':');
                let (Some(part), Some(v), Some(until), None) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return None;
                };
                Some(Fence {
                    part: part.to_owned(),
                    version: v.parse().ok()?,
                    until: until.parse().ok()?,
                })
            })
            .filter(|f| f.until > now_secs && !f.part.is_empty())
            .take(MAX_FENCES)
            .collect();
        Fences(fences)
    }

    /// The version a read of `key` must reach, if the client holds a fence
    /// for its routing part.
    pub fn required(&self, key: &Key) -> Option<u64> {
        let part = key.routing_part();
        self.0
            .iter()
            .filter(|f| f.part == part)
            .map(|f| f.version)
            .max()
    }

    /// Records a write of `key` at `version`, held until `until` (seconds).
    pub fn note(&mut self, key: &Key, version: u64, until: u64) {
        let part = key.routing_part();
        let version = self.required(key).map_or(version, |v| v.max(version));
        self.0.retain(|f| f.part != part);
        self.0.push(Fence {
            part: part.to_owned(),
            version,
            until,
        });
        while self.0.len() > MAX_FENCES || self.encode().len() > MAX_COOKIE_BYTES {
            self.0.remove(0);
        }
    }

    /// Whether there are no fences.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The cookie value.
    pub fn encode(&self) -> String {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|f| format!("{}:{}:{}", f.part, f.version, f.until))
            .collect();
        entries.join("!")
    }

    /// A `Set-Cookie` header value holding the fences for `max_age` seconds
    /// (`Secure` when the site is served over HTTPS). `HttpOnly`: scripts
    /// never need it; `SameSite=Lax`: it rides along on top-level navigation.
    pub fn set_cookie(&self, max_age: u64, secure: bool) -> String {
        format!(
            "{FENCE_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.encode(),
            if secure { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    #[test]
    fn a_write_fences_its_whole_aggregate() {
        let mut f = Fences::default();
        assert_eq!(f.required(&key("event/e1")), None);
        f.note(&key("comment/e1/c9"), 500, 1_090);
        assert_eq!(f.required(&key("event_comments/e1")), Some(500));
        assert_eq!(f.required(&key("event/e1")), Some(500));
        assert_eq!(f.required(&key("event/e2")), None);
        // An older version never lowers a fence.
        f.note(&key("event/e1"), 400, 1_100);
        assert_eq!(f.required(&key("event/e1")), Some(500));
        let header = format!(
            "a=b; {}; c=d",
            f.set_cookie(90, false).split(';').next().unwrap()
        );
        let back = Fences::from_cookie_header(Some(&header), 1_000);
        assert_eq!(back, f);
        // Expired entries are gone.
        assert!(Fences::from_cookie_header(Some(&header), 1_100).is_empty());
        assert!(f.set_cookie(90, true).ends_with("; Secure"));
    }

    #[test]
    fn bad_cookies_and_limits() {
        for bad in [
            "prefold_ryw=",
            "prefold_ryw=x:1",
            "prefold_ryw=x:y:z",
            "other=e1:1:9999",
        ] {
            assert!(Fences::from_cookie_header(Some(bad), 0).is_empty(), "{bad}");
        }
        let mixed = Fences::from_cookie_header(Some("prefold_ryw=e1:5:99!junk!e2:7:99"), 0);
        assert_eq!(mixed.required(&key("x/e2")), Some(7));
        let mut f = Fences::default();
        for i in 0..40 {
            f.note(&key(&format!("event/e{i}")), i, 10_000);
        }
        assert_eq!(f.0.len(), MAX_FENCES);
        assert_eq!(f.required(&key("event/e39")), Some(39));
        assert_eq!(f.required(&key("event/e0")), None);
        let long = "p".repeat(500);
        for i in 0..10 {
            f.note(&key(&format!("t/{long}{i}")), 1, 10_000);
        }
        assert!(f.encode().len() <= MAX_COOKIE_BYTES);
        assert_eq!(f.required(&key(&format!("t/{long}9"))), Some(1));
    }
}
