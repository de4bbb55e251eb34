//! `prefold-bench`: prefold's benchmarks, each side by side with its anchor in
//! one run, on loopback only.
//!
//! - **read**: prefold-origin's hot-tier `GET /o/{key}` against nginx serving
//!   the same bytes as static files (`sendfile on`), and against the floor — a
//!   bare axum + moka handler (`bench-floor`) — for 1 KiB, 64 KiB and 1 MiB
//!   JSON objects at several connection counts. Runs alternate between the
//!   targets (A B C, B C A, …) so that drift of this shared machine falls on
//!   all of them alike, and each figure is the median over the repetitions.
//! - **edge**: requests through `wrangler dev` (KV hit; KV miss → origin)
//!   against the origin directly, and the Worker's Wasm size with what
//!   dominates it (`twiggy top`, grouped by crate).
//! - **micro**: the criterion benchmarks in `bench/benches/micro.rs` (run by
//!   `make bench` before this program), read from `target/criterion`.
//! - **storage**: acknowledged writes per durability mode against synchronous
//!   write-through (`bench-writethrough`) on the filesystem and on S3
//!   (`s3s-fs`), coalescing of one hot key, the warm load and its memory; see
//!   the `storage` module.
//! - **views**: the view engine — fan-out regeneration (a product renamed
//!   under 10k and 100k orders) against the client re-`PUT`ting the pages
//!   itself, write amplification per entity type, and derivation lag under a
//!   mixed read/write load against the same reads alone; see the `views`
//!   module.
//!
//! Results go to `bench/results/latest.md` (tables, goals, machine, versions,
//! commit, date), `latest.json` (every sample) and SVG plots; the storage and
//! views parts write their own `storage.md` / `storage.json` and `views.md` /
//! `views.json`.

mod load;
mod report;
mod storage;
mod views;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use futures::stream::{self, StreamExt, TryStreamExt};
use load::{wrk, Run, Sample, Server};
use prefold_e2e::{free_port, EdgeProc, OriginProc};
use report::{EdgeRow, MicroRow, ReadRow, Report, WasmGroup, WasmSize};
use storage::StorageReport;
use views::ViewsReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Read,
    Edge,
    Micro,
    Storage,
    Views,
}

#[derive(Parser)]
#[command(about = "prefold benchmarks, side by side with their anchors")]
struct Args {
    /// The long run (about 15 minutes) instead of the quick one (under 5).
    #[arg(long)]
    full: bool,
    /// Which parts to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Only re-render `latest.md` and the plots from `latest.json`,
    /// `storage.md` from `storage.json` and `views.md` from `views.json`.
    #[arg(long)]
    render_only: bool,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// How much of everything a mode does.
struct Mode {
    name: &'static str,
    duration: Duration,
    reps: usize,
    connections: Vec<u32>,
    edge_duration: Duration,
    edge_connections: u32,
    miss_span: u64,
}

impl Mode {
    fn quick() -> Mode {
        Mode {
            name: "quick",
            duration: Duration::from_secs(2),
            reps: 3,
            connections: vec![16, 128],
            edge_duration: Duration::from_secs(2),
            edge_connections: 8,
            miss_span: 8_000,
        }
    }

    fn full() -> Mode {
        Mode {
            name: "full",
            duration: Duration::from_secs(4),
            reps: 5,
            connections: vec![4, 32, 256],
            edge_duration: Duration::from_secs(4),
            edge_connections: 8,
            miss_span: 20_000,
        }
    }
}

/// The objects of the read benchmark.
pub const SIZES: [(usize, &str); 3] = [(1024, "1 KiB"), (64 * 1024, "64 KiB"), (1 << 20, "1 MiB")];
/// The read benchmark's targets, in their base order.
pub const TARGETS: [&str; 3] = ["prefold", "nginx", "floor"];
/// wrk's threads. The servers get as many threads or workers as the machine
/// has cores (tokio's default for the origin and the floor; nginx's
/// `worker_processes` is set to match).
const THREADS: u32 = 2;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// An optional key walk: `{prefix}{i}` for `i` in `0..span`.
type Walk<'a> = Option<(&'a str, u64)>;

/// A JSON object of exactly `size` bytes.
fn json_of_size(size: usize) -> Vec<u8> {
    let head = br#"{"id":"bench","pad":""#;
    let tail = br#""}"#;
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(head);
    let fill = size.saturating_sub(head.len() + tail.len());
    v.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
    v.extend_from_slice(tail);
    v
}

fn slug(size: usize) -> String {
    format!("s{size}")
}

async fn put_owned(url: String, body: Vec<u8>) -> Result<()> {
    put(&url, body).await
}

async fn put(url: &str, body: Vec<u8>) -> Result<()> {
    let r = prefold_e2e::client()
        .put(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "PUT {url}: {}", r.status());
    Ok(())
}

fn run_wrk(dir: &Path, run: &Run<'_>) -> Result<Sample> {
    tokio::task::block_in_place(|| wrk(dir, run))
}

async fn read_path(mode: &Mode, work: &Path) -> Result<Vec<ReadRow>> {
    let www = work.join("www");
    let objects = www.join("o/bench");
    std::fs::create_dir_all(&objects)?;
    for (size, _) in SIZES {
        std::fs::write(objects.join(slug(size)), json_of_size(size))?;
    }
    // nginx's workers run as nobody and must read the tree.
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(work)
        .status()?;

    let origin = OriginProc::start(
        &work.join("origin"),
        &[
            "--store",
            "memory",
            "--max-body-bytes",
            "2000000",
            "--open-writes",
        ],
    )
    .await?;
    for (size, _) in SIZES {
        put(
            &format!("{}/o/bench/{}", origin.url(), slug(size)),
            json_of_size(size),
        )
        .await?;
    }
    let floor_bin = prefold_e2e::repo_root().join("target/release/bench-floor");
    let floor = Server::spawn_announcing(
        &floor_bin,
        &["--listen", "127.0.0.1:0", "--dir", &www.to_string_lossy()],
    )?;
    let nginx = Server::nginx(work, &www, free_port(), cores())?;
    let urls = [origin.url(), nginx.url.clone(), floor.url.clone()];
    for u in &urls {
        prefold_e2e::wait_until_ok(
            &format!("{u}/o/bench/{}", slug(1024)),
            Duration::from_secs(30),
        )
        .await?;
    }

    let mut rows = Vec::new();
    for (size, label) in SIZES {
        for &connections in &mode.connections {
            eprintln!("read: {label}, {connections} connections");
            for rep in 0..mode.reps {
                for k in 0..TARGETS.len() {
                    // Rotate the order each repetition: A B C, B C A, C A B…
                    let t = (k + rep) % TARGETS.len();
                    let url = format!("{}/o/bench/{}", urls[t], slug(size));
                    let run = Run::get(&url, connections, THREADS, mode.duration);
                    if rep == 0 && connections == mode.connections[0] {
                        // Warm connections, caches and the page cache.
                        run_wrk(
                            work,
                            &Run {
                                duration: Duration::from_secs(1),
                                ..run.clone()
                            },
                        )?;
                    }
                    let sample = run_wrk(work, &run)?;
                    rows.push(ReadRow {
                        target: TARGETS[t].to_owned(),
                        size,
                        connections,
                        rep,
                        sample,
                    });
                }
            }
        }
    }
    Ok(rows)
}

async fn edge_path(mode: &Mode, work: &Path) -> Result<Vec<EdgeRow>> {
    let origin = OriginProc::start(
        &work.join("edge-origin"),
        &["--store", "memory", "--open-writes"],
    )
    .await?;
    let body = json_of_size(1024);
    put(&format!("{}/o/bench/hit", origin.url()), body.clone()).await?;
    // Distinct keys for the miss runs, a fresh range per repetition.
    let keys: Vec<String> = (0..mode.reps)
        .flat_map(|rep| (0..mode.miss_span).map(move |i| format!("bench/r{rep}m{i}")))
        .collect();
    let base = origin.url();
    stream::iter(keys)
        .map(|k| put_owned(format!("{base}/o/{k}"), body.clone()))
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let edge = EdgeProc::start(&format!("origin-1={}", origin.url()), &[]).await?;
    let hit_url = format!("{}/o/bench/hit", edge.url());
    prefold_e2e::poll("a KV hit", Duration::from_secs(30), || async {
        let r = prefold_e2e::client().get(&hit_url).send().await.ok()?;
        (r.headers().get("x-prefold-source")?.to_str().ok()? == "kv").then_some(())
    })
    .await?;

    let direct_url = format!("{}/o/bench/hit", origin.url());
    // The Worker without KV: how much of an edge answer is wrangler dev itself.
    let health_url = format!("{}/healthz", edge.url());
    let mut rows = Vec::new();
    for rep in 0..mode.reps {
        // wrk's `request` hook takes a path; the host comes from the URL.
        let miss_prefix = format!("/o/bench/r{rep}m");
        let cases: [(&str, &str, Walk<'_>); 5] = [
            ("edge, no KV (/healthz)", &health_url, None),
            ("edge, KV hit", &hit_url, None),
            ("origin direct", &direct_url, None),
            (
                "edge, KV miss → origin",
                &hit_url,
                Some((&miss_prefix, mode.miss_span)),
            ),
            (
                "origin direct, same keys",
                &direct_url,
                Some((&miss_prefix, mode.miss_span)),
            ),
        ];
        for (k, (path, url, walk)) in cases.iter().enumerate() {
            eprintln!("edge: {path}, repetition {}", rep + 1);
            let run = Run {
                walk: *walk,
                ..Run::get(url, mode.edge_connections, THREADS, mode.edge_duration)
            };
            let sample = run_wrk(work, &run)?;
            rows.push(EdgeRow {
                path: (*path).to_owned(),
                rep,
                order: k,
                sample,
            });
        }
    }
    drop(edge);
    Ok(rows)
}

/// The deployed Worker's Wasm (`edge/build/index_bg.wasm`): its size raw and
/// gzip -9, and what dominates it ([`wasm_dominant`]; a note instead when
/// that cannot be measured).
fn wasm_size() -> Result<WasmSize> {
    use std::io::Write;
    let path = prefold_e2e::repo_root().join("edge/build/index_bg.wasm");
    let raw =
        std::fs::read(&path).with_context(|| format!("{} (build the edge)", path.display()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw)?;
    let (dominant, dominant_note) = match wasm_dominant(&path) {
        Ok(groups) => (groups, None),
        Err(e) => {
            eprintln!("edge wasm: what dominates it is not measured: {e:#}");
            (Vec::new(), Some(format!("{e:#}")))
        }
    };
    Ok(WasmSize {
        raw: raw.len() as u64,
        gzip: gz.finish()?.len() as u64,
        dominant,
        dominant_note,
    })
}

/// How many groups "what dominates" lists; the rest are summed in one row.
const WASM_GROUPS: usize = 14;

/// What dominates a Wasm module: `twiggy top` over it, grouped by crate (or
/// by part of the module: name section, data segments, bindings glue),
/// largest first. It needs the module's name section, which worker-build
/// keeps (it runs wasm-opt with `--debuginfo`), and twiggy, which
/// `scripts/bench-tools.sh` installs.
fn wasm_dominant(wasm: &Path) -> Result<Vec<WasmGroup>> {
    #[derive(serde::Deserialize)]
    struct Item {
        name: String,
        shallow_size: u64,
    }
    let twiggy = twiggy_bin().context("twiggy is not installed (scripts/bench-tools.sh)")?;
    let out = std::process::Command::new(&twiggy)
        .args(["top", "-f", "json"])
        .arg(wasm)
        .output()
        .with_context(|| format!("running {}", twiggy.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "twiggy top failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let items: Vec<Item> = serde_json::from_slice(&out.stdout).context("twiggy's JSON")?;
    anyhow::ensure!(
        items.iter().any(|i| i.name.contains("\"function names\"")),
        "{} has no name section, so its functions cannot be attributed",
        wasm.display()
    );
    // Each group with the size of its largest item.
    let mut groups: Vec<(WasmGroup, u64)> = Vec::new();
    for item in items {
        let name = wasm_group(&item.name);
        let i = match groups.iter().position(|(g, _)| g.group == name) {
            Some(i) => i,
            None => {
                let group = WasmGroup {
                    group: name,
                    bytes: 0,
                    items: 0,
                    largest: String::new(),
                };
                groups.push((group, 0));
                groups.len() - 1
            }
        };
        let (g, largest) = &mut groups[i];
        g.bytes += item.shallow_size;
        g.items += 1;
        if item.shallow_size > *largest || g.largest.is_empty() {
            *largest = item.shallow_size;
            g.largest = item.name;
        }
    }
    groups.sort_by(|(a, _), (b, _)| b.bytes.cmp(&a.bytes).then_with(|| a.group.cmp(&b.group)));
    if groups.len() > WASM_GROUPS {
        let rest = groups.split_off(WASM_GROUPS - 1);
        let largest = rest.iter().max_by_key(|(_, size)| *size);
        let group = WasmGroup {
            group: format!("{} smaller groups", rest.len()),
            bytes: rest.iter().map(|(g, _)| g.bytes).sum(),
            items: rest.iter().map(|(g, _)| g.items).sum(),
            largest: largest.map(|(g, _)| g.largest.clone()).unwrap_or_default(),
        };
        groups.push((group, 0));
    }
    Ok(groups.into_iter().map(|(g, _)| g).collect())
}

/// twiggy on the `PATH`, else where `cargo install` puts it.
fn twiggy_bin() -> Option<PathBuf> {
    let on_path = std::process::Command::new("twiggy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Some(PathBuf::from("twiggy"));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(cargo_home.join("bin/twiggy")).filter(|p| p.is_file())
}

/// The group of one twiggy item: a part of the module (name section, data
/// segments, bindings glue, the async handlers) or the crate its function
/// comes from, with a few crates that belong together named as one.
fn wasm_group(item: &str) -> String {
    if item.starts_with('"') || item.starts_with("custom section") {
        return "name section and custom sections".into();
    }
    if item.starts_with("data segment") {
        return "data segments (strings, tables, panic locations)".into();
    }
    if item.starts_with("js_sys::futures::future_to_promise::{{closure}}::{{closure}}") {
        // `#[event(fetch)]` and `#[event(scheduled)]` futures: the edge's
        // handlers, with whatever was inlined into them.
        return "async handlers (edge code inlined into future_to_promise)".into();
    }
    if item.starts_with("__wbg")
        || item.starts_with("__wbindgen")
        || item.starts_with("__externref")
        || item.starts_with("export ")
        || item.starts_with("import ")
        || item.contains(" shim")
    {
        return "wasm-bindgen exports, imports and shims".into();
    }
    if !item.contains("::") {
        return "unnamed code, tables and types".into();
    }
    let krate = item_crate(item);
    let group = match krate.as_str() {
        "core" | "alloc" | "std" | "dlmalloc" | "compiler_builtins" | "__rustc" | "" => {
            if item.contains("fmt") || item.contains("panic") {
                "std: fmt and panics"
            } else {
                "std: alloc, collections, str, sort"
            }
        }
        "js_sys" | "web_sys" | "wasm_bindgen" | "wasm_bindgen_futures" | "wasm_streams" => {
            "wasm-bindgen, js-sys, web-sys"
        }
        "worker" | "worker_sys" | "worker_kv" => "worker (workers-rs)",
        "serde" | "serde_core" => "serde",
        "hmac" | "sha2" | "digest" | "block_buffer" | "crypto_common" | "generic_array" => {
            "hmac, sha2 (RustCrypto)"
        }
        "toml" | "toml_parser" | "toml_datetime" | "serde_spanned" | "winnow" => "toml",
        "url" | "idna" | "idna_adapter" | "percent_encoding" | "form_urlencoded" => {
            "url, idna (URL parsing)"
        }
        k if k.starts_with("icu_") => "url, idna (URL parsing)",
        k => return k.to_owned(),
    };
    group.into()
}

/// The crate a demangled item name comes from: the first path segment of
/// its own type (`<serde_json::Value as Trait>::f` is serde_json's), or of
/// the trait when the type is a primitive (`<f64 as core::fmt::Display>`).
/// Disambiguators such as `core[c5930c85a12de822]` are dropped, and
/// primitive types count as `core`.
fn item_crate(item: &str) -> String {
    let first_segment = |path: &str| -> Option<String> {
        let path = path.trim_start_matches(['&', '*', '(', '[', ' ']);
        let path = ["mut ", "const ", "dyn "]
            .iter()
            .fold(path, |p, prefix| p.strip_prefix(prefix).unwrap_or(p));
        let head = path.split(['<', ' ']).next().unwrap_or_default();
        let (krate, _) = head.split_once("::")?;
        Some(krate.split('[').next().unwrap_or(krate).to_owned())
    };
    let Some(inner) = item.strip_prefix('<') else {
        return first_segment(item).unwrap_or_default();
    };
    // `<Type as Trait>::f`: split at the ` as ` outside any nested `<…>`.
    let mut depth = 0usize;
    let (mut ty, mut tr) = (inner, None);
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => {
                ty = &inner[..i];
                break;
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && inner[i..].starts_with(" as ") => {
                (ty, tr) = (&inner[..i], Some(&inner[i + 4..]));
                break;
            }
            _ => {}
        }
    }
    first_segment(ty)
        .or_else(|| tr.and_then(first_segment))
        .unwrap_or_else(|| "core".to_owned())
}

/// Reads criterion's medians from `target/criterion/*/…/new/`.
fn micro_results() -> Result<Vec<MicroRow>> {
    let base = prefold_e2e::repo_root().join("target/criterion");
    let mut rows = Vec::new();
    for file in prefold_e2e::files_under(&base) {
        if !file.ends_with("new/estimates.json") {
            continue;
        }
        let Some(dir) = file.parent() else { continue };
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("benchmark.json"))?)?;
        let est: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        rows.push(MicroRow {
            id: meta["full_id"].as_str().unwrap_or_default().to_owned(),
            median_ns: est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN),
        });
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.render_only {
        let (latest, storage, views) = (
            args.out.join("latest.json"),
            args.out.join("storage.json"),
            args.out.join("views.json"),
        );
        anyhow::ensure!(
            latest.exists() || storage.exists() || views.exists(),
            "nothing to re-render: no {}, {} or {}",
            latest.display(),
            storage.display(),
            views.display()
        );
        if latest.exists() {
            Report::load(&args.out)?.write(&args.out)?;
        }
        if storage.exists() {
            StorageReport::load(&args.out)?.write(&args.out)?;
        }
        if views.exists() {
            ViewsReport::load(&args.out)?.write(&args.out)?;
        }
        return Ok(());
    }
    let mode = if args.full {
        Mode::full()
    } else {
        Mode::quick()
    };
    let parts = if args.only.is_empty() {
        vec![
            Part::Read,
            Part::Edge,
            Part::Micro,
            Part::Storage,
            Part::Views,
        ]
    } else {
        args.only.clone()
    };
    let work = tempfile::tempdir()?;
    let mut report = Report::new(mode.name, mode.reps, mode.duration, mode.edge_duration);
    if parts.contains(&Part::Read) {
        report.read = read_path(&mode, work.path()).await?;
    } else if let Ok(previous) = Report::load(&args.out) {
        // `--only edge,micro` keeps the read path's last results, saying
        // where they come from, rather than dropping them from latest.md.
        report.read_from = Some(
            previous
                .read_from
                .clone()
                .unwrap_or_else(|| previous.made_at()),
        );
        report.read = previous.read;
    }
    if parts.contains(&Part::Edge) {
        report.edge = edge_path(&mode, work.path()).await?;
        report.edge_connections = mode.edge_connections;
        report.miss_span = mode.miss_span;
    }
    report.wasm = wasm_size().ok();
    if parts.contains(&Part::Micro) {
        report.micro = micro_results()?;
    }
    std::fs::create_dir_all(&args.out)?;
    // `--only storage` and `--only views` leave the other parts' results alone.
    if parts
        .iter()
        .any(|p| !matches!(p, Part::Storage | Part::Views))
    {
        report.write(&args.out)?;
        eprintln!("results: {}", args.out.join("latest.md").display());
    }
    if parts.contains(&Part::Storage) {
        let storage = storage::run(args.full, work.path()).await?;
        storage.write(&args.out)?;
        eprintln!("results: {}", args.out.join("storage.md").display());
    }
    if parts.contains(&Part::Views) {
        let views = views::run(args.full, work.path()).await?;
        views.write(&args.out)?;
        eprintln!("results: {}", args.out.join("views.md").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{item_crate, wasm_group};

    #[test]
    fn twiggy_items_are_grouped_by_crate() {
        let cases = [
            ("serde_json::de::from_str::habe349f1e156de1c", "serde_json"),
            (
                "<&mut serde_json::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_any::h38",
                "serde_json",
            ),
            ("<f64 as core[c5930c85a12de822]::fmt::Display>::fmt", "std: fmt and panics"),
            (
                "alloc::collections::btree::map::BTreeMap<K,V,A>::insert::h77",
                "std: alloc, collections, str, sort",
            ),
            ("sha2::sha256::compress256::ha6", "hmac, sha2 (RustCrypto)"),
            ("url::host::Host<alloc::borrow::Cow<str>>::parse_cow::h18", "url, idna (URL parsing)"),
            ("icu_normalizer::compose_non_hangul::hc6", "url, idna (URL parsing)"),
            ("worker::request::Request::new_with_init::h98", "worker (workers-rs)"),
            ("prefold_core::auth::verify::hbe", "prefold_core"),
            (
                "js_sys::futures::future_to_promise::{{closure}}::{{closure}}::h7c",
                "async handlers (edge code inlined into future_to_promise)",
            ),
            ("\"function names\" subsection", "name section and custom sections"),
            ("data segment \".rodata.33\"", "data segments (strings, tables, panic locations)"),
            ("__wbg_set_containerstartupoptions_entrypoint", "wasm-bindgen exports, imports and shims"),
            ("code[1119]", "unnamed code, tables and types"),
        ];
        for (item, group) in cases {
            assert_eq!(wasm_group(item), group, "{item}");
        }
        assert_eq!(item_crate("<char>::escape_debug_ext"), "core");
        assert_eq!(
            item_crate("<worker::request::Request as core::convert::From<web_sys::Request>>::from"),
            "worker"
        );
    }
}
