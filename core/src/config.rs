//! Configuration read by both sides, defined once.
//!
//! The edge reads these from Worker `[vars]` (`wrangler.toml`, or `--var` in
//! development); the origin reads the same names from its environment. Both go
//! through [`EdgeConfig::from_lookup`] or the shared constants below, so the
//! two cannot drift apart.

use thiserror::Error;

use crate::routing::{OriginList, RoutingError};

/// Origin list: `name=url[,name=url…]`.
pub const VAR_ORIGINS: &str = "PREFOLD_ORIGINS";
/// Milliseconds the edge waits for an origin before giving up on it.
pub const VAR_ORIGIN_TIMEOUT_MS: &str = "PREFOLD_ORIGIN_TIMEOUT_MS";
/// Largest accepted request body, in bytes.
pub const VAR_MAX_BODY_BYTES: &str = "PREFOLD_MAX_BODY_BYTES";

/// Seconds a client's read-your-writes fence lasts after its write (see
/// [`crate::fence`]): longer than a push takes plus KV's propagation.
pub const VAR_RYW_SECS: &str = "PREFOLD_RYW_SECS";
/// Seconds browsers and CDNs may serve a copy while they revalidate it.
pub const VAR_STALE_WHILE_REVALIDATE_SECS: &str = "PREFOLD_STALE_WHILE_REVALIDATE_SECS";
/// Seconds browsers and CDNs may serve a copy when revalidation fails.
pub const VAR_STALE_IF_ERROR_SECS: &str = "PREFOLD_STALE_IF_ERROR_SECS";

/// Default origin timeout.
pub const DEFAULT_ORIGIN_TIMEOUT_MS: u32 = 5_000;
/// Default body limit: 1 MiB (Workers KV itself allows 25 MiB values).
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1 << 20;
/// Default fence lifetime: KV can take 60 s to show a write everywhere.
pub const DEFAULT_RYW_SECS: u32 = 90;
/// Default `stale-while-revalidate`.
pub const DEFAULT_STALE_WHILE_REVALIDATE_SECS: u32 = 10;
/// Default `stale-if-error`: a day.
pub const DEFAULT_STALE_IF_ERROR_SECS: u32 = 86_400;
/// Hard ceiling on the body limit: the Workers KV value limit.
pub const MAX_BODY_BYTES_CEILING: u32 = 25 * 1024 * 1024;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A required variable is absent.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A number that does not parse or is out of range.
    #[error("{name} = {value:?}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What was given.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// A secret that is too short (the value is never shown).
    #[error("{0}")]
    Secret(String),
    /// The origin list is unusable.
    #[error("{VAR_ORIGINS}: {0}")]
    Origins(#[from] RoutingError),
}

/// What the edge needs to route and forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The origins, for rendezvous routing.
    pub origins: OriginList,
    /// Per-call origin timeout.
    pub origin_timeout_ms: u32,
    /// Largest body forwarded on a write.
    pub max_body_bytes: u32,
    /// Read-your-writes fence lifetime, seconds.
    pub ryw_secs: u32,
    /// `stale-while-revalidate`, seconds.
    pub stale_while_revalidate_secs: u32,
    /// `stale-if-error`, seconds.
    pub stale_if_error_secs: u32,
}

impl EdgeConfig {
    /// Reads the configuration through a lookup function (Worker vars, or the
    /// process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<EdgeConfig, ConfigError> {
        let origins = lookup(VAR_ORIGINS).ok_or(ConfigError::Missing(VAR_ORIGINS))?;
        Ok(EdgeConfig {
            origins: OriginList::parse(&origins)?,
            origin_timeout_ms: parse_u32(
                VAR_ORIGIN_TIMEOUT_MS,
                lookup(VAR_ORIGIN_TIMEOUT_MS),
                DEFAULT_ORIGIN_TIMEOUT_MS,
                1..=600_000,
            )?,
            max_body_bytes: parse_u32(
                VAR_MAX_BODY_BYTES,
                lookup(VAR_MAX_BODY_BYTES),
                DEFAULT_MAX_BODY_BYTES,
                1..=MAX_BODY_BYTES_CEILING,
            )?,
            ryw_secs: parse_u32(
                VAR_RYW_SECS,
                lookup(VAR_RYW_SECS),
                DEFAULT_RYW_SECS,
                0..=86_400,
            )?,
            stale_while_revalidate_secs: parse_u32(
                VAR_STALE_WHILE_REVALIDATE_SECS,
                lookup(VAR_STALE_WHILE_REVALIDATE_SECS),
                DEFAULT_STALE_WHILE_REVALIDATE_SECS,
                0..=31_536_000,
            )?,
            stale_if_error_secs: parse_u32(
                VAR_STALE_IF_ERROR_SECS,
                lookup(VAR_STALE_IF_ERROR_SECS),
                DEFAULT_STALE_IF_ERROR_SECS,
                0..=31_536_000,
            )?,
        })
    }
}

/// Parses an optional decimal `u32` within a range.
pub fn parse_u32(
    name: &'static str,
    value: Option<String>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        Ok(_) => Err(ConfigError::Invalid {
            name,
            value,
            reason: "out of range",
        }),
        Err(_) => Err(ConfigError::Invalid {
            name,
            value,
            reason: "not a whole number",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = EdgeConfig::from_lookup(lookup(&[(VAR_ORIGINS, "a=http://x")])).unwrap();
        assert_eq!(c.origin_timeout_ms, DEFAULT_ORIGIN_TIMEOUT_MS);
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let c = EdgeConfig::from_lookup(lookup(&[
            (VAR_ORIGINS, "a=http://x"),
            (VAR_ORIGIN_TIMEOUT_MS, "250"),
            (VAR_MAX_BODY_BYTES, "1024"),
        ]))
        .unwrap();
        assert_eq!((c.origin_timeout_ms, c.max_body_bytes), (250, 1024));
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(
            EdgeConfig::from_lookup(lookup(&[])),
            Err(ConfigError::Missing(VAR_ORIGINS))
        );
        let e = EdgeConfig::from_lookup(lookup(&[
            (VAR_ORIGINS, "a=http://x"),
            (VAR_ORIGIN_TIMEOUT_MS, "soon"),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("PREFOLD_ORIGIN_TIMEOUT_MS"),
            "{e}"
        );
        let e = EdgeConfig::from_lookup(lookup(&[
            (VAR_ORIGINS, "a=http://x"),
            (VAR_MAX_BODY_BYTES, "999999999"),
        ]))
        .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                reason: "out of range",
                ..
            }
        ));
    }
}
