//! The whole origin in process, without a socket: the router of
//! [`crate::http::app`] driven with `tower::ServiceExt::oneshot` (as axum's
//! `examples/testing` does) over an in-memory store, with a real write-ahead
//! log, real partition workers, flusher and view engine, stopped in the
//! server's own order.
//!
//! The bad-input tables live here ([`bad_input`], [`model`]): every refusal
//! gets its precise status and problem body and changes nothing in memory,
//! log, store or counters. What needs a process — a crash, a restart, a
//! shutdown signal, a real S3 server, `wrangler dev` — stays in `tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use futures::TryStreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use prefold_core::Key;
use serde_json::Value;
use tower::ServiceExt;

use clap::Parser;

use crate::config::Config;
use crate::http::{app, AppState};
use crate::server::{InProcess, Server};

/// The demo model of `scripts/demo/`.
pub(crate) const DEMO_MODEL: &str = include_str!("../../../scripts/demo/model.toml");

/// An origin in this process.
pub(crate) struct Rig {
    router: Router,
    state: AppState,
    store: Arc<InMemory>,
    origin: InProcess,
    _dir: tempfile::TempDir,
}

/// An answer, read whole.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Rig {
    /// An origin with `args` (after `--open-writes --store memory`), and the
    /// model text if any, ready to serve.
    pub(crate) async fn start(args: &[&str], model: Option<&str>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let mut argv = vec![
            "prefold-origin",
            "--open-writes",
            "--store",
            "memory",
            "--wal-dir",
            wal.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).unwrap();
        config.validate().unwrap();
        let store = Arc::new(InMemory::new());
        let mut server = Server::with_store(&config, store.clone()).unwrap();
        if let Some(text) = model {
            server = server.with_model(prefold_core::Model::parse("model.toml", text).unwrap());
        }
        let origin = server.start_in_process().await;
        let state = origin.state.clone();
        assert!(state.is_ready());
        Rig {
            router: app(state.clone()),
            state,
            store,
            origin,
            _dir: dir,
        }
    }

    /// One request, with the path put on the wire as given.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// Every number `/metrics` reports.
    pub(crate) async fn metrics(&self) -> HashMap<String, f64> {
        let r = self.send("GET", "/metrics", &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK);
        String::from_utf8(r.body.to_vec())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Waits until every write acknowledged so far is in the store.
    pub(crate) async fn flushed(&self) {
        let backlog = &self.state.inner().backlog;
        for (key, object, _) in backlog.due(true) {
            backlog.wait_stored(&key, object.version).await;
        }
    }

    /// Waits until the view engine has derived and materialized everything
    /// sent so far.
    pub(crate) async fn settled(&self) {
        if let Some(views) = self.state.inner().views.get() {
            assert!(views.settle(std::time::Duration::from_secs(60)).await);
        }
    }

    /// Every record in the store, byte for byte.
    pub(crate) async fn stored(&self) -> BTreeMap<String, Bytes> {
        Rig::stored_in(&self.store).await
    }

    /// Every record in `store`, byte for byte (also after [`Rig::stop`]).
    pub(crate) async fn stored_in(store: &InMemory) -> BTreeMap<String, Bytes> {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            out.insert(m.location.to_string(), bytes);
        }
        out
    }

    /// The live object under a key, from the engine.
    pub(crate) async fn object(&self, key: &str) -> Option<Value> {
        let engine = self.state.inner().engine.get().unwrap();
        let o = engine.read(&Key::parse(key).unwrap()).await.unwrap()?;
        Some(serde_json::from_slice(&o.body).unwrap())
    }

    /// Stops in the server's order; returns the writes left unstored.
    pub(crate) async fn stop(self) -> usize {
        self.origin.stop().await
    }
}

/// Asserts a problem answer: status, media type, `type` slug, a title.
pub(crate) fn assert_problem(r: &Reply, status: u16, slug: &str, ctx: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{ctx}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{ctx}"
    );
    let p = r.json();
    assert_eq!(
        p["type"],
        format!("urn:prefold:problem:{slug}"),
        "{ctx}: {p}"
    );
    assert_eq!(p["status"], status, "{ctx}: {p}");
    assert!(
        p["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{ctx}: {p}"
    );
}
