//! The storage engine, tested through real `prefold-origin` processes:
//! operations and preconditions over HTTP, concurrent `If-Match` loops,
//! `kill -9` in `log` mode, object-store outages with a bounded backlog, bad
//! input that must change nothing, and the deterministic warm load.
//!
//! Every wait is a poll with a deadline on something observable (`/metrics`,
//! `/readyz`, a status code), never a fixed sleep.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Result};
use prefold_core::{Key, OriginList};
use prefold_e2e::{assert_problem, client, poll, send, stored_objects, OriginProc};
use serde_json::{json, Value};

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";

/// Rewrites a fault control file atomically (write, then rename): the
/// origin re-reads it on every store operation and must never see it half
/// written.
fn set_faults(control: &std::path::Path, spec: &str) -> Result<()> {
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, spec)?;
    std::fs::rename(&tmp, control)?;
    Ok(())
}

/// Waits until the origin has stored everything it acknowledged.
async fn wait_flushed(o: &OriginProc) -> Result<()> {
    poll("an empty backlog", Duration::from_secs(60), || async {
        let m = o.metrics().await.ok()?;
        (m.get("prefold_backlog_keys") == Some(&0.0)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_preconditions_and_durability_over_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = OriginProc::start(dir.path(), &["--require-precondition", "account"]).await?;

    // PUT creates (201), then replaces (200); the answer names the durability met.
    let r = send(
        &o,
        "PUT",
        "/o/event/1",
        &[("content-type", JSON)],
        r#"{"title":"a","tags":["x"]}"#,
    )
    .await?;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-prefold-durability"), Some("log"));
    let v1 = r.json()["etag"].as_str().unwrap().to_owned();
    assert_eq!(r.header("etag"), Some(v1.as_str()));

    // Merge patch (RFC 7386): change, add, remove with null.
    let r = send(
        &o,
        "PATCH",
        "/o/event/1",
        &[("content-type", MERGE), ("if-match", &v1)],
        r#"{"title":"b","venue":"v","tags":null}"#,
    )
    .await?;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v2 = r.json()["etag"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let got = client()
        .get(format!("{}/o/event/1", o.url()))
        .send()
        .await?;
    assert_eq!(got.headers()["etag"].to_str()?, v2);
    assert_eq!(got.json::<Value>().await?, json!({"title":"b","venue":"v"}));

    // A stale If-Match fails and changes nothing.
    let r = send(
        &o,
        "PATCH",
        "/o/event/1",
        &[("content-type", MERGE), ("if-match", &v1)],
        r#"{"title":"stale"}"#,
    )
    .await?;
    assert_problem(&r, 412, "precondition-failed", "stale If-Match");
    // If-None-Match: * only creates.
    let r = send(
        &o,
        "PUT",
        "/o/event/1",
        &[("content-type", JSON), ("if-none-match", "*")],
        "{}",
    )
    .await?;
    assert_problem(
        &r,
        412,
        "precondition-failed",
        "If-None-Match on an existing object",
    );

    // Append and increment, creating the object and the fields.
    for i in 1..=3 {
        let r = send(
            &o,
            "POST",
            "/o/event/2?op=append&path=/comments",
            &[("content-type", JSON)],
            &format!(r#"{{"n":{i}}}"#),
        )
        .await?;
        assert!(r.status.is_success(), "{:?}", r.body);
        assert_eq!(r.json()["result"], i);
    }
    let r = send(
        &o,
        "POST",
        "/o/event/2?op=increment&path=/views",
        &[("content-type", JSON)],
        "5",
    )
    .await?;
    assert_eq!(r.json()["result"], 5);
    let r = send(
        &o,
        "POST",
        "/o/event/2?op=increment&path=/views",
        &[("content-type", JSON), ("x-prefold-durability", "store")],
        "-2",
    )
    .await?;
    assert_eq!(r.json()["result"], 3);
    assert_eq!(r.header("x-prefold-durability"), Some("store"));
    // `store` means the store has it already: the file is on disk now.
    let stored = stored_objects(&dir.path().join("store"));
    let (_, _, body) = &stored["event/2"];
    assert_eq!(serde_json::from_slice::<Value>(body)?["views"], 3);

    // Delete leaves a tombstone: 404 afterwards, and a later PUT recreates (201).
    let r = send(
        &o,
        "DELETE",
        "/o/event/1",
        &[("x-prefold-durability", "memory")],
        "",
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(r.header("x-prefold-durability"), Some("memory"));
    let r = send(&o, "GET", "/o/event/1", &[], "").await?;
    assert_problem(&r, 404, "not-found", "deleted");
    let r = send(&o, "DELETE", "/o/event/1", &[], "").await?;
    assert_problem(&r, 404, "not-found", "deleted twice");

    // A type that requires preconditions.
    let r = send(&o, "PUT", "/o/account/1", &[("content-type", JSON)], "{}").await?;
    assert_problem(
        &r,
        428,
        "precondition-required",
        "account without a precondition",
    );
    let r = send(
        &o,
        "PUT",
        "/o/account/1",
        &[("content-type", JSON), ("if-none-match", "*")],
        "{}",
    )
    .await?;
    assert_eq!(r.status, 201);

    // The tombstone reaches the store (nothing older can come back).
    wait_flushed(&o).await?;
    let stored = stored_objects(&dir.path().join("store"));
    assert!(stored["event/1"].1, "event/1 is stored as a tombstone");
    let m = o.metrics().await?;
    assert_eq!(m["prefold_writes_total{op=\"append\"}"], 3.0);
    assert_eq!(m["prefold_writes_total{op=\"increment\"}"], 2.0);
    assert_eq!(m["prefold_ready"], 1.0);
    assert!(m["prefold_wal_fsyncs_total"] >= 1.0);

    // After a restart the tombstone still hides the object.
    assert!(o.stop().await?.success());
    let o = OriginProc::start(dir.path(), &[]).await?;
    let r = send(&o, "GET", "/o/event/1", &[], "").await?;
    assert_problem(&r, 404, "not-found", "deleted, after restart");
    let r = send(&o, "GET", "/o/event/2", &[], "").await?;
    assert_eq!(r.json()["comments"].as_array().map(Vec::len), Some(3));
    Ok(())
}

/// Issue 4 (c): 50 clients each loop GET → PUT If-Match with the value plus
/// one; the final value is the number of successful PUTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_if_match_loops_lose_no_update() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = OriginProc::start(dir.path(), &["--durability", "memory"]).await?;
    let url = format!("{}/o/counter/1", o.url());
    let r = client()
        .put(&url)
        .header("content-type", JSON)
        .body("0")
        .send()
        .await?;
    ensure!(r.status() == 201);
    let successes = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, successes, conflicts) = (url.clone(), successes.clone(), conflicts.clone());
            tokio::spawn(async move {
                let c = client();
                for _ in 0..20 {
                    let got = c.get(&url).send().await?;
                    let tag = got.headers()["etag"].to_str()?.to_owned();
                    let n: u64 = got.text().await?.parse()?;
                    let put = c
                        .put(&url)
                        .header("content-type", JSON)
                        .header("if-match", tag)
                        .body((n + 1).to_string())
                        .send()
                        .await?;
                    match put.status().as_u16() {
                        200 => successes.fetch_add(1, Ordering::Relaxed),
                        412 => conflicts.fetch_add(1, Ordering::Relaxed),
                        s => anyhow::bail!("unexpected status {s}"),
                    };
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let final_value: u64 = client().get(&url).send().await?.text().await?.parse()?;
    let ok = successes.load(Ordering::Relaxed);
    assert_eq!(
        final_value,
        ok,
        "conflicts: {}",
        conflicts.load(Ordering::Relaxed)
    );
    assert_eq!(ok + conflicts.load(Ordering::Relaxed), 50 * 20);
    assert!(ok > 0);
    Ok(())
}

/// Issue 4 (b): `kill -9` during a concurrent write load in `log` mode. Every
/// acknowledged write reads back with exactly its value after the restart,
/// and the store converges. With an hour's flush window the store holds
/// nothing before the kill: everything read back came from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_log_mode_loses_no_acknowledged_write() -> Result<()> {
    kill_9_scenario(&["--flush-interval-ms", "3600000"], true).await
}

/// The same while the log is busiest: tiny segments rotate constantly and
/// are trimmed as a slow store catches up, all during the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_log_rotates_and_trims() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("faults");
    set_faults(&control, "put=delay:20")?;
    let control = control.to_str().unwrap().to_owned();
    let args = [
        "--flush-interval-ms",
        "10",
        "--wal-segment-bytes",
        "4096",
        "--fault-file",
        control.as_str(),
    ];
    kill_9_scenario(&args, false).await
}

async fn kill_9_scenario(extra: &[&str], store_empty_before_kill: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--durability", "log"];
    args.extend_from_slice(extra);
    let o = OriginProc::start(dir.path(), &args).await?;
    let url = o.url();
    // Per key: the last acknowledged value, and the one in flight (which may
    // or may not have been applied when the process died).
    type Seen = HashMap<String, (Option<u64>, Option<u64>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (url, seen, acked, stop) = (url.clone(), seen.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Each writer cycles over 8 keys of its own, so keys are
                    // overwritten many times.
                    let key = format!("k{w}/{}", i % 8);
                    seen.lock().unwrap().entry(key.clone()).or_default().1 = Some(i);
                    let r = c
                        .put(format!("{url}/o/{key}"))
                        .header("content-type", JSON)
                        .body(format!(r#"{{"w":{w},"i":{i}}}"#))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            assert_eq!(r.headers()["x-prefold-durability"], "log");
                            let mut s = seen.lock().unwrap();
                            let e = s.get_mut(&key).unwrap();
                            *e = (Some(i), None);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // The process died under this request.
                        _ => return,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    poll(
        "2000 acknowledged writes",
        Duration::from_secs(60),
        || async { (acked.load(Ordering::Relaxed) >= 2000).then_some(()) },
    )
    .await?;
    if !store_empty_before_kill {
        // Kill while the log is rotating and being trimmed under the load.
        poll(
            "log segments trimmed during the load",
            Duration::from_secs(60),
            || async {
                let m = o.metrics().await.ok()?;
                (m["prefold_wal_segments_trimmed_total"] > 0.0).then_some(())
            },
        )
        .await?;
    }
    o.kill9().await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    if store_empty_before_kill {
        assert!(
            stored_objects(&dir.path().join("store")).is_empty(),
            "nothing reached the store before the kill"
        );
    }

    let o = OriginProc::start(dir.path(), &["--flush-interval-ms", "10"]).await?;
    let seen = seen.lock().unwrap().clone();
    let c = client();
    for (key, (last_acked, in_flight)) in &seen {
        let r = c.get(format!("{}/o/{key}", o.url())).send().await?;
        let got = if r.status() == 404 {
            None
        } else {
            Some(r.json::<Value>().await?["i"].as_u64().unwrap())
        };
        let ok = got == *last_acked || (got.is_some() && got == *in_flight);
        assert!(
            ok,
            "{key}: read {got:?}, acknowledged {last_acked:?}, in flight {in_flight:?}"
        );
    }
    // The store converges to what the origin serves.
    wait_flushed(&o).await?;
    let stored = stored_objects(&dir.path().join("store"));
    for (key, (last_acked, _)) in &seen {
        if last_acked.is_some() {
            let served: Value = c
                .get(format!("{}/o/{key}", o.url()))
                .send()
                .await?
                .json()
                .await?;
            let (_, _, body) = stored
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{key} not stored"));
            assert_eq!(serde_json::from_slice::<Value>(body)?, served, "{key}");
        }
    }
    assert!(o.stop().await?.success());
    Ok(())
}

/// Issue 4 (a): an object-store outage during a write load. Writes are
/// acknowledged until the backlog bound, then refused with 503 and
/// Retry-After; a hung store is timed out and retried; after recovery every
/// acknowledged write is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fills_the_backlog_then_pushes_back_and_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("faults");
    set_faults(&control, "")?;
    let fault_file = control.to_str().unwrap().to_owned();
    let o = OriginProc::start(
        dir.path(),
        &[
            "--fault-file",
            &fault_file,
            "--max-backlog-keys",
            "40",
            "--flush-interval-ms",
            "10",
            "--store-timeout-ms",
            "300",
            "--durability",
            "memory",
        ],
    )
    .await?;
    let c = client();
    let put = |key: String, value: u64| {
        let c = c.clone();
        let url = format!("{}/o/{key}", o.url());
        async move {
            c.put(url)
                .header("content-type", JSON)
                .body(value.to_string())
                .send()
                .await
        }
    };
    let mut acked: HashMap<String, u64> = HashMap::new();

    // A slow store does not slow acknowledgements down (it only delays storing).
    set_faults(&control, "put=delay:200")?;
    for i in 0..10 {
        let r = put(format!("slow/{i}"), i).await?;
        assert!(r.status().is_success());
        acked.insert(format!("slow/{i}"), i);
    }
    wait_flushed(&o).await?;

    // Outage: every PUT fails. Writes are acknowledged until 40 keys wait.
    set_faults(&control, "put=error")?;
    let mut refused = None;
    for i in 0..100 {
        let r = put(format!("out/{i}"), i).await?;
        if r.status() == 503 {
            refused = Some((i, r));
            break;
        }
        assert!(r.status().is_success(), "{}", r.status());
        acked.insert(format!("out/{i}"), i);
    }
    let (at, r) = refused.expect("the backlog bound was reached");
    assert_eq!(at, 40, "exactly the bound was accepted");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await?;
    assert_eq!(body["type"], "urn:prefold:problem:overloaded");
    // Rewriting a pending key does not grow the backlog: still accepted.
    let r = put("out/0".into(), 1000).await?;
    assert!(r.status().is_success());
    acked.insert("out/0".into(), 1000);
    // A `store`-durability write cannot be confirmed: 504 after the store
    // timeout, though it is applied and will be stored after recovery.
    let r = c
        .put(format!("{}/o/out/1", o.url()))
        .header("content-type", JSON)
        .header("x-prefold-durability", "store")
        .body("2000")
        .send()
        .await?;
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await?;
    assert_eq!(body["type"], "urn:prefold:problem:store-timeout");
    acked.insert("out/1".into(), 2000);
    poll(
        "failed PUTs being retried",
        Duration::from_secs(30),
        || async {
            let m = o.metrics().await.ok()?;
            (m["prefold_store_put_retries_total"] >= 40.0).then_some(())
        },
    )
    .await?;

    // A hung store: PUTs time out and are retried; nothing is lost either.
    set_faults(&control, "put=hang")?;
    let before = o.metric("prefold_store_put_failures_total").await?;
    poll("timed-out PUTs", Duration::from_secs(30), || async {
        let f = o.metric("prefold_store_put_failures_total").await.ok()?;
        (f > before).then_some(())
    })
    .await?;
    let r = put("out/fresh".into(), 1).await?;
    assert_eq!(r.status(), 503, "still full while the store hangs");

    // Recovery: the backlog drains and every acknowledged write is stored.
    set_faults(&control, "")?;
    wait_flushed(&o).await?;
    let m = o.metrics().await?;
    assert!(m["prefold_backlog_oldest_age_seconds"] == 0.0);
    let stored = stored_objects(&dir.path().join("store"));
    for (key, value) in &acked {
        let (_, _, body) = stored
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(std::str::from_utf8(body)?, value.to_string(), "{key}");
    }
    assert_eq!(stored.len(), acked.len(), "nothing refused was stored");
    assert!(o.stop().await?.success());
    Ok(())
}

/// The deterministic hot tier: the origin loads what it owns before it says
/// ready, then reads never touch the store, and a missing key is known to be
/// missing without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_load_makes_reads_deterministic_and_respects_ownership() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = OriginProc::start(dir.path(), &[]).await?;
    let c = client();
    let keys: Vec<String> = (0..200).map(|i| format!("item/{i}")).collect();
    for k in &keys {
        let r = c
            .put(format!("{}/o/{k}", o.url()))
            .header("content-type", JSON)
            .body(format!("\"{k}\""))
            .send()
            .await?;
        ensure!(r.status() == 201);
    }
    assert!(o.stop().await?.success());

    // Readiness waits for the store: while listing fails, /readyz is 503 and
    // /healthz is 200.
    let control = dir.path().join("faults");
    set_faults(&control, "list=error")?;
    let o = OriginProc::spawn(
        dir.path(),
        &["--fault-file", control.to_str().unwrap()],
        &[],
    )
    .await?;
    let r = send(&o, "GET", "/readyz", &[], "").await?;
    assert_problem(&r, 503, "not-ready", "while the store cannot be listed");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(send(&o, "GET", "/healthz", &[], "").await?.status, 200);
    let r = send(&o, "GET", "/o/item/1", &[], "").await?;
    assert_problem(&r, 503, "not-ready", "objects before ready");
    set_faults(&control, "")?;
    o.wait_ready().await?;
    let m = o.metrics().await?;
    assert_eq!(m["prefold_warm_objects"], 200.0);
    for k in &keys {
        let r = c.get(format!("{}/o/{k}", o.url())).send().await?;
        assert_eq!(r.json::<String>().await?, *k);
    }
    for k in ["item/none", "other/1"] {
        assert_eq!(
            c.get(format!("{}/o/{k}", o.url())).send().await?.status(),
            404
        );
    }
    assert_eq!(
        o.metric("prefold_store_loads_total").await?,
        0.0,
        "no read went to the store"
    );
    assert!(o.stop().await?.success());

    // With an origin list, an origin loads exactly the keys it owns.
    let list = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3";
    let origins = OriginList::parse(list)?;
    let owned = keys
        .iter()
        .filter(|k| origins.owner(&Key::parse(k).unwrap()).name == "b")
        .count();
    assert!(owned > 0 && owned < keys.len());
    let o = OriginProc::start(dir.path(), &["--origins", list, "--name", "b"]).await?;
    assert_eq!(o.metric("prefold_warm_objects").await?, owned as f64);
    // A key another origin owns is never served or written here, for reads
    // and writes alike: the request is forwarded to the owner (down here:
    // 503), or refused with the owner named (421) when it was forwarded
    // already.
    let foreign = keys
        .iter()
        .find(|k| origins.owner(&Key::parse(k).unwrap()).name != "b")
        .unwrap();
    let owner = &origins.owner(&Key::parse(foreign).unwrap()).name;
    for (method, ct, body) in [
        ("GET", None, ""),
        ("PUT", Some(JSON), "1"),
        ("DELETE", None, ""),
    ] {
        let ctx = format!("{method} {foreign}");
        let mut headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = send(&o, method, &format!("/o/{foreign}"), &headers, body).await?;
        assert_problem(&r, 503, "origin-unavailable", &ctx);
        assert_eq!(r.header("retry-after"), Some("1"), "{ctx}");
        headers.push(("x-prefold-forwarded-by", "c"));
        let r = send(&o, method, &format!("/o/{foreign}"), &headers, body).await?;
        assert_problem(&r, 421, "misdirected", &format!("{ctx}, forwarded"));
        assert_eq!(r.header("x-prefold-owner"), Some(owner.as_str()));
    }
    assert_eq!(o.metric("prefold_wal_records_total").await?, 0.0);
    assert!(o.stop().await?.success());
    let (_, _, body) = &stored_objects(&dir.path().join("store"))[foreign.as_str()];
    assert_eq!(std::str::from_utf8(body)?, format!("\"{foreign}\""));
    Ok(())
}

/// A hot tier smaller than the data: evictions are counted, an evicted key
/// is loaded back on demand, and nothing is lost or stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_hot_tier_evicts_and_reloads_correctly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = OriginProc::start(
        dir.path(),
        &["--cache-bytes", "65536", "--flush-interval-ms", "10"],
    )
    .await?;
    let c = client();
    let pad = "y".repeat(1000);
    for i in 0..300 {
        let r = c
            .put(format!("{}/o/big/{i}", o.url()))
            .header("content-type", JSON)
            .body(format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
            .send()
            .await?;
        ensure!(r.status().is_success());
    }
    // Reads after the flush: an evicted key must come back from the store.
    wait_flushed(&o).await?;
    for i in 0..300 {
        let v: Value = c
            .get(format!("{}/o/big/{i}", o.url()))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(v["i"], i);
    }
    let m = o.metrics().await?;
    assert!(m["prefold_hot_evictions_total"] > 0.0, "{m:?}");
    assert!(m["prefold_store_loads_total"] > 0.0, "{m:?}");
    Ok(())
}
