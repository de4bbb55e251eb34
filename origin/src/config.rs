//! Origin configuration: every setting is a flag and a `PREFOLD_*` variable.
//!
//! This is the top of the crate's layers (with the server): [`Config`] is
//! split at start into each layer's own settings (`*_settings` below), so
//! nothing below it sees `Config`.
//!
//! The S3 backend takes its endpoint, bucket, region and credentials from the
//! usual `AWS_*` variables (`AWS_ENDPOINT`, `AWS_BUCKET`/`AWS_BUCKET_NAME`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP`), read by `object_store`'s `AmazonS3Builder::from_env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use prefold_core::auth::{check_secret, VAR_CLUSTER_SECRET, VAR_TOKEN_SECRET};
use prefold_core::config::{DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_CEILING, VAR_MAX_BODY_BYTES};
use prefold_core::OriginList;

use crate::base::{Clock, Durability, Secret};
use crate::cluster::{Cluster, Membership, Peers};
use crate::engine::EngineSettings;
use crate::http::{HttpSettings, Ownership};
use crate::publication::PushSettings;
use crate::storage::{Conditional, FlushSettings, Limits, StoreKind, StoreSettings};
use crate::views::ViewSettings;

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

    /// What a write must reach before it is acknowledged, unless the request
    /// asks otherwise with `x-prefold-durability`.
    #[arg(long, env = "PREFOLD_DURABILITY", value_enum, default_value = "log")]
    pub durability: Durability,

    /// The write-ahead log's directory (default `{data}/wal`). Each process
    /// needs its own.
    #[arg(long, env = "PREFOLD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Size at which a write-ahead log segment is closed (closed segments
    /// are deleted once the store holds their writes).
    #[arg(long, env = "PREFOLD_WAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub wal_segment_bytes: u64,

    /// Partition workers (each is the only writer of its keys); 0 picks four
    /// per CPU.
    #[arg(long, env = "PREFOLD_PARTITIONS", default_value_t = 0)]
    pub partitions: usize,

    /// Most keys waiting for the store; past it, writes of new keys get 503.
    #[arg(long, env = "PREFOLD_MAX_BACKLOG_KEYS", default_value_t = 100_000)]
    pub max_backlog_keys: usize,

    /// Most bytes waiting for the store; past it, growing writes get 503.
    #[arg(long, env = "PREFOLD_MAX_BACKLOG_BYTES", default_value_t = 256 << 20)]
    pub max_backlog_bytes: usize,

    /// Longest wait for one store request (PUT, or a load after eviction)
    /// before it counts as failed and is retried.
    #[arg(long, env = "PREFOLD_STORE_TIMEOUT_MS", default_value_t = 30_000)]
    pub store_timeout_ms: u64,

    /// Conditional puts the store supports. Default: `create` for the local
    /// filesystem (it has no `Update`), `full` for S3 and memory.
    #[arg(long, env = "PREFOLD_CONDITIONAL_PUTS", value_enum)]
    pub conditional_puts: Option<Conditional>,

    /// Key types (first key segment) whose writes must carry `If-Match` or
    /// `If-None-Match` (428 otherwise): a comma-separated list, or `*` for all.
    #[arg(long, env = "PREFOLD_REQUIRE_PRECONDITION", value_delimiter = ',')]
    pub require_precondition: Vec<String>,

    /// The cluster's origins, `name=url,...`, as the edge has them. With it,
    /// the origin loads only the keys it owns; without it, it owns every key.
    #[arg(long, env = "PREFOLD_ORIGINS", value_parser = parse_origins)]
    pub origins: Option<OriginList>,

    /// This origin's name in `--origins`.
    #[arg(long, env = "PREFOLD_NAME", requires = "origins")]
    pub name: Option<String>,

    /// Objects fetched at once by the warm load.
    #[arg(long, env = "PREFOLD_WARM_CONCURRENCY", default_value_t = 64)]
    pub warm_concurrency: usize,

    /// The model file (TOML): entity types and the views derived from them.
    /// Without one, objects are stored as they are and nothing is derived.
    #[arg(long, env = "PREFOLD_MODEL")]
    pub model: Option<PathBuf>,

    /// The rolling regeneration recomputes every view once per this many
    /// seconds, repairing what a lost derivation missed (0: never).
    #[arg(long, env = "PREFOLD_REGEN_PERIOD_SECS", default_value_t = 3600)]
    pub regen_period_secs: u64,

    /// How long a changed view waits before it is written to the store.
    /// Views are rebuilt from entities at start, so they need not be stored
    /// promptly; waiting coalesces bursts (a fan-out) and keeps the flusher
    /// out of their way. Derived objects never count against the backlog
    /// bounds.
    #[arg(long, env = "PREFOLD_VIEW_FLUSH_DELAY_MS", default_value_t = 5000)]
    pub view_flush_delay_ms: u64,

    /// The secret that signs client write tokens (HS256, at least 32
    /// bytes). Set it in the environment, not on the command line, where
    /// other users of the machine can read it.
    #[arg(long, env = VAR_TOKEN_SECRET, hide_env_values = true)]
    pub token_secret: Option<Secret>,

    /// The secret of the cluster's own calls: publication to the edge, the
    /// change feed, failover reads (at least 32 bytes; environment only, as
    /// for the token secret).
    #[arg(long, env = VAR_CLUSTER_SECRET, hide_env_values = true)]
    pub cluster_secret: Option<Secret>,

    /// Accept writes without a token. Only for local experiments and
    /// benchmarks; without it, an origin with no token secret does not start.
    #[arg(long, env = "PREFOLD_OPEN_WRITES")]
    pub open_writes: bool,

    /// The edge's base URL (e.g. `https://shop.example.com`): changed objects
    /// are pushed to its publication endpoint. Needs the cluster secret.
    /// Without it nothing is pushed, and the edge's scheduled pull of the
    /// change feed is the only publication.
    #[arg(long, env = "PREFOLD_EDGE_URL")]
    pub edge_url: Option<String>,

    /// How long the publisher gathers changes into one push.
    #[arg(long, env = "PREFOLD_PUBLISH_INTERVAL_MS", default_value_t = 100)]
    pub publish_interval_ms: u64,

    /// The change feed lists only changes older than this, so a write that
    /// took its version just before a feed read but was applied just after
    /// cannot be skipped by the reader's cursor.
    #[arg(long, env = "PREFOLD_FEED_HORIZON_MS", default_value_t = 1000)]
    pub feed_horizon_ms: u64,

    /// Fault injection for tests and drills: wrap the store in a wrapper
    /// controlled by this file (see the `faults` module). Never in production.
    #[arg(long, env = "PREFOLD_FAULT_FILE")]
    pub fault_file: Option<PathBuf>,
}

fn parse_origins(s: &str) -> Result<OriginList, String> {
    OriginList::parse(s).map_err(|e| e.to_string())
}

impl Config {
    /// A configuration with every default (and writes open), for tests and
    /// embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["prefold-origin", "--open-writes"])
    }

    /// The flush window.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The shutdown drain deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The write-ahead log's directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data.join("wal"))
    }

    /// The store request timeout.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }

    /// The number of partition workers.
    pub fn partitions(&self) -> usize {
        if self.partitions > 0 {
            return self.partitions;
        }
        std::thread::available_parallelism().map_or(4, |n| n.get() * 4)
    }

    /// The conditional puts to use with the configured store.
    pub fn conditional(&self) -> Conditional {
        self.conditional_puts.unwrap_or(match self.store {
            StoreKind::Fs => Conditional::Create,
            StoreKind::S3 | StoreKind::Memory => Conditional::Full,
        })
    }

    /// The embedded store's root directory.
    pub(crate) fn store_root(&self) -> PathBuf {
        self.data.join("store")
    }

    /// Opening the store.
    pub(crate) fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            kind: self.store,
            root: self.store_root(),
            timeout: self.store_timeout(),
            fault_file: self.fault_file.clone(),
        }
    }

    /// The write-behind backlog's bounds.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_keys: self.max_backlog_keys,
            max_bytes: self.max_backlog_bytes,
        }
    }

    /// The flusher.
    pub(crate) fn flush_settings(&self) -> FlushSettings {
        FlushSettings {
            interval: self.flush_interval(),
            concurrency: usize::from(self.flush_concurrency),
            put_timeout: self.store_timeout(),
            conditional: self.conditional(),
        }
    }

    /// The engine (the caller adds the model's check and the observer).
    pub(crate) fn engine_settings(&self, clock: &Clock) -> EngineSettings {
        EngineSettings {
            load_timeout: self.store_timeout(),
            max_body_bytes: self.max_body_bytes,
            check: None,
            derived_flush_delay: Duration::from_millis(self.view_flush_delay_ms),
            observer: None,
            clock: clock.clone(),
        }
    }

    /// The cluster as this origin sees it: who owns what, and how to call
    /// the others.
    pub(crate) fn cluster(&self, clock: &Clock) -> Cluster {
        Cluster {
            membership: Membership::new(self.origins.clone(), self.name.clone()),
            peers: Peers::new(self.cluster_secret.clone(), clock.clone()),
        }
    }

    /// Which keys this origin owns (every key without `--origins`).
    pub(crate) fn ownership(&self) -> Ownership {
        Ownership::new(self.origins.clone(), self.name.clone())
    }

    /// The HTTP layer.
    pub(crate) fn http_settings(&self, clock: &Clock) -> HttpSettings {
        HttpSettings {
            max_body_bytes: self.max_body_bytes,
            durability: self.durability,
            require_precondition: self.require_precondition.clone(),
            token_secret: self.token_secret.clone(),
            cluster_secret: self.cluster_secret.clone(),
            ownership: self.ownership(),
            store_timeout: self.store_timeout(),
            feed_horizon: Duration::from_millis(self.feed_horizon_ms),
            clock: clock.clone(),
        }
    }

    /// The pusher, when there is an edge to push to.
    pub(crate) fn push_settings(&self, clock: &Clock) -> Option<PushSettings> {
        let (edge_url, secret) = (self.edge_url.as_ref()?, self.cluster_secret.as_ref()?);
        Some(PushSettings {
            edge_url: edge_url.clone(),
            cluster_secret: secret.clone(),
            interval: Duration::from_millis(self.publish_interval_ms),
            timeout: Duration::from_secs(10),
            fault_file: self.fault_file.clone(),
            clock: clock.clone(),
        })
    }

    /// The view engine.
    pub(crate) fn view_settings(&self) -> ViewSettings {
        ViewSettings {
            fault_file: self.fault_file.clone(),
            regen_period: (self.regen_period_secs > 0)
                .then(|| Duration::from_secs(self.regen_period_secs)),
        }
    }

    /// Checks what clap cannot: the name is in the origin list.
    pub fn validate(&self) -> Result<(), String> {
        if let (Some(list), Some(name)) = (&self.origins, &self.name) {
            if !list.origins().iter().any(|o| o.name == *name) {
                return Err(format!("--name {name:?} is not in --origins"));
            }
        }
        if self.origins.is_some() && self.name.is_none() {
            return Err("--origins needs --name (which origin this is)".to_owned());
        }
        match (&self.token_secret, self.open_writes) {
            (Some(s), _) => check_secret(VAR_TOKEN_SECRET, s.bytes())?,
            (None, true) => {}
            (None, false) => {
                return Err(format!(
                    "writes need a token secret: set {VAR_TOKEN_SECRET} (at least 32 bytes, e.g. \
                     `openssl rand -hex 32`), or pass --open-writes to accept unauthenticated writes"
                ))
            }
        }
        if let Some(s) = &self.cluster_secret {
            check_secret(VAR_CLUSTER_SECRET, s.bytes())?;
        }
        if self.edge_url.is_some() && self.cluster_secret.is_none() {
            return Err(format!(
                "--edge-url needs {VAR_CLUSTER_SECRET}: pushes to the edge are authenticated"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefold_core::Key;

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
        assert_eq!(c.durability, Durability::Log);
        assert_eq!(c.conditional(), Conditional::Full);
        assert_eq!(Config::defaults().conditional(), Conditional::Create);
    }

    #[test]
    fn preconditions_and_ownership() {
        let c = Config::try_parse_from([
            "prefold-origin",
            "--open-writes",
            "--require-precondition",
            "account,order",
            "--origins",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "--name",
            "b",
        ])
        .unwrap();
        assert!(c.validate().is_ok());
        let http = c.http_settings(&Clock::system());
        assert!(http.requires_precondition(&Key::parse("order/1").unwrap()));
        assert!(!http.requires_precondition(&Key::parse("user/1").unwrap()));
        let keys: Vec<Key> = (0..64)
            .map(|i| Key::parse(&format!("user/{i}")).unwrap())
            .collect();
        let ownership = c.ownership();
        let owned = keys.iter().filter(|k| ownership.owns(k)).count();
        assert!(owned > 0 && owned < 64, "{owned}");
        let wrong = Config::try_parse_from([
            "prefold-origin",
            "--open-writes",
            "--origins",
            "a=http://127.0.0.1:1",
            "--name",
            "z",
        ])
        .unwrap();
        assert!(wrong.validate().is_err());
    }

    #[test]
    fn secrets_are_required_checked_and_never_printed() {
        let value = "a-secret-of-thirty-two-bytes-xyz";
        let c = Config::try_parse_from(["prefold-origin", "--token-secret", value]).unwrap();
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains(value));
        let none = Config::try_parse_from(["prefold-origin"]).unwrap();
        assert!(none
            .validate()
            .unwrap_err()
            .contains("PREFOLD_TOKEN_SECRET"));
        let short = Config::try_parse_from(["prefold-origin", "--token-secret", "short"]).unwrap();
        let e = short.validate().unwrap_err();
        assert!(e.contains("32") && !e.contains("short\""), "{e}");
        let push = Config::try_parse_from([
            "prefold-origin",
            "--open-writes",
            "--edge-url",
            "http://127.0.0.1:8787",
        ])
        .unwrap();
        assert!(push
            .validate()
            .unwrap_err()
            .contains("PREFOLD_CLUSTER_SECRET"));
    }
}
