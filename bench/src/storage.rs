//! The storage benchmarks (issue 4): what the write path, the write-behind
//! flusher and the warm load cost, each against its anchor in one run.
//!
//! - **writes**: acknowledged `PUT`s per second and their latency in each
//!   durability mode (`memory`, `log`, `store`) against `bench-writethrough`,
//!   a bare server that awaits one store PUT per write, on the same kind of
//!   store: the local filesystem and a real S3-compatible server (`s3s-fs`).
//!   Every run walks the same number of distinct keys with the same body and
//!   connection count; the order of the targets rotates each repetition, and
//!   after every origin write run the benchmark waits for an empty backlog so
//!   that no run pays for the previous one's flushing. A hot `GET` on the
//!   same origin in the same rotation gives the latency a write is compared
//!   with.
//! - **coalescing**: increments of one key for ten seconds, acknowledged from
//!   memory: writes in against store PUTs out, and the bound the flush
//!   interval sets.
//! - **warm-up and memory**: objects written directly into a fresh
//!   filesystem store (not timed), then the time from spawning the origin to
//!   `/readyz` 200, alternated with the floor (the same files listed, read
//!   and decoded with plain `std::fs`), and the origin's resident memory
//!   against the bytes of the bodies it holds.
//!
//! Results go to `storage.md` and `storage.json`, beside `latest.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prefold_core::envelope::object_path;
use prefold_core::{Envelope, Key};
use prefold_e2e::{OriginProc, S3Server};
use serde::{Deserialize, Serialize};

use crate::load::{Run, Sample, Server};
use crate::report::{command_line, load_json, machine, machine_table, median, save};
use crate::{json_of_size, run_wrk, THREADS};

/// The anchor of the write benchmark.
pub const WRITE_THROUGH: &str = "write-through";
/// The hot read on the same origin.
pub const HOT_GET: &str = "hot GET";
/// Memory-mode writes over a few hot keys, which the flusher coalesces.
pub const MEMORY_HOT_KEYS: &str = "memory, 100 keys";
/// The keys [`MEMORY_HOT_KEYS`] walks.
const HOT_KEY_SPAN: u64 = 100;
/// The write benchmark's targets, in their base order (rotated per repetition).
pub const WRITE_TARGETS: [&str; 6] = [
    WRITE_THROUGH,
    "memory",
    "log",
    "store",
    HOT_GET,
    MEMORY_HOT_KEYS,
];
/// The durability modes, as the origin names them.
pub const MODES: [&str; 3] = ["memory", "log", "store"];
/// The stores the write benchmark runs on.
pub const STORES: [&str; 2] = ["fs", "s3"];
/// The origin's default flush interval, which the coalescing run keeps.
const FLUSH_INTERVAL_MS: u64 = 100;
/// The hot tier's budget for the warm-up (the default 1 GiB is smaller than
/// a million 1 KiB objects with their keys).
const WARM_CACHE_BYTES: u64 = 4 << 30;
/// Size of every body written or loaded.
const BODY_BYTES: usize = 1024;

/// How much of everything one mode does.
pub struct Plan {
    name: &'static str,
    reps: usize,
    duration: Duration,
    connections: u32,
    key_span: u64,
    coalesce: Duration,
    warm_objects: u64,
    warm_reps: usize,
}

impl Plan {
    /// The quick run (`make bench`) or the full one (`--full`).
    pub fn new(full: bool) -> Plan {
        Plan {
            name: if full { "full" } else { "quick" },
            reps: if full { 5 } else { 3 },
            duration: Duration::from_secs(if full { 5 } else { 2 }),
            connections: 32,
            key_span: 10_000,
            coalesce: Duration::from_secs(10),
            warm_objects: if full { 1_000_000 } else { 100_000 },
            warm_reps: 3,
        }
    }
}

/// One run of the write benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRow {
    /// `fs` or `s3`.
    pub store: String,
    /// One of [`WRITE_TARGETS`].
    pub target: String,
    /// Repetition number.
    pub rep: usize,
    /// Position in the repetition's order.
    pub order: usize,
    /// What wrk measured.
    pub sample: Sample,
    /// After an origin write run: how long until the backlog was empty, ms.
    pub drain_ms: Option<u64>,
    /// After an origin write run: the origin's counters over the run and the
    /// drain that followed.
    #[serde(default)]
    pub counters: Option<Counters>,
}

/// What the origin counted over one write run and its drain.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Counters {
    /// `prefold_writes_total{op="put"}`.
    pub writes: u64,
    /// `prefold_store_puts_total`.
    pub store_puts: u64,
    /// `prefold_wal_fsyncs_total`.
    pub wal_fsyncs: u64,
}

impl Counters {
    fn between(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Counters {
        let delta = |name: &str| {
            let get = |m: &HashMap<String, f64>| m.get(name).copied().unwrap_or(0.0);
            (get(after) - get(before)).max(0.0) as u64
        };
        Counters {
            writes: delta(r#"prefold_writes_total{op="put"}"#),
            store_puts: delta("prefold_store_puts_total"),
            wal_fsyncs: delta("prefold_wal_fsyncs_total"),
        }
    }
}

/// The durability a write target asks for (`None`: not an origin write).
fn durability(target: &str) -> Option<&'static str> {
    match target {
        MEMORY_HOT_KEYS => Some("memory"),
        t => MODES.into_iter().find(|m| *m == t),
    }
}

/// The coalescing run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Coalescing {
    /// Store under the origin.
    pub store: String,
    /// wrk connections.
    pub connections: u32,
    /// The origin's flush interval, ms.
    pub flush_interval_ms: u64,
    /// What wrk measured (acknowledged increments).
    pub sample: Sample,
    /// Increments the origin counted (`prefold_writes_total{op="increment"}`).
    pub writes_in: u64,
    /// Store PUTs made for them (`prefold_store_puts_total`).
    pub puts_out: u64,
    /// Writes folded into a pending version (`prefold_writes_coalesced_total`).
    pub coalesced: u64,
    /// From the end of the run to an empty backlog, ms.
    pub drain_ms: u64,
    /// The counter's value read back afterwards.
    pub final_value: u64,
    /// The counter's value in the store afterwards (fs store file).
    pub stored_value: Option<u64>,
}

impl Coalescing {
    /// Flush windows the run touched: run length / interval, plus one for
    /// the window the run ended in.
    pub fn bound(&self) -> u64 {
        self.sample
            .duration_us
            .div_ceil(self.flush_interval_ms * 1000)
            + 1
    }
}

/// One warm load: spawn → ready, and the process's memory then.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WarmRun {
    /// From spawning the origin to `/readyz` 200, ms.
    pub ready_ms: u64,
    /// `prefold_warm_objects` once ready.
    pub warm_objects_metric: u64,
    /// `prefold_hot_entries` once ready.
    pub hot_entries: u64,
    /// VmRSS once ready, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS) once ready, bytes.
    pub hwm: u64,
}

/// The warm-up and memory measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Warm {
    /// Objects generated in the store.
    pub objects: u64,
    /// Body bytes per object.
    pub body_bytes: u64,
    /// Generating them (not part of any measurement), ms.
    pub generate_ms: u64,
    /// VmRSS of an origin with an empty store, once ready.
    pub rss_empty: u64,
    /// `--cache-bytes` given.
    pub cache_bytes: u64,
    /// The origin's warm loads, one per repetition.
    pub runs: Vec<WarmRun>,
    /// The floor: reading and decoding every file with plain `std::fs` on
    /// `floor_threads` threads, ms, one per repetition (alternated with the
    /// origin's runs).
    pub floor_ms: Vec<u64>,
    /// Threads of the floor.
    pub floor_threads: usize,
}

impl Warm {
    /// Bytes of all bodies.
    pub fn payload(&self) -> u64 {
        self.objects * self.body_bytes
    }

    fn rate(&self, ms: u64) -> f64 {
        self.objects as f64 / (ms as f64 / 1e3)
    }

    /// Median objects/s of the origin's warm loads.
    pub fn origin_rate(&self) -> f64 {
        median(self.runs.iter().map(|r| self.rate(r.ready_ms)).collect())
    }

    /// Median objects/s of the floor.
    pub fn floor_rate(&self) -> f64 {
        median(self.floor_ms.iter().map(|&ms| self.rate(ms)).collect())
    }

    /// Median RSS once ready.
    pub fn rss(&self) -> u64 {
        median(self.runs.iter().map(|r| r.rss as f64).collect()) as u64
    }

    fn span(v: impl Iterator<Item = f64>, decimals: usize) -> String {
        let v: Vec<f64> = v.collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.len() < 2 {
            String::new()
        } else {
            format!(" (runs {lo:.decimals$} – {hi:.decimals$})")
        }
    }
}

/// Everything the storage part produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct StorageReport {
    mode: String,
    reps: usize,
    run_ms: u128,
    connections: u32,
    key_span: u64,
    body_bytes: usize,
    /// Write benchmark samples.
    pub writes: Vec<WriteRow>,
    /// The coalescing run.
    pub coalescing: Option<Coalescing>,
    /// The warm-up and memory measurement.
    pub warm: Option<Warm>,
    /// Wall-clock time of the whole storage part, s.
    pub elapsed_s: f64,
    machine: Vec<(String, String)>,
}

/// Runs every storage benchmark under `work`.
pub async fn run(full: bool, work: &Path) -> Result<StorageReport> {
    let plan = Plan::new(full);
    let started = Instant::now();
    let work = work.join("storage");
    std::fs::create_dir_all(&work)?;
    let mut m = machine();
    m.push((
        "s3s-fs".into(),
        command_line(&s3s_fs_bin().to_string_lossy(), &["--version"]),
    ));
    let mut report = StorageReport {
        mode: plan.name.to_owned(),
        reps: plan.reps,
        run_ms: plan.duration.as_millis(),
        connections: plan.connections,
        key_span: plan.key_span,
        body_bytes: BODY_BYTES,
        writes: Vec::new(),
        coalescing: None,
        warm: None,
        elapsed_s: 0.0,
        machine: m,
    };
    for store in STORES {
        report
            .writes
            .extend(writes(&plan, &work.join(format!("writes-{store}")), store).await?);
    }
    report.coalescing = Some(coalescing(&plan, &work.join("coalescing")).await?);
    report.warm = Some(warm_up(&plan, &work.join("warm")).await?);
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn s3s_fs_bin() -> PathBuf {
    std::env::var_os("S3S_FS_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/s3s-fs")))
        .unwrap_or_else(|| PathBuf::from("s3s-fs"))
}

fn release_bin(name: &str) -> PathBuf {
    prefold_e2e::repo_root().join("target/release").join(name)
}

/// One request with headers and a body; fails unless 2xx. Returns the
/// response's headers and body.
async fn send(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(reqwest::header::HeaderMap, Vec<u8>)> {
    let mut req = prefold_e2e::client().request(method.clone(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body).send().await?;
    let status = r.status();
    let h = r.headers().clone();
    let bytes = r.bytes().await?.to_vec();
    if !status.is_success() {
        bail!(
            "{method} {url}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok((h, bytes))
}

/// Waits until the origin's backlog is empty; returns how long that took.
async fn drained(origin: &OriginProc) -> Result<Duration> {
    let t = Instant::now();
    prefold_e2e::poll("an empty backlog", Duration::from_secs(300), || async {
        let m = origin.metrics().await.ok()?;
        (m.get("prefold_backlog_keys").copied().unwrap_or(0.0) == 0.0).then_some(())
    })
    .await
    .with_context(|| origin.log_tail())?;
    Ok(t.elapsed())
}

/// Acknowledged writes in each durability mode against write-through, and a
/// hot read, on one store.
async fn writes(plan: &Plan, work: &Path, store: &str) -> Result<Vec<WriteRow>> {
    std::fs::create_dir_all(work)?;
    let s3 = if store == "s3" {
        Some(S3Server::start().await?)
    } else {
        None
    };
    let env = s3.as_ref().map(S3Server::env).unwrap_or_default();
    let origin = OriginProc::start_env(
        &work.join("origin"),
        &["--store", store, "--open-writes"],
        &env,
    )
    .await?;
    let wt_dir = work.join("writethrough-store");
    let wt_dir_s = wt_dir.to_string_lossy().into_owned();
    let mut wt_args = vec!["--listen", "127.0.0.1:0", "--store", store];
    if store == "fs" {
        wt_args.extend(["--dir", &wt_dir_s]);
    }
    let wt = Server::spawn_with(
        &release_bin("bench-writethrough"),
        &wt_args,
        &env,
        Some(&work.join("writethrough.log")),
    )?;
    prefold_e2e::wait_until_ok(&format!("{}/readyz", wt.url), Duration::from_secs(30)).await?;

    let body = json_of_size(BODY_BYTES);
    let json = ("content-type", "application/json");
    let hot_url = format!("{}/o/bench/hot", origin.url());
    send(reqwest::Method::PUT, &hot_url, &[json], body.clone()).await?;
    // Each mode is honoured (the answer names it), and the anchor stores.
    for mode in MODES {
        let (h, _) = send(
            reqwest::Method::PUT,
            &format!("{}/o/bench/k0", origin.url()),
            &[json, ("x-prefold-durability", mode)],
            body.clone(),
        )
        .await?;
        let echoed = h
            .get("x-prefold-durability")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        anyhow::ensure!(
            echoed == mode,
            "asked for {mode}, origin answered {echoed:?}"
        );
    }
    send(
        reqwest::Method::PUT,
        &format!("{}/o/wt/k0", wt.url),
        &[json],
        body.clone(),
    )
    .await?;
    drained(&origin).await?;

    let origin_put = format!("{}/o/bench/k0", origin.url());
    let wt_put = format!("{}/o/wt/k0", wt.url);
    let headers: Vec<[(&str, &str); 2]> = MODES
        .iter()
        .map(|m| [json, ("x-prefold-durability", *m)])
        .collect();
    let headers_of = |mode: &str| {
        let i = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        &headers[i]
    };
    let wt_headers = [json];
    let mut rows = Vec::new();
    for rep in 0..plan.reps {
        for k in 0..WRITE_TARGETS.len() {
            // Rotate the order each repetition: A B C D E F, B C D E F A, …
            let t = (k + rep) % WRITE_TARGETS.len();
            let target = WRITE_TARGETS[t];
            eprintln!(
                "storage: {store}, {target}, repetition {} of {}",
                rep + 1,
                plan.reps
            );
            let base = Run::get("", plan.connections, THREADS, plan.duration);
            let run = match target {
                WRITE_THROUGH => Run {
                    url: &wt_put,
                    walk: Some(("/o/wt/k", plan.key_span)),
                    method: "PUT",
                    body: Some(&body),
                    headers: &wt_headers,
                    ..base
                },
                HOT_GET => Run {
                    url: &hot_url,
                    ..base
                },
                MEMORY_HOT_KEYS => Run {
                    url: &origin_put,
                    walk: Some(("/o/bench/h", HOT_KEY_SPAN)),
                    method: "PUT",
                    body: Some(&body),
                    headers: headers_of("memory"),
                    ..base
                },
                mode => Run {
                    url: &origin_put,
                    walk: Some(("/o/bench/k", plan.key_span)),
                    method: "PUT",
                    body: Some(&body),
                    headers: headers_of(mode),
                    ..base
                },
            };
            let is_origin_write = durability(target).is_some();
            if rep == 0 {
                // Warm connections, files and directories; the first pass
                // also creates every key.
                run_wrk(
                    work,
                    &Run {
                        duration: Duration::from_secs(1),
                        ..run.clone()
                    },
                )
                .with_context(|| origin.log_tail())?;
                if is_origin_write {
                    drained(&origin).await?;
                }
            }
            let before = origin.metrics().await?;
            let sample = run_wrk(work, &run).with_context(|| origin.log_tail())?;
            let (drain_ms, counters) = if is_origin_write {
                let drain = drained(&origin).await?.as_millis() as u64;
                let after = origin.metrics().await?;
                (Some(drain), Some(Counters::between(&before, &after)))
            } else {
                (None, None)
            };
            rows.push(WriteRow {
                store: store.to_owned(),
                target: target.to_owned(),
                rep,
                order: k,
                sample,
                drain_ms,
                counters,
            });
        }
    }
    origin.stop().await?;
    drop(wt);
    drop(s3);
    Ok(rows)
}

/// Increments of one key for `plan.coalesce`, acknowledged from memory.
async fn coalescing(plan: &Plan, work: &Path) -> Result<Coalescing> {
    let origin = OriginProc::start(
        work,
        &[
            "--open-writes",
            "--store",
            "fs",
            "--flush-interval-ms",
            &FLUSH_INTERVAL_MS.to_string(),
        ],
    )
    .await?;
    let json = ("content-type", "application/json");
    let memory = ("x-prefold-durability", "memory");
    let key = "bench/counter";
    let url = format!("{}/o/{key}", origin.url());
    send(
        reqwest::Method::PUT,
        &url,
        &[json, memory],
        br#"{"n":0}"#.to_vec(),
    )
    .await?;
    drained(&origin).await?;
    let inc = r#"prefold_writes_total{op="increment"}"#;
    let before = origin.metrics().await?;
    let incr_url = format!("{url}?op=increment&path=/n");
    eprintln!(
        "storage: coalescing, {} s of increments of one key",
        plan.coalesce.as_secs()
    );
    let run = Run {
        method: "POST",
        body: Some(b"1"),
        headers: &[json, memory],
        ..Run::get(&incr_url, plan.connections, THREADS, plan.coalesce)
    };
    let sample = run_wrk(work, &run).with_context(|| origin.log_tail())?;
    let drain = drained(&origin).await?;
    let after = origin.metrics().await?;
    let delta = |name: &str| {
        let get = |m: &HashMap<String, f64>| m.get(name).copied().unwrap_or(0.0);
        (get(&after) - get(&before)).max(0.0) as u64
    };
    let (_, got) = send(reqwest::Method::GET, &url, &[], Vec::new()).await?;
    let value: serde_json::Value = serde_json::from_slice(&got)?;
    let final_value = value["n"].as_u64().context("counter has no n")?;
    // The fs store's copy, decoded: the last PUT must hold the last value.
    let stored_value = std::fs::read(
        origin
            .data
            .join("store")
            .join(object_path(&Key::parse(key)?)),
    )
    .ok()
    .and_then(|bytes| {
        let e = Envelope::decode(&bytes).ok()?;
        serde_json::from_slice::<serde_json::Value>(e.body).ok()?["n"].as_u64()
    });
    origin.stop().await?;
    Ok(Coalescing {
        store: "fs".to_owned(),
        connections: plan.connections,
        flush_interval_ms: FLUSH_INTERVAL_MS,
        sample,
        writes_in: delta(inc),
        puts_out: delta("prefold_store_puts_total"),
        coalesced: delta("prefold_writes_coalesced_total"),
        drain_ms: drain.as_millis() as u64,
        final_value,
        stored_value,
    })
}

/// A JSON object of exactly `size` bytes naming `id`.
fn json_with_id(id: &str, size: usize) -> Vec<u8> {
    let mut v = format!(r#"{{"id":"{id}","pad":""#).into_bytes();
    let fill = size.saturating_sub(v.len() + 2);
    v.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
    v.extend_from_slice(br#""}"#);
    v
}

/// Writes `n` objects straight into a filesystem store directory, as the
/// origin would have stored them, on a few threads.
fn generate(store: &Path, n: u64) -> Result<()> {
    for hh in 0..256 {
        std::fs::create_dir_all(store.join(format!("o/{hh:02x}")))?;
    }
    let threads = 4u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    let mut i = t;
                    while i < n {
                        let key = Key::parse(&format!("bench/w{i}"))?;
                        let body = json_with_id(key.as_str(), BODY_BYTES);
                        let record = Envelope {
                            version: 1,
                            content_type: "application/json",
                            body: &body,
                            tombstone: false,
                        }
                        .encode()?;
                        std::fs::write(store.join(object_path(&key)), record)?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// `name{labels}` → value from a `/metrics` page.
async fn scrape(url: &str) -> Result<HashMap<String, f64>> {
    prefold_e2e::scrape_metrics(url).await
}

/// Starts an origin on `data` (filesystem store) and waits for `/readyz`
/// 200, polling every 10 ms. Returns the process and the time from spawn to
/// ready.
async fn spawn_origin(data: &Path) -> Result<(Server, Duration)> {
    let data_s = data.to_string_lossy().into_owned();
    let cache = WARM_CACHE_BYTES.to_string();
    let log = data.join("origin.log");
    let started = Instant::now();
    let origin = Server::spawn_with(
        &prefold_e2e::origin_bin(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data_s,
            "--store",
            "fs",
            "--cache-bytes",
            &cache,
            "--open-writes",
        ],
        &[("PREFOLD_LOG".to_owned(), "info".to_owned())],
        Some(&log),
    )?;
    let ready = format!("{}/readyz", origin.url);
    let client = prefold_e2e::client();
    let deadline = started + Duration::from_secs(900);
    loop {
        if let Ok(r) = client.get(&ready).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "origin on {} not ready after 900 s; see {}",
                data.display(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((origin, started.elapsed()))
}

/// Reads and decodes every object file under `store/o/` with plain
/// `std::fs` on `threads` threads; returns how many decoded.
fn read_all(store: &Path, threads: usize) -> Result<u64> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(store.join("o"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.sort();
    let dirs = &dirs;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<u64> {
                    let mut n = 0;
                    for dir in dirs.iter().skip(t).step_by(threads) {
                        for entry in std::fs::read_dir(dir)? {
                            let bytes = std::fs::read(entry?.path())?;
                            if Envelope::decode(&bytes).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        }
        Ok(total)
    })
}

/// One warm load of the store under `data`.
async fn warm_once(data: &Path) -> Result<WarmRun> {
    // Each run starts from the store alone.
    let _ = std::fs::remove_dir_all(data.join("wal"));
    let (origin, ready) = spawn_origin(data).await?;
    let (rss, hwm) = rss(origin.pid())?;
    let m = scrape(&origin.url).await?;
    let metric = |name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
    let run = WarmRun {
        ready_ms: ready.as_millis() as u64,
        warm_objects_metric: metric("prefold_warm_objects"),
        hot_entries: metric("prefold_hot_entries"),
        rss,
        hwm,
    };
    drop(origin);
    Ok(run)
}

/// Objects generated into a fresh store; spawn → ready and memory, against
/// plain reads of the same files, alternated.
async fn warm_up(plan: &Plan, work: &Path) -> Result<Warm> {
    let empty = work.join("empty");
    std::fs::create_dir_all(&empty)?;
    let (origin, _) = spawn_origin(&empty).await?;
    let (rss_empty, _) = rss(origin.pid())?;
    drop(origin);

    let data = work.join("data");
    let n = plan.warm_objects;
    eprintln!("storage: generating {n} objects of {BODY_BYTES} bytes");
    let t = Instant::now();
    let store = data.join("store");
    tokio::task::block_in_place(|| generate(&store, n))?;
    // Written back before the clock starts, so the kernel's writeback does
    // not compete with the load. The files stay in the page cache.
    std::process::Command::new("sync").status()?;
    let generate_ms = t.elapsed().as_millis() as u64;
    let threads = crate::cores();
    let mut warm = Warm {
        objects: n,
        body_bytes: BODY_BYTES as u64,
        generate_ms,
        rss_empty,
        cache_bytes: WARM_CACHE_BYTES,
        runs: Vec::new(),
        floor_ms: Vec::new(),
        floor_threads: threads,
    };
    for rep in 0..plan.warm_reps {
        // Origin first in even repetitions, the floor first in odd ones.
        for k in 0..2 {
            if (k + rep) % 2 == 0 {
                eprintln!(
                    "storage: warm load of {n} objects, repetition {} of {}",
                    rep + 1,
                    plan.warm_reps
                );
                warm.runs.push(warm_once(&data).await?);
            } else {
                let t = Instant::now();
                let read = tokio::task::block_in_place(|| read_all(&store, threads))?;
                anyhow::ensure!(read == n, "the floor read {read} of {n} objects");
                warm.floor_ms.push(t.elapsed().as_millis() as u64);
            }
        }
    }
    Ok(warm)
}

/// Median figures of one target on one store.
struct Cell {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

impl StorageReport {
    fn rows<'a>(&'a self, store: &'a str, target: &'a str) -> impl Iterator<Item = &'a WriteRow> {
        self.writes
            .iter()
            .filter(move |r| r.store == store && r.target == target)
    }

    fn cell(&self, store: &str, target: &str) -> Option<Cell> {
        let samples: Vec<&Sample> = self.rows(store, target).map(|r| &r.sample).collect();
        if samples.is_empty() {
            return None;
        }
        let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
        Some(Cell {
            rps: m(&|s| s.rps()),
            p50: m(&|s| s.p50_us),
            p99: m(&|s| s.p99_us),
        })
    }

    /// Per-repetition ratios `f(a) / f(b)` of two targets on one store.
    fn ratios(&self, store: &str, a: &str, b: &str, f: fn(&Sample) -> f64) -> Vec<f64> {
        let at = |t: &str, rep: usize| {
            self.rows(store, t)
                .find(|r| r.rep == rep)
                .map(|r| f(&r.sample))
        };
        (0..self.reps)
            .filter_map(|rep| Some(at(a, rep)? / at(b, rep)?))
            .collect()
    }

    fn range(&self, store: &str, a: &str, b: &str, f: fn(&Sample) -> f64) -> String {
        let r = self.ratios(store, a, b, f);
        if r.is_empty() {
            return String::new();
        }
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{} – {}", ratio(lo), ratio(hi))
    }

    fn stores(&self) -> Vec<&str> {
        STORES
            .into_iter()
            .filter(|s| self.writes.iter().any(|r| r.store == *s))
            .collect()
    }

    /// Reads a report written by [`StorageReport::write`].
    pub fn load(dir: &Path) -> Result<StorageReport> {
        load_json(dir, "storage")
    }

    /// Writes `storage.md` and `storage.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        save(dir, "storage", self, &self.markdown())
    }

    fn goals(&self) -> Vec<String> {
        let mut out = vec![
            "## Goals".to_owned(),
            String::new(),
            "| goal | measured | met |".to_owned(),
            "|---|---|---|".to_owned(),
        ];
        for store in self.stores() {
            let Some(wt) = self.cell(store, WRITE_THROUGH) else {
                continue;
            };
            for (mode, goal) in [("memory", 100.0), ("log", 20.0)] {
                if let Some(c) = self.cell(store, mode) {
                    let x = c.rps / wt.rps;
                    out.push(format!(
                        "| {mode}-mode writes ≥ {goal:.0}× write-through throughput, {store} store | {} (per run {}) | {} |",
                        ratio(x),
                        self.range(store, mode, WRITE_THROUGH, Sample::rps),
                        yes(x >= goal)
                    ));
                }
            }
            if let (Some(log), Some(hot)) = (self.cell(store, "log"), self.cell(store, HOT_GET)) {
                let x = log.p50 / hot.p50;
                out.push(format!(
                    "| log-mode write p50 ≤ 2× hot-read p50, {store} store | {:.0} µs ÷ {:.0} µs = {} (per run {}) | {} |",
                    log.p50,
                    hot.p50,
                    ratio(x),
                    self.range(store, "log", HOT_GET, |s| s.p50_us),
                    yes(x <= 2.0)
                ));
            }
        }
        if let Some(c) = &self.coalescing {
            out.push(format!(
                "| coalescing: store PUTs bounded by the flush rate, not the write rate | {} PUTs for {} increments; bound {} | {} |",
                c.puts_out,
                c.writes_in,
                c.bound(),
                yes(c.puts_out <= c.bound())
            ));
            let rate = c.writes_in as f64 / (c.sample.duration_us as f64 / 1e6);
            out.push(format!(
                "| 100k increments of one key in 10 s (10 000/s) | {rate:.0}/s | {} |",
                yes(rate >= 10_000.0)
            ));
        }
        if let Some(w) = &self.warm {
            let rate = w.origin_rate();
            out.push(format!(
                "| warm load ≥ 50k objects/s ({} objects) | {rate:.0} objects/s ({} of a plain read of the files) | {} |",
                w.objects,
                ratio(rate / w.floor_rate()),
                yes(rate >= 50_000.0)
            ));
            let x = w.rss() as f64 / w.payload() as f64;
            out.push(format!(
                "| RSS ≤ 1.3× payload after the warm load | {} RSS ÷ {} payload = {x:.2}× | {} |",
                mib(w.rss()),
                mib(w.payload()),
                yes(x <= 1.3)
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
        line("# prefold storage benchmark results");
        line("");
        line(&format!(
            "Mode `{}`: {} repetitions of {} ms per write run, the targets' order rotated each \
             repetition; {} connections, {}-byte JSON bodies. Every figure is a median over the \
             repetitions; \"per run\" is the lowest and highest ratio within one repetition, \
             whose runs were back to back. Compare ratios, not absolute numbers (the machine is \
             shared, and wrk runs on the same two cores). The storage part took {:.0} s. \
             Regenerate with `make bench` (quick) or `make bench-full`; this part alone with \
             `target/release/prefold-bench --only storage [--full]`.",
            self.mode, self.reps, self.run_ms, self.connections, self.body_bytes, self.elapsed_s
        ));
        line("");
        for l in machine_table(&self.machine) {
            line(&l);
        }
        for l in self.goals() {
            line(&l);
        }
        if !self.writes.is_empty() {
            line("## Acknowledged writes against synchronous write-through");
            line("");
            line(&format!(
                "wrk `PUT`s over {} distinct keys (so that coalescing bounds the backlog), one \
                 1 KiB body, the durability asked per request with `x-prefold-durability`. The \
                 anchor, `bench-writethrough`, validates the key, wraps the body in the same \
                 envelope and answers only after its own `object_store` PUT to the same kind of \
                 store: one store write per acknowledged write, no batching. `fs` is the local \
                 filesystem store (`LocalFileSystem`, which does not fsync); `s3` is `s3s-fs`, a \
                 real S3-compatible server on loopback. The hot `GET` reads one key of the same \
                 origin in the same rotation. After each origin write run the benchmark waits \
                 for an empty backlog before the next run; the last column is that wait. The \
                 origin's counters over each write run and its drain give the store PUTs the \
                 flusher made per acknowledged write (1 means no coalescing happened) and the \
                 writes each log fsync covered (group commit; memory mode logs too, without \
                 waiting). The {HOT_KEY_SPAN}-key row is context, not a goal: the same \
                 memory-mode writes over few enough keys that the flusher coalesces them.",
                self.key_span
            ));
            line("");
            for store in self.stores() {
                line(&format!("### {store} store"));
                line("");
                line("| target | req/s | ÷ write-through | (per run) | p50 µs | p99 µs | store PUTs per write | writes per log fsync | backlog drained after (ms) |");
                line("|---|---|---|---|---|---|---|---|---|");
                let wt = self.cell(store, WRITE_THROUGH);
                for target in WRITE_TARGETS {
                    let Some(c) = self.cell(store, target) else {
                        continue;
                    };
                    let name = match target {
                        WRITE_THROUGH => "write-through (anchor)".to_owned(),
                        HOT_GET => "hot GET (same origin)".to_owned(),
                        MEMORY_HOT_KEYS => {
                            format!("prefold, ack=memory, {HOT_KEY_SPAN} keys (context)")
                        }
                        m => format!("prefold, ack={m}"),
                    };
                    let x = wt.as_ref().map_or(f64::NAN, |w| c.rps / w.rps);
                    let med = |f: &dyn Fn(&WriteRow) -> Option<f64>| {
                        let m = median(self.rows(store, target).filter_map(f).collect());
                        if m.is_nan() {
                            String::new()
                        } else if m < 10.0 {
                            format!("{m:.2}")
                        } else {
                            format!("{m:.0}")
                        }
                    };
                    let per_put = med(&|r| {
                        let k = r.counters?;
                        Some(k.store_puts as f64 / k.writes.max(1) as f64)
                    });
                    let per_fsync = med(&|r| {
                        let k = r.counters?;
                        (k.wal_fsyncs > 0).then(|| k.writes as f64 / k.wal_fsyncs as f64)
                    });
                    let drain = median(
                        self.rows(store, target)
                            .filter_map(|r| r.drain_ms.map(|d| d as f64))
                            .collect(),
                    );
                    let drain = if drain.is_nan() {
                        String::new()
                    } else {
                        format!("{drain:.0}")
                    };
                    let per_put = if target == WRITE_THROUGH {
                        "1 (by design)".to_owned()
                    } else {
                        per_put
                    };
                    line(&format!(
                        "| {name} | {:.0} | **{}** | {} | {:.0} | {:.0} | {per_put} | {per_fsync} | {drain} |",
                        c.rps,
                        ratio(x),
                        self.range(store, target, WRITE_THROUGH, Sample::rps),
                        c.p50,
                        c.p99,
                    ));
                }
                line("");
            }
        }
        if let Some(c) = &self.coalescing {
            line("## Coalescing: one hot key");
            line("");
            line(&format!(
                "`POST /o/bench/counter?op=increment&path=/n` with body `1`, acknowledged from \
                 memory, {} connections for {:.1} s, flush interval {} ms, {} store. Writes in \
                 are the increments the origin counted; PUTs out are the store PUTs made for \
                 them, counted after the backlog emptied ({} ms after the run).",
                c.connections,
                c.sample.duration_us as f64 / 1e6,
                c.flush_interval_ms,
                c.store,
                c.drain_ms
            ));
            line("");
            line("| | |");
            line("|---|---|");
            line(&format!(
                "| increments acknowledged (wrk) | {} ({:.0}/s, p50 {:.0} µs, p99 {:.0} µs) |",
                c.sample.requests,
                c.sample.rps(),
                c.sample.p50_us,
                c.sample.p99_us
            ));
            line(&format!(
                "| writes in (`prefold_writes_total{{op=\"increment\"}}`) | {} |",
                c.writes_in
            ));
            line(&format!(
                "| store PUTs out (`prefold_store_puts_total`) | **{}** |",
                c.puts_out
            ));
            line(&format!(
                "| flush-rate bound (run / interval + 1) | {} |",
                c.bound()
            ));
            line(&format!(
                "| writes per PUT | {:.0} |",
                c.writes_in as f64 / c.puts_out.max(1) as f64
            ));
            line(&format!(
                "| coalesced (`prefold_writes_coalesced_total`) | {} |",
                c.coalesced
            ));
            line(&format!(
                "| counter read back / in the store | {} / {} |",
                c.final_value,
                c.stored_value
                    .map_or_else(|| "unreadable".to_owned(), |v| v.to_string())
            ));
            line("");
        }
        if let Some(w) = &self.warm {
            line("## Warm-up and memory");
            line("");
            line(&format!(
                "{} objects of {} bytes written directly into a fresh filesystem store ({:.1} s, \
                 not timed; then `sync`, so the files are on disk and in the page cache). Then, \
                 {} times, alternately: the origin spawned with `--cache-bytes {}` (and no log) \
                 and timed from spawn to `/readyz` 200, polled every 10 ms; and the floor, every \
                 file listed, read and decoded with plain `std::fs` on {} threads in the \
                 benchmark's process. RSS is `VmRSS` from `/proc/PID/status` once ready; \
                 payload is the bodies' bytes.",
                w.objects,
                w.body_bytes,
                w.generate_ms as f64 / 1e3,
                w.runs.len(),
                w.cache_bytes,
                w.floor_threads
            ));
            line("");
            line("| | |");
            line("|---|---|");
            line(&format!("| objects | {} |", w.objects));
            let ready = median(w.runs.iter().map(|r| r.ready_ms as f64).collect());
            line(&format!(
                "| spawn → ready | {:.2} s{} |",
                ready / 1e3,
                Warm::span(w.runs.iter().map(|r| r.ready_ms as f64 / 1e3), 2)
            ));
            line(&format!(
                "| origin objects/s | **{:.0}**{} |",
                w.origin_rate(),
                Warm::span(w.runs.iter().map(|r| w.rate(r.ready_ms)), 0)
            ));
            line(&format!(
                "| floor objects/s (plain read) | {:.0}{} |",
                w.floor_rate(),
                Warm::span(w.floor_ms.iter().map(|&ms| w.rate(ms)), 0)
            ));
            line(&format!(
                "| origin ÷ floor | {} |",
                ratio(w.origin_rate() / w.floor_rate())
            ));
            if let Some(r) = w.runs.last() {
                line(&format!(
                    "| `prefold_warm_objects` / `prefold_hot_entries` | {} / {} |",
                    r.warm_objects_metric, r.hot_entries
                ));
            }
            line(&format!("| payload (bodies) | {} |", mib(w.payload())));
            line(&format!("| RSS, empty origin | {} |", mib(w.rss_empty)));
            line(&format!(
                "| RSS after the warm load | **{}** ({:.2}× payload; {:.0} bytes per object above the empty origin) |",
                mib(w.rss()),
                w.rss() as f64 / w.payload() as f64,
                (w.rss().saturating_sub(w.rss_empty)) as f64 / w.objects as f64
            ));
            let hwm = median(w.runs.iter().map(|r| r.hwm as f64).collect()) as u64;
            line(&format!(
                "| peak RSS (VmHWM) during the warm load | {} |",
                mib(hwm)
            ));
            line("");
        }
        md
    }
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 1.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}
