//! The view engine benchmarks: what deriving views at write time costs and
//! how quickly the derived objects follow, each against an anchor in one run.
//!
//! - **fan-out**: a release origin with `--model scripts/demo/model.toml` is
//!   loaded with [`gen::one_product_orders`]`(n)` (every order of product
//!   `p0`); one `PATCH` renaming `p0` regenerates all `n` `order_page`
//!   views. Timed from the `PATCH` until `/metrics` shows no pending view work
//!   and `n` more derived objects published; a sample of the pages is then
//!   read back. The anchor, alternated with it: what an application without
//!   the view engine does — the client `PUT`s the same `n` page bodies itself
//!   (keys outside the model, 64 keep-alive connections). Two origin
//!   configurations: the default flush interval, and the write-behind
//!   deferred by a 60 s interval.
//! - **write amplification**: on the demo data, writes of every entity type
//!   (updates by merge patch, creations by `PUT`), one at a time, each
//!   waited for until the view engine is idle: derived objects published and
//!   derivation messages handled per entity write.
//! - **derivation lag under mixed load**: readers `GET` random view objects
//!   while writers add comments and rename products; the origin's lag
//!   histogram over the run, the lag a client observes for a sample of the
//!   writes, and read throughput against the same readers with no writers.
//!
//! Results go to `views.md` and `views.json`, beside `latest.md`.
//!
//! Diagnostics, not used by `make bench`: `PREFOLD_BENCH_VIEWS=fanout,amp,lag`
//! runs only some sections; `PREFOLD_BENCH_VIEWS_LAG_ARGS="--flag value …"`
//! passes extra flags to the mixed-load origin (the report names them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use prefold_bench::gen::{self, Object, Scale};
use prefold_e2e::OriginProc;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::report::{load_json, machine, machine_table, median, save};

/// The seed of every demo data set here.
const SEED: u64 = 1;
/// Connections of the fan-out anchor and of the loader.
const CONCURRENCY: usize = 64;
/// How often the fan-out measurement scrapes `/metrics`.
const FANOUT_POLL: Duration = Duration::from_millis(10);
/// How often the write-amplification measurement scrapes `/metrics`.
const AMP_POLL: Duration = Duration::from_millis(2);
/// How often a client-observed lag sample re-reads its view.
const OBSERVE_POLL: Duration = Duration::from_millis(1);
/// How long a client-observed lag sample waits before it counts as lost.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages read back after every fan-out run.
const VERIFY_SAMPLE: usize = 100;
/// Readers and writers of the mixed-load run.
const READERS: usize = 16;
const WRITERS: usize = 4;
/// Every this many writes of the mixed load, one is observed by a client.
const OBSERVE_EVERY: u64 = 50;
/// The fan-out's two measured targets.
pub const VIEWS: &str = "view engine";
/// The anchor: the client re-`PUT`s the pages.
pub const ANCHOR: &str = "client re-PUT";
/// The origin configurations of the fan-out, `(name, extra flags)`. The
/// deferred one needs a larger backlog bound: with a 60 s window the loads'
/// own writes (order, page and aggregate per order) stay in the backlog.
pub const CONFIGS: [(&str, &[&str]); 2] = [
    ("default", &[]),
    (
        "deferred",
        &[
            "--flush-interval-ms",
            "60000",
            "--max-backlog-keys",
            "2000000",
        ],
    ),
];
/// The configuration the goal is judged on.
const GOAL_CONFIG: &str = "default";
/// The goal: this many dependents regenerated within [`GOAL_SECONDS`].
const GOAL_N: usize = 100_000;
const GOAL_SECONDS: f64 = 1.0;

const PENDING: &str = "prefold_view_pending";
const PUBLISHED: &str = "prefold_view_published_total";
const DERIVATIONS: &str = "prefold_view_derivations_total";
const CHANGES: &str = "prefold_view_changes_total";
const PUBLISH_FAILURES: &str = "prefold_view_publish_failures_total";
const STORE_PUTS: &str = "prefold_store_puts_total";
const BACKLOG_KEYS: &str = "prefold_backlog_keys";
const LAG_BUCKET: &str = "prefold_view_derivation_lag_seconds_bucket{le=\"";

/// How much of everything one mode does.
pub struct Plan {
    name: &'static str,
    fanout_ns: Vec<usize>,
    fanout_reps: usize,
    amp_scale: usize,
    amp_writes: usize,
    lag_scale: usize,
    lag_run: Duration,
    lag_reps: usize,
}

impl Plan {
    /// The quick run (`make bench`) or the full one (`--full`).
    pub fn new(full: bool) -> Plan {
        Plan {
            name: if full { "full" } else { "quick" },
            fanout_ns: vec![10_000, 100_000],
            fanout_reps: if full { 5 } else { 3 },
            amp_scale: 10,
            amp_writes: if full { 25 } else { 10 },
            lag_scale: if full { 50 } else { 30 },
            lag_run: Duration::from_secs(if full { 20 } else { 10 }),
            lag_reps: if full { 2 } else { 1 },
        }
    }
}

// ── HTTP ────────────────────────────────────────────────────────────────────

type Metrics = HashMap<String, f64>;

fn metric(m: &Metrics, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

fn delta(before: &Metrics, after: &Metrics, name: &str) -> u64 {
    (metric(after, name) - metric(before, name)).max(0.0) as u64
}

/// One origin, one keep-alive client.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: String) -> Result<Http> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONCURRENCY * 2)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Http { client, base })
    }

    fn url(&self, key: &str) -> String {
        format!("{}/o/{key}", self.base)
    }

    /// `/metrics` as `name{labels}` → value.
    async fn metrics(&self) -> Result<Metrics> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(prefold_e2e::parse_metrics(&text))
    }

    /// The object at `key` as JSON, `None` when 404.
    async fn get(&self, key: &str) -> Result<Option<Value>> {
        let r = self.client.get(self.url(key)).send().await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = r.status();
        let body = r.bytes().await?;
        ensure!(
            status.is_success(),
            "GET /o/{key}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(Some(serde_json::from_slice(&body)?))
    }

    /// A `PUT` (JSON) or `PATCH` (merge patch); fails unless 2xx. A `503`
    /// with `Retry-After` is retried after that long (at least 10 ms);
    /// returns the number of retries.
    async fn write(&self, method: Method, key: &str, body: Bytes, memory: bool) -> Result<u64> {
        let ct = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let url = self.url(key);
        let mut retries = 0;
        loop {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .header("content-type", ct)
                .body(body.clone());
            if memory {
                req = req.header("x-prefold-durability", "memory");
            }
            let r = req
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = r.status();
            if status.is_success() {
                return Ok(retries);
            }
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let (StatusCode::SERVICE_UNAVAILABLE, Some(s)) = (status, retry_after) {
                if retries < 600 {
                    retries += 1;
                    tokio::time::sleep(Duration::from_secs(s).max(Duration::from_millis(10))).await;
                    continue;
                }
            }
            let text = r.text().await.unwrap_or_default();
            bail!("{method} /o/{key}: {status} {text}");
        }
    }

    /// Waits until the view engine has nothing pending; returns the scrape
    /// that said so.
    async fn settled(&self, poll: Duration, timeout: Duration) -> Result<Metrics> {
        let t = Instant::now();
        loop {
            let m = self.metrics().await?;
            if metric(&m, PENDING) == 0.0 {
                return Ok(m);
            }
            if t.elapsed() > timeout {
                bail!(
                    "the view engine still had {} messages pending after {timeout:?}",
                    metric(&m, PENDING)
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Waits until the write-behind backlog is empty; returns how long.
    async fn drained(&self, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            let m = self.metrics().await?;
            if metric(&m, BACKLOG_KEYS) == 0.0 {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                bail!(
                    "the backlog still held {} keys after {timeout:?}",
                    metric(&m, BACKLOG_KEYS)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn model_path() -> String {
    prefold_e2e::repo_root()
        .join("scripts/demo/model.toml")
        .to_string_lossy()
        .into_owned()
}

/// Starts a release origin with the demo model on a filesystem store.
async fn start_origin(dir: &Path, extra: &[&str]) -> Result<(OriginProc, Http)> {
    let model = model_path();
    let mut args = vec!["--store", "fs", "--model", &model, "--open-writes"];
    args.extend_from_slice(extra);
    let origin = OriginProc::start(dir, &args).await?;
    let http = Http::new(origin.url())?;
    Ok((origin, http))
}

/// Loads waves into the origin and waits for the view engine to settle.
async fn load(origin: &OriginProc, http: &Http, waves: Vec<gen::Wave>) -> Result<LoadRow> {
    let objects = waves.iter().map(ExactSizeIterator::len).sum::<usize>() as u64;
    let t = Instant::now();
    let stats = gen::load(
        &gen::Destination::Origin(http.base.clone()),
        None,
        waves,
        CONCURRENCY,
        false,
    )
    .await
    .with_context(|| origin.log_tail())?;
    let load_ms = t.elapsed().as_millis() as u64;
    http.settled(Duration::from_millis(20), Duration::from_secs(600))
        .await
        .with_context(|| origin.log_tail())?;
    Ok(LoadRow {
        objects,
        load_ms,
        settled_ms: t.elapsed().as_millis() as u64,
        retries: stats.retries,
    })
}

/// Percentile (nearest rank) of unsorted values.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn lo_hi(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Clock ticks per second of `/proc/*/stat` times.
fn clock_ticks() -> f64 {
    crate::report::command_line("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0)
}

/// User + system CPU time of a process so far, s.
fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, … utime (12th), stime (13th).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The pid of our child process whose command line names `dir` (the
/// origin started on it).
fn child_with_arg(dir: &Path) -> Option<u32> {
    let me = std::process::id().to_string();
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .to_owned();
        if ppid != me {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
        cmdline.split('\0').any(|a| a == needle).then_some(pid)
    })
}

/// CPU time of the origin and of this benchmark process, s.
#[derive(Clone, Copy)]
struct Cpu {
    origin: Option<u32>,
    ticks: f64,
}

impl Cpu {
    fn new(dir: &Path) -> Cpu {
        Cpu {
            origin: child_with_arg(dir),
            ticks: clock_ticks(),
        }
    }

    /// `(origin, client)` CPU seconds so far.
    fn now(&self) -> (Option<f64>, Option<f64>) {
        (
            self.origin.and_then(|p| cpu_seconds(p, self.ticks)),
            cpu_seconds(std::process::id(), self.ticks),
        )
    }

    /// `(origin, client)` CPU seconds since `then`.
    fn since(&self, then: (Option<f64>, Option<f64>)) -> (Option<f64>, Option<f64>) {
        let now = self.now();
        (
            now.0.zip(then.0).map(|(a, b)| a - b),
            now.1.zip(then.1).map(|(a, b)| a - b),
        )
    }
}

// ── results ─────────────────────────────────────────────────────────────────

/// Loading a data set into an origin.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LoadRow {
    /// Objects written.
    pub objects: u64,
    /// From the first `PUT` to the last answer, ms.
    pub load_ms: u64,
    /// From the first `PUT` until the view engine was idle, ms.
    pub settled_ms: u64,
    /// `503`s retried by the loader.
    pub retries: u64,
}

/// One origin of the fan-out benchmark: a configuration and a fan-out size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutSetup {
    /// A name from [`CONFIGS`].
    pub config: String,
    /// Orders of `p0`.
    pub n: usize,
    /// Loading the fixture.
    pub load: LoadRow,
}

/// One fan-out run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutRow {
    /// A name from [`CONFIGS`].
    pub config: String,
    /// Dependents regenerated.
    pub n: usize,
    /// [`VIEWS`] or [`ANCHOR`].
    pub target: String,
    /// Repetition number.
    pub rep: usize,
    /// Position in the repetition's order.
    pub order: usize,
    /// From sending the write(s) to every page readable with the new name,
    /// ms. For the view engine: when the first scrape that showed it done
    /// returned (an upper bound).
    pub ms: f64,
    /// View engine only: when the last scrape that did not show it done was
    /// sent (a lower bound), ms.
    pub ms_lower: Option<f64>,
    /// The origin's CPU time over the run (user + system), ms.
    pub origin_cpu_ms: Option<f64>,
    /// This benchmark process's CPU time over the run, ms.
    pub client_cpu_ms: Option<f64>,
    /// The `PATCH`'s own answer, ms (view engine only).
    pub ack_ms: Option<f64>,
    /// `/metrics` scrapes made while waiting (view engine only).
    pub scrapes: u32,
    /// `prefold_view_published_total` over the run.
    pub published: u64,
    /// `prefold_view_derivations_total` over the run.
    pub derivations: u64,
    /// `prefold_view_publish_failures_total` over the run.
    pub publish_failures: u64,
    /// `prefold_store_puts_total` over the run: the flusher's competing work.
    pub store_puts: u64,
    /// Keys in the backlog when the run started.
    pub backlog_before: u64,
    /// Waiting for an empty backlog before the run, ms (default config).
    pub drain_before_ms: Option<u64>,
    /// `503` answers the anchor retried.
    pub retries: u64,
    /// Pages read back and found right.
    pub verified: usize,
}

/// One entity type and operation of the write-amplification measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AmpRow {
    /// The entity type.
    pub entity: String,
    /// `update` (merge patch) or `create` (`PUT`).
    pub op: String,
    /// What each write changes.
    pub what: String,
    /// Derived objects published, per write.
    pub published: Vec<u64>,
    /// Derivation messages handled, per write.
    pub derivations: Vec<u64>,
    /// Change messages handled, per write.
    pub changes: Vec<u64>,
}

/// One bucket of a histogram delta: upper bound (as Prometheus prints it)
/// and cumulative count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    /// `le`.
    pub le: String,
    /// Observations ≤ `le` during the run.
    pub count: u64,
}

/// One client-observed lag sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observed {
    /// `comment` or `rename`.
    pub kind: String,
    /// From the write's answer until the view showed it, ms; `None` when it
    /// did not within [`OBSERVE_TIMEOUT`].
    pub ms: Option<f64>,
}

/// JSON has no NaN: serde_json writes it as `null`; read that back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One run of the mixed-load measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagRun {
    /// Repetition number.
    pub rep: usize,
    /// Whether writers ran (else the reads-only anchor).
    pub mixed: bool,
    /// Position in the repetition's order.
    pub order: usize,
    /// Run length, s.
    pub seconds: f64,
    /// Reads answered 200.
    pub reads: u64,
    /// Reads that failed or answered otherwise.
    pub read_errors: u64,
    /// Read latency p50 and p99, µs.
    #[serde(deserialize_with = "nan_if_null")]
    pub read_p50_us: f64,
    /// See `read_p50_us`.
    #[serde(deserialize_with = "nan_if_null")]
    pub read_p99_us: f64,
    /// Comments written.
    pub comments: u64,
    /// Product renames written.
    pub renames: u64,
    /// Write latency (acknowledgement) p50 and p99, µs.
    #[serde(deserialize_with = "nan_if_null")]
    pub write_p50_us: f64,
    /// See `write_p50_us`.
    #[serde(deserialize_with = "nan_if_null")]
    pub write_p99_us: f64,
    /// The lag histogram's delta over the run (and the settling after it).
    pub lag_buckets: Vec<Bucket>,
    /// `prefold_view_published_total` over the run.
    pub published: u64,
    /// `prefold_store_puts_total` over the run: the flusher's work.
    #[serde(default)]
    pub store_puts: u64,
    /// `prefold_wal_fsyncs_total` over the run.
    #[serde(default)]
    pub wal_fsyncs: u64,
    /// Client-observed lag samples.
    pub observed: Vec<Observed>,
    /// The origin's CPU time over the run (user + system), s.
    pub origin_cpu_s: Option<f64>,
    /// This benchmark process's CPU time over the run, s.
    pub client_cpu_s: Option<f64>,
}

impl LagRun {
    fn read_rps(&self) -> f64 {
        self.reads as f64 / self.seconds
    }

    fn write_rps(&self) -> f64 {
        (self.comments + self.renames) as f64 / self.seconds
    }

    /// Interpolated quantile of the origin's lag histogram, s.
    fn lag_quantile(&self, q: f64) -> Option<f64> {
        hist_quantile(&self.lag_buckets, q)
    }

    fn observed_ms(&self, kind: Option<&str>) -> Vec<f64> {
        self.observed
            .iter()
            .filter(|o| kind.is_none_or(|k| o.kind == k))
            .filter_map(|o| o.ms)
            .collect()
    }
}

/// Everything the views part produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct ViewsReport {
    mode: String,
    fanout_reps: usize,
    fanout_poll_ms: u64,
    configs: Vec<(String, String)>,
    /// The fan-out origins.
    pub fanout_setups: Vec<FanoutSetup>,
    /// The fan-out runs.
    pub fanout: Vec<FanoutRow>,
    amp_scale: usize,
    amp_load: Option<LoadRow>,
    /// The write-amplification rows.
    pub amp: Vec<AmpRow>,
    lag_scale: usize,
    lag_load: Option<LoadRow>,
    lag_read_keys: Vec<(String, usize)>,
    /// Extra origin flags of the mixed-load run (diagnostics; normally none).
    #[serde(default)]
    lag_origin_args: String,
    /// The mixed-load runs.
    pub lag: Vec<LagRun>,
    /// Wall-clock time of the whole views part, s.
    pub elapsed_s: f64,
    machine: Vec<(String, String)>,
}

/// Runs every view benchmark under `work`.
pub async fn run(full: bool, work: &Path) -> Result<ViewsReport> {
    let plan = Plan::new(full);
    let started = Instant::now();
    let work = work.join("views");
    std::fs::create_dir_all(&work)?;
    let keep = ["date (UTC)", "commit", "cpu", "kernel", "rustc"];
    let mut report = ViewsReport {
        mode: plan.name.to_owned(),
        fanout_reps: plan.fanout_reps,
        fanout_poll_ms: FANOUT_POLL.as_millis() as u64,
        configs: CONFIGS
            .iter()
            .map(|(name, flags)| {
                let flags = if flags.is_empty() {
                    "(defaults: --flush-interval-ms 100, --max-backlog-keys 100000)".to_owned()
                } else {
                    flags.join(" ")
                };
                ((*name).to_owned(), flags)
            })
            .collect(),
        fanout_setups: Vec::new(),
        fanout: Vec::new(),
        amp_scale: plan.amp_scale,
        amp_load: None,
        amp: Vec::new(),
        lag_scale: plan.lag_scale,
        lag_load: None,
        lag_read_keys: Vec::new(),
        lag_origin_args: std::env::var("PREFOLD_BENCH_VIEWS_LAG_ARGS").unwrap_or_default(),
        lag: Vec::new(),
        elapsed_s: 0.0,
        machine: machine()
            .into_iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .collect(),
    };
    // Diagnostics: `PREFOLD_BENCH_VIEWS=fanout,amp,lag` runs only some
    // sections (the report shows what ran).
    let only = std::env::var("PREFOLD_BENCH_VIEWS").unwrap_or_default();
    let runs = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    for (config, flags) in CONFIGS {
        if !runs("fanout") {
            break;
        }
        for &n in &plan.fanout_ns {
            let dir = work.join(format!("fanout-{config}-{n}"));
            let (setup, rows) = fanout(&plan, &dir, config, flags, n).await?;
            report.fanout_setups.push(setup);
            report.fanout.extend(rows);
            // The fixture's files are not needed again.
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    if runs("amp") {
        let (load, amp) = amplification(&plan, &work.join("amplification")).await?;
        report.amp_load = Some(load);
        report.amp = amp;
    }
    if runs("lag") {
        let (load, keys, lag) = mixed_load(&plan, &work.join("lag")).await?;
        report.lag_load = Some(load);
        report.lag_read_keys = keys;
        report.lag = lag;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

// ── fan-out ─────────────────────────────────────────────────────────────────

/// What the anchor needs to write the pages itself: the fixture's
/// customers and orders.
struct Fixture {
    product: Value,
    customers: HashMap<String, Value>,
    /// `(order id, customer id, date)`.
    orders: Vec<(String, String, String)>,
}

impl Fixture {
    fn new(n: usize) -> Result<Fixture> {
        let mut product = Value::Null;
        let mut customers = HashMap::new();
        let mut orders = Vec::with_capacity(n);
        for (key, v) in gen::one_product_orders(n).into_iter().flatten() {
            let (kind, id) = key.split_once('/').context("fixture key")?;
            match kind {
                "product" => product = v,
                "customer" => {
                    customers.insert(id.to_owned(), v);
                }
                "order" => orders.push((
                    id.to_owned(),
                    v["customer"].as_str().unwrap_or_default().to_owned(),
                    v["date"].as_str().unwrap_or_default().to_owned(),
                )),
                _ => bail!("unexpected fixture key {key}"),
            }
        }
        Ok(Fixture {
            product,
            customers,
            orders,
        })
    }

    /// The `order_page` of order `i` (0-based) with the product named `name`.
    fn page(&self, i: usize, name: &str) -> Value {
        let (id, customer, date) = &self.orders[i];
        let c = self.customers.get(customer).cloned().unwrap_or(Value::Null);
        json!({
            "id": id,
            "date": date,
            "customer": { "id": customer, "name": c["name"], "country": c["country"] },
            "product": { "id": "p0", "code": self.product["code"], "name": name },
        })
    }
}

fn ms_pair(p: (Option<f64>, Option<f64>)) -> (Option<f64>, Option<f64>) {
    (p.0.map(|s| s * 1e3), p.1.map(|s| s * 1e3))
}

/// Which pages a run reads back: the first, the last and a spread between.
fn sample_indices(n: usize, rep: usize) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(rep as u64 + 7);
    let mut v: Vec<usize> = vec![0, n - 1];
    v.extend((0..VERIFY_SAMPLE.saturating_sub(2)).map(|_| rng.usize(..n)));
    v
}

/// Reads back a sample of pages under `prefix` and checks the product name.
async fn verify(
    http: &Http,
    fixture: &Fixture,
    prefix: &str,
    name: &str,
    rep: usize,
) -> Result<usize> {
    let idx = sample_indices(fixture.orders.len(), rep);
    let checked = stream::iter(idx)
        .map(|i| async move {
            let key = format!("{prefix}/{}", fixture.orders[i].0);
            let got = http
                .get(&key)
                .await?
                .with_context(|| format!("{key} is missing"))?;
            let want = fixture.page(i, name);
            ensure!(
                got == want,
                "{key} is stale or wrong after the run:\n got  {got}\n want {want}"
            );
            Ok(())
        })
        .buffer_unordered(16)
        .try_fold(0usize, |n, ()| async move { Ok(n + 1) })
        .await?;
    Ok(checked)
}

/// One origin: load `one_product_orders(n)`, then alternate renames of `p0`
/// with the anchor's re-`PUT`s.
async fn fanout(
    plan: &Plan,
    dir: &Path,
    config: &str,
    flags: &[&str],
    n: usize,
) -> Result<(FanoutSetup, Vec<FanoutRow>)> {
    eprintln!("views: fan-out, {config} configuration, loading {n} orders of one product");
    let (origin, http) = start_origin(dir, flags).await?;
    let cpu = Cpu::new(dir);
    let loaded = load(&origin, &http, gen::one_product_orders(n)).await?;
    let fixture = Fixture::new(n)?;
    let initial = fixture.product["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The anchor writes what the view engine publishes, byte for byte in
    // meaning: check the shape on the first pages (every customer).
    for i in 0..n.min(5) {
        let key = format!("order_page/{}", fixture.orders[i].0);
        let got = http.get(&key).await?.context("no order_page after load")?;
        ensure!(
            got == fixture.page(i, &initial),
            "the anchor's page differs from {key}: {got}"
        );
    }
    let deferred = config != GOAL_CONFIG;
    let mut rows = Vec::new();
    for rep in 0..plan.fanout_reps {
        for k in 0..2 {
            let target = [VIEWS, ANCHOR][(k + rep) % 2];
            let drain_before_ms = if deferred {
                None
            } else {
                Some(
                    http.drained(Duration::from_secs(300))
                        .await
                        .with_context(|| origin.log_tail())?
                        .as_millis() as u64,
                )
            };
            let before = http.settled(AMP_POLL, Duration::from_secs(300)).await?;
            let name = format!("Fan-out Widget {config} {target} rep {rep}");
            eprintln!(
                "views: fan-out {n}, {config}, {target}, repetition {} of {}",
                rep + 1,
                plan.fanout_reps
            );
            let mut row = FanoutRow {
                config: config.to_owned(),
                n,
                target: target.to_owned(),
                rep,
                order: k,
                ms: 0.0,
                ms_lower: None,
                origin_cpu_ms: None,
                client_cpu_ms: None,
                ack_ms: None,
                scrapes: 0,
                published: 0,
                derivations: 0,
                publish_failures: 0,
                store_puts: 0,
                backlog_before: metric(&before, BACKLOG_KEYS) as u64,
                drain_before_ms,
                retries: 0,
                verified: 0,
            };
            let cpu0 = cpu.now();
            let after = if target == VIEWS {
                let body = Bytes::from(serde_json::to_vec(&json!({ "name": name }))?);
                let t0 = Instant::now();
                http.write(Method::PATCH, "product/p0", body, false).await?;
                row.ack_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                let want = metric(&before, PUBLISHED) + n as f64;
                let mut tick = tokio::time::interval(FANOUT_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let after = loop {
                    tick.tick().await;
                    let sent = t0.elapsed().as_secs_f64() * 1e3;
                    let m = http.metrics().await?;
                    row.scrapes += 1;
                    if metric(&m, PENDING) == 0.0 && metric(&m, PUBLISHED) >= want {
                        row.ms = t0.elapsed().as_secs_f64() * 1e3;
                        (row.origin_cpu_ms, row.client_cpu_ms) = ms_pair(cpu.since(cpu0));
                        break m;
                    }
                    row.ms_lower = Some(sent);
                    if t0.elapsed() > Duration::from_secs(300) {
                        bail!(
                            "fan-out of {n} not published after 300 s: pending {}, published {} of {n}\n{}",
                            metric(&m, PENDING),
                            metric(&m, PUBLISHED) - metric(&before, PUBLISHED),
                            origin.log_tail()
                        );
                    }
                };
                row.verified = verify(&http, &fixture, "order_page", &name, rep).await?;
                after
            } else {
                let writes: Vec<(String, Bytes)> = (0..n)
                    .map(|i| {
                        let body = serde_json::to_vec(&fixture.page(i, &name))?;
                        Ok((
                            format!("page_anchor/{}", fixture.orders[i].0),
                            Bytes::from(body),
                        ))
                    })
                    .collect::<Result<_>>()?;
                let h = &http;
                let t0 = Instant::now();
                row.retries = stream::iter(writes)
                    .map(|(key, body)| async move { h.write(Method::PUT, &key, body, true).await })
                    .buffer_unordered(CONCURRENCY)
                    .try_fold(0u64, |acc, r| async move { Ok(acc + r) })
                    .await
                    .with_context(|| origin.log_tail())?;
                row.ms = t0.elapsed().as_secs_f64() * 1e3;
                let after = http.metrics().await?;
                (row.origin_cpu_ms, row.client_cpu_ms) = ms_pair(cpu.since(cpu0));
                row.verified = verify(&http, &fixture, "page_anchor", &name, rep).await?;
                after
            };
            row.published = delta(&before, &after, PUBLISHED);
            row.derivations = delta(&before, &after, DERIVATIONS);
            row.publish_failures = delta(&before, &after, PUBLISH_FAILURES);
            row.store_puts = delta(&before, &after, STORE_PUTS);
            eprintln!(
                "views:   {:.0} ms ({} published, {} store PUTs meanwhile, {} publish failures)",
                row.ms, row.published, row.store_puts, row.publish_failures
            );
            rows.push(row);
        }
    }
    // SIGKILL: the benchmark does not need the backlog stored.
    drop(origin);
    Ok((
        FanoutSetup {
            config: config.to_owned(),
            n,
            load: loaded,
        },
        rows,
    ))
}

// ── write amplification ─────────────────────────────────────────────────────

/// The demo data set, by entity type, for choosing what to write.
struct Demo {
    by_type: HashMap<String, Vec<Object>>,
}

impl Demo {
    fn new(scale: usize) -> Demo {
        let mut by_type: HashMap<String, Vec<Object>> = HashMap::new();
        for (key, v) in gen::demo(&Scale::new(scale), SEED).into_iter().flatten() {
            let kind = key.split('/').next().unwrap_or_default().to_owned();
            by_type.entry(kind).or_default().push((key, v));
        }
        Demo { by_type }
    }

    fn all(&self, kind: &str) -> &[Object] {
        self.by_type.get(kind).map_or(&[], Vec::as_slice)
    }

    /// The `k`-th pick of an entity type, spread over the ids.
    fn pick(&self, kind: &str, k: usize) -> Result<&Object> {
        let all = self.all(kind);
        ensure!(!all.is_empty(), "no {kind} in the demo data");
        Ok(&all[(k * 7919 + 1) % all.len()])
    }

    fn id(&self, kind: &str, k: usize) -> Result<String> {
        let (key, _) = self.pick(kind, k)?;
        Ok(key.split_once('/').map_or("", |(_, id)| id).to_owned())
    }

    /// Unordered friendship pairs.
    fn pairs(&self) -> BTreeSet<(String, String)> {
        self.all("friendship")
            .iter()
            .filter_map(|(_, v)| {
                let (a, b) = (v["user"].as_str()?, v["friend"].as_str()?);
                Some(if a < b {
                    (a.to_owned(), b.to_owned())
                } else {
                    (b.to_owned(), a.to_owned())
                })
            })
            .collect()
    }

    /// A pair of users `(a, b)` not yet friends, the `k`-th such.
    fn new_pair(&self, taken: &BTreeSet<(String, String)>, k: usize) -> Result<(String, String)> {
        let users = self.all("user").len();
        let mut found = 0;
        for a in 2..=users {
            for b in (a + 1..=users).rev() {
                let (ua, ub) = (format!("u{a}"), format!("u{b}"));
                let pair = if ua < ub {
                    (ua.clone(), ub.clone())
                } else {
                    (ub.clone(), ua.clone())
                };
                if taken.contains(&pair) {
                    continue;
                }
                if found == k {
                    return Ok((ua, ub));
                }
                found += 1;
                break;
            }
        }
        bail!("no free friendship pair")
    }
}

/// The model's entity types, in the order of the model file.
const ENTITIES: [&str; 9] = [
    "customer",
    "product",
    "order",
    "venue",
    "user",
    "event",
    "comment",
    "tag",
    "friendship",
];

/// What an update or a creation of an entity type changes, for the table.
fn describe(entity: &str, op: &str) -> &'static str {
    match (entity, op) {
        ("customer", "update") => "`name` (embedded in its orders' `order_page`)",
        ("customer", _) => "a new customer (no orders yet)",
        ("product", "update") => "`name` (embedded in its orders' `order_page`)",
        ("product", _) => "a new product (no orders yet)",
        ("order", "update") => "`date` (own `order_page`; `product_orders` count unchanged)",
        ("order", _) => "a new order of an existing customer and product",
        ("venue", "update") => "`name` (embedded in its events' `event_page`)",
        ("venue", _) => "a new venue (no events yet)",
        ("user", "update") => "`name` (no view shows it)",
        ("user", _) => "a new user",
        ("event", "update") => {
            "`title` (`event_page`, `events_by_category`, `event_search` words out and in)"
        }
        ("event", _) => "a new event in `music` at an existing venue",
        ("comment", "update") => "`text` (`event_comments`; `event_ratings` unchanged)",
        ("comment", _) => "a new rated comment on an existing event",
        ("tag", "update") => "`tag` to a new tag (`event_tags`, `tagged` old and new)",
        ("tag", _) => "a new tag on an existing event",
        ("friendship", "update") => "`friend` to another user (`friends` of three users)",
        ("friendship", _) => "a new pair of existing users",
        _ => "",
    }
}

/// The `k`-th write of an entity type: method, key and body.
fn amp_write(
    demo: &Demo,
    pairs: &BTreeSet<(String, String)>,
    entity: &str,
    op: &str,
    k: usize,
) -> Result<(Method, String, Value)> {
    let update = op == "update";
    let (key, body) = match (entity, update) {
        ("customer", true) => (
            format!("customer/{}", demo.id("customer", k)?),
            json!({ "name": format!("Renamed Customer {k}") }),
        ),
        ("customer", false) => (
            format!("customer/cb{k}"),
            json!({ "name": format!("Bench Customer {k}"), "country": "DE" }),
        ),
        ("product", true) => (
            format!("product/{}", demo.id("product", k)?),
            json!({ "name": format!("Renamed Product {k}") }),
        ),
        ("product", false) => (
            format!("product/pb{k}"),
            json!({ "code": format!("SKU-B{k:05}"), "name": format!("Bench Product {k}") }),
        ),
        ("order", true) => (
            format!("order/{}", demo.id("order", k)?),
            // Orders are dated 2026: a 2025 date is always a change.
            json!({ "date": format!("2025-12-{:02}", 1 + k % 28) }),
        ),
        ("order", false) => (
            format!("order/ob{k}"),
            json!({
                "customer": demo.id("customer", k)?,
                "product": demo.id("product", k)?,
                "date": "2026-05-01",
            }),
        ),
        ("venue", true) => (
            format!("venue/{}", demo.id("venue", k)?),
            json!({ "name": format!("Renamed Venue {k}") }),
        ),
        ("venue", false) => (
            format!("venue/vb{k}"),
            json!({ "name": format!("Bench Venue {k}"), "city": "Oslo" }),
        ),
        ("user", true) => (
            format!("user/{}", demo.id("user", k)?),
            json!({ "name": format!("Renamed User {k}") }),
        ),
        ("user", false) => (
            format!("user/ub{k}"),
            json!({ "name": format!("Bench User {k}"), "country": "SE", "comment_seq": 0 }),
        ),
        ("event", true) => (
            format!("event/{}", demo.id("event", k)?),
            json!({ "title": format!("Renamed Gathering {k}") }),
        ),
        ("event", false) => (
            format!("event/eb{k}"),
            json!({
                "title": format!("Bench Jazz Night {k}"),
                "description": "A bench jazz night for everyone. Live music, drinks.",
                "category": "music",
                "date": "2027-01-15",
                "venue": demo.id("venue", k)?,
            }),
        ),
        ("comment", true) => (
            demo.pick("comment", k)?.0.clone(),
            json!({ "text": format!("Edited comment {k}") }),
        ),
        ("comment", false) => {
            let event = demo.id("event", k)?;
            let author = demo.id("user", k)?;
            let seq = 1_000_000 + k;
            (
                format!("comment/{event}/{author}.{seq}"),
                json!({
                    "event": event,
                    "author": author,
                    "ts": 1_900_000_000_000u64 + k as u64,
                    "seq": seq,
                    "text": format!("Bench comment {k}"),
                    "rating": 4,
                }),
            )
        }
        ("tag", true) => (
            demo.pick("tag", k)?.0.clone(),
            json!({ "tag": format!("benchtag{k}") }),
        ),
        ("tag", false) => {
            let event = demo.id("event", k)?;
            (
                format!("tag/{event}/bench{k}"),
                json!({ "event": event, "tag": format!("bench{k}") }),
            )
        }
        ("friendship", true) => {
            let (key, v) = demo.pick("friendship", k)?;
            let user = v["user"].as_str().unwrap_or_default();
            // A user who is not yet this user's friend.
            let friend = (0..1000)
                .map(|j| demo.id("user", k + 13 * j + 5))
                .find(|u| {
                    u.as_ref().is_ok_and(|u| {
                        let pair = if user < u.as_str() {
                            (user.to_owned(), u.clone())
                        } else {
                            (u.clone(), user.to_owned())
                        };
                        u != user && !pairs.contains(&pair)
                    })
                })
                .context("no new friend")??;
            (key.clone(), json!({ "friend": friend }))
        }
        ("friendship", false) => {
            let (a, b) = demo.new_pair(pairs, k)?;
            (
                format!("friendship/{a}/{b}"),
                json!({ "user": a, "friend": b }),
            )
        }
        _ => bail!("unknown entity {entity}"),
    };
    let method = if update { Method::PATCH } else { Method::PUT };
    Ok((method, key, body))
}

/// Writes of every entity type, one at a time, each followed by waiting
/// for the view engine to be idle.
async fn amplification(plan: &Plan, dir: &Path) -> Result<(LoadRow, Vec<AmpRow>)> {
    eprintln!(
        "views: write amplification, loading the demo data at scale {}",
        plan.amp_scale
    );
    let (origin, http) = start_origin(dir, &[]).await?;
    let loaded = load(&origin, &http, gen::demo(&Scale::new(plan.amp_scale), SEED)).await?;
    let demo = Demo::new(plan.amp_scale);
    // Updates keep choosing from the loaded friendships; every pair written
    // is remembered so that no write repeats one.
    let mut pairs = demo.pairs();
    let mut rows = Vec::new();
    for entity in ENTITIES {
        for op in ["update", "create"] {
            let mut row = AmpRow {
                entity: entity.to_owned(),
                op: op.to_owned(),
                what: describe(entity, op).to_owned(),
                published: Vec::new(),
                derivations: Vec::new(),
                changes: Vec::new(),
            };
            for k in 0..plan.amp_writes {
                let (method, key, body) = amp_write(&demo, &pairs, entity, op, k)?;
                if entity == "friendship" {
                    let user = body["user"]
                        .as_str()
                        .or_else(|| key.split('/').nth(1))
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(friend) = body["friend"].as_str() {
                        let pair = if user.as_str() < friend {
                            (user.clone(), friend.to_owned())
                        } else {
                            (friend.to_owned(), user.clone())
                        };
                        pairs.insert(pair);
                    }
                }
                let before = http.settled(AMP_POLL, Duration::from_secs(60)).await?;
                http.write(method, &key, Bytes::from(serde_json::to_vec(&body)?), false)
                    .await
                    .with_context(|| origin.log_tail())?;
                let after = http.settled(AMP_POLL, Duration::from_secs(60)).await?;
                row.published.push(delta(&before, &after, PUBLISHED));
                row.derivations.push(delta(&before, &after, DERIVATIONS));
                row.changes.push(delta(&before, &after, CHANGES));
            }
            rows.push(row);
        }
    }
    drop(origin);
    Ok((loaded, rows))
}

// ── derivation lag under mixed load ─────────────────────────────────────────

/// The view objects the readers choose from, by view: every target the
/// demo data gives each view that publishes an object.
fn read_candidates(demo: &Demo) -> Vec<String> {
    let mut keys = BTreeSet::new();
    let id = |k: &str| k.split_once('/').map_or("", |(_, id)| id).to_owned();
    for (k, v) in demo.all("order") {
        keys.insert(format!("order_page/{}", id(k)));
        if let Some(p) = v["product"].as_str() {
            keys.insert(format!("product_orders/{p}"));
        }
    }
    for (k, v) in demo.all("event") {
        keys.insert(format!("event_page/{}", id(k)));
        keys.insert(format!("event_tags/{}", id(k)));
        if let Some(c) = v["category"].as_str() {
            keys.insert(format!("events_by_category/{c}"));
        }
    }
    for (_, v) in demo.all("comment") {
        if let Some(e) = v["event"].as_str() {
            keys.insert(format!("event_comments/{e}"));
            keys.insert(format!("event_ratings/{e}"));
        }
    }
    for (_, v) in demo.all("tag") {
        if let Some(t) = v["tag"].as_str() {
            keys.insert(format!("tagged/{t}"));
        }
    }
    for (_, v) in demo.all("friendship") {
        for f in ["user", "friend"] {
            if let Some(u) = v[f].as_str() {
                keys.insert(format!("friends/{u}"));
            }
        }
    }
    keys.into_iter().collect()
}

/// What one reader did.
struct ReadStats {
    reads: u64,
    errors: u64,
    latencies_us: Vec<f64>,
}

async fn reader(http: Http, keys: Arc<Vec<String>>, seed: u64, until: Instant) -> ReadStats {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut s = ReadStats {
        reads: 0,
        errors: 0,
        latencies_us: Vec::new(),
    };
    while Instant::now() < until {
        let key = &keys[rng.usize(..keys.len())];
        let t = Instant::now();
        let ok = match http.client.get(http.url(key)).send().await {
            Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            s.reads += 1;
            s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            s.errors += 1;
        }
    }
    s
}

/// What the writers share.
struct Writers {
    http: Http,
    /// Events to comment on.
    events: Vec<String>,
    /// Users to comment as.
    users: Vec<String>,
    /// Per writer: `(product, one of its orders)`, disjoint between writers
    /// so that no two writers rename one product.
    products: Vec<Vec<(String, String)>>,
    /// Writes so far, for unique comment ids and the observation sample.
    count: AtomicU64,
}

/// What one writer did.
struct WriteStats {
    comments: u64,
    renames: u64,
    latencies_us: Vec<f64>,
    observers: Vec<tokio::task::JoinHandle<Observed>>,
}

/// Comment timestamps: after every generated one, so a new comment heads
/// its event's first page.
const COMMENT_TS: u64 = 1_900_000_000_000;

/// Re-reads `key` every [`OBSERVE_POLL`] until `seen` accepts it; the time
/// from `acked` on.
async fn observe(
    http: Http,
    kind: &'static str,
    key: String,
    acked: Instant,
    seen: impl Fn(&Value) -> bool,
) -> Observed {
    loop {
        if let Ok(Some(v)) = http.get(&key).await {
            if seen(&v) {
                return Observed {
                    kind: kind.to_owned(),
                    ms: Some(acked.elapsed().as_secs_f64() * 1e3),
                };
            }
        }
        if acked.elapsed() > OBSERVE_TIMEOUT {
            return Observed {
                kind: kind.to_owned(),
                ms: None,
            };
        }
        tokio::time::sleep(OBSERVE_POLL).await;
    }
}

async fn writer(w: Arc<Writers>, me: usize, until: Instant) -> Result<WriteStats> {
    let mut rng = fastrand::Rng::with_seed(1000 + me as u64);
    let mut s = WriteStats {
        comments: 0,
        renames: 0,
        latencies_us: Vec::new(),
        observers: Vec::new(),
    };
    let mine = &w.products[me];
    let mut j = 0usize;
    while Instant::now() < until {
        let n = w.count.fetch_add(1, Ordering::Relaxed);
        let observed = n.is_multiple_of(OBSERVE_EVERY);
        let t = Instant::now();
        if j.is_multiple_of(2) || mine.is_empty() {
            let event = &w.events[rng.usize(..w.events.len())];
            let author = &w.users[rng.usize(..w.users.len())];
            let seq = 1_000_000 + n;
            let key = format!("comment/{event}/{author}.{seq}");
            let body = json!({
                "event": event, "author": author, "ts": COMMENT_TS + n, "seq": seq,
                "text": format!("Load comment {n}"), "rating": 1 + n % 5,
            });
            w.http
                .write(
                    Method::PUT,
                    &key,
                    Bytes::from(serde_json::to_vec(&body)?),
                    false,
                )
                .await?;
            s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
            s.comments += 1;
            if observed {
                let item = format!("{event}/{author}.{seq}");
                s.observers.push(tokio::spawn(observe(
                    w.http.clone(),
                    "comment",
                    format!("event_comments/{event}"),
                    Instant::now(),
                    move |v| {
                        v["items"]
                            .as_array()
                            .is_some_and(|items| items.iter().any(|i| i["id"] == item.as_str()))
                    },
                )));
            }
        } else {
            let (product, order) = &mine[(j / 2) % mine.len()];
            let name = format!("Load w{me} n{n:010}");
            let body = json!({ "name": name.clone() });
            w.http
                .write(
                    Method::PATCH,
                    &format!("product/{product}"),
                    Bytes::from(serde_json::to_vec(&body)?),
                    false,
                )
                .await?;
            s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
            s.renames += 1;
            if observed {
                // This writer's later renames of the product sort after
                // this one (zero-padded): seeing one means this one was
                // applied too.
                let prefix = format!("Load w{me} n");
                s.observers.push(tokio::spawn(observe(
                    w.http.clone(),
                    "rename",
                    format!("order_page/{order}"),
                    Instant::now(),
                    move |v| {
                        v["product"]["name"]
                            .as_str()
                            .is_some_and(|got| got.starts_with(&prefix) && got >= name.as_str())
                    },
                )));
            }
        }
        j += 1;
    }
    Ok(s)
}

/// The lag histogram's cumulative buckets, `le` → count.
fn lag_buckets(m: &Metrics) -> BTreeMap<String, f64> {
    m.iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(LAG_BUCKET)?.strip_suffix("\"}")?;
            Some((le.to_owned(), *v))
        })
        .collect()
}

fn le_value(le: &str) -> f64 {
    if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap_or(f64::NAN)
    }
}

fn bucket_delta(before: &Metrics, after: &Metrics) -> Vec<Bucket> {
    let b = lag_buckets(before);
    let mut out: Vec<Bucket> = lag_buckets(after)
        .into_iter()
        .map(|(le, a)| Bucket {
            count: (a - b.get(&le).copied().unwrap_or(0.0)).max(0.0) as u64,
            le,
        })
        .collect();
    out.sort_by(|x, y| le_value(&x.le).total_cmp(&le_value(&y.le)));
    out
}

/// Quantile `q` of a cumulative histogram, interpolated linearly within the
/// bucket it falls in (the first bucket starts at 0). Past the last finite
/// bound it answers that bound.
fn hist_quantile(buckets: &[Bucket], q: f64) -> Option<f64> {
    let total = buckets.last()?.count as f64;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for b in buckets {
        let hi = le_value(&b.le);
        let c = b.count as f64;
        if c >= rank {
            if hi.is_infinite() {
                return Some(lo);
            }
            let frac = if c > below {
                (rank - below) / (c - below)
            } else {
                1.0
            };
            return Some(lo + frac * (hi - lo));
        }
        lo = hi;
        below = c;
    }
    None
}

/// Readers alone, and readers with writers, alternated.
async fn mixed_load(
    plan: &Plan,
    dir: &Path,
) -> Result<(LoadRow, Vec<(String, usize)>, Vec<LagRun>)> {
    eprintln!(
        "views: derivation lag, loading the demo data at scale {}",
        plan.lag_scale
    );
    // Diagnostics: extra origin flags for this run only (e.g. a longer flush
    // interval, to see what the flusher costs the readers).
    let extra = std::env::var("PREFOLD_BENCH_VIEWS_LAG_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let (origin, http) = start_origin(dir, &extra).await?;
    let cpu = Cpu::new(dir);
    let loaded = load(&origin, &http, gen::demo(&Scale::new(plan.lag_scale), SEED)).await?;
    let demo = Demo::new(plan.lag_scale);
    // Only objects that exist: a view object of an empty target is absent.
    let h = &http;
    let keys: Vec<String> = stream::iter(read_candidates(&demo))
        .map(|k| async move {
            let ok = matches!(h.get(&k).await, Ok(Some(_)));
            ok.then_some(k)
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|k| async move { k })
        .collect()
        .await;
    ensure!(!keys.is_empty(), "no view objects to read");
    let mut per_view: BTreeMap<String, usize> = BTreeMap::new();
    for k in &keys {
        *per_view
            .entry(k.split('/').next().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let keys = Arc::new(keys);
    let id = |k: &str| k.split_once('/').map_or("", |(_, id)| id).to_owned();
    let mut first_order: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in demo.all("order") {
        if let Some(p) = v["product"].as_str() {
            first_order.entry(p.to_owned()).or_insert_with(|| id(k));
        }
    }
    let mut products = vec![Vec::new(); WRITERS];
    for (i, (p, o)) in first_order.into_iter().enumerate() {
        products[i % WRITERS].push((p, o));
    }
    let writers = Arc::new(Writers {
        http: http.clone(),
        events: demo.all("event").iter().map(|(k, _)| id(k)).collect(),
        users: demo.all("user").iter().map(|(k, _)| id(k)).collect(),
        products,
        count: AtomicU64::new(0),
    });

    let mut runs = Vec::new();
    for rep in 0..plan.lag_reps {
        for k in 0..2 {
            let mixed = (k + rep) % 2 == 1;
            eprintln!(
                "views: {} for {} s, repetition {} of {}",
                if mixed {
                    "mixed reads and writes"
                } else {
                    "reads only"
                },
                plan.lag_run.as_secs(),
                rep + 1,
                plan.lag_reps
            );
            http.drained(Duration::from_secs(120)).await?;
            let before = http.settled(AMP_POLL, Duration::from_secs(120)).await?;
            let cpu0 = cpu.now();
            let t0 = Instant::now();
            let until = t0 + plan.lag_run;
            let readers: Vec<_> = (0..READERS)
                .map(|r| {
                    tokio::spawn(reader(
                        http.clone(),
                        keys.clone(),
                        (rep * 100 + r) as u64,
                        until,
                    ))
                })
                .collect();
            let writer_tasks: Vec<_> = if mixed {
                (0..WRITERS)
                    .map(|me| tokio::spawn(writer(writers.clone(), me, until)))
                    .collect()
            } else {
                Vec::new()
            };
            let mut reads = Vec::new();
            for r in readers {
                reads.push(r.await?);
            }
            let mut writes = Vec::new();
            for w in writer_tasks {
                writes.push(w.await?.with_context(|| origin.log_tail())?);
            }
            let seconds = t0.elapsed().as_secs_f64();
            let (origin_cpu_s, client_cpu_s) = cpu.since(cpu0);
            let mut observed = Vec::new();
            for w in &mut writes {
                for o in w.observers.drain(..) {
                    observed.push(o.await?);
                }
            }
            let after = http.settled(AMP_POLL, Duration::from_secs(120)).await?;
            let read_lat: Vec<f64> = reads
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect();
            let write_lat: Vec<f64> = writes
                .iter()
                .flat_map(|w| w.latencies_us.iter().copied())
                .collect();
            let run = LagRun {
                rep,
                mixed,
                order: k,
                seconds,
                reads: reads.iter().map(|r| r.reads).sum(),
                read_errors: reads.iter().map(|r| r.errors).sum(),
                read_p50_us: percentile(&read_lat, 0.5),
                read_p99_us: percentile(&read_lat, 0.99),
                comments: writes.iter().map(|w| w.comments).sum(),
                renames: writes.iter().map(|w| w.renames).sum(),
                write_p50_us: percentile(&write_lat, 0.5),
                write_p99_us: percentile(&write_lat, 0.99),
                lag_buckets: bucket_delta(&before, &after),
                published: delta(&before, &after, PUBLISHED),
                store_puts: delta(&before, &after, STORE_PUTS),
                wal_fsyncs: delta(&before, &after, "prefold_wal_fsyncs_total"),
                observed,
                origin_cpu_s,
                client_cpu_s,
            };
            eprintln!(
                "views:   {:.0} reads/s, {:.0} writes/s, origin lag p50 {:.2} ms p99 {:.2} ms",
                run.read_rps(),
                run.write_rps(),
                run.lag_quantile(0.5).unwrap_or(f64::NAN) * 1e3,
                run.lag_quantile(0.99).unwrap_or(f64::NAN) * 1e3
            );
            runs.push(run);
        }
    }
    drop(origin);
    Ok((loaded, per_view.into_iter().collect(), runs))
}

// ── the report ──────────────────────────────────────────────────────────────

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn ratio(x: f64) -> String {
    if !x.is_finite() {
        "–".to_owned()
    } else if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 1.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

/// Milliseconds, with the precision they deserve.
fn ms(x: f64) -> String {
    if !x.is_finite() {
        "–".to_owned()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `lo – hi` of some values, formatted by `f`.
fn span(v: &[f64], f: fn(f64) -> String) -> String {
    if v.is_empty() {
        return String::new();
    }
    let (lo, hi) = lo_hi(v);
    format!("{} – {}", f(lo), f(hi))
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<u64>() as f64 / v.len() as f64
}

fn count_span(v: &[u64]) -> String {
    let lo = v.iter().min().copied().unwrap_or(0);
    let hi = v.iter().max().copied().unwrap_or(0);
    if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo} – {hi}")
    }
}

impl ViewsReport {
    fn rows<'a>(
        &'a self,
        config: &'a str,
        n: usize,
        target: &'a str,
    ) -> impl Iterator<Item = &'a FanoutRow> {
        self.fanout
            .iter()
            .filter(move |r| r.config == config && r.n == n && r.target == target)
    }

    fn times(&self, config: &str, n: usize, target: &str) -> Vec<f64> {
        self.rows(config, n, target).map(|r| r.ms).collect()
    }

    /// Per repetition: anchor time ÷ view engine time.
    fn speedups(&self, config: &str, n: usize) -> Vec<f64> {
        (0..self.fanout_reps)
            .filter_map(|rep| {
                let at = |t: &str| self.rows(config, n, t).find(|r| r.rep == rep).map(|r| r.ms);
                Some(at(ANCHOR)? / at(VIEWS)?)
            })
            .collect()
    }

    fn ns(&self) -> Vec<usize> {
        let mut ns: Vec<usize> = self.fanout.iter().map(|r| r.n).collect();
        ns.sort_unstable();
        ns.dedup();
        ns
    }

    fn lag_runs(&self, mixed: bool) -> impl Iterator<Item = &LagRun> {
        self.lag.iter().filter(move |r| r.mixed == mixed)
    }

    /// Per repetition: mixed read throughput ÷ reads-only throughput.
    fn read_ratios(&self) -> Vec<f64> {
        let reps = self.lag.iter().map(|r| r.rep + 1).max().unwrap_or(0);
        (0..reps)
            .filter_map(|rep| {
                let at = |mixed: bool| {
                    self.lag
                        .iter()
                        .find(|r| r.rep == rep && r.mixed == mixed)
                        .map(LagRun::read_rps)
                };
                Some(at(true)? / at(false)?)
            })
            .collect()
    }

    /// Reads a report written by [`ViewsReport::write`].
    pub fn load(dir: &Path) -> Result<ViewsReport> {
        load_json(dir, "views")
    }

    /// Writes `views.md` and `views.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        save(dir, "views", self, &self.markdown())
    }

    fn goals(&self) -> Vec<String> {
        let mut out = vec![
            "## Goals".to_owned(),
            String::new(),
            "| goal | configuration | measured | met |".to_owned(),
            "|---|---|---|---|".to_owned(),
        ];
        for (config, _) in &self.configs {
            let t = self.times(config, GOAL_N, VIEWS);
            if t.is_empty() {
                continue;
            }
            let m = median(t.clone()) / 1e3;
            let judged = if config == GOAL_CONFIG {
                yes(m <= GOAL_SECONDS).to_owned()
            } else {
                format!("{} (context; the goal is judged on `{GOAL_CONFIG}`)", {
                    if m <= GOAL_SECONDS {
                        "would be"
                    } else {
                        "would not be"
                    }
                })
            };
            let lower = median(
                self.rows(config, GOAL_N, VIEWS)
                    .filter_map(|r| r.ms_lower)
                    .collect(),
            ) / 1e3;
            let sp = self.speedups(config, GOAL_N);
            out.push(format!(
                "| {GOAL_N} `order_page` views regenerated within {GOAL_SECONDS:.0} s on one origin | `{config}` | {:.2} s (runs {}; end known to ≥ {:.2} s); {} faster than the client re-PUTting them | {judged} |",
                m,
                span(&t.iter().map(|x| x / 1e3).collect::<Vec<_>>(), |x| format!("{x:.2}")),
                lower,
                ratio(median(sp))
            ));
        }
        if !self.fanout.iter().any(|r| r.n == GOAL_N) {
            out.push(format!(
                "| {GOAL_N} `order_page` views regenerated within {GOAL_SECONDS:.0} s | – | not measured in this mode | – |"
            ));
        }
        out.push(String::new());
        out
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let mut line = |s: &str| {
            md.push_str(s);
            md.push('\n');
        };
        line("# prefold view engine benchmark results");
        line("");
        line(&format!(
            "Mode `{}`: one release origin per measurement, `--model scripts/demo/model.toml`, \
             filesystem store in a temporary directory, loopback only; the benchmark's client \
             runs on the same two cores. Figures are medians over the repetitions, with the \
             per-run range; compare ratios, not absolute times (the machine is shared). The \
             views part took {:.0} s. Regenerate with `make bench` (quick) or `make bench-full`; \
             this part alone with `target/release/prefold-bench --only views [--full]`.",
            self.mode, self.elapsed_s
        ));
        line("");
        for l in machine_table(&self.machine) {
            line(&l);
        }
        for l in self.goals() {
            line(&l);
        }
        if !self.fanout.is_empty() {
            line("## Fan-out: renaming a product with n orders");
            line("");
            line(&format!(
                "The origin is loaded with `one_product_orders(n)` (product `p0`, five \
                 customers, n orders of `p0`; 64 connections) and left until \
                 `prefold_view_pending` is 0. **View engine**: one `PATCH /o/product/p0` \
                 (merge patch of `name`), timed from sending it until a `/metrics` scrape shows \
                 `prefold_view_pending` 0 *and* `prefold_view_published_total` grown by at \
                 least n; `/metrics` is scraped every {} ms on one keep-alive connection (a \
                 scrape under the burst takes longer: the effective period is in the second \
                 table). The time is that of the first scrape that saw the end, an upper \
                 bound; the lower bound is the send time of the last scrape that did not. Then {} \
                 pages (the first, the last, the rest at random) are read back and must show the \
                 new name. **Anchor** (client re-PUT): what an application without the view \
                 engine does — the client `PUT`s the same n page bodies (the same JSON as \
                 `order_page`, checked on the first pages) to keys outside the model \
                 (`page_anchor/o{{i}}`), 64 concurrent keep-alive connections (reqwest), each \
                 acknowledged from memory (`x-prefold-durability: memory`, as derived objects \
                 are: the anchor's most favourable case), timed from the first request to the \
                 last answer, then the same read-back. The two alternate (A B, B A, …), {} \
                 repetitions each. \"anchor ÷ engine\" above 1 means the view engine is faster. \
                 In the `default` configuration the benchmark waits for an empty write-behind \
                 backlog before every run; in `deferred` the backlog is only written every 60 s, \
                 so a flush may fall inside a run: the store PUTs column shows the flusher's \
                 work that overlapped each run. In both, derived objects wait \
                 `--view-flush-delay-ms` (default 5 s) before their first store PUT and stay \
                 outside the backlog bounds, so the engine's pages are not flushed during its \
                 runs; the anchor's pages are ordinary writes, flushed every interval.",
                self.fanout_poll_ms, VERIFY_SAMPLE, self.fanout_reps
            ));
            line("");
            line("| configuration | flags |");
            line("|---|---|");
            for (c, f) in &self.configs {
                line(&format!("| `{c}` | `{f}` |"));
            }
            line("");
            for (config, _) in &self.configs {
                if !self.fanout.iter().any(|r| &r.config == config) {
                    continue;
                }
                line(&format!("### `{config}`"));
                line("");
                line("| n | view engine ms | (runs) | engine lower bound ms | anchor ms | (runs) | **anchor ÷ engine** | (per run) | engine pages/s | anchor pages/s |");
                line("|---|---|---|---|---|---|---|---|---|---|");
                for n in self.ns() {
                    let v = self.times(config, n, VIEWS);
                    if v.is_empty() {
                        continue;
                    }
                    let a = self.times(config, n, ANCHOR);
                    let (vm, am) = (median(v.clone()), median(a.clone()));
                    let sp = self.speedups(config, n);
                    let lower = median(
                        self.rows(config, n, VIEWS)
                            .filter_map(|r| r.ms_lower)
                            .collect(),
                    );
                    line(&format!(
                        "| {n} | **{}** | {} | {} | {} | {} | **{}** | {} | {:.0} | {:.0} |",
                        ms(vm),
                        span(&v, ms),
                        ms(lower),
                        ms(am),
                        span(&a, ms),
                        ratio(median(sp.clone())),
                        span(&sp, ratio),
                        n as f64 / (vm / 1e3),
                        n as f64 / (am / 1e3),
                    ));
                }
                line("");
            }
            line("### What each run cost (medians)");
            line("");
            line(&format!(
                "Origin CPU is the origin process's user + system time over the run \
                 (`/proc/PID/stat`), bench CPU this benchmark process's (the anchor's client, \
                 or the `/metrics` polling); two cores give at most 2 s of CPU per second. \
                 Scrape period is the view engine run's time divided by its scrapes: the \
                 resolution of its end, longer than the {} ms asked for when the origin is busy. \
                 The fixture load is `gen::load` of the {} + n objects until the view engine was \
                 idle.",
                self.fanout_poll_ms, 6
            ));
            line("");
            line("| configuration | n | target | origin CPU ms | bench CPU ms | origin CPU µs per page | derived objects published | derivation messages | store PUTs during the run | backlog keys before | PATCH ack ms | scrape period ms | publish failures / 503 retries | fixture load s (objects/s) |");
            line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for (config, _) in &self.configs {
                for n in self.ns() {
                    for target in [VIEWS, ANCHOR] {
                        let rows: Vec<&FanoutRow> = self.rows(config, n, target).collect();
                        if rows.is_empty() {
                            continue;
                        }
                        let med = |f: &dyn Fn(&FanoutRow) -> Option<f64>| {
                            median(rows.iter().filter_map(|r| f(r)).collect())
                        };
                        let origin_cpu = med(&|r| r.origin_cpu_ms);
                        let (failures, what) = if target == VIEWS {
                            (
                                rows.iter().map(|r| r.publish_failures).sum::<u64>(),
                                "failures",
                            )
                        } else {
                            (rows.iter().map(|r| r.retries).sum::<u64>(), "retries")
                        };
                        let load = self
                            .fanout_setups
                            .iter()
                            .find(|s| &s.config == config && s.n == n)
                            .filter(|_| target == VIEWS)
                            .map_or(String::new(), |s| {
                                format!(
                                    "{:.1} ({:.0})",
                                    s.load.settled_ms as f64 / 1e3,
                                    s.load.objects as f64 / (s.load.settled_ms as f64 / 1e3)
                                )
                            });
                        let opt = |x: f64, f: fn(f64) -> String| {
                            if x.is_finite() {
                                f(x)
                            } else {
                                "–".to_owned()
                            }
                        };
                        line(&format!(
                            "| `{config}` | {n} | {target} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {failures} {what} | {load} |",
                            opt(origin_cpu, |x| format!("{x:.0}")),
                            opt(med(&|r| r.client_cpu_ms), |x| format!("{x:.0}")),
                            opt(origin_cpu * 1e3 / n as f64, |x| format!("{x:.1}")),
                            med(&|r| Some(r.published as f64)),
                            med(&|r| Some(r.derivations as f64)),
                            med(&|r| Some(r.store_puts as f64)),
                            med(&|r| Some(r.backlog_before as f64)),
                            ms(med(&|r| r.ack_ms)),
                            ms(med(&|r| (r.scrapes > 0).then(|| r.ms / f64::from(r.scrapes)))),
                        ));
                    }
                }
            }
            line("");
        }
        if !self.amp.is_empty() {
            line("## Write amplification");
            line("");
            let load = self.amp_load.map_or(String::new(), |l| {
                format!(
                    " ({} objects, loaded and settled in {:.1} s)",
                    l.objects,
                    l.settled_ms as f64 / 1e3
                )
            });
            let writes = self.amp.first().map_or(0, |r| r.published.len());
            line(&format!(
                "The demo data at scale {}, seed {SEED}{load}. Per entity type, {writes} \
                 updates (`PATCH`, merge patch of one field, of existing entities spread over \
                 the ids) and {writes} creations (`PUT` of a new entity whose references all \
                 exist), one write at a time: before and after each, the benchmark waits until \
                 `prefold_view_pending` is 0 (scraped every {} ms) and takes the deltas of \
                 `prefold_view_published_total` (derived objects written or deleted — an \
                 unchanged object is not rewritten and not counted), \
                 `prefold_view_derivations_total` (derivation messages handled) and \
                 `prefold_view_changes_total`. Mean per write, with the range over the writes.",
                self.amp_scale,
                AMP_POLL.as_millis()
            ));
            line("");
            line("| entity | operation | the write | writes | **derived objects per write** | (range) | derivation messages per write | (range) | change messages per write |");
            line("|---|---|---|---|---|---|---|---|---|");
            for r in &self.amp {
                line(&format!(
                    "| {} | {} | {} | {} | **{:.1}** | {} | {:.1} | {} | {:.1} |",
                    r.entity,
                    r.op,
                    r.what,
                    r.published.len(),
                    mean(&r.published),
                    count_span(&r.published),
                    mean(&r.derivations),
                    count_span(&r.derivations),
                    mean(&r.changes)
                ));
            }
            let all_pub: Vec<u64> = self.amp.iter().flat_map(|r| r.published.clone()).collect();
            let all_der: Vec<u64> = self
                .amp
                .iter()
                .flat_map(|r| r.derivations.clone())
                .collect();
            line(&format!(
                "| **all** | | | {} | **{:.1}** | {} | {:.1} | {} | |",
                all_pub.len(),
                mean(&all_pub),
                count_span(&all_pub),
                mean(&all_der),
                count_span(&all_der)
            ));
            line("");
        }
        if !self.lag.is_empty() {
            line("## Derivation lag under mixed load");
            line("");
            let load = self
                .lag_load
                .map_or(String::new(), |l| format!(" ({} objects)", l.objects));
            let keys: Vec<String> = self
                .lag_read_keys
                .iter()
                .map(|(v, n)| format!("{n} `{v}`"))
                .collect();
            let seconds = self.lag.first().map_or(0.0, |r| r.seconds);
            line(&format!(
                "The demo data at scale {}, seed {SEED}{load}. **Readers**: {READERS} tasks, \
                 each one keep-alive connection, `GET` a random view object as fast as they \
                 go, from {} objects that exist ({}). **Writers**: {WRITERS} tasks, \
                 each alternating a new comment (`PUT /o/comment/{{event}}/{{author}}.{{seq}}` \
                 on a random event, newest of its event) and a rename of a product \
                 (`PATCH`, which regenerates the `order_page` of each of its orders; \
                 each writer renames its own products), as fast as they go. Runs of {:.0} s, \
                 reads-only and mixed alternated. **Origin lag**: the delta of \
                 `prefold_view_derivation_lag_seconds` over the mixed run (from the entity \
                 write to the publication of each derived object it changed), quantiles \
                 interpolated linearly within a bucket; the buckets double from 50 µs \
                 (…, 0.8, 1.6, 3.2, 6.4, 12.8 ms, …), so a quantile is known within a factor of \
                 two. **Client-observed lag**: for every {OBSERVE_EVERY}th write, from the \
                 write's answer until a `GET` of the affected view (`event_comments/{{event}}`, \
                 or the `order_page` of one order of the renamed product), repeated every \
                 {} ms, shows the write.",
                self.lag_scale,
                self.lag_read_keys.iter().map(|(_, n)| n).sum::<usize>(),
                keys.join(", "),
                seconds,
                OBSERVE_POLL.as_millis()
            ));
            line("");
            line(
                "Writes use the origin's default durability (`log`: acknowledged once the \
                 write-ahead log is fsynced, shared by concurrent writes). CPU columns are user + \
                 system time over the run per second of it (two cores: at most 2.00 together); \
                 the benchmark's readers, writers and observers run in the bench process.",
            );
            if !self.lag_origin_args.is_empty() {
                line(&format!(
                    "\n**Diagnostic run**: the origin of this measurement had the extra flags \
                     `{}`.",
                    self.lag_origin_args
                ));
            }
            line("");
            line("| run | reads/s | read p50 µs | read p99 µs | writes/s (comments + renames) | write ack p50 µs | write ack p99 µs | derived objects published | origin lag p50 ms | origin lag p99 ms | client-observed lag p50 ms | p99 ms | samples (lost) | store PUTs/s | log fsyncs/s | origin CPU (cores) | bench CPU (cores) |");
            line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.lag {
                let obs = r.observed_ms(None);
                let lost = r.observed.iter().filter(|o| o.ms.is_none()).count();
                let q = |x: Option<f64>| x.map_or("–".to_owned(), |s| ms(s * 1e3));
                line(&format!(
                    "| {} {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                    if r.mixed { "mixed" } else { "reads only" },
                    r.rep + 1,
                    r.read_rps(),
                    r.read_p50_us,
                    r.read_p99_us,
                    if r.mixed {
                        format!("{:.0} ({} + {})", r.write_rps(), r.comments, r.renames)
                    } else {
                        "–".to_owned()
                    },
                    if r.mixed { format!("{:.0}", r.write_p50_us) } else { "–".to_owned() },
                    if r.mixed { format!("{:.0}", r.write_p99_us) } else { "–".to_owned() },
                    r.published,
                    if r.mixed { q(r.lag_quantile(0.5)) } else { "–".to_owned() },
                    if r.mixed { q(r.lag_quantile(0.99)) } else { "–".to_owned() },
                    if r.mixed { ms(percentile(&obs, 0.5)) } else { "–".to_owned() },
                    if r.mixed { ms(percentile(&obs, 0.99)) } else { "–".to_owned() },
                    if r.mixed { format!("{} ({lost})", r.observed.len()) } else { "–".to_owned() },
                    r.store_puts as f64 / r.seconds,
                    r.wal_fsyncs as f64 / r.seconds,
                    r.origin_cpu_s.map_or("–".to_owned(), |c| format!("{:.2}", c / r.seconds)),
                    r.client_cpu_s.map_or("–".to_owned(), |c| format!("{:.2}", c / r.seconds)),
                ));
            }
            line("");
            let mixed: Vec<&LagRun> = self.lag_runs(true).collect();
            let rr = self.read_ratios();
            let med_of = |f: &dyn Fn(&LagRun) -> f64| median(mixed.iter().map(|r| f(r)).collect());
            let each =
                |f: &dyn Fn(&LagRun) -> f64| -> Vec<f64> { mixed.iter().map(|r| f(r)).collect() };
            let all_obs: Vec<f64> = mixed.iter().flat_map(|r| r.observed_ms(None)).collect();
            let by_kind = |k: &str| -> Vec<f64> {
                mixed.iter().flat_map(|r| r.observed_ms(Some(k))).collect()
            };
            line("| summary (medians over the mixed runs) | | (per run) |");
            line("|---|---|---|");
            line(&format!(
                "| read throughput with writers ÷ reads only | **{}** | {} |",
                ratio(median(rr.clone())),
                span(&rr, ratio)
            ));
            let lag50 = |r: &LagRun| r.lag_quantile(0.5).unwrap_or(f64::NAN) * 1e3;
            let lag99 = |r: &LagRun| r.lag_quantile(0.99).unwrap_or(f64::NAN) * 1e3;
            line(&format!(
                "| origin lag p50 / p99 (histogram) | **{} / {} ms** | {} / {} |",
                ms(med_of(&lag50)),
                ms(med_of(&lag99)),
                span(&each(&lag50), ms),
                span(&each(&lag99), ms)
            ));
            for (label, v) in [
                ("all sampled writes", all_obs),
                ("comments (`event_comments`)", by_kind("comment")),
                ("renames (`order_page`)", by_kind("rename")),
            ] {
                line(&format!(
                    "| client-observed lag p50 / p99, {label} (pooled: {} samples) | **{} / {} ms** | |",
                    v.len(),
                    ms(percentile(&v, 0.5)),
                    ms(percentile(&v, 0.99))
                ));
            }
            line(&format!(
                "| writes/s (comments + renames) | {:.0} | {} |",
                med_of(&LagRun::write_rps),
                span(&each(&LagRun::write_rps), |x| format!("{x:.0}"))
            ));
            line(&format!(
                "| reads/s with writers / reads only | {:.0} / {:.0} | |",
                med_of(&LagRun::read_rps),
                median(self.lag_runs(false).map(LagRun::read_rps).collect())
            ));
            line("");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn buckets(v: &[(&str, u64)]) -> Vec<Bucket> {
        v.iter()
            .map(|(le, count)| Bucket {
                le: (*le).to_owned(),
                count: *count,
            })
            .collect()
    }

    #[test]
    fn histogram_quantiles_interpolate_within_a_bucket() {
        let b = buckets(&[("0.001", 0), ("0.002", 50), ("0.004", 100), ("+Inf", 100)]);
        // Half the observations are in (1 ms, 2 ms]: the median is its top.
        assert!((hist_quantile(&b, 0.5).unwrap() - 0.002).abs() < 1e-12);
        // p75 is halfway through (2 ms, 4 ms].
        assert!((hist_quantile(&b, 0.75).unwrap() - 0.003).abs() < 1e-12);
        // The first bucket starts at 0.
        let first = buckets(&[("0.001", 10), ("+Inf", 10)]);
        assert!((hist_quantile(&first, 0.5).unwrap() - 0.0005).abs() < 1e-12);
        // Past the last finite bound: that bound.
        let tail = buckets(&[("0.001", 1), ("+Inf", 10)]);
        assert_eq!(hist_quantile(&tail, 0.99), Some(0.001));
        assert_eq!(hist_quantile(&buckets(&[("+Inf", 0)]), 0.5), None);
    }

    #[test]
    fn bucket_deltas_parse_prometheus_names_and_sort_by_bound() {
        let m = |pairs: &[(&str, f64)]| -> Metrics {
            pairs
                .iter()
                .map(|(le, v)| (format!("{LAG_BUCKET}{le}\"}}"), *v))
                .collect()
        };
        let before = m(&[("0.00005", 1.0), ("0.0001", 2.0), ("+Inf", 3.0)]);
        let after = m(&[("0.00005", 4.0), ("0.0001", 8.0), ("+Inf", 9.0)]);
        let d = bucket_delta(&before, &after);
        let got: Vec<(&str, u64)> = d.iter().map(|b| (b.le.as_str(), b.count)).collect();
        assert_eq!(got, [("0.00005", 3), ("0.0001", 6), ("+Inf", 6)]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_anchor_writes_what_order_page_shows() {
        let f = Fixture::new(7).unwrap();
        let page = f.page(5, "New name");
        assert_eq!(page["id"], "o6");
        assert_eq!(page["customer"]["id"], "c1");
        assert_eq!(page["product"]["name"], "New name");
        assert_eq!(page["product"]["code"], "SKU-000000");
        assert!(page["customer"]["name"].is_string());
    }
}
