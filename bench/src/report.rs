//! Turning samples into `latest.md`, `latest.json` and SVG plots.
//!
//! Every figure in the tables is a median over repetitions; every comparison is
//! a ratio between targets measured in the same run, because absolute numbers
//! on a shared 2-core machine are noise while ratios of alternated runs are not.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::Sample;

/// Reads `{stem}.json` from `dir` (a report written by [`save`]).
pub fn load_json<T: serde::de::DeserializeOwned>(dir: &Path, stem: &str) -> Result<T> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join(format!("{stem}.json")),
    )?)?)
}

/// Writes a report as `{stem}.json` (every sample) and `{stem}.md`.
pub fn save(dir: &Path, stem: &str, report: &impl Serialize, markdown: &str) -> Result<()> {
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_vec_pretty(report)?,
    )?;
    std::fs::write(dir.join(format!("{stem}.md")), markdown)?;
    Ok(())
}
use crate::{SIZES, TARGETS};

/// One read-benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRow {
    /// `prefold`, `nginx` or `floor`.
    pub target: String,
    /// Object size in bytes.
    pub size: usize,
    /// wrk connections.
    pub connections: u32,
    /// Repetition number.
    pub rep: usize,
    /// What wrk measured.
    pub sample: Sample,
}

/// One edge-benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeRow {
    /// Which path was measured.
    pub path: String,
    /// Repetition number.
    pub rep: usize,
    /// Position in the repetition's order.
    pub order: usize,
    /// What wrk measured.
    pub sample: Sample,
}

/// One criterion benchmark's median.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroRow {
    /// Criterion's full id, e.g. `routing_owner/100`.
    pub id: String,
    /// Median time per iteration, ns.
    pub median_ns: f64,
}

/// The Worker's Wasm size, and what dominates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmSize {
    /// Bytes as deployed.
    pub raw: u64,
    /// Bytes gzip -9.
    pub gzip: u64,
    /// The largest parts of the module by crate (`twiggy top`, grouped),
    /// largest first; empty when they could not be measured.
    #[serde(default)]
    pub dominant: Vec<WasmGroup>,
    /// Why `dominant` is empty (twiggy missing, no name section), if it is.
    #[serde(default)]
    pub dominant_note: Option<String>,
}

/// One crate, or one part of the module (name section, data segments, glue),
/// and the bytes its items take in the deployed Wasm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmGroup {
    /// The crate or part, e.g. `serde_json` or `data segments`.
    pub group: String,
    /// Shallow bytes of its items.
    pub bytes: u64,
    /// How many items (functions, data segments, sections).
    pub items: u64,
    /// Its largest item, as twiggy names it.
    pub largest: String,
}

/// Everything one `prefold-bench` run produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    mode: String,
    reps: usize,
    run_ms: u128,
    edge_run_ms: u128,
    /// Read benchmark samples.
    pub read: Vec<ReadRow>,
    /// Edge benchmark samples.
    pub edge: Vec<EdgeRow>,
    /// Edge connections used.
    pub edge_connections: u32,
    /// Distinct keys per miss run.
    pub miss_span: u64,
    /// Micro benchmark medians.
    pub micro: Vec<MicroRow>,
    /// Wasm size.
    pub wasm: Option<WasmSize>,
    machine: Vec<(String, String)>,
    /// When the read path was not re-run (`--only` without `read`): the
    /// date and commit of the run its rows come from.
    #[serde(default)]
    pub read_from: Option<String>,
}

/// The median of some numbers (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The first line a command prints (stdout, else stderr), or `not found`.
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "not found".to_owned())
}

/// The machine table both reports open with, as Markdown lines.
pub fn machine_table(machine: &[(String, String)]) -> Vec<String> {
    let mut out = vec!["| | |".to_owned(), "|---|---|".to_owned()];
    out.extend(machine.iter().map(|(k, v)| format!("| {k} | {v} |")));
    out.push(String::new());
    out
}

/// "What dominates" the edge Wasm, as Markdown lines: one row per crate or
/// part of the module, or the note saying why there are none (nothing at all
/// for reports written before this table existed, which have neither).
fn wasm_dominant_table(w: &WasmSize) -> Vec<String> {
    let mut out = vec!["### What dominates".to_owned(), String::new()];
    if w.dominant.is_empty() {
        let Some(note) = &w.dominant_note else {
            return Vec::new();
        };
        out.push(format!("Not measured: {note}."));
        out.push(String::new());
        return out;
    }
    out.push(
        "`twiggy top` over the same file (worker-build keeps its name section), grouped by \
         crate. Bytes are shallow and raw: code inlined into an async handler counts where it \
         was inlined."
            .to_owned(),
    );
    out.push(String::new());
    out.push("| crate or part | bytes | share | items | largest item |".to_owned());
    out.push("|---|---:|---:|---:|---|".to_owned());
    for g in &w.dominant {
        let mut largest = g.largest.replace('|', "\\|");
        if largest.chars().count() > 70 {
            largest = largest.chars().take(69).chain(['…']).collect();
        }
        out.push(format!(
            "| {} | {} | {:.1} % | {} | `{largest}` |",
            g.group,
            g.bytes,
            100.0 * g.bytes as f64 / w.raw.max(1) as f64,
            g.items,
        ));
    }
    out.push(String::new());
    out
}

/// The machine and tool versions a report names.
pub fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let root = prefold_e2e::repo_root();
    let wrangler = root.join("node_modules/.bin/wrangler");
    vec![
        (
            "date (UTC)".into(),
            command_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
        ),
        (
            "commit".into(),
            command_line(
                "git",
                &[
                    "-C",
                    &root.to_string_lossy(),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ],
            ),
        ),
        (
            "cpu".into(),
            format!(
                "{cpu} × {}",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
        ),
        ("kernel".into(), command_line("uname", &["-sr"])),
        ("rustc".into(), command_line("rustc", &["--version"])),
        (
            "nginx".into(),
            command_line(&crate::load::nginx_bin().to_string_lossy(), &["-v"]),
        ),
        ("wrk".into(), command_line("wrk", &["-v"])),
        (
            "wrangler".into(),
            command_line(&wrangler.to_string_lossy(), &["--version"]),
        ),
    ]
}

/// Median of one metric for one cell of the read matrix.
struct Cell {
    rps: f64,
    mbps: f64,
    p50: f64,
    p99: f64,
}

impl Cell {
    /// The medians of some samples (`None` for none).
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<Cell> {
        let samples: Vec<&Sample> = samples.collect();
        if samples.is_empty() {
            return None;
        }
        let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
        Some(Cell {
            rps: m(&|s| s.rps()),
            mbps: m(&|s| s.mbps()),
            p50: m(&|s| s.p50_us),
            p99: m(&|s| s.p99_us),
        })
    }
}

impl Report {
    /// An empty report for a mode.
    pub fn new(mode: &str, reps: usize, run: Duration, edge_run: Duration) -> Report {
        Report {
            mode: mode.to_owned(),
            reps,
            run_ms: run.as_millis(),
            edge_run_ms: edge_run.as_millis(),
            read: Vec::new(),
            edge: Vec::new(),
            edge_connections: 0,
            miss_span: 0,
            micro: Vec::new(),
            wasm: None,
            machine: machine(),
            read_from: None,
        }
    }

    /// The date and commit this report was made at.
    pub fn made_at(&self) -> String {
        let get = |k: &str| {
            self.machine
                .iter()
                .find(|(n, _)| n.starts_with(k))
                .map_or("?", |(_, v)| v.as_str())
        };
        format!("{} UTC, commit {}", get("date"), get("commit"))
    }

    fn cell(&self, target: &str, size: usize, connections: u32) -> Option<Cell> {
        Cell::of(
            self.read
                .iter()
                .filter(|r| r.target == target && r.size == size && r.connections == connections)
                .map(|r| &r.sample),
        )
    }

    /// The lowest and highest per-repetition ratio of two targets' req/s
    /// (each repetition ran both back to back, so this is the run-to-run
    /// spread of the ratio itself).
    fn ratio_range(&self, a: &str, b: &str, size: usize, connections: u32) -> Option<(f64, f64)> {
        let rps = |t: &str, rep: usize| {
            self.read
                .iter()
                .find(|r| {
                    r.target == t && r.size == size && r.connections == connections && r.rep == rep
                })
                .map(|r| r.sample.rps())
        };
        let ratios: Vec<f64> = (0..self.reps)
            .filter_map(|rep| Some(rps(a, rep)? / rps(b, rep)?))
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!ratios.is_empty()).then_some((lo, hi))
    }

    fn connection_counts(&self) -> Vec<u32> {
        let mut c: Vec<u32> = self.read.iter().map(|r| r.connections).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    fn edge_cell(&self, path: &str) -> Option<Cell> {
        Cell::of(
            self.edge
                .iter()
                .filter(|r| r.path == path)
                .map(|r| &r.sample),
        )
    }

    fn micro(&self, id: &str) -> Option<f64> {
        self.micro.iter().find(|m| m.id == id).map(|m| m.median_ns)
    }

    /// Reads a report written by [`Report::write`].
    pub fn load(dir: &Path) -> Result<Report> {
        load_json(dir, "latest")
    }

    /// Writes `latest.md`, `latest.json` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        if !self.read.is_empty() {
            self.plot_ratios(&dir.join("read_vs_nginx.svg"))?;
        }
        save(dir, "latest", self, &self.markdown())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let mut line = |s: &str| {
            md.push_str(s);
            md.push('\n');
        };
        line("# prefold benchmark results");
        line("");
        line(&format!(
            "Mode `{}`: {} alternated repetitions per cell, {} ms per read run, {} ms per edge run. \
             Every figure is the median over the repetitions; compare ratios, not absolute numbers \
             (the machine is shared). Regenerate with `make bench` (quick) or `make bench-full`.",
            self.mode, self.reps, self.run_ms, self.edge_run_ms
        ));
        line("");
        for l in machine_table(&self.machine) {
            line(&l);
        }
        for l in self.goals() {
            line(&l);
        }
        if !self.read.is_empty() {
            line("## Read path: hot `GET /o/{key}`");
            line("");
            if let Some(from) = &self.read_from {
                line(&format!(
                    "Not re-run with the rest of this report: these rows are from the run of {from}."
                ));
                line("");
            }
            line(
                "prefold-origin (hot tier) against nginx serving the same bytes as static files \
                  (`sendfile on`, one worker per core, access log off) and against the floor, a \
                  bare axum + moka handler. Every server gets one thread or worker per core; wrk \
                  runs 2 threads on the same cores. \"(per run)\" is the lowest and highest ratio \
                  within one repetition, in which the targets ran back to back: the spread this \
                  shared machine adds.",
            );
            line("");
            line("![prefold and floor throughput relative to nginx](read_vs_nginx.svg)");
            line("");
            line("| size | conns | prefold req/s | nginx req/s | floor req/s | prefold/nginx | (per run) | prefold/floor | (per run) | prefold MB/s | p50 µs prefold / nginx / floor | p99 µs prefold / nginx / floor |");
            line("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for (size, label) in SIZES {
                for c in self.connection_counts() {
                    let cells: Vec<Option<Cell>> =
                        TARGETS.iter().map(|t| self.cell(t, size, c)).collect();
                    let [Some(p), Some(n), Some(f)] = [&cells[0], &cells[1], &cells[2]] else {
                        continue;
                    };
                    let range = |other: &str| {
                        self.ratio_range("prefold", other, size, c)
                            .map_or_else(String::new, |(lo, hi)| format!("{lo:.2}–{hi:.2}"))
                    };
                    line(&format!(
                        "| {label} | {c} | {:.0} | {:.0} | {:.0} | **{:.2}** | {} | {:.2} | {} | {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
                        p.rps, n.rps, f.rps, p.rps / n.rps, range("nginx"), p.rps / f.rps, range("floor"),
                        p.mbps, p.p50, n.p50, f.p50, p.p99, n.p99, f.p99
                    ));
                }
            }
            line("");
        }
        if !self.edge.is_empty() {
            line("## Edge path: `wrangler dev` against the origin directly");
            line("");
            line(&format!(
                "1 KiB objects, {} connections. A KV hit is answered by the Worker from local KV; \
                 a miss walks {} distinct keys per repetition that KV does not have yet, so the \
                 Worker calls the origin and fills KV. `wrangler dev` runs workerd locally with \
                 Miniflare's KV; it is not the speed of Cloudflare's network, but it is the same \
                 Worker code path.",
                self.edge_connections, self.miss_span
            ));
            line("");
            line("| path | req/s | p50 µs | p99 µs | req/s ratio to origin direct |");
            line("|---|---|---|---|---|");
            let pairs = [
                ("edge, no KV (/healthz)", "origin direct"),
                ("edge, KV hit", "origin direct"),
                ("origin direct", "origin direct"),
                ("edge, KV miss → origin", "origin direct, same keys"),
                ("origin direct, same keys", "origin direct, same keys"),
            ];
            for (path, anchor) in pairs {
                if let (Some(c), Some(a)) = (self.edge_cell(path), self.edge_cell(anchor)) {
                    line(&format!(
                        "| {path} | {:.0} | {:.0} | {:.0} | {:.3} |",
                        c.rps,
                        c.p50,
                        c.p99,
                        c.rps / a.rps
                    ));
                }
            }
            let requests = median(
                self.edge
                    .iter()
                    .filter(|r| r.path == "edge, KV miss → origin")
                    .map(|r| r.sample.requests as f64)
                    .collect(),
            );
            if requests > self.miss_span as f64 {
                line("");
                line(&format!(
                    "Note: a miss run made {requests:.0} requests over {} keys, so part of it hit KV.",
                    self.miss_span
                ));
            }
            line("");
        }
        if let Some(w) = &self.wasm {
            line("## Edge Wasm size");
            line("");
            line(&format!(
                "`edge/build/index_bg.wasm`: {} bytes raw ({:.1} KiB), {} bytes gzip -9 ({:.1} KiB).",
                w.raw,
                w.raw as f64 / 1024.0,
                w.gzip,
                w.gzip as f64 / 1024.0
            ));
            line("");
            for l in wasm_dominant_table(w) {
                line(&l);
            }
        }
        if !self.micro.is_empty() {
            line("## Micro benchmarks (criterion medians)");
            line("");
            line("| benchmark | median |");
            line("|---|---|");
            for m in &self.micro {
                line(&format!("| `{}` | {} |", m.id, human_ns(m.median_ns)));
            }
            line("");
        }
        md
    }

    fn goals(&self) -> Vec<String> {
        let mut out = vec![
            "## Goals".to_owned(),
            String::new(),
            "| goal | measured | met |".to_owned(),
            "|---|---|---|".to_owned(),
        ];
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        for (size, label) in SIZES {
            let mut worst_ratio = f64::INFINITY;
            let mut p99_ok = true;
            let mut worst_p99 = 0.0f64;
            let mut any = false;
            for c in self.connection_counts() {
                if let (Some(p), Some(n)) =
                    (self.cell("prefold", size, c), self.cell("nginx", size, c))
                {
                    any = true;
                    worst_ratio = worst_ratio.min(p.rps / n.rps);
                    worst_p99 = worst_p99.max(p.p99 / n.p99);
                    p99_ok &= p.p99 <= n.p99;
                }
            }
            if any {
                out.push(format!(
                    "| hot read ≥ 1.0× nginx, {label}, every connection count | worst {worst_ratio:.2}× | {} |",
                    yes(worst_ratio >= 1.0)
                ));
                out.push(format!(
                    "| hot read p99 ≤ nginx's, {label} | worst {worst_p99:.2}× nginx's p99 | {} |",
                    yes(p99_ok)
                ));
            }
        }
        let mut worst_floor = f64::INFINITY;
        for (size, _) in SIZES {
            for c in self.connection_counts() {
                if let (Some(p), Some(f)) =
                    (self.cell("prefold", size, c), self.cell("floor", size, c))
                {
                    worst_floor = worst_floor.min(p.rps / f.rps);
                }
            }
        }
        if worst_floor.is_finite() {
            out.push(format!(
                "| request path within 10 % of the bare axum + moka floor | worst {worst_floor:.2}× floor | {} |",
                yes(worst_floor >= 0.9)
            ));
        }
        if let Some(ns) = self.micro("routing_owner/100") {
            out.push(format!(
                "| routing lookup ≤ 1 µs for 100 origins | {} | {} |",
                human_ns(ns),
                yes(ns <= 1000.0)
            ));
        }
        if let Some(w) = &self.wasm {
            out.push(format!(
                "| edge Wasm ≤ 200 KiB gzip | {:.1} KiB | {} |",
                w.gzip as f64 / 1024.0,
                yes(w.gzip <= 200 * 1024)
            ));
        }
        out.push(String::new());
        out
    }

    /// Grouped bars: prefold and floor throughput as a multiple of nginx's,
    /// one group per size and connection count, with the 1.0 line marked.
    fn plot_ratios(&self, path: &Path) -> Result<()> {
        let mut groups: Vec<(String, f64, f64)> = Vec::new();
        for (size, label) in SIZES {
            for c in self.connection_counts() {
                if let (Some(p), Some(n), Some(f)) = (
                    self.cell("prefold", size, c),
                    self.cell("nginx", size, c),
                    self.cell("floor", size, c),
                ) {
                    groups.push((format!("{label} c{c}"), p.rps / n.rps, f.rps / n.rps));
                }
            }
        }
        let top = groups.iter().map(|g| g.1.max(g.2)).fold(1.2f64, f64::max) * 1.1;
        let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        // Ten x units per group, with a (blank) label at every unit: plotters
        // then puts a label exactly at each group's centre, `10 i + 5`.
        let n = groups.len() as f64 * 10.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Hot GET throughput relative to nginx (median)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n, 0f64..top)?;
        let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 10 + 1)
            .x_label_formatter(&|x| {
                let unit = x.round() as i64;
                if (x - x.round()).abs() < 1e-6 && unit % 10 == 5 {
                    labels
                        .get((unit / 10) as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("× nginx req/s")
            .draw()?;
        let series = [
            ("prefold-origin", 1.2, RGBColor(0xd9, 0x5f, 0x02)),
            ("floor (bare axum + moka)", 5.2, RGBColor(0x75, 0x70, 0xb3)),
        ];
        for (k, (name, offset, color)) in series.into_iter().enumerate() {
            chart
                .draw_series(groups.iter().enumerate().map(|(i, g)| {
                    let x = i as f64 * 10.0 + offset;
                    let value = if k == 0 { g.1 } else { g.2 };
                    Rectangle::new([(x, 0.0), (x + 3.6, value)], color.filled())
                }))?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, 1.0), (n, 1.0)],
                BLACK.stroke_width(2),
            ))?
            .label("nginx = 1.0")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
