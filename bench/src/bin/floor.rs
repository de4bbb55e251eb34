//! `bench-floor`: the floor of the read benchmark.
//!
//! A bare axum server that answers `GET /o/{key}` with the `Bytes` stored in a
//! moka cache, with no key validation, ETags, readiness or write path: the
//! least any Rust server built on the same stack can do per request. The
//! benchmark reports prefold's hot read as a ratio to this, so prefold's own
//! request-path overhead is visible apart from the HTTP stack's.
//!
//! Usage: `bench-floor --listen 127.0.0.1:0 --dir DIR`; every file under
//! `DIR` is served at its relative path, and the first stdout line is
//! `bench-floor listening on http://ADDR`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use moka::sync::Cache;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long)]
    dir: PathBuf,
}

fn load(dir: &Path, base: &Path, cache: &Cache<String, Bytes>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            load(&path, base, cache)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            cache.insert(
                format!("/{}", rel.display()),
                Bytes::from(std::fs::read(&path)?),
            );
        }
    }
    Ok(())
}

async fn serve(State(cache): State<Cache<String, Bytes>>, uri: Uri) -> Response {
    match cache.get(uri.path()) {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cache: Cache<String, Bytes> = Cache::new(100_000);
    load(&args.dir, &args.dir, &cache)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bench-floor listening on http://{}",
        listener.local_addr()?
    )?;
    out.flush()?;
    drop(out);
    let app = Router::new()
        .route("/o/{*key}", get(serve))
        .with_state(cache);
    axum::serve(listener, app).await?;
    Ok(())
}
