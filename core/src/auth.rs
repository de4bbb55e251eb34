//! Bearer tokens: who may write which keys, and the cluster's own calls.
//!
//! A token is a JWT (RFC 7519) in compact form signed with HMAC-SHA256
//! (`alg` `HS256`), so any JWT library can mint one. Its claims:
//!
//! - `exp` (required): expiry, in seconds since the Unix epoch;
//! - `scope` (required): space-separated grants (the OAuth `scope` claim of
//!   RFC 8693 §4.2):
//!   - `write:*` — write any key;
//!   - `write:comment/*` — write keys that start with `comment/` (a pattern
//!     ends in `*` to match any rest);
//!   - `write:user/alice` — write exactly that key;
//!   - `cluster` — the origin↔edge calls (publication, the change feed,
//!     failover reads). Only honoured in tokens signed with the cluster
//!     secret, never in client tokens;
//! - `sub` (optional): who the token was issued to, for logs.
//!
//! Client write tokens are signed with the token secret; the cluster's own
//! calls carry short-lived tokens signed with a separate cluster secret, so a
//! leaked client token can never publish to the edge.
//!
//! Written here rather than with the `jsonwebtoken` crate: that crate brings
//! RSA and elliptic-curve code into the Wasm build and reads the system clock,
//! which this crate must not; HS256 alone is a few lines over RustCrypto's
//! HMAC, whose `verify_slice` compares in constant time. The current time is
//! always an argument.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::key::Key;

/// The scope of the cluster's own calls.
pub const CLUSTER_SCOPE: &str = "cluster";
/// The shortest secret accepted (256 bits, the HMAC-SHA256 block strength).
pub const MIN_SECRET_BYTES: usize = 32;
/// How long a cluster call's token lives: long enough for clock skew between
/// an origin and the edge, short enough that a captured one soon expires.
pub const CLUSTER_TOKEN_SECS: u64 = 120;
/// The longest token accepted, in bytes (an `Authorization` header is never
/// larger than this legitimately; a bigger one is not even decoded).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The token secret variable (client write tokens), for the edge and origins.
pub const VAR_TOKEN_SECRET: &str = "PREFOLD_TOKEN_SECRET";
/// The cluster secret variable (origin↔edge calls).
pub const VAR_CLUSTER_SECRET: &str = "PREFOLD_CLUSTER_SECRET";

type HmacSha256 = Hmac<Sha256>;

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Space-separated grants.
    pub scope: String,
}

impl Claims {
    /// Whether the scope lets the bearer write `key`.
    pub fn allows_write(&self, key: &Key) -> bool {
        self.scope
            .split_ascii_whitespace()
            .filter_map(|g| g.strip_prefix("write:"))
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => key.as_str().starts_with(prefix),
                None => key.as_str() == pattern,
            })
    }

    /// Whether the scope holds `cluster`.
    pub fn is_cluster(&self) -> bool {
        self.scope
            .split_ascii_whitespace()
            .any(|g| g == CLUSTER_SCOPE)
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header (401).
    #[error("this request needs a bearer token")]
    Missing,
    /// Not a token of ours: bad shape, bad base64, bad JSON, another
    /// algorithm (401).
    #[error("the bearer token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not match (401).
    #[error("the bearer token's signature is not valid")]
    BadSignature,
    /// Past its `exp` (401).
    #[error("the bearer token expired")]
    Expired,
    /// Valid, but its scope does not cover this request (403).
    #[error("the bearer token's scope does not allow {0}")]
    Scope(String),
}

impl AuthError {
    /// The HTTP status: 403 for a valid token of the wrong scope, else 401.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Scope(_) => 403,
            _ => 401,
        }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge for this refusal.
    pub fn challenge(&self) -> &'static str {
        match self {
            AuthError::Missing => "Bearer realm=\"prefold\"",
            AuthError::Scope(_) => "Bearer realm=\"prefold\", error=\"insufficient_scope\"",
            _ => "Bearer realm=\"prefold\", error=\"invalid_token\"",
        }
    }
}

/// A secret that is long enough, or why not. The value itself is never part
/// of the error.
pub fn check_secret(name: &str, secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{name} is {} bytes long; it needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(())
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the error case cannot happen.
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Signs claims into a compact JWT.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(HEADER);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let mut m = mac(secret);
    m.update(token.as_bytes());
    let sig = m.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    token
}

/// A cluster call's token, valid for [`CLUSTER_TOKEN_SECS`] from `now`.
pub fn mint_cluster(secret: &[u8], now_secs: u64) -> String {
    mint(
        secret,
        &Claims {
            sub: None,
            exp: now_secs + CLUSTER_TOKEN_SECS,
            scope: CLUSTER_SCOPE.to_owned(),
        },
    )
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Checks a token's signature (in constant time) and expiry, and returns its
/// claims. The signature is checked before anything in the token is trusted.
pub fn verify(secret: &[u8], token: &str, now_secs: u64) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| AuthError::Malformed("the signature is not base64url"))?;
    let mut m = mac(secret);
    m.update(header.as_bytes());
    m.update(b".");
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
    let header: Header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(AuthError::Malformed("the header is not base64url JSON"))?;
    if header.alg != "HS256" {
        return Err(AuthError::Malformed("the algorithm is not HS256"));
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(AuthError::Malformed(
            "the claims are not base64url JSON with `exp` and `scope`",
        ))?;
    if claims.exp <= now_secs {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

/// The token of an `Authorization` header value (`Bearer …`, the scheme
/// case-insensitive as RFC 9110 says).
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

/// Checks that an `Authorization` header lets its bearer write `key`.
pub fn authorize_write(
    secret: &[u8],
    header: Option<&str>,
    key: &Key,
    now_secs: u64,
) -> Result<Claims, AuthError> {
    let claims = verify(secret, bearer(header)?, now_secs)?;
    if !claims.allows_write(key) {
        return Err(AuthError::Scope(format!("writing {key}")));
    }
    Ok(claims)
}

/// Checks that an `Authorization` header carries a cluster token.
pub fn authorize_cluster(
    secret: &[u8],
    header: Option<&str>,
    now_secs: u64,
) -> Result<Claims, AuthError> {
    let claims = verify(secret, bearer(header)?, now_secs)?;
    if !claims.is_cluster() {
        return Err(AuthError::Scope("cluster calls".to_owned()));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    fn token(scope: &str, exp: u64) -> String {
        mint(
            SECRET,
            &Claims {
                sub: Some("alice".into()),
                exp,
                scope: scope.into(),
            },
        )
    }

    #[test]
    fn the_rfc_7515_hs256_example_verifies() {
        // RFC 7515 Appendix A.1: an independent HS256 signature. Its claims
        // have no `scope`, so a correct signature check ends in "malformed
        // claims", and a changed signature in "bad signature".
        let k = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let jws = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(matches!(
            verify(&k, jws, 0),
            Err(AuthError::Malformed(m)) if m.contains("claims")
        ));
        let changed = jws.replace("dBjf", "dBjg");
        assert_eq!(verify(&k, &changed, 0), Err(AuthError::BadSignature));
        // Our own tokens start with the standard HS256 header.
        assert!(token("write:*", NOW).starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
    }

    #[test]
    fn round_trip_and_refusals() {
        let t = token("write:comment/* write:user/alice", NOW + 60);
        let c = verify(SECRET, &t, NOW).unwrap();
        assert!(c.allows_write(&key("comment/e1/c1")));
        assert!(c.allows_write(&key("user/alice")));
        assert!(!c.allows_write(&key("user/alice2")));
        assert!(!c.allows_write(&key("event/e1")));
        assert!(!c.is_cluster());

        assert_eq!(verify(SECRET, &t, NOW + 60), Err(AuthError::Expired));
        let other = b"another secret, thirty-two bytes";
        assert_eq!(verify(other, &t, NOW), Err(AuthError::BadSignature));
        // A changed claim breaks the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"exp":9999999999,"scope":"write:*"}"#);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(verify(SECRET, &forged, NOW), Err(AuthError::BadSignature));
        // `alg: none` with no signature is refused.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(verify(SECRET, &none, NOW), Err(AuthError::BadSignature));
        for bad in ["", "a.b", "a.b.c.d", "a.b.!!"] {
            assert!(matches!(
                verify(SECRET, bad, NOW),
                Err(AuthError::Malformed(_))
            ));
        }
        assert!(matches!(
            verify(SECRET, &"a".repeat(MAX_TOKEN_BYTES + 1), NOW),
            Err(AuthError::Malformed("too long"))
        ));
    }

    #[test]
    fn headers_scopes_and_statuses() {
        let t = token("write:event/*", NOW + 60);
        let h = format!("Bearer {t}");
        assert!(authorize_write(SECRET, Some(&h), &key("event/e1"), NOW).is_ok());
        let lower = format!("bearer  {t}");
        assert!(authorize_write(SECRET, Some(&lower), &key("event/e1"), NOW).is_ok());
        let e = authorize_write(SECRET, Some(&h), &key("user/u1"), NOW).unwrap_err();
        assert_eq!(
            (e.status(), e.challenge().contains("insufficient_scope")),
            (403, true)
        );
        let e = authorize_write(SECRET, None, &key("event/e1"), NOW).unwrap_err();
        assert_eq!((e, 401), (AuthError::Missing, 401));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Missing));
        // A client token never passes as a cluster token, even with the
        // `cluster` grant, unless it is signed with the cluster secret.
        let cluster_secret = b"cluster secret, thirty-two bytes";
        let c = mint_cluster(cluster_secret, NOW);
        let hc = format!("Bearer {c}");
        assert!(authorize_cluster(cluster_secret, Some(&hc), NOW).is_ok());
        assert_eq!(
            authorize_cluster(SECRET, Some(&hc), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            authorize_cluster(cluster_secret, Some(&hc), NOW + CLUSTER_TOKEN_SECS),
            Err(AuthError::Expired)
        );
        let e = authorize_cluster(SECRET, Some(&h), NOW).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(check_secret("S", b"short").unwrap_err().contains("32"));
        assert!(check_secret("S", SECRET).is_ok());
    }
}
