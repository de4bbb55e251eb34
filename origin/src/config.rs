//! Origin configuration: every setting is a flag and a `PREFOLD_*` variable.
//!
//! The S3 backend takes its endpoint, bucket, region and credentials from the
//! usual `AWS_*` variables (`AWS_ENDPOINT`, `AWS_BUCKET`/`AWS_BUCKET_NAME`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP`), read by `object_store`'s `AmazonS3Builder::from_env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use prefold_core::config::{DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_CEILING, VAR_MAX_BODY_BYTES};

/// Which object store backs the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Files under `{data}/store` (the embedded default).
    Fs,
    /// Any S3-compatible service, configured by `AWS_*` variables.
    S3,
    /// Process memory only: nothing survives a restart (tests, demos).
    Memory,
}

/// `prefold-origin` settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "prefold-origin", version, about = "The prefold origin server")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port and prints it).
    #[arg(long, env = "PREFOLD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Data directory: the embedded store lives in `{data}/store`.
    #[arg(long, env = "PREFOLD_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// Object store backend.
    #[arg(long, env = "PREFOLD_STORE", value_enum, default_value = "fs")]
    pub store: StoreKind,

    /// Memory budget of the hot tier, in bytes of keys and bodies.
    #[arg(long, env = "PREFOLD_CACHE_BYTES", default_value_t = 1 << 30)]
    pub cache_bytes: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = VAR_MAX_BODY_BYTES, default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BODY_BYTES_CEILING)))]
    pub max_body_bytes: u32,

    /// How long the flusher gathers writes before it stores them; writes of
    /// one key inside the window become one store PUT.
    #[arg(long, env = "PREFOLD_FLUSH_INTERVAL_MS", default_value_t = 100)]
    pub flush_interval_ms: u64,

    /// Store PUTs in flight at once.
    #[arg(long, env = "PREFOLD_FLUSH_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub flush_concurrency: u16,

    /// On shutdown, how long to keep trying to store pending writes.
    #[arg(long, env = "PREFOLD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["prefold-origin"])
    }

    /// The flush window.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The shutdown drain deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "prefold-origin",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--max-body-bytes",
            "10",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.store, StoreKind::Memory);
        assert_eq!(c.max_body_bytes, 10);
        assert!(Config::try_parse_from(["prefold-origin", "--max-body-bytes", "0"]).is_err());
        assert!(Config::try_parse_from(["prefold-origin", "--store", "ftp"]).is_err());
    }
}
