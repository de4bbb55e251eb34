//! End to end: browser-like requests through a real `wrangler dev` edge to real
//! `prefold-origin` processes over the embedded filesystem store.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use anyhow::Result;
use prefold_core::routing::OriginList;
use prefold_core::Key;
use prefold_e2e::{assert_problem, client, files_under, poll, raw, EdgeProc, OriginProc};
use serde_json::{json, Value};

const JSON: &str = "application/json";

async fn put_json(url: &str, body: &Value) -> Result<reqwest::Response> {
    Ok(client()
        .put(url)
        .header("content-type", JSON)
        .body(body.to_string())
        .send()
        .await?)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_edge_is_read_everywhere_and_then_served_from_kv() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = OriginProc::start(dir.path(), &[]).await?;
    let edge = EdgeProc::start(&format!("origin-1={}", origin.url()), &[]).await?;
    let object = json!({"title": "Fotolog", "tags": ["cache", "edge"], "n": 1});

    let put = put_json(&format!("{}/o/page/home", edge.url()), &object).await?;
    assert_eq!(put.status(), 201, "{}", edge.log_tail());
    let etag = header(&put, "etag");
    assert!(
        etag.starts_with('"') && etag.len() > 2,
        "strong etag {etag:?}"
    );
    let ack: Value = put.json().await?;
    assert_eq!(ack["key"], "page/home");

    // Through the edge and straight from the owner: same bytes, same ETag.
    let via_edge = client()
        .get(format!("{}/o/page/home", edge.url()))
        .send()
        .await?;
    assert_eq!(via_edge.status(), 200);
    assert_eq!(header(&via_edge, "etag"), etag);
    assert_eq!(via_edge.json::<Value>().await?, object);
    let direct = client()
        .get(format!("{}/o/page/home", origin.url()))
        .send()
        .await?;
    assert_eq!(direct.status(), 200);
    assert_eq!(header(&direct, "etag"), etag);
    assert_eq!(header(&direct, "content-type"), JSON);
    assert_eq!(direct.json::<Value>().await?, object);

    // The edge fills KV after answering; wait until a read says it came from KV.
    let url = format!("{}/o/page/home", edge.url());
    poll("a KV hit at the edge", Duration::from_secs(20), || async {
        let r = client().get(&url).send().await.ok()?;
        (header(&r, "x-prefold-source") == "kv").then_some(())
    })
    .await?;

    // Prove it: with the origin gone, the edge still answers, from KV.
    let status = origin.stop().await?;
    assert!(status.success(), "origin exit {status:?}");
    let r = client().get(&url).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-prefold-source"), "kv");
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(r.json::<Value>().await?, object);

    // Conditional read at the edge: 304 with the ETag, no body.
    let r = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);
    assert!(r.bytes().await?.is_empty());
    let r = client()
        .get(&url)
        .header("if-none-match", "\"not-the-etag\"")
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    // A key KV does not have now needs the origin, which is down: a prompt 503
    // with Retry-After, not a hang and not a 500.
    let r = client()
        .get(format!("{}/o/page/other", edge.url()))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let p: Value = r.json().await?;
    assert_eq!(p["type"], "urn:prefold:problem:origin-unavailable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_objects_are_loaded_back_from_the_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A flush window longer than the test: only the shutdown drain can store.
    let origin = OriginProc::start(dir.path(), &["--flush-interval-ms", "3600000"]).await?;
    let mut etags = Vec::new();
    for i in 0..20 {
        let url = format!("{}/o/item/{i}", origin.url());
        let first = put_json(&url, &json!({"i": i, "v": "first"})).await?;
        assert_eq!(first.status(), 201);
        let second = put_json(&url, &json!({"i": i, "v": "second"})).await?;
        assert_eq!(second.status(), 200, "a replace is 200");
        let (e1, e2) = (header(&first, "etag"), header(&second, "etag"));
        assert_ne!(e1, e2, "a new version has a new ETag");
        etags.push(e2);
    }
    // Acknowledged from memory: nothing has reached the store yet.
    assert!(files_under(&dir.path().join("store")).is_empty());
    let status = origin.stop().await?;
    assert!(
        status.success(),
        "graceful stop flushes and exits 0: {status:?}"
    );
    // Every object is in the store, once (two writes of a key, one object).
    assert_eq!(files_under(&dir.path().join("store")).len(), 20);

    let origin = OriginProc::start(dir.path(), &[]).await?;
    for (i, etag) in etags.iter().enumerate() {
        let url = format!("{}/o/item/{i}", origin.url());
        let r = client().get(&url).send().await?;
        assert_eq!(r.status(), 200);
        assert_eq!(&header(&r, "etag"), etag);
        assert_eq!(r.json::<Value>().await?, json!({"i": i, "v": "second"}));
        let r = client()
            .get(&url)
            .header("if-none-match", etag)
            .send()
            .await?;
        assert_eq!(r.status(), 304);
        assert_eq!(&header(&r, "etag"), etag);
    }
    let r = client()
        .get(format!("{}/o/item/missing", origin.url()))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    Ok(())
}

/// Raw paths that must be refused, with a word on why. Dot segments are sent
/// in forms that stay invalid after the edge runtime's URL normalization
/// (which resolves `a/./b` before the Worker sees it).
const BAD_KEYS: &[(&str, &str)] = &[
    ("/o/", "empty"),
    ("/o/user", "one segment"),
    ("/o/user//1", "empty segment"),
    ("/o/user/1/..", "dot-dot segment"),
    ("/o/user/%2e%2e", "encoded dot-dot"),
    ("/o/user/a%2Fb", "encoded slash"),
    ("/o/user/a%2fb", "encoded slash, lower case"),
    ("/o/user/a%5Cb", "encoded backslash"),
    ("/o/user/a%00b", "encoded NUL"),
    ("/o/user/a%0Ab", "encoded newline"),
    ("/o/user/a%zz", "broken percent-encoding"),
    ("/o/user/%C3%A9", "non-ASCII"),
    ("/o/user/a*b", "reserved character"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_problems_from_edge_and_origin_and_write_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = OriginProc::start(dir.path(), &["--max-body-bytes", "1024"]).await?;
    let edge = EdgeProc::start(
        &format!("origin-1={}", origin.url()),
        &[("PREFOLD_MAX_BODY_BYTES", "1024")],
    )
    .await?;
    let long = format!("/o/user/{}", "a".repeat(600));
    let mut bad: Vec<(String, &str)> = BAD_KEYS
        .iter()
        .map(|(p, w)| ((*p).to_owned(), *w))
        .collect();
    bad.push((long, "longer than 512 bytes"));

    for server in [edge.addr, origin.addr] {
        for (path, why) in &bad {
            for method in ["GET", "PUT"] {
                let r = raw(server, method, path, Some(JSON), b"{\"x\":1}").await?;
                assert_problem(
                    &r,
                    400,
                    "invalid-key",
                    &format!("{method} {path} ({why}) at {server}"),
                );
            }
        }
        let ctx = format!("at {server}");
        let r = raw(server, "PUT", "/o/user/1", Some("text/plain"), b"{}").await?;
        assert_problem(&r, 415, "unsupported-media-type", &ctx);
        let r = raw(server, "PUT", "/o/user/1", None, b"{}").await?;
        assert_problem(&r, 415, "unsupported-media-type", &ctx);
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1100));
        let r = raw(server, "PUT", "/o/user/1", Some(JSON), big.as_bytes()).await?;
        assert_problem(&r, 413, "payload-too-large", &ctx);
        let r = raw(server, "PUT", "/o/user/1", Some(JSON), b"{\"a\":").await?;
        assert_problem(&r, 400, "malformed-json", &ctx);
        let r = raw(server, "OPTIONS", "/o/user/1", None, b"").await?;
        assert_problem(&r, 405, "method-not-allowed", &ctx);
        let r = raw(server, "PATCH", "/o/user/1", Some(JSON), b"{}").await?;
        assert_problem(&r, 415, "unsupported-media-type", &ctx);
        let r = raw(server, "DELETE", "/o/user/1", None, b"").await?;
        assert_problem(&r, 404, "not-found", &ctx);
        // Nothing was stored under the key the rejected writes named.
        let r = raw(server, "GET", "/o/user/1", None, b"").await?;
        assert_problem(&r, 404, "not-found", &ctx);
    }

    // The edge KV holds nothing either: with the origin stopped (and flushed),
    // every key the bad writes could have reached is still unknown.
    let status = origin.stop().await?;
    assert!(status.success());
    assert!(
        files_under(&dir.path().join("store")).is_empty(),
        "rejected requests wrote {:?}",
        files_under(&dir.path().join("store"))
    );
    let r = raw(edge.addr, "GET", "/o/user/1", None, b"").await?;
    assert_problem(&r, 503, "origin-unavailable", "user/1 is not in KV");

    // Control: the same check does see a write that was accepted.
    let origin = OriginProc::start(dir.path(), &[]).await?;
    let r = raw(
        origin.addr,
        "PUT",
        "/o/user/1",
        Some(JSON),
        b"{\"ok\":true}",
    )
    .await?;
    assert_eq!(r.status, 201);
    origin.stop().await?;
    assert_eq!(files_under(&dir.path().join("store")).len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_edge_routes_exactly_like_the_native_code() -> Result<()> {
    // Nothing listens on these: routing needs only names.
    let spec = "fra=http://127.0.0.1:9,iad=http://127.0.0.1:9,sin=http://127.0.0.1:9,\
                syd=http://127.0.0.1:9,gru=http://127.0.0.1:9";
    let native = OriginList::parse(spec)?;
    let edge = EdgeProc::start(spec, &[]).await?;
    for i in 0..60 {
        let raw_key = format!("event/{i}-x~{}", i * 7919);
        let key = Key::parse(&raw_key)?;
        let want: Vec<String> = native
            .preference(&key)
            .iter()
            .map(|o| o.name.clone())
            .collect();
        let r = client()
            .get(format!("{}/_prefold/route/{raw_key}", edge.url()))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let got: Value = r.json().await?;
        assert_eq!(got["algorithm"], prefold_core::routing::ALGORITHM);
        assert_eq!(got["owner"], want[0], "owner of {raw_key}");
        assert_eq!(got["preference"], json!(want), "preference of {raw_key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_costs_the_timeout_not_a_hang() -> Result<()> {
    // Accepts connections and reads requests, but never answers.
    let (addr, held) = prefold_e2e::silent_listener().await?;
    let edge = EdgeProc::start(
        &format!("origin-1=http://{addr}"),
        &[("PREFOLD_ORIGIN_TIMEOUT_MS", "300")],
    )
    .await?;
    // The client would wait 30 s; only the edge's own timeout can answer.
    let r = client()
        .get(format!("{}/o/page/slow", edge.url()))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    let p: Value = r.json().await?;
    assert_eq!(p["type"], "urn:prefold:problem:origin-unavailable");
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("in time"),
        "the timeout, not a connection error: {p}"
    );
    held.abort();
    Ok(())
}

/// Merge patch, append, increment and delete through the edge: validated
/// there with the shared rules, forwarded with their preconditions and
/// durability to the owner, and KV follows each one through publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_goes_through_the_edge_and_kv_follows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = prefold_e2e::free_port();
    let edge_url = format!("http://127.0.0.1:{port}");
    let origin = OriginProc::start(dir.path(), &["--edge-url", &edge_url]).await?;
    let edge = EdgeProc::start_on(port, &format!("origin-1={}", origin.url()), &[]).await?;
    let url = format!("{}/o/event/7", edge.url());
    let put = put_json(&url, &json!({"title": "a", "tags": ["x"]})).await?;
    assert_eq!(put.status(), 201, "{}", edge.log_tail());
    let etag = header(&put, "etag");
    poll("a KV hit at the edge", Duration::from_secs(20), || async {
        let r = client().get(&url).send().await.ok()?;
        (header(&r, "x-prefold-source") == "kv").then_some(())
    })
    .await?;

    // A stale If-Match is refused by the owner, and the answer comes back as is.
    let stale = client()
        .patch(&url)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", "\"1\"")
        .body(r#"{"title":"stale"}"#)
        .send()
        .await?;
    assert_eq!(stale.status(), 412);
    assert_eq!(header(&stale, "content-type"), "application/problem+json");
    // A malformed one never leaves the edge.
    let bad = client()
        .patch(&url)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", "no-quotes")
        .body("{}")
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await?["type"],
        "urn:prefold:problem:invalid-precondition"
    );

    let patch = client()
        .patch(&url)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", &etag)
        .header("x-prefold-durability", "store")
        .body(r#"{"title":"b","tags":null}"#)
        .send()
        .await?;
    assert_eq!(patch.status(), 200, "{}", edge.log_tail());
    assert_eq!(header(&patch, "x-prefold-durability"), "store");
    let inc = client()
        .post(format!("{url}?op=increment&path=/views"))
        .header("content-type", JSON)
        .body("3")
        .send()
        .await?;
    assert_eq!(inc.status(), 200);
    assert_eq!(inc.json::<Value>().await?["result"], 3);
    let want = json!({"title": "b", "views": 3});
    poll(
        "the edge to serve the patched object",
        Duration::from_secs(20),
        || async {
            let r = client().get(&url).send().await.ok()?;
            (r.json::<Value>().await.ok()? == want).then_some(())
        },
    )
    .await?;

    let del = client().delete(&url).send().await?;
    assert_eq!(del.status(), 200);
    poll(
        "the edge to forget the deleted object",
        Duration::from_secs(20),
        || async {
            let r = client().get(&url).send().await.ok()?;
            (r.status() == 404).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_their_queries_are_served_through_the_edge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = prefold_e2e::repo_root().join("scripts/demo/model.toml");
    let origin = OriginProc::start(dir.path(), &["--model", model.to_str().unwrap()]).await?;
    let edge = EdgeProc::start(&format!("origin-1={}", origin.url()), &[]).await?;
    let e = edge.url();
    for (key, doc) in [
        ("venue/v1", json!({"name": "Hall", "city": "Lisbon"})),
        ("user/u1", json!({"name": "Ann", "country": "PT"})),
        (
            "event/e1",
            json!({"title": "Jazz Night", "description": "live", "category": "music", "date": "2026-12-05", "venue": "v1"}),
        ),
    ] {
        assert_eq!(
            put_json(&format!("{e}/o/{key}"), &doc).await?.status(),
            201,
            "{key}"
        );
    }
    for seq in 1..=3 {
        let doc = json!({"event": "e1", "author": "u1", "ts": seq, "seq": seq, "text": "hi"});
        let r = put_json(&format!("{e}/o/comment/e1/u1.{seq}"), &doc).await?;
        assert_eq!(r.status(), 201);
    }
    // A write that breaks the model is refused by the owner, through the edge.
    let bad = put_json(&format!("{e}/o/event/e2"), &json!({"title": 1})).await?;
    assert_eq!(bad.status(), 422);
    // The published first page, then further pages by cursor: queries go to
    // the owner's view state, not to KV.
    let first: Value = poll("the comment list", Duration::from_secs(10), || async {
        let r = client()
            .get(format!("{e}/o/event_comments/e1"))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["count"] == 3).then_some(v)
    })
    .await?;
    assert_eq!(first["items"][0]["id"], "e1/u1.3");
    let page: Value = client()
        .get(format!("{e}/o/event_comments/e1?limit=2"))
        .send()
        .await?
        .json()
        .await?;
    let next = page["next"].as_str().expect("a cursor").to_owned();
    let page2: Value = client()
        .get(format!("{e}/o/event_comments/e1?limit=2&after={next}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page2["items"][0]["id"], "e1/u1.1");
    let bad_cursor = client()
        .get(format!("{e}/o/event_comments/e1?after=nonsense"))
        .send()
        .await?;
    assert_eq!(bad_cursor.status(), 400);
    let search: Value = client()
        .get(format!("{e}/o/event_search/_search?q=jaz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(search["items"][0]["id"], "e1");
    // A counter increment needs no body and is accepted at once.
    let r = client()
        .post(format!("{e}/o/event_views/e1?op=increment"))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    poll(
        "the counter to be published",
        Duration::from_secs(10),
        || async {
            let v: Value = client()
                .get(format!("{}/o/event_views/e1", origin.url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["count"] == 1).then_some(())
        },
    )
    .await?;
    Ok(())
}
