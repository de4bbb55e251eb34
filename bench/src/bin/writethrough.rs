//! `bench-writethrough`: the anchor of the storage benchmark.
//!
//! A bare axum server whose `PUT /o/{key}` does what a write-through origin
//! does and nothing more: it validates the key with `prefold_core::Key`,
//! wraps the body in the same `Envelope` prefold stores, and awaits the
//! `object_store` PUT to the same kind of store (local filesystem or S3)
//! before it answers 200. No memory tier, no log, no batching, no coalescing:
//! every acknowledged write is one store PUT, made while the client waits.
//! The benchmark reports prefold's acknowledged writes as a ratio to this.
//!
//! Usage: `bench-writethrough --listen 127.0.0.1:0 --store fs --dir DIR`
//! (objects under `DIR`, at the paths prefold uses) or `--store s3` (the
//! `AWS_*` variables, read by `AmazonS3Builder::from_env`). The first stdout
//! line is `bench-writethrough listening on http://ADDR`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use prefold_core::envelope::object_path;
use prefold_core::{Envelope, Key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Fs,
    S3,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "fs")]
    store: StoreKind,
    /// The filesystem store's directory (`--store fs`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// One counter for all keys: versions only need to grow.
    version: AtomicU64,
}

async fn put_object(State(state): State<Arc<Inner>>, uri: Uri, body: Bytes) -> Response {
    let raw = uri.path().strip_prefix("/o/").unwrap_or_default();
    let key = match Key::parse(raw) {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let version = state.version.fetch_add(1, Ordering::Relaxed) + 1;
    let record = Envelope {
        version,
        content_type: "application/json",
        body: &body,
        tombstone: false,
    }
    .encode();
    let record = match record {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = Path::from(object_path(&key));
    match state.store.put(&path, PutPayload::from(record)).await {
        Ok(_) => {
            let etag = format!("\"{version}\"");
            let answer = format!(
                r#"{{"key":"{}","version":{version},"etag":{}}}"#,
                key.as_str(),
                serde_json::Value::String(etag.clone())
            );
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                answer,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&etag) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            resp
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store: Arc<dyn ObjectStore> = match args.store {
        StoreKind::Fs => {
            let dir = args.dir.context("--store fs needs --dir")?;
            std::fs::create_dir_all(&dir)?;
            Arc::new(LocalFileSystem::new_with_prefix(&dir)?)
        }
        StoreKind::S3 => Arc::new(AmazonS3Builder::from_env().build()?),
    };
    let state = Arc::new(Inner {
        store,
        version: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bench-writethrough listening on http://{}",
        listener.local_addr()?
    )?;
    out.flush()?;
    drop(out);
    let app = Router::new()
        .route("/o/{*key}", put(put_object))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(state);
    // As the origin does: responses are written whole.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
