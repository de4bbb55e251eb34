//! Load generation with `wrk`, and the servers it is aimed at.
//!
//! Every run goes through one Lua script whose `done` hook prints a JSON line
//! with exact numbers from wrk's own histogram (requests, bytes, errors,
//! non-2xx answers, p50 and p99 in microseconds), so nothing is scraped from
//! wrk's human-readable output. A run may change the method, send a body and
//! extra headers (writes), and walk a range of distinct keys `{prefix}{i}`
//! through a `request` hook (cache-miss runs, writes spread over many keys).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One wrk run's outcome.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    /// Completed requests.
    pub requests: u64,
    /// Run length in microseconds.
    pub duration_us: u64,
    /// Response bytes read (headers and bodies).
    pub bytes: u64,
    /// Connect, read, write and timeout errors.
    pub errors: u64,
    /// Answers with a status other than 2xx or 3xx.
    pub non2xx: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
}

impl Sample {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Megabytes (10^6) per second read.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / (self.duration_us as f64 / 1e6) / 1e6
    }
}

const SCRIPT: &str = r#"
-- Written by prefold-bench. Threads get ids so that key walks do not overlap.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
-- Method, body (from a file) and extra headers of every request; wrk.format
-- falls back to these when its arguments are nil.
local method = os.getenv("PREFOLD_METHOD")
if method ~= nil and method ~= "" then
  wrk.method = method
end
local body_file = os.getenv("PREFOLD_BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
end
local headers = os.getenv("PREFOLD_HEADERS")
if headers ~= nil and headers ~= "" then
  for line in string.gmatch(headers, "[^\n]+") do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name ~= nil then
      wrk.headers[name] = value
    end
  end
end
local counter = 0
local prefix = os.getenv("PREFOLD_WALK_PREFIX")
local span = tonumber(os.getenv("PREFOLD_WALK_SPAN") or "0")
local nthreads = tonumber(os.getenv("PREFOLD_WALK_THREADS") or "1")
if prefix ~= nil and prefix ~= "" then
  request = function()
    local i = (counter * nthreads + tid) % span
    counter = counter + 1
    return wrk.format(nil, prefix .. i)
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"non2xx":%d,"p50_us":%.1f,"p99_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// Options of one wrk run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// Full URL (for a key walk, any URL on the server).
    pub url: &'a str,
    /// Concurrent connections.
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
    /// How long.
    pub duration: Duration,
    /// Walk `{prefix}{i}` for `i` in `0..span` instead of one URL.
    pub walk: Option<(&'a str, u64)>,
    /// HTTP method (`GET` for reads).
    pub method: &'a str,
    /// Request body sent with every request (writes).
    pub body: Option<&'a [u8]>,
    /// Extra request headers, e.g. `("content-type", "application/json")`.
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> Run<'a> {
    /// A `GET` of `url` (no body, no extra headers, no walk).
    pub fn get(url: &'a str, connections: u32, threads: u32, duration: Duration) -> Run<'a> {
        Run {
            url,
            connections,
            threads,
            duration,
            walk: None,
            method: "GET",
            body: None,
            headers: &[],
        }
    }
}

/// Runs wrk once and returns its numbers. Any error or non-2xx answer fails
/// the run: a benchmark that measured errors measured nothing.
pub fn wrk(script_dir: &Path, run: &Run<'_>) -> Result<Sample> {
    let script = script_dir.join("prefold.lua");
    std::fs::write(&script, SCRIPT)?;
    let mut cmd = Command::new("wrk");
    cmd.arg("-t")
        .arg(run.threads.to_string())
        .arg("-c")
        .arg(run.connections.max(run.threads).to_string())
        .arg("-d")
        // wrk takes whole seconds.
        .arg(format!("{}s", run.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(run.url)
        .env("PREFOLD_WALK_THREADS", run.threads.to_string())
        .env("PREFOLD_METHOD", run.method);
    if let Some((prefix, span)) = run.walk {
        cmd.env("PREFOLD_WALK_PREFIX", prefix)
            .env("PREFOLD_WALK_SPAN", span.to_string());
    }
    if let Some(body) = run.body {
        // Runs are sequential, so one body file per directory is enough.
        let file = script_dir.join("prefold-body.bin");
        std::fs::write(&file, body)?;
        cmd.env("PREFOLD_BODY_FILE", file);
    }
    if !run.headers.is_empty() {
        let lines: Vec<String> = run
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect();
        cmd.env("PREFOLD_HEADERS", lines.join("\n"));
    }
    let out = cmd.output().context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no result line from wrk: {stdout}"))?;
    let sample: Sample = serde_json::from_str(line)?;
    if sample.errors > 0 || sample.non2xx > 0 || sample.requests == 0 {
        bail!("wrk against {} saw errors: {line}", run.url);
    }
    Ok(sample)
}

/// A server process started for a benchmark; killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Server {
    /// Starts a program that prints `… listening on http://ADDR` as its first
    /// stdout line.
    pub fn spawn_announcing(program: &Path, args: &[&str]) -> Result<Server> {
        Server::spawn_with(program, args, &[], None)
    }

    /// [`Server::spawn_announcing`] with extra environment variables, and
    /// standard error appended to `log` (discarded without one).
    pub fn spawn_with(
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: Option<&Path>,
    ) -> Result<Server> {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::null(),
        };
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .last()
            .filter(|u| u.starts_with("http://"))
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        Ok(Server { child, url })
    }

    /// The process id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts nginx serving `root` on `port` with a configuration written to
    /// `dir`: `sendfile on`, `workers` worker processes, access log off.
    pub fn nginx(dir: &Path, root: &Path, port: u16, workers: usize) -> Result<Server> {
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                r#"
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  default_type application/json;
  client_body_temp_path {d}/nginx-body;
  proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fastcgi;
  uwsgi_temp_path {d}/nginx-uwsgi;
  scgi_temp_path {d}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"#,
                root = root.display()
            ),
        )?;
        let child = Command::new(nginx_bin())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        Ok(Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx's master stops its workers on SIGTERM; plain kill is enough
        // for the others.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The nginx binary: `NGINX_BIN`, or Debian's.
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}
