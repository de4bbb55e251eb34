//! Writes that break the model get 422 (or 405 for a view, 409 for an
//! operation that does not fit), with a problem that says why, and change
//! nothing: no entity, no view, no counter, no stored record (moved here
//! from the process-level views suite).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{assert_problem, Rig, DEMO_MODEL};

async fn put_ok(o: &Rig, key: &str, doc: Value) {
    let r = o
        .send(
            "PUT",
            &format!("/o/{key}"),
            &[("content-type", "application/json")],
            doc.to_string(),
        )
        .await;
    assert!(
        r.status.as_u16() < 300,
        "PUT {key}: {} {}",
        r.status,
        r.json()
    );
}

/// The demo origin's data: two customers, two products, two orders, a
/// venue, three users, three events.
async fn demo_data(o: &Rig) {
    put_ok(o, "customer/c1", json!({"name": "Ada", "country": "GB"})).await;
    put_ok(o, "customer/c2", json!({"name": "Bo", "country": "SE"})).await;
    put_ok(o, "product/p1", json!({"code": "A1", "name": "Widget"})).await;
    put_ok(o, "product/p2", json!({"code": "B2", "name": "Gizmo"})).await;
    put_ok(
        o,
        "order/o1",
        json!({"customer": "c1", "product": "p1", "date": "2026-12-01"}),
    )
    .await;
    put_ok(
        o,
        "order/o2",
        json!({"customer": "c2", "product": "p1", "date": "2026-12-02"}),
    )
    .await;
    put_ok(o, "venue/v1", json!({"name": "Hall", "city": "Lisbon"})).await;
    for u in ["u1", "u2", "u3"] {
        put_ok(o, &format!("user/{u}"), json!({"name": u, "country": "PT"})).await;
    }
    let ev = |title: &str, cat: &str, date: &str| json!({"title": title, "description": "an evening", "category": cat, "date": date, "venue": "v1"});
    put_ok(o, "event/e1", ev("Jazz Night", "music", "2026-12-05")).await;
    put_ok(o, "event/e2", ev("Rust meetup", "tech", "2026-12-07")).await;
    put_ok(o, "event/e3", ev("Jazz brunch", "music", "2026-12-01")).await;
}

/// Everything a refused write could have touched.
async fn footprint(o: &Rig) -> (Vec<(String, f64)>, Vec<Value>) {
    let keep = [
        "prefold_wal_records_total",
        "prefold_view_changes_total",
        "prefold_view_published_total",
        "prefold_backlog_keys",
        "prefold_counter_increments_total",
    ];
    let m: HashMap<String, f64> = o.metrics().await;
    let mut metrics: Vec<(String, f64)> = m
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()) || k.starts_with("prefold_writes_total"))
        .collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(metrics.len(), keep.len() + 5, "{metrics:?}");
    let mut objects = Vec::new();
    for k in [
        "order/o1",
        "product/p1",
        "order_page/o1",
        "product_orders/p1",
        "event/e1",
        "comment/e1/u1.1",
        "user/u1",
    ] {
        let r = o.send("GET", &format!("/o/{k}"), &[], "").await;
        objects.push(json!([k, r.status.as_u16(), r.json()]));
    }
    (metrics, objects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_break_the_model_get_422_and_change_nothing() {
    let o = Rig::start(&[], Some(DEMO_MODEL)).await;
    demo_data(&o).await;
    put_ok(
        &o,
        "comment/e1/u1.1",
        json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "a"}),
    )
    .await;
    o.settled().await;
    // The store's records are compared too: let the write-behind finish.
    o.flushed().await;
    let before = footprint(&o).await;
    let store_before = o.stored().await;

    let cases: Vec<(&str, &str, String, &str, u16)> = vec![
        ("PUT", "order/o9", json!({"customer": "c1", "product": "p1", "date": "2026-13-45"}).to_string(), "application/json", 422),
        ("PUT", "order/o9", json!({"customer": "c1", "product": 7, "date": "2026-12-01"}).to_string(), "application/json", 422),
        ("PUT", "order/o9", json!({"customer": "c1", "product": "p1", "date": "2026-12-01", "note": "x"}).to_string(), "application/json", 422),
        ("PUT", "order/o9", json!({"customer": "c1", "date": "2026-12-01"}).to_string(), "application/json", 422),
        ("PUT", "order/o9", json!({"customer": "c1", "product": "p404", "date": "2026-12-01"}).to_string(), "application/json", 422),
        ("PUT", "order/o9", json!(["not", "an", "object"]).to_string(), "application/json", 422),
        ("PUT", "order/o9/extra", json!({"customer": "c1", "product": "p1", "date": "2026-12-01"}).to_string(), "application/json", 422),
        ("PUT", "comment/e2/u1.1", json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "a"}).to_string(), "application/json", 422),
        ("PUT", "event/e9", json!({"title": "t", "description": "d", "category": "live music", "date": "2026-12-01", "venue": "v1"}).to_string(), "application/json", 422),
        ("PATCH", "order/o1", json!({"product": "p404"}).to_string(), "application/merge-patch+json", 422),
        ("PATCH", "order/o1", json!({"date": 20261201}).to_string(), "application/merge-patch+json", 422),
        ("PATCH", "order/o1", json!({"customer": null}).to_string(), "application/merge-patch+json", 422),
        ("PATCH", "product/p1", json!({"colour": "red"}).to_string(), "application/merge-patch+json", 422),
        ("POST", "user/u1?op=increment&path=/name", "1".to_owned(), "application/json", 409),
        ("POST", "user/u1?op=append&path=/tags", "1".to_owned(), "application/json", 422),
        ("POST", "user/u1?op=increment&path=/comment_seq", "0.5".to_owned(), "application/json", 422),
        ("PUT", "order_page/o1", json!({"id": "o1"}).to_string(), "application/json", 405),
        ("DELETE", "product_orders/p1", String::new(), "application/json", 405),
        ("PATCH", "event_comments/e1", json!({}).to_string(), "application/merge-patch+json", 405),
        ("POST", "event_views/e1?op=append", "1".to_owned(), "application/json", 400),
        ("POST", "event_views/e1?op=increment", "\"one\"".to_owned(), "application/json", 400),
        ("POST", "event_views/e1?op=increment", "1".to_owned(), "text/plain", 415),
    ];
    for (method, key, body, ct, status) in &cases {
        let r = o
            .send(
                method,
                &format!("/o/{key}"),
                &[("content-type", ct)],
                body.clone(),
            )
            .await;
        let ctx = format!("{method} {key} {body}");
        let slug = match status {
            422 => "model-violation",
            405 => "method-not-allowed",
            409 => "conflict",
            415 => "unsupported-media-type",
            _ => "invalid-request",
        };
        assert_problem(&r, *status, slug, &ctx);
        if *status == 422 {
            let problem = r.json();
            assert!(
                problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{ctx}: {problem}"
            );
        }
    }
    o.settled().await;
    assert_eq!(footprint(&o).await, before, "counters or objects changed");
    o.flushed().await;
    assert_eq!(o.stored().await, store_before, "the store changed");
    for absent in ["order/o9", "order_page/o9"] {
        let r = o.send("GET", &format!("/o/{absent}"), &[], "").await;
        assert_eq!(r.status, 404, "{absent}");
    }
}
