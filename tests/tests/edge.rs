//! The complete edge under a real `wrangler dev` with real origins:
//! publication into KV by push and by the scheduled pull, hits, misses and
//! fills, read-your-writes, HTTP caching, failover to the next origin and to
//! the stale KV copy, and write authentication — where a refused request
//! is never forwarded and writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use prefold_e2e::{
    bare_client, client, free_port, key_owned_by, poll, raw_with, stored_objects, token_with,
    EdgeProc, OriginProc, CLUSTER_SECRET, TOKEN_SECRET,
};
use reqwest::Response;
use serde_json::{json, Value};

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn version(r: &Response) -> u64 {
    header(r, "x-prefold-version").parse().unwrap_or(0)
}

/// PUTs a JSON object (with the test token) and returns its version.
async fn put(url: &str, body: &Value) -> Result<u64> {
    let r = client().put(url).json(body).send().await?;
    ensure!(r.status().is_success(), "PUT {url}: {}", r.status());
    Ok(version(&r))
}

/// A GET without credentials or cookies, with extra headers.
async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut req = bare_client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.send().await?)
}

/// Waits until the edge answers `url` from KV at `want` (or newer).
async fn kv_has(url: &str, want: u64) -> Result<()> {
    poll(
        &format!("KV to hold {url} at {want}"),
        Duration::from_secs(30),
        || async {
            let r = get(url, &[]).await.ok()?;
            (header(&r, "x-prefold-source") == "kv" && version(&r) >= want).then_some(())
        },
    )
    .await
}

/// Waits until an origin's metric is above `floor`.
async fn metric_above(origin: &OriginProc, name: &str, floor: f64) -> Result<()> {
    poll(
        &format!("{name} > {floor}"),
        Duration::from_secs(30),
        || async { (origin.metric(name).await.ok()? > floor).then_some(()) },
    )
    .await
}

/// Runs the edge's Cron Trigger once (`wrangler dev --test-scheduled`).
async fn run_cron(edge: &EdgeProc) -> Result<()> {
    let r = bare_client()
        .get(format!("{}/__scheduled?cron=*+*+*+*+*", edge.url()))
        .send()
        .await?;
    ensure!(r.status().is_success(), "/__scheduled: {}", r.status());
    Ok(())
}

/// An origin that pushes to the edge on `edge_port`, with a fault file
/// (initially `faults`) and `extra` flags.
async fn pushing_origin(
    dir: &Path,
    edge_port: u16,
    faults: &str,
    extra: &[&str],
) -> Result<OriginProc> {
    let edge_url = format!("http://127.0.0.1:{edge_port}");
    let fault_file = dir.join("faults");
    std::fs::write(&fault_file, faults)?;
    let mut args = vec![
        "--edge-url",
        &edge_url,
        "--fault-file",
        fault_file.to_str().context("utf-8 path")?,
    ];
    args.extend_from_slice(extra);
    OriginProc::start(&dir.join("origin"), &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_reaches_kv_by_push_and_a_lost_push_by_the_scheduled_pull() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let origin = pushing_origin(dir.path(), port, "", &[]).await?;
    let edge = EdgeProc::start_on(port, &format!("origin-1={}", origin.url()), &[]).await?;
    let edge_url = |k: &str| format!("{}/o/{k}", edge.url());
    let origin_url = |k: &str| format!("{}/o/{k}", origin.url());

    // A push becomes visible: written at the origin, never read through the
    // edge, and yet the edge serves it from KV.
    let v1 = put(&origin_url("page/a"), &json!({"n": 1})).await?;
    // Not a read before the push lands: a miss would fill KV itself.
    metric_above(&origin, "prefold_publish_pushed_total", 0.0)
        .await
        .with_context(|| edge.log_tail())?;
    let r = get(&edge_url("page/a"), &[]).await?;
    assert_eq!(
        (header(&r, "x-prefold-source"), version(&r)),
        ("kv".into(), v1)
    );
    // A hit never reaches the origin.
    let before = origin.metric("prefold_object_requests_total").await?;
    let r = get(&edge_url("page/a"), &[]).await?;
    let etag = header(&r, "etag");
    assert_eq!(header(&r, "x-prefold-source"), "kv");
    assert_eq!(r.json::<Value>().await?, json!({"n": 1}));
    // 304 from KV, with the ETag and no body.
    let r = get(&edge_url("page/a"), &[("if-none-match", &etag)]).await?;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);
    assert!(r.bytes().await?.is_empty());
    assert_eq!(
        origin.metric("prefold_object_requests_total").await?,
        before,
        "KV hits and 304s are answered without the origin"
    );

    // A hot key: 40 writes back to back. The edge writes KV at most once
    // per second per key, and the last version wins.
    // It is in KV first (pushed), so the reads below are hits, never fills.
    let pushed = origin.metric("prefold_publish_pushed_total").await?;
    put(&origin_url("page/hot"), &json!({"i": -1})).await?;
    metric_above(&origin, "prefold_publish_pushed_total", pushed).await?;
    let pushed = origin.metric("prefold_publish_pushed_total").await?;
    let started = std::time::Instant::now();
    let mut last = 0;
    for i in 0..40 {
        last = put(&origin_url("page/hot"), &json!({"i": i})).await?;
    }
    kv_has(&edge_url("page/hot"), last).await?;
    let seconds = started.elapsed().as_secs_f64();
    let writes = origin.metric("prefold_publish_pushed_total").await? - pushed;
    ensure!(
        writes >= 1.0 && writes <= seconds.ceil() + 1.0,
        "{writes} KV writes of one key in {seconds:.2} s"
    );
    assert_eq!(
        get(&edge_url("page/hot"), &[])
            .await?
            .json::<Value>()
            .await?,
        json!({"i": 39})
    );

    // From here on pushes are lost.
    std::fs::write(dir.path().join("faults"), "push=drop")?;
    // Miss and fill: a key KV lacks is fetched from the owner and filled.
    let vb = put(&origin_url("page/b"), &json!({"n": "b"})).await?;
    let r = get(&edge_url("page/b"), &[]).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-prefold-source"), "origin");
    assert_eq!(version(&r), vb);
    kv_has(&edge_url("page/b"), vb).await?;

    // A lost push: the edge still has the old version...
    let dropped = origin.metric("prefold_publish_dropped_total").await?;
    let v2 = put(&origin_url("page/a"), &json!({"n": 2})).await?;
    metric_above(&origin, "prefold_publish_dropped_total", dropped).await?;
    let r = get(&edge_url("page/a"), &[]).await?;
    assert_eq!(
        (header(&r, "x-prefold-source"), version(&r)),
        ("kv".into(), v1)
    );
    // ...until the scheduled pull reads the origin's change feed.
    poll(
        "the scheduled pull to repair page/a",
        Duration::from_secs(30),
        || async {
            run_cron(&edge).await.ok()?;
            let r = get(&edge_url("page/a"), &[]).await.ok()?;
            (header(&r, "x-prefold-source") == "kv" && version(&r) == v2).then_some(())
        },
    )
    .await
    .with_context(|| edge.log_tail())?;
    assert_eq!(
        get(&edge_url("page/a"), &[]).await?.json::<Value>().await?,
        json!({"n": 2})
    );
    ensure!(origin.metric("prefold_feed_items_total").await? >= 1.0);
    // A deletion is published too: KV answers 404 without the origin.
    let del = client().delete(origin_url("page/b")).send().await?;
    assert_eq!(del.status(), 200);
    poll(
        "the pull to publish the deletion",
        Duration::from_secs(30),
        || async {
            run_cron(&edge).await.ok()?;
            let r = get(&edge_url("page/b"), &[]).await.ok()?;
            (r.status() == 404).then_some(())
        },
    )
    .await?;
    let before = origin.metric("prefold_object_requests_total").await?;
    assert_eq!(get(&edge_url("page/b"), &[]).await?.status(), 404);
    assert_eq!(
        origin.metric("prefold_object_requests_total").await?,
        before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_while_kv_is_behind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    // KV only learns through fills: the fence, not publication, must do it.
    let origin = pushing_origin(dir.path(), port, "push=drop", &[]).await?;
    let edge = EdgeProc::start_on(port, &format!("origin-1={}", origin.url()), &[]).await?;
    let edge_url = |k: &str| format!("{}/o/{k}", edge.url());
    let v1 = put(&edge_url("page/c"), &json!({"n": 1})).await?;
    put(&edge_url("summary/c"), &json!({"comments": 0})).await?;
    for key in ["page/c", "summary/c"] {
        get(&edge_url(key), &[]).await?;
        kv_has(&edge_url(key), 1).await?;
    }

    let w = client()
        .put(edge_url("page/c"))
        .json(&json!({"n": 2}))
        .send()
        .await?;
    assert_eq!(w.status(), 200);
    let v2 = version(&w);
    let set_cookie = header(&w, "set-cookie");
    ensure!(
        set_cookie.starts_with("prefold_ryw=")
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains(&v2.to_string()),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();

    // The writer sees its write at once...
    let mine = get(&edge_url("page/c"), &[("cookie", &cookie)]).await?;
    assert_eq!(header(&mine, "x-prefold-source"), "origin");
    assert_eq!(version(&mine), v2);
    assert_eq!(mine.json::<Value>().await?, json!({"n": 2}));
    // ...while everyone else still gets KV's older copy.
    let theirs = get(&edge_url("page/c"), &[]).await?;
    assert_eq!(
        (header(&theirs, "x-prefold-source"), version(&theirs)),
        ("kv".into(), v1)
    );
    // The fence covers the write's aggregate (every key of routing part
    // `c`), not only the written key.
    let r = get(&edge_url("summary/c"), &[("cookie", &cookie)]).await?;
    assert_eq!(header(&r, "x-prefold-source"), "origin");
    let r = get(&edge_url("summary/c"), &[]).await?;
    assert_eq!(header(&r, "x-prefold-source"), "kv");
    // Clients without cookies send the version they need.
    let v = v2.to_string();
    let r = get(&edge_url("page/c"), &[("x-prefold-min-version", &v)]).await?;
    assert_eq!(
        (header(&r, "x-prefold-source"), version(&r)),
        ("origin".into(), v2)
    );
    let r = get(&edge_url("page/c"), &[("x-prefold-min-version", "1")]).await?;
    assert_eq!(header(&r, "x-prefold-source"), "kv");
    let r = get(&edge_url("page/c"), &[("x-prefold-min-version", "soon")]).await?;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    Ok(())
}

/// The case read-your-writes exists for: a user posts a comment and reloads
/// the event's comment list — a view, derived on the origin — while KV still
/// holds the list from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commenter_sees_the_new_comment_in_the_derived_list_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let model = prefold_e2e::repo_root().join("scripts/demo/model.toml");
    let model = model.to_str().context("utf-8 path")?;
    let origin = pushing_origin(dir.path(), port, "push=drop", &["--model", model]).await?;
    let edge = EdgeProc::start_on(port, &format!("origin-1={}", origin.url()), &[]).await?;
    let at_origin = |k: &str| format!("{}/o/{k}", origin.url());
    for (key, doc) in [
        ("venue/v1", json!({"name": "Hall", "city": "Oslo"})),
        ("user/u1", json!({"name": "Ana", "country": "NO"})),
        (
            "event/e1",
            json!({"title": "Jazz", "description": "-", "category": "music",
                   "date": "2026-12-01", "venue": "v1"}),
        ),
        (
            "comment/e1/u1.1",
            json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "first"}),
        ),
    ] {
        put(&at_origin(key), &doc).await?;
    }
    let list = format!("{}/o/event_comments/e1", edge.url());
    poll("the list in KV", Duration::from_secs(30), || async {
        let r = get(&list, &[]).await.ok()?;
        let kv = header(&r, "x-prefold-source") == "kv";
        (kv && r.text().await.ok()?.contains("first")).then_some(())
    })
    .await?;

    let w = client()
        .put(format!("{}/o/comment/e1/u1.2", edge.url()))
        .json(&json!({"event": "e1", "author": "u1", "ts": 2, "seq": 2, "text": "second"}))
        .send()
        .await?;
    assert_eq!(w.status(), 201);
    let cookie = header(&w, "set-cookie")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    // The write counted its derivation before it answered: pending 0 means
    // the list is derived.
    poll(
        "the view engine to settle",
        Duration::from_secs(30),
        || async { (origin.metric("prefold_view_pending").await.ok()? == 0.0).then_some(()) },
    )
    .await?;
    // The commenter's reload shows the comment (from the origin)...
    let mine = get(&list, &[("cookie", &cookie)]).await?;
    assert_eq!(header(&mine, "x-prefold-source"), "origin");
    let text = mine.text().await?;
    assert!(text.contains("second") && text.contains("first"), "{text}");
    // ...while KV, which no push reached, still has the list without it.
    let theirs = get(&list, &[]).await?;
    assert_eq!(header(&theirs, "x-prefold-source"), "kv");
    assert!(!theirs.text().await?.contains("second"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_strong_etags_cache_policy_and_gzip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = OriginProc::start(dir.path(), &[]).await?;
    let edge = EdgeProc::start(&format!("origin-1={}", origin.url()), &[]).await?;
    let url = format!("{}/o/page/big", edge.url());
    let body = json!({"text": "prefold ".repeat(200)});
    put(&url, &body).await?;
    for source in ["origin", "kv"] {
        if source == "kv" {
            kv_has(&url, 1).await?;
        }
        let r = get(&url, &[("accept-encoding", "gzip")]).await?;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-prefold-source"), source);
        assert_eq!(header(&r, "content-encoding"), "gzip", "{source}");
        assert!(header(&r, "vary").contains("Accept-Encoding"));
        let cc = header(&r, "cache-control");
        for part in [
            "public",
            "max-age=0",
            "stale-while-revalidate=10",
            "stale-if-error=86400",
        ] {
            assert!(cc.contains(part), "{cc}");
        }
        let etag = header(&r, "etag");
        assert!(etag.starts_with('"'), "a strong ETag: {etag}");
        let zipped = r.bytes().await?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut text)?;
        assert_eq!(serde_json::from_str::<Value>(&text)?, body);
        assert!(
            zipped.len() < text.len() / 4,
            "{} of {}",
            zipped.len(),
            text.len()
        );
        let r = get(&url, &[("if-none-match", &etag)]).await?;
        assert_eq!(r.status(), 304);
    }
    // Uncompressed for a client that does not accept gzip.
    for accept in ["identity", "gzip;q=0"] {
        let r = get(&url, &[("accept-encoding", accept)]).await?;
        assert_eq!(header(&r, "content-encoding"), "", "{accept}");
        assert_eq!(r.json::<Value>().await?, body);
    }
    Ok(())
}

/// Two origins over one object store. The owner of a key dies: its reads go
/// to the next origin in the key's preference list (served from the store);
/// then both die: the KV copy is served, marked stale; a key without a copy,
/// and every write, get a prompt 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_failures_fall_back_to_the_next_origin_then_the_stale_copy_then_503() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (pa, pb) = (free_port(), free_port());
    let list = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb}");
    // A key owned by `a`, so `b` is its failover.
    let key = key_owned_by(&list, "a")?;
    let data = dir.path().join("shared");
    let start = |name: &'static str, port: u16| {
        let (list, data) = (list.clone(), data.clone());
        let wal = dir.path().join(format!("wal-{name}"));
        async move {
            let wal = ["--wal-dir", wal.to_str().unwrap()];
            OriginProc::start_member(&data, &list, name, port, &wal).await
        }
    };
    let a = start("a", pa).await?;
    let b = start("b", pb).await?;
    let edge = EdgeProc::start(&list, &[("PREFOLD_ORIGIN_TIMEOUT_MS", "2000")]).await?;
    let url = format!("{}/o/{key}", edge.url());

    put(&url, &json!({"v": 1})).await?;
    get(&url, &[]).await?;
    kv_has(&url, 1).await?;
    // The second version is in the store (durability `store`), and this
    // client's fence asks for it.
    let w = client()
        .put(&url)
        .header("x-prefold-durability", "store")
        .json(&json!({"v": 2}))
        .send()
        .await?;
    assert_eq!(w.status(), 200);
    let v2 = version(&w);
    let cookie = header(&w, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    a.kill9().await?;
    // The owner is down: the next origin answers from the store.
    let r = get(&url, &[("cookie", &cookie)]).await?;
    assert_eq!(r.status(), 200, "{}", edge.log_tail());
    assert_eq!(header(&r, "x-prefold-source"), "failover-store");
    assert_eq!(version(&r), v2);
    assert_eq!(r.json::<Value>().await?, json!({"v": 2}));
    // Without the cluster token no origin serves a failover read.
    let direct = bare_client()
        .get(format!("{}/o/{key}", b.url()))
        .header("x-prefold-failover", "1")
        .send()
        .await?;
    assert_eq!(direct.status(), 401);
    // Writes are never failed over: only the owner may apply them.
    let w = client().put(&url).json(&json!({"v": 3})).send().await?;
    assert_eq!(w.status(), 503);
    assert_eq!(header(&w, "retry-after"), "1");

    b.kill9().await?;
    // Nobody answers: the older KV copy is served, and says so.
    let r = get(&url, &[("cookie", &cookie)]).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-prefold-stale"), "origin-unavailable");
    assert_eq!(r.json::<Value>().await?, json!({"v": 1}));
    // A key without a copy: 503 with Retry-After, within the timeouts.
    let started = std::time::Instant::now();
    let r = get(&format!("{}/o/page/nowhere", edge.url()), &[]).await?;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(
        r.json::<Value>().await?["type"],
        "urn:prefold:problem:origin-unavailable"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    Ok(())
}

/// An edge whose origin list is behind the cluster's: it knows only `a`,
/// while `a` and `b` share the keys. Writes and reads of `b`'s keys through
/// the edge reach `b` by `a`'s forwarding, and the writer still reads its
/// own writes while KV is behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_a_stale_origin_list_reaches_the_owner_through_forwarding() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (pa, pb) = (free_port(), free_port());
    let list = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb}");
    let key = key_owned_by(&list, "b")?;
    let a = OriginProc::start_member(&dir.path().join("a"), &list, "a", pa, &[]).await?;
    let b = OriginProc::start_member(&dir.path().join("b"), &list, "b", pb, &[]).await?;
    let edge = EdgeProc::start(&format!("a=http://127.0.0.1:{pa}"), &[]).await?;
    let url = format!("{}/o/{key}", edge.url());

    // The write lands at the owner, which the edge does not know.
    let v1 = put(&url, &json!({"n": 1})).await?;
    let at_owner = get(&format!("{}/o/{key}", b.url()), &[]).await?;
    assert_eq!(version(&at_owner), v1);
    assert_eq!(a.metric("prefold_wal_records_total").await?, 0.0);
    // A read misses KV, is answered by the owner through `a`, and fills KV.
    let r = get(&url, &[]).await?;
    assert_eq!(r.status(), 200, "{}", edge.log_tail());
    assert_eq!(
        (header(&r, "x-prefold-source"), version(&r)),
        ("origin".into(), v1)
    );
    assert_eq!(r.json::<Value>().await?, json!({"n": 1}));
    kv_has(&url, v1).await?;

    // Read-your-writes: the fence comes from the owner's version, relayed.
    let w = client().put(&url).json(&json!({"n": 2})).send().await?;
    assert_eq!(w.status(), 200);
    let v2 = version(&w);
    assert!(v2 > v1);
    let cookie = header(&w, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let theirs = get(&url, &[]).await?;
    assert_eq!(
        (header(&theirs, "x-prefold-source"), version(&theirs)),
        ("kv".into(), v1)
    );
    let mine = get(&url, &[("cookie", &cookie)]).await?;
    assert_eq!(
        (header(&mine, "x-prefold-source"), version(&mine)),
        ("origin".into(), v2)
    );
    assert_eq!(mine.json::<Value>().await?, json!({"n": 2}));
    // The owner's refusals come back as they are.
    let stale = client()
        .put(&url)
        .header("if-match", prefold_core::http::etag(v1))
        .json(&json!({"n": 3}))
        .send()
        .await?;
    assert_eq!(stale.status(), 412);
    assert_eq!(header(&stale, "content-type"), "application/problem+json");
    assert!(a.metric("prefold_forwarded_requests_total").await? >= 5.0);
    assert_eq!(b.metric("prefold_forwarded_requests_total").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_never_forwarded_and_write_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = OriginProc::start(dir.path(), &[]).await?;
    let edge = EdgeProc::start(
        &format!("origin-1={}", origin.url()),
        &[("PREFOLD_MAX_BODY_BYTES", "1024")],
    )
    .await?;
    let url = format!("{}/o/event/1", edge.url());
    let valid = token_with(TOKEN_SECRET, "write:*", 600);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "unauthorized"),
        (
            "expired",
            Some(token_with(TOKEN_SECRET, "write:*", -5)),
            401,
            "unauthorized",
        ),
        (
            "signed with another secret",
            Some(token_with(CLUSTER_SECRET, "write:*", 600)),
            401,
            "unauthorized",
        ),
        ("not a token", Some("abc.def".into()), 401, "unauthorized"),
        (
            "another scope",
            Some(token_with(TOKEN_SECRET, "write:user/*", 600)),
            403,
            "forbidden",
        ),
    ];
    let before = origin.metric("prefold_object_requests_total").await?;
    for (what, token, status, kind) in &cases {
        let mut req = bare_client().put(&url).json(&json!({"title": "x"}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), *status, "{what}");
        ensure!(
            header(&r, "www-authenticate").starts_with("Bearer"),
            "{what}"
        );
        let p: Value = r.json().await?;
        assert_eq!(p["type"], format!("urn:prefold:problem:{kind}"), "{what}");
    }
    // A malformed key and an oversized body, with a valid token.
    let auth = format!("Bearer {valid}");
    let bad_key = raw_with(
        edge.addr,
        "PUT",
        "/o/event/..%2Fx",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(bad_key.status, 400);
    assert_eq!(bad_key.json()["type"], "urn:prefold:problem:invalid-key");
    let big = json!({"pad": "x".repeat(2000)});
    let r = client().put(&url).json(&big).send().await?;
    assert_eq!(r.status(), 413);
    // A forged push to the edge's publication endpoint.
    let batch = br#"{"items":[{"k":"event/1","v":99999999999999999,"ct":"application/json","b":{"forged":true}}]}"#;
    for token in [
        None,
        Some(valid.clone()),
        Some(token_with(TOKEN_SECRET, "cluster", 600)),
    ] {
        let mut req = bare_client()
            .post(format!("{}/_prefold/publish", edge.url()))
            .header("content-type", "application/json")
            .body(&batch[..]);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    }

    // Nothing reached the origin, nothing was written anywhere.
    assert_eq!(
        origin.metric("prefold_object_requests_total").await?,
        before
    );
    let writes: f64 = origin
        .metrics()
        .await?
        .iter()
        .filter(|(k, _)| k.starts_with("prefold_writes_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(writes, 0.0);
    assert_eq!(get(&url, &[]).await?.status(), 404);
    assert!(stored_objects(&dir.path().join("store")).is_empty());

    // The origin verifies tokens itself too.
    let direct = format!("{}/o/event/1", origin.url());
    for (token, status) in [
        (token_with(TOKEN_SECRET, "write:*", -5), 401),
        (token_with(TOKEN_SECRET, "write:user/*", 600), 403),
    ] {
        let r = bare_client()
            .put(&direct)
            .bearer_auth(token)
            .json(&json!({"title": "x"}))
            .send()
            .await?;
        assert_eq!(r.status(), status);
    }
    // A token scoped to the key's type may write it, through the edge.
    let scoped = token_with(TOKEN_SECRET, "write:event/*", 600);
    let r = bare_client()
        .put(&url)
        .bearer_auth(&scoped)
        .json(&json!({"title": "ok"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    // Secrets never appear in logs (wrangler shows vars as "(hidden)").
    for log in [origin.log_text(), edge.log_text()] {
        ensure!(!log.is_empty());
        ensure!(!log.contains(TOKEN_SECRET) && !log.contains(CLUSTER_SECRET));
    }
    Ok(())
}
