//! Harness for prefold's end-to-end tests: real processes, real ports.
//!
//! [`OriginProc`] starts the `prefold-origin` binary on `127.0.0.1:0` and learns
//! its port from the first line it prints; [`EdgeProc`] starts `wrangler dev`
//! on free ports with its own KV state directory and an origin list pointing
//! at the test's origins. Both wait for readiness by polling (`/readyz`,
//! `/healthz`) with a deadline, never by sleeping a fixed time, and both are
//! killed with their whole process group when dropped, so a failing test
//! leaves nothing running.
//!
//! Origins and edges get the test secrets ([`TOKEN_SECRET`],
//! [`CLUSTER_SECRET`]); [`client`] and [`raw`] send a `write:*` token with
//! every request, and [`bare_client`] sends none.
//!
//! [`raw`] sends a request whose path is put on the wire exactly as given:
//! URL libraries normalize `..` and percent-encoding, which would hide exactly
//! the malformed keys the tests need to send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, StatusCode};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The origin binary: `PREFOLD_ORIGIN_BIN`, or the workspace's debug build.
pub fn origin_bin() -> PathBuf {
    std::env::var_os("PREFOLD_ORIGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/prefold-origin"))
}

/// A loopback port nobody is listening on right now, for a server that is
/// started later (wrangler, or an origin list that must name its ports).
///
/// Taken below the kernel's ephemeral range: a port the kernel hands out
/// (`127.0.0.1:0` listeners, every outgoing connection) could otherwise be
/// given to someone else between this check and the server's bind. Within
/// the process a counter walks the range; its start depends on the process
/// id, so test binaries run one after another rarely start on the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    let (first, span) = (1024_u32, low - 1024);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(first + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}");
}

/// The secret the test origins and edges verify write tokens with.
pub const TOKEN_SECRET: &str = "prefold-test-token-secret-of-32+bytes";
/// The test cluster's secret (origin↔edge calls).
pub const CLUSTER_SECRET: &str = "prefold-test-cluster-secret-32+bytes";

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    // The harness mints tokens for real processes, which read the real
    // clock: it must read the same one.
    #[allow(clippy::disallowed_methods)]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token signed with [`TOKEN_SECRET`] (or `secret`) with `scope`,
/// expiring `ttl_secs` from now (negative: already expired).
pub fn token_with(secret: &str, scope: &str, ttl_secs: i64) -> String {
    let exp = unix_secs().saturating_add_signed(ttl_secs);
    prefold_core::auth::mint(
        secret.as_bytes(),
        &prefold_core::auth::Claims {
            sub: Some("e2e".into()),
            exp,
            scope: scope.into(),
        },
    )
}

/// A `write:*` token valid for an hour, as an `Authorization` value.
pub fn auth_header() -> String {
    format!("Bearer {}", token_with(TOKEN_SECRET, "write:*", 3600))
}

/// An HTTP client for well-formed requests: it sends a `write:*` token
/// (valid for an hour).
///
/// One client per process, cloned (a reference count): building one loads
/// the TLS roots, which costs far more than the requests the tests send. It
/// keeps no idle connections: each test has its own tokio runtime, and a
/// pooled connection is driven by a task of the runtime that opened it.
pub fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                auth_header().parse().expect("a token is a header value"),
            );
            build_client(headers)
        })
        .clone()
}

/// An HTTP client that sends no credentials (shared, as [`client`]).
pub fn bare_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| build_client(reqwest::header::HeaderMap::new()))
        .clone()
}

fn build_client(headers: reqwest::header::HeaderMap) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .default_headers(headers)
        .build()
        .expect("client")
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server's `/metrics` (Prometheus text), as `name{labels}` → value.
pub async fn scrape_metrics(base_url: &str) -> Result<HashMap<String, f64>> {
    let text = client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

/// Prometheus text as `name{labels}` → value (comments and unparsable
/// lines skipped).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `url` until it answers 2xx, for at most `timeout`.
pub async fn wait_until_ok(url: &str, timeout: Duration) -> Result<()> {
    poll(url, timeout, || async {
        matches!(client().get(url).send().await, Ok(r) if r.status().is_success()).then_some(())
    })
    .await
}

/// [`wait_until_ok`] for a process of ours: on timeout the error carries the
/// tail of its log.
async fn wait_ok(url: &str, timeout: Duration, log: &Path) -> Result<()> {
    wait_until_ok(url, timeout).await.with_context(|| tail(log))
}

/// The last 40 lines of a log file.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "{} (last lines):\n{}",
        log.display(),
        lines[from..].join("\n")
    )
}

/// A running `prefold-origin`.
pub struct OriginProc {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its `--data` directory.
    pub data: PathBuf,
    log: PathBuf,
}

impl OriginProc {
    /// Starts an origin on a free port with the embedded store under `data`,
    /// and waits until `/readyz` says 200.
    pub async fn start(data: &Path, extra: &[&str]) -> Result<OriginProc> {
        let origin = OriginProc::spawn(data, extra, &[]).await?;
        origin.wait_ready().await?;
        Ok(origin)
    }

    /// [`OriginProc::start`] with extra environment variables (e.g. `AWS_*`).
    pub async fn start_env(
        data: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<OriginProc> {
        let origin = OriginProc::spawn(data, extra, env).await?;
        origin.wait_ready().await?;
        Ok(origin)
    }

    /// Waits until `/readyz` says 200 (30 s at most).
    pub async fn wait_ready(&self) -> Result<()> {
        let ready = format!("{}/readyz", self.url());
        wait_ok(&ready, Duration::from_secs(30), &self.log).await
    }

    /// Starts an origin and returns once it listens, without waiting for
    /// readiness.
    pub async fn spawn(
        data: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<OriginProc> {
        std::fs::create_dir_all(data)?;
        // Origins of one cluster share a data directory (the store), so each
        // gets a log file of its own.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data.join(format!("origin-{}-{n}.log", std::process::id()));
        let stderr = std::fs::File::create(&log)?;
        let mut cmd = Command::new(origin_bin());
        // `--listen` in `extra` (an origin list needs its ports up front)
        // replaces the default free port.
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data")
            .arg(data)
            .args(extra)
            .env("PREFOLD_LOG", "info");
        if extra.contains(&"--open-writes") {
            cmd.env_remove("PREFOLD_TOKEN_SECRET");
        } else {
            cmd.env("PREFOLD_TOKEN_SECRET", TOKEN_SECRET);
        }
        let mut child = cmd
            .env("PREFOLD_CLUSTER_SECRET", CLUSTER_SECRET)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", origin_bin().display()))?;
        let stdout = child.stdout.take().context("origin stdout")?;
        // The first line names the address; reading it blocks, so do it off
        // the async runtime.
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("prefold-origin listening on http://")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(OriginProc {
            child: Some(child),
            addr,
            data: data.to_path_buf(),
            log,
        })
    }

    /// Starts origin `name` of the origin list `list` on `port` (the port
    /// the list gives it), with `data` as its data directory.
    pub async fn start_member(
        data: &Path,
        list: &str,
        name: &str,
        port: u16,
        extra: &[&str],
    ) -> Result<OriginProc> {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", &listen, "--origins", list, "--name", name];
        args.extend_from_slice(extra);
        OriginProc::start(data, &args).await
    }

    /// Kills the process with SIGKILL (no drain, no flush) and waits for it.
    pub async fn kill9(mut self) -> Result<()> {
        self.kill().await
    }

    /// [`OriginProc::kill9`] in place (a cluster restarts it later).
    pub async fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL)?;
        tokio::task::spawn_blocking(move || child.wait()).await??;
        Ok(())
    }

    /// The origin's `/metrics`, as `name{labels}` → value.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        scrape_metrics(&self.url()).await
    }

    /// One metric (0 when absent).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.metrics().await?.get(name).copied().unwrap_or(0.0))
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for the process to exit (30 s at most).
    pub async fn stop(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .context("origin did not exit within 30 s of SIGTERM")???;
        Ok(status)
    }
}

impl Drop for OriginProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// A running `wrangler dev` serving the edge Worker.
pub struct EdgeProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl EdgeProc {
    /// Starts `wrangler dev` with `PREFOLD_ORIGINS` and extra `--var`s, and
    /// waits until `/healthz` answers. The edge must have been built already
    /// (`make test` does it; see `scripts/build-edge.sh`).
    pub async fn start(origins: &str, vars: &[(&str, &str)]) -> Result<EdgeProc> {
        EdgeProc::start_on(free_port(), origins, vars).await
    }

    /// [`EdgeProc::start`] on a given port (so origins can be told the
    /// edge's URL before it starts). The test secrets are set as vars
    /// unless `vars` sets them, and `--test-scheduled` exposes
    /// `/__scheduled`, which runs the Cron Trigger.
    pub async fn start_on(port: u16, origins: &str, vars: &[(&str, &str)]) -> Result<EdgeProc> {
        let root = repo_root();
        if !root.join("edge/build/index.js").exists() {
            bail!("edge/build/index.js is missing: build the edge first (`make test` does)");
        }
        let state = tempfile::tempdir()?;
        let inspector = free_port();
        let log = state.path().join("wrangler.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(root.join("node_modules/.bin/wrangler"));
        cmd.current_dir(&root)
            .args(["dev", "--ip", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--inspector-port")
            .arg(inspector.to_string())
            .arg("--persist-to")
            .arg(state.path().join("kv"))
            .arg("--test-scheduled")
            .arg("--var")
            .arg(format!("PREFOLD_ORIGINS:{origins}"));
        for (name, value) in [
            ("PREFOLD_TOKEN_SECRET", TOKEN_SECRET),
            ("PREFOLD_CLUSTER_SECRET", CLUSTER_SECRET),
        ] {
            if !vars.iter().any(|(n, _)| *n == name) {
                cmd.arg("--var").arg(format!("{name}:{value}"));
            }
        }
        for (name, value) in vars {
            cmd.arg("--var").arg(format!("{name}:{value}"));
        }
        let child = cmd
            .env("PREFOLD_EDGE_PREBUILT", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("starting wrangler dev (run `npm ci`)")?;
        let edge = EdgeProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _state: state,
        };
        let health = format!("{}/healthz", edge.url());
        wait_ok(&health, Duration::from_secs(90), &edge.log).await?;
        Ok(edge)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last lines wrangler printed, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Everything wrangler printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        // wrangler starts workerd as a child: end the whole group.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The first key `page/k{i}` that origin `name` owns in the origin list
/// `list`.
pub fn key_owned_by(list: &str, name: &str) -> Result<String> {
    let origins = prefold_core::OriginList::parse(list)?;
    (0..10_000)
        .map(|i| format!("page/k{i}"))
        .find(|k| prefold_core::Key::parse(k).is_ok_and(|key| origins.owner(&key).name == name))
        .with_context(|| format!("no key of {name} in {list}"))
}

/// A loopback listener that takes connections and never answers (an
/// origin that hangs); aborting the task closes them.
pub async fn silent_listener() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    Ok((addr, held))
}

/// A response to a [`raw`] request.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Asserts that `r` is an RFC 9457 problem body of `status` and `slug`;
/// `ctx` names the request in the failure message.
pub fn assert_problem(r: &RawResponse, status: u16, slug: &str, ctx: &str) {
    assert_eq!(r.status.as_u16(), status, "{ctx}: {:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{ctx}"
    );
    let p = r.json();
    assert_eq!(p["status"], status, "{ctx}");
    assert_eq!(p["type"], format!("urn:prefold:problem:{slug}"), "{ctx}");
    assert!(p["title"].is_string(), "{ctx}");
}

/// [`raw_with`] to an origin, with a text body.
pub async fn send(
    o: &OriginProc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<RawResponse> {
    raw_with(o.addr, method, path, headers, body.as_bytes()).await
}

/// Sends one HTTP/1.1 request with `path` on the wire byte for byte.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<RawResponse> {
    let ct: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    raw_with(addr, method, path, &ct, body).await
}

/// [`raw`] with any headers.
pub async fn raw_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<RawResponse> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
    {
        req = req.header("authorization", auth_header());
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Every regular file under a directory (recursively), as paths.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A real S3-compatible server: `s3s-fs` (installed by `scripts/tools.sh`)
/// on a free port, serving one bucket from a temporary directory.
pub struct S3Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bucket's directory (objects are files under it).
    pub bucket_dir: PathBuf,
    _root: tempfile::TempDir,
}

/// The bucket [`S3Server`] serves.
pub const S3_BUCKET: &str = "prefold";
const S3_KEY: &str = "prefold-test";
const S3_SECRET: &str = "prefold-test-secret";

impl S3Server {
    /// Starts `s3s-fs` and waits until it accepts connections.
    pub async fn start() -> Result<S3Server> {
        let root = tempfile::tempdir()?;
        let bucket_dir = root.path().join(S3_BUCKET);
        std::fs::create_dir_all(&bucket_dir)?;
        let port = free_port();
        let bin = std::env::var_os("S3S_FS_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                Some(PathBuf::from(home).join(".cargo/bin/s3s-fs"))
            })
            .context("no HOME")?;
        let log = std::fs::File::create(root.path().join("s3s-fs.log"))?;
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} (run scripts/tools.sh)", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = S3Server {
            child,
            addr,
            bucket_dir,
            _root: root,
        };
        poll(
            "s3s-fs to accept connections",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await?;
        Ok(server)
    }

    /// The `AWS_*` variables that point `prefold-origin --store s3` here.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://{}", self.addr)),
            ("AWS_BUCKET", S3_BUCKET.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The objects a store directory holds (the filesystem store, or an
/// `s3s-fs` bucket), decoded: key → (version, tombstone, body).
pub fn stored_objects(dir: &Path) -> HashMap<String, (u64, bool, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(dir).ok()?.to_str()?.to_owned();
            let key = prefold_core::envelope::key_from_object_path(&rel)?;
            let bytes = std::fs::read(&path).ok()?;
            let e = prefold_core::Envelope::decode(&bytes).ok()?;
            Some((key.to_string(), (e.version, e.tombstone, e.body.to_vec())))
        })
        .collect()
}
