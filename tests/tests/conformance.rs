//! One storage conformance suite, run against every backend the origin
//! supports: the local filesystem, process memory, and a real S3-compatible
//! server (`s3s-fs`, started and stopped here).
//!
//! Each run drives real `prefold-origin` processes over HTTP. Writes use
//! `x-prefold-durability: store`, so an acknowledgement means the backend
//! confirmed the PUT. Persistent backends are also checked across restarts,
//! and for a stale writer: an origin that acknowledged a write long ago and
//! flushes it late must not overwrite a newer version another origin stored
//! meanwhile (conditional puts, or the checked overwrite on the filesystem).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use anyhow::Result;
use prefold_e2e::{client, OriginProc, S3Server};
use serde_json::{json, Value};

const JSON: &str = "application/json";

struct Backend {
    name: &'static str,
    args: Vec<&'static str>,
    env: Vec<(String, String)>,
    /// Whether objects outlive the process (false for `memory`).
    persistent: bool,
}

async fn start(b: &Backend, data: &std::path::Path, extra: &[&str]) -> Result<OriginProc> {
    // Shorter than the test client's 30 s: a stuck store request is retried
    // (and shows in the log) before the client gives up.
    let mut args = vec!["--store-timeout-ms", "5000"];
    args.extend_from_slice(&b.args);
    args.extend_from_slice(extra);
    OriginProc::start_env(data, &args, &b.env).await
}

async fn write(
    o: &OriginProc,
    method: reqwest::Method,
    path: &str,
    ct: &str,
    body: &str,
) -> Result<Value> {
    let r = client()
        .request(method.clone(), format!("{}{path}", o.url()))
        .header("content-type", ct)
        .header("x-prefold-durability", "store")
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}\n{}", o.log_tail()))?;
    let status = r.status();
    let durability = r
        .headers()
        .get("x-prefold-durability")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let answer: Value = r.json().await?;
    assert!(
        status.is_success(),
        "{method} {path}: {status} {answer}\n{}",
        o.log_tail()
    );
    assert_eq!(durability.as_deref(), Some("store"));
    Ok(answer)
}

async fn read(o: &OriginProc, key: &str) -> Result<Option<Value>> {
    let r = client().get(format!("{}/o/{key}", o.url())).send().await?;
    if r.status() == 404 {
        return Ok(None);
    }
    assert!(r.status().is_success(), "GET {key}: {}", r.status());
    Ok(Some(r.json().await?))
}

async fn conformance(b: Backend) -> Result<()> {
    let ctx = b.name;
    let dir = tempfile::tempdir()?;
    let o = start(&b, dir.path(), &[]).await?;
    use reqwest::Method;

    let v1 = write(&o, Method::PUT, "/o/doc/1", JSON, r#"{"a":1,"list":[]}"#).await?;
    write(
        &o,
        Method::PATCH,
        "/o/doc/1",
        "application/merge-patch+json",
        r#"{"b":2}"#,
    )
    .await?;
    write(
        &o,
        Method::POST,
        "/o/doc/1?op=append&path=/list",
        JSON,
        "\"x\"",
    )
    .await?;
    let inc = write(
        &o,
        Method::POST,
        "/o/doc/1?op=increment&path=/a",
        JSON,
        "41",
    )
    .await?;
    assert_eq!(inc["result"], 42, "{ctx}");
    write(&o, Method::PUT, "/o/doc/2", JSON, "[2]").await?;
    let del = write(&o, Method::DELETE, "/o/doc/2", JSON, "").await?;
    assert_eq!(del["deleted"], true, "{ctx}");
    let expected = json!({"a":42,"b":2,"list":["x"]});
    assert_eq!(read(&o, "doc/1").await?, Some(expected.clone()), "{ctx}");
    assert_eq!(read(&o, "doc/2").await?, None, "{ctx}");
    assert_eq!(
        o.metric("prefold_backlog_keys").await?,
        0.0,
        "{ctx}: store acks"
    );
    assert!(o.metric("prefold_store_puts_total").await? >= 1.0, "{ctx}");
    assert!(o.stop().await?.success(), "{ctx}");
    if !b.persistent {
        return Ok(());
    }

    // Restart: everything is read back from the backend, the tombstone
    // still hides doc/2, and versions keep increasing.
    let o = start(&b, dir.path(), &[]).await?;
    assert_eq!(o.metric("prefold_warm_objects").await?, 2.0, "{ctx}");
    assert_eq!(read(&o, "doc/1").await?, Some(expected), "{ctx}");
    assert_eq!(read(&o, "doc/2").await?, None, "{ctx}");
    let v2 = write(&o, Method::PUT, "/o/doc/1", JSON, "{}").await?;
    assert!(v2["version"].as_u64() > v1["version"].as_u64(), "{ctx}");
    assert!(o.stop().await?.success(), "{ctx}");

    // A stale writer: `late` acknowledges a write from memory and keeps it
    // for an hour; `fresh` then stores a newer version; `late` flushes on
    // shutdown and must leave the newer one in place.
    // Each process has its own log; they share the store.
    let wal = |d: &tempfile::TempDir| d.path().to_str().unwrap_or_default().to_owned();
    let (late_wal, fresh_wal, check_wal) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let late_wal = wal(&late_wal);
    let late = start(
        &b,
        dir.path(),
        &[
            "--flush-interval-ms",
            "3600000",
            "--durability",
            "memory",
            "--wal-dir",
            &late_wal,
        ],
    )
    .await?;
    // `late` has stored the key once, so it holds the store's tag for it.
    write(&late, Method::PUT, "/o/doc/3", JSON, "\"first\"").await?;
    let r = client()
        .put(format!("{}/o/doc/3", late.url()))
        .header("content-type", JSON)
        .body("\"stale\"")
        .send()
        .await?;
    assert!(r.status().is_success(), "{ctx}");
    let fresh_wal = wal(&fresh_wal);
    let fresh = start(&b, dir.path(), &["--wal-dir", &fresh_wal]).await?;
    write(&fresh, Method::PUT, "/o/doc/3", JSON, "\"fresh\"").await?;
    assert!(
        late.stop().await?.success(),
        "{ctx}: the late flush is not an error"
    );
    assert!(fresh.stop().await?.success(), "{ctx}");
    let check_wal = wal(&check_wal);
    let check = start(&b, dir.path(), &["--wal-dir", &check_wal]).await?;
    assert_eq!(read(&check, "doc/3").await?, Some(json!("fresh")), "{ctx}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filesystem() -> Result<()> {
    conformance(Backend {
        name: "fs",
        args: vec!["--store", "fs"],
        env: vec![],
        persistent: true,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() -> Result<()> {
    conformance(Backend {
        name: "memory",
        args: vec!["--store", "memory"],
        env: vec![],
        persistent: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compatible_server() -> Result<()> {
    let s3 = S3Server::start().await?;
    conformance(Backend {
        name: "s3",
        args: vec!["--store", "s3"],
        env: s3.env(),
        persistent: true,
    })
    .await
}
