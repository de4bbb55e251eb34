//! Every kind of bad input gets its precise status and a problem body, and
//! memory, log, store and counters are unchanged (moved here from the
//! process-level storage suite: none of it needs a process).

use std::collections::HashMap;

use prefold_core::auth::{mint, Claims};
use serde_json::json;

use super::{assert_problem, Rig};

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";
const TOKEN_SECRET: &str = "an-in-process-token-secret-of-32+b";

/// What a refused request could have touched, as `/metrics` counts it.
fn footprint(m: &HashMap<String, f64>) -> Vec<(String, Option<f64>)> {
    let mut names: Vec<String> = [
        "prefold_wal_records_total",
        "prefold_backlog_keys",
        "prefold_writes_coalesced_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for op in ["put", "patch", "delete", "append", "increment"] {
        names.push(format!("prefold_writes_total{{op=\"{op}\"}}"));
    }
    names
        .into_iter()
        .map(|n| {
            let v = m.get(&n).copied();
            (n, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_problems_and_changes_nothing() {
    let o = Rig::start(
        &[
            "--max-body-bytes",
            "256",
            "--require-precondition",
            "locked",
        ],
        None,
    )
    .await;
    let r = o
        .send(
            "PUT",
            "/o/doc/1",
            &[("content-type", JSON)],
            r#"{"n":1,"s":"x"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    let r = o
        .send(
            "PUT",
            "/o/locked/1",
            &[("content-type", JSON), ("if-none-match", "*")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 201);
    let etag = o
        .send("GET", "/o/doc/1", &[], "")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    o.flushed().await;
    let store_before = o.stored().await;
    assert_eq!(store_before.len(), 2);
    let metrics_before = footprint(&o.metrics().await);
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300));
    // Under the body limit itself, but the patched object would pass it.
    let grow = format!(r#"{{"pad":"{}"}}"#, "x".repeat(240));

    // (method, path, headers, body, status, problem type)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON)],
            r#"{"n":"#,
            400,
            "malformed-json",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", "text/plain")],
            "{}",
            415,
            "unsupported-media-type",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![],
            "{}",
            415,
            "unsupported-media-type",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON)],
            &big,
            413,
            "payload-too-large",
        ),
        (
            "PATCH",
            "/o/doc/1",
            vec![("content-type", JSON)],
            r#"{"n":2}"#,
            415,
            "unsupported-media-type",
        ),
        (
            "PATCH",
            "/o/doc/1",
            vec![("content-type", MERGE)],
            "{",
            400,
            "malformed-json",
        ),
        (
            "PATCH",
            "/o/doc/1",
            vec![("content-type", MERGE)],
            &big,
            413,
            "payload-too-large",
        ),
        (
            "PATCH",
            "/o/doc/none",
            vec![("content-type", MERGE)],
            "{}",
            404,
            "not-found",
        ),
        ("DELETE", "/o/doc/none", vec![], "", 404, "not-found"),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON), ("if-match", "no-quotes")],
            "{}",
            400,
            "invalid-precondition",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON), ("if-none-match", "W/")],
            "{}",
            400,
            "invalid-precondition",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON), ("if-match", "\"1\"")],
            "{}",
            412,
            "precondition-failed",
        ),
        (
            "DELETE",
            "/o/doc/1",
            vec![("if-none-match", etag.as_str())],
            "",
            412,
            "precondition-failed",
        ),
        (
            "PUT",
            "/o/doc/new",
            vec![("content-type", JSON), ("if-match", "*")],
            "{}",
            412,
            "precondition-failed",
        ),
        (
            "PUT",
            "/o/locked/1",
            vec![("content-type", JSON)],
            "{}",
            428,
            "precondition-required",
        ),
        (
            "DELETE",
            "/o/locked/1",
            vec![],
            "",
            428,
            "precondition-required",
        ),
        (
            "PUT",
            "/o/doc/1",
            vec![("content-type", JSON), ("x-prefold-durability", "disk")],
            "{}",
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/o/doc/1",
            vec![("content-type", JSON)],
            "1",
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/o/doc/1?op=explode",
            vec![("content-type", JSON)],
            "1",
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/o/doc/1?op=increment&path=n",
            vec![("content-type", JSON)],
            "1",
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/o/doc/1?op=increment&path=/n",
            vec![("content-type", JSON)],
            "\"1\"",
            400,
            "invalid-request",
        ),
        (
            "POST",
            "/o/doc/1?op=increment&path=/n",
            vec![("content-type", "text/plain")],
            "1",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/o/doc/1?op=increment&path=/s",
            vec![("content-type", JSON)],
            "1",
            409,
            "conflict",
        ),
        (
            "POST",
            "/o/doc/1?op=append&path=/n",
            vec![("content-type", JSON)],
            "1",
            409,
            "conflict",
        ),
        (
            "POST",
            "/o/doc/1?op=append&path=/a/b",
            vec![("content-type", JSON)],
            "1",
            409,
            "conflict",
        ),
        (
            "POST",
            "/o/doc/1?op=append&path=/x",
            vec![("content-type", JSON)],
            &big,
            413,
            "payload-too-large",
        ),
        (
            "PUT",
            "/o/doc",
            vec![("content-type", JSON)],
            "{}",
            400,
            "invalid-key",
        ),
        (
            "PATCH",
            "/o/doc/1",
            vec![("content-type", MERGE)],
            &grow,
            413,
            "payload-too-large",
        ),
        ("POST", "/healthz", vec![], "", 405, "method-not-allowed"),
        ("OPTIONS", "/o/doc/1", vec![], "", 405, "method-not-allowed"),
    ];
    for (method, path, headers, body, status, slug) in &cases {
        let r = o.send(method, path, headers, body.to_string()).await;
        assert_problem(&r, *status, slug, &format!("{method} {path} {headers:?}"));
    }
    // A list header split over several lines is one list.
    let r = o
        .send(
            "PUT",
            "/o/doc/1",
            &[
                ("content-type", JSON),
                ("if-none-match", "\"zz\""),
                ("if-none-match", etag.as_str()),
            ],
            "{}",
        )
        .await;
    assert_problem(
        &r,
        412,
        "precondition-failed",
        "If-None-Match over two lines",
    );

    // Memory: the objects are as they were, and nothing else exists.
    let r = o.send("GET", "/o/doc/1", &[], "").await;
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.json(), json!({"n":1,"s":"x"}));
    for absent in ["/o/doc/new", "/o/doc/none"] {
        assert_eq!(o.send("GET", absent, &[], "").await.status, 404, "{absent}");
    }
    // Log and counters: no record, no write.
    assert_eq!(footprint(&o.metrics().await), metrics_before);
    // Store: byte for byte what it was, once everything is drained.
    assert_eq!(o.stored().await, store_before);
    let store = o.store.clone();
    assert_eq!(o.stop().await, 0);
    assert_eq!(Rig::stored_in(&store).await, store_before);
}

fn token(scope: &str, exp_offset: i64) -> String {
    let now = crate::base::Clock::system().unix_secs();
    let claims = Claims {
        sub: Some("tester".into()),
        exp: now.saturating_add_signed(exp_offset),
        scope: scope.into(),
    };
    format!("Bearer {}", mint(TOKEN_SECRET.as_bytes(), &claims))
}

/// Writes need a token whose scope covers the key: 401 without one (or
/// with a bad or expired one), 403 outside its scope; the cluster's own
/// calls need the cluster secret. Each refusal comes before the body is
/// read and writes nothing.
#[tokio::test]
async fn writes_need_a_token_that_covers_the_key() {
    let o = Rig::start(&["--token-secret", TOKEN_SECRET], None).await;
    let ok = token("write:doc/*", 600);
    let r = o
        .send(
            "PUT",
            "/o/doc/1",
            &[("content-type", JSON), ("authorization", ok.as_str())],
            "{}",
        )
        .await;
    assert_eq!(r.status, 201);
    let before = footprint(&o.metrics().await);
    let expired = token("write:*", -5);
    let narrow = token("write:user/*", 600);
    let other = format!(
        "Bearer {}",
        mint(
            b"another-secret-of-thirty-two-bytes!!",
            &Claims {
                sub: None,
                exp: u64::MAX,
                scope: "write:*".into()
            }
        )
    );
    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("no token", None, 401, "unauthorized"),
        ("not a token", Some("Bearer abc.def"), 401, "unauthorized"),
        (
            "not bearer",
            Some("Basic dXNlcjpwdw=="),
            401,
            "unauthorized",
        ),
        ("expired", Some(expired.as_str()), 401, "unauthorized"),
        ("another secret", Some(other.as_str()), 401, "unauthorized"),
        ("outside its scope", Some(narrow.as_str()), 403, "forbidden"),
    ];
    for (what, auth, status, slug) in &cases {
        let mut headers = vec![("content-type", JSON)];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        for (method, path) in [("PUT", "/o/doc/2"), ("DELETE", "/o/doc/1")] {
            let r = o.send(method, path, &headers, "{}").await;
            assert_problem(&r, *status, slug, &format!("{what}: {method} {path}"));
            assert!(r.header("www-authenticate").is_some(), "{what}");
        }
    }
    // The change feed is a cluster call: a write token does not open it.
    let r = o
        .send(
            "GET",
            "/_prefold/changes",
            &[("authorization", ok.as_str())],
            "",
        )
        .await;
    assert_problem(&r, 401, "unauthorized", "change feed with a write token");
    assert_eq!(footprint(&o.metrics().await), before);
    assert!(o.object("doc/2").await.is_none());
    assert!(o.object("doc/1").await.is_some());
}
