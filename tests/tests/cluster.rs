//! Several origins: a request for a key another origin owns is forwarded
//! to the owner (one hop, its answer relayed as it came), a request already
//! forwarded once is refused with 421, and an unreachable owner gets the
//! client a prompt 503 with `Retry-After`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use prefold_core::{Key, OriginList};
use prefold_e2e::{assert_problem, free_port, key_owned_by, send, silent_listener, OriginProc};

const JSON: &str = "application/json";
const LOOP_GUARD: &str = "x-prefold-forwarded-by";

/// Origins `a` and `b` that both know `a,b`, each with its own data (so
/// what one stores is its own), and a key `b` owns.
async fn pair(dir: &Path, extra: &[&str]) -> Result<(OriginProc, OriginProc, String)> {
    let (pa, pb) = (free_port(), free_port());
    let list = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb}");
    let a = OriginProc::start_member(&dir.join("a"), &list, "a", pa, extra).await?;
    let b = OriginProc::start_member(&dir.join("b"), &list, "b", pb, extra).await?;
    Ok((a, b, key_owned_by(&list, "b")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_origins_key_is_forwarded_to_its_owner() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, key) = pair(dir.path(), &["--max-body-bytes", "1024"]).await?;
    let path = format!("/o/{key}");
    let json = [("content-type", JSON)];

    // A write sent to the non-owner is acknowledged, with the owner's
    // headers, and lands at the owner.
    let w = send(&a, "PUT", &path, &json, r#"{"n":1}"#).await?;
    assert_eq!(w.status, 201, "{:?}", w.body);
    let etag = w.header("etag").unwrap().to_owned();
    assert_eq!(w.header("x-prefold-durability"), Some("log"));
    assert_eq!(w.header("cache-control"), Some("no-store"));
    assert_eq!(w.json()["key"], key.as_str());
    let at_owner = send(&b, "GET", &path, &[], "").await?;
    assert_eq!(at_owner.status, 200);
    assert_eq!(at_owner.body, r#"{"n":1}"#);
    assert_eq!(at_owner.header("etag"), Some(etag.as_str()));
    assert_eq!(
        at_owner.header("x-prefold-version"),
        w.header("x-prefold-version")
    );
    assert_eq!(a.metric("prefold_wal_records_total").await?, 0.0);
    assert_eq!(b.metric("prefold_wal_records_total").await?, 1.0);

    // Reads: the owner's body and headers, and its 304.
    let r = send(&a, "GET", &path, &[], "").await?;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"{\"n\":1}"[..]));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-type"), at_owner.header("content-type"));
    assert_eq!(r.header("cache-control"), at_owner.header("cache-control"));
    let r = send(&a, "HEAD", &path, &[], "").await?;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = send(&a, "GET", &path, &[("if-none-match", &etag)], "").await?;
    assert_eq!(r.status, 304);

    // Conditional writes: If-Match with the ETag applies; a stale one gets
    // the owner's 412 problem.
    let if_match = [("content-type", JSON), ("if-match", etag.as_str())];
    let w = send(&a, "PUT", &path, &if_match, r#"{"n":2,"tags":[]}"#).await?;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let etag2 = w.header("etag").unwrap().to_owned();
    assert_ne!(etag2, etag);
    let w = send(&a, "PUT", &path, &if_match, r#"{"n":3}"#).await?;
    assert_problem(&w, 412, "precondition-failed", "stale If-Match, forwarded");
    let w = send(&a, "PUT", &path, &[("if-none-match", "*"), json[0]], "{}").await?;
    assert_problem(
        &w,
        412,
        "precondition-failed",
        "If-None-Match: *, forwarded",
    );

    // The query and the request's own headers go along: an append at a
    // pointer, demanded durable in the store.
    let store = [("content-type", JSON), ("x-prefold-durability", "store")];
    let w = send(
        &a,
        "POST",
        &format!("{path}?op=append&path=/tags"),
        &store,
        "\"x\"",
    )
    .await?;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.json()["result"], 1);
    assert_eq!(w.header("x-prefold-durability"), Some("store"));
    let merge = [("content-type", "application/merge-patch+json")];
    let w = send(&a, "PATCH", &path, &merge, r#"{"n":4}"#).await?;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let r = send(&b, "GET", &path, &[], "").await?;
    assert_eq!(r.json(), serde_json::json!({"n": 4, "tags": ["x"]}));

    // The owner checks the token (the non-owner passes it on untouched).
    let w = send(
        &a,
        "PUT",
        &path,
        &[json[0], ("authorization", "Bearer nope")],
        "{}",
    )
    .await?;
    assert_problem(&w, 401, "unauthorized", "bad token, forwarded");
    assert!(w.header("www-authenticate").unwrap().starts_with("Bearer"));

    // A body over the limit is refused by the non-owner and never sent.
    let before = b.metric("prefold_object_requests_total").await?;
    let big = format!("\"{}\"", "x".repeat(2000));
    let w = send(&a, "PUT", &path, &json, &big).await?;
    assert_problem(&w, 413, "payload-too-large", "big body, forwarded");
    assert_eq!(b.metric("prefold_object_requests_total").await?, before);

    let w = send(&a, "DELETE", &path, &[], "").await?;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let r = send(&b, "GET", &path, &[], "").await?;
    assert_problem(&r, 404, "not-found", "deleted through the non-owner");

    assert_eq!(a.metric("prefold_forwarded_requests_total").await?, 11.0);
    assert_eq!(a.metric("prefold_forward_failures_total").await?, 0.0);
    assert_eq!(b.metric("prefold_forwarded_requests_total").await?, 0.0);
    Ok(())
}

/// The loop guard: a request forwarded once that reaches a non-owner means
/// the origins disagree about the layout; it is refused, not sent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_once_is_never_forwarded_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, key) = pair(dir.path(), &[]).await?;
    let path = format!("/o/{key}");
    let guarded = [("content-type", JSON), (LOOP_GUARD, "c")];
    for method in ["PUT", "GET"] {
        let r = send(&a, method, &path, &guarded, "{}").await?;
        let ctx = format!("{method} with the loop guard");
        assert_problem(&r, 421, "misdirected", &ctx);
        assert_eq!(r.header("x-prefold-owner"), Some("b"));
    }
    assert_eq!(a.metric("prefold_forwarded_requests_total").await?, 0.0);
    assert_eq!(b.metric("prefold_object_requests_total").await?, 0.0);
    let r = send(&b, "GET", &path, &[], "").await?;
    assert_problem(&r, 404, "not-found", "nothing written at the owner");
    // At the owner the guard changes nothing: it answers.
    let w = send(&b, "PUT", &path, &guarded, "{}").await?;
    assert_eq!(w.status, 201, "{:?}", w.body);
    Ok(())
}

/// Two origins that disagree: `x` sends a key to `y`, which gives it to
/// `z`. The request goes one hop and comes back refused, naming the owner
/// `y` sees; `z` (whose port nobody listens on) is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_that_disagree_about_the_owner_refuse_instead_of_looping() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (px, py, pz) = (free_port(), free_port(), free_port());
    let (at_x, at_y) = (
        format!("x=http://127.0.0.1:{px},y=http://127.0.0.1:{py}"),
        format!("y=http://127.0.0.1:{py},z=http://127.0.0.1:{pz}"),
    );
    let (lx, ly) = (OriginList::parse(&at_x)?, OriginList::parse(&at_y)?);
    let key = (0..)
        .map(|i| format!("page/k{i}"))
        .find(|k| {
            let key = Key::parse(k).unwrap();
            lx.owner(&key).name == "y" && ly.owner(&key).name == "z"
        })
        .unwrap();
    let x = OriginProc::start_member(&dir.path().join("x"), &at_x, "x", px, &[]).await?;
    let y = OriginProc::start_member(&dir.path().join("y"), &at_y, "y", py, &[]).await?;
    let r = send(
        &x,
        "PUT",
        &format!("/o/{key}"),
        &[("content-type", JSON)],
        "{}",
    )
    .await?;
    assert_problem(&r, 421, "misdirected", "PUT across a disagreement");
    assert_eq!(r.header("x-prefold-owner"), Some("z"));
    assert_eq!(x.metric("prefold_forwarded_requests_total").await?, 1.0);
    assert_eq!(y.metric("prefold_forwarded_requests_total").await?, 0.0);
    assert_eq!(y.metric("prefold_wal_records_total").await?, 0.0);
    Ok(())
}

/// An owner nobody listens for, and one that takes the request and never
/// answers: both get the client a 503 with `Retry-After`, within the
/// forwarding timeout (twice `--store-timeout-ms`, plus 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_owner_gets_a_503_with_retry_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (silent, held) = silent_listener().await?;
    let (pa, pb) = (free_port(), free_port());
    let list = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb},c=http://{silent}");
    let a = OriginProc::start_member(
        &dir.path().join("a"),
        &list,
        "a",
        pa,
        &["--store-timeout-ms", "250"],
    )
    .await?;
    let cases = [
        ("b", "could not be reached", Duration::from_secs(1)),
        ("c", "did not answer", Duration::from_secs(10)),
    ];
    for (owner, says, within) in cases {
        let path = format!("/o/{}", key_owned_by(&list, owner)?);
        for (method, headers, body) in [
            ("PUT", &[("content-type", JSON)][..], "{}"),
            ("GET", &[][..], ""),
        ] {
            let ctx = format!("{method} of a key {owner} owns");
            let started = Instant::now();
            let r = send(&a, method, &path, headers, body).await?;
            assert!(started.elapsed() < within, "{ctx}: {:?}", started.elapsed());
            assert_problem(&r, 503, "origin-unavailable", &ctx);
            assert_eq!(r.header("retry-after"), Some("1"), "{ctx}");
            // It names the owner, and nothing of the failure inside.
            let detail = r.json()["detail"].as_str().unwrap().to_owned();
            assert!(detail.contains(&format!("origin {owner}")), "{detail}");
            assert!(detail.contains(says), "{ctx}: {detail}");
            for inside in ["127.0.0.1", "error", "tcp", "timed out"] {
                assert!(!detail.contains(inside), "{ctx}: {detail}");
            }
        }
    }
    held.abort();
    assert_eq!(a.metric("prefold_forward_failures_total").await?, 4.0);
    assert_eq!(a.metric("prefold_wal_records_total").await?, 0.0);
    Ok(())
}
