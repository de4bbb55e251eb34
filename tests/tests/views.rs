//! The view engine through real `prefold-origin` processes with the demo
//! model: every view kind over HTTP, fan-out to 10,000 pages, deletes,
//! paging under concurrent inserts, bad model files, writes that break the
//! model, the rolling regeneration repairing lost derivations, and the
//! rebuild after a crash.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use prefold_e2e::{client, files_under, poll, repo_root, OriginProc};
use serde_json::{json, Value};

fn model_path() -> PathBuf {
    repo_root().join("scripts/demo/model.toml")
}

async fn start(data: &std::path::Path, extra: &[&str]) -> Result<OriginProc> {
    let model = model_path();
    let mut args = vec!["--model", model.to_str().context("model path")?];
    args.extend_from_slice(extra);
    OriginProc::start(data, &args).await
}

async fn put(o: &OriginProc, key: &str, doc: &Value) -> Result<(u16, Value)> {
    let r = client()
        .put(format!("{}/o/{key}", o.url()))
        .header("content-type", "application/json")
        .body(doc.to_string())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn put_ok(o: &OriginProc, key: &str, doc: Value) -> Result<()> {
    let (status, body) = put(o, key, &doc).await?;
    ensure!(status < 300, "PUT {key}: {status} {body}");
    Ok(())
}

async fn patch(o: &OriginProc, key: &str, doc: Value) -> Result<(u16, Value)> {
    let r = client()
        .patch(format!("{}/o/{key}", o.url()))
        .header("content-type", "application/merge-patch+json")
        .body(doc.to_string())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn delete(o: &OriginProc, key: &str) -> Result<u16> {
    let r = client()
        .delete(format!("{}/o/{key}", o.url()))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

async fn get(o: &OriginProc, path: &str) -> Result<(u16, Value)> {
    let r = client().get(format!("{}/o/{path}", o.url())).send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn get_ok(o: &OriginProc, path: &str) -> Result<Value> {
    let (status, body) = get(o, path).await?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    Ok(body)
}

/// Waits until the view engine has handled and published everything sent
/// so far (writes notify it before they answer).
async fn settle(o: &OriginProc) -> Result<()> {
    poll(
        "the view engine to settle",
        Duration::from_secs(60),
        || async { (o.metric("prefold_view_pending").await.ok()? == 0.0).then_some(()) },
    )
    .await
    .with_context(|| o.log_tail())
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn purchase_orders(o: &OriginProc) -> Result<()> {
    put_ok(o, "customer/c1", json!({"name": "Ada", "country": "GB"})).await?;
    put_ok(o, "customer/c2", json!({"name": "Bo", "country": "SE"})).await?;
    put_ok(o, "product/p1", json!({"code": "A1", "name": "Widget"})).await?;
    put_ok(o, "product/p2", json!({"code": "B2", "name": "Gizmo"})).await?;
    put_ok(
        o,
        "order/o1",
        json!({"customer": "c1", "product": "p1", "date": "2026-12-01"}),
    )
    .await?;
    put_ok(
        o,
        "order/o2",
        json!({"customer": "c2", "product": "p1", "date": "2026-12-02"}),
    )
    .await
}

async fn events(o: &OriginProc) -> Result<()> {
    put_ok(o, "venue/v1", json!({"name": "Hall", "city": "Lisbon"})).await?;
    for u in ["u1", "u2", "u3"] {
        put_ok(o, &format!("user/{u}"), json!({"name": u, "country": "PT"})).await?;
    }
    let ev = |title: &str, cat: &str, date: &str| json!({"title": title, "description": "an evening", "category": cat, "date": date, "venue": "v1"});
    put_ok(o, "event/e1", ev("Jazz Night", "music", "2026-12-05")).await?;
    put_ok(o, "event/e2", ev("Rust meetup", "tech", "2026-12-07")).await?;
    put_ok(o, "event/e3", ev("Jazz brunch", "music", "2026-12-01")).await
}

/// An origin with the demo model, two customers, two products, two orders,
/// a venue, three users and three events.
async fn demo_origin(extra: &[&str]) -> Result<(tempfile::TempDir, OriginProc)> {
    let dir = tempfile::tempdir()?;
    let o = start(dir.path(), extra).await?;
    purchase_orders(&o).await?;
    events(&o).await?;
    Ok((dir, o))
}

#[tokio::test]
async fn every_view_kind_over_http() -> Result<()> {
    let (_dir, o) = demo_origin(&[]).await?;
    for (i, (author, rating)) in [("u1", 5), ("u2", 3), ("u1", 4)].iter().enumerate() {
        // The per-author sequence comes from the author's own counter.
        let (status, seq) = {
            let r = client()
                .post(format!(
                    "{}/o/user/{author}?op=increment&path=/comment_seq",
                    o.url()
                ))
                .header("content-type", "application/json")
                .body("1")
                .send()
                .await?;
            (
                r.status().as_u16(),
                r.json::<Value>().await?["result"].as_i64().unwrap_or(0),
            )
        };
        ensure!(status == 200, "allocating a sequence: {status}");
        let doc = json!({"event": "e1", "author": author, "ts": 1000 + i, "seq": seq, "text": format!("comment {i}"), "rating": rating});
        put_ok(&o, &format!("comment/e1/{author}.{seq}"), doc).await?;
    }
    put_ok(
        &o,
        "friendship/u1/u2",
        json!({"user": "u1", "friend": "u2"}),
    )
    .await?;
    put_ok(&o, "tag/e1/live", json!({"event": "e1", "tag": "live"})).await?;
    settle(&o).await?;

    // embed
    assert_eq!(
        get_ok(&o, "order_page/o1").await?,
        json!({"id": "o1", "date": "2026-12-01",
               "customer": {"id": "c1", "name": "Ada", "country": "GB"},
               "product": {"id": "p1", "code": "A1", "name": "Widget"}})
    );
    assert_eq!(
        get_ok(&o, "event_page/e1").await?["venue"],
        json!({"id": "v1", "name": "Hall", "city": "Lisbon"})
    );
    // aggregate
    assert_eq!(
        get_ok(&o, "product_orders/p1").await?,
        json!({"id": "p1", "orders": 2})
    );
    let ratings = get_ok(&o, "event_ratings/e1").await?;
    assert_eq!(
        (
            ratings["comments"].clone(),
            ratings["rating_sum"].clone(),
            ratings["rating_avg"].clone(),
            ratings["rating_min"].clone(),
            ratings["rating_max"].clone()
        ),
        (json!(3), json!(12), json!(4.0), json!(3), json!(5))
    );
    // list: newest first, keyed by timestamp + author + per-author sequence
    let list = get_ok(&o, "event_comments/e1").await?;
    assert_eq!(ids(&list), ["e1/u1.2", "e1/u2.1", "e1/u1.1"]);
    let page = get_ok(&o, "event_comments/e1?limit=2").await?;
    assert_eq!(ids(&page), ["e1/u1.2", "e1/u2.1"]);
    let next = page["next"].as_str().context("a next cursor")?;
    let page2 = get_ok(&o, &format!("event_comments/e1?limit=2&after={next}")).await?;
    assert_eq!(ids(&page2), ["e1/u1.1"]);
    assert!(page2["next"].is_null());
    let prev = page2["prev"].as_str().context("a prev cursor")?;
    assert_eq!(
        ids(&get_ok(&o, &format!("event_comments/e1?before={prev}")).await?),
        ["e1/u1.2", "e1/u2.1"]
    );
    // index: equality plus range
    let music = get_ok(&o, "events_by_category/music?from=2026-12-02&to=2026-12-31").await?;
    assert_eq!(ids(&music), ["e1"]);
    assert_eq!(
        ids(&get_ok(&o, "events_by_category/music").await?),
        ["e3", "e1"]
    );
    // text: per-word lists and a bounded AND query with prefix and typo
    assert_eq!(ids(&get_ok(&o, "event_search/jazz").await?), ["e1", "e3"]);
    assert_eq!(
        ids(&get_ok(&o, "event_search/_search?q=jazz%20nig").await?),
        ["e1"]
    );
    assert_eq!(
        ids(&get_ok(&o, "event_search/_search?q=rsut").await?),
        ["e2"]
    );
    // set
    assert_eq!(
        get_ok(&o, "friends/u2").await?,
        json!({"id": "u2", "count": 1, "members": ["u1"]})
    );
    assert_eq!(get_ok(&o, "friends/u1?member=u2").await?["member"], true);
    assert_eq!(get_ok(&o, "friends/u1?member=u3").await?["member"], false);
    assert_eq!(get_ok(&o, "tagged/live").await?["members"], json!(["e1"]));
    // counter: increments are accepted at once and published within a period
    let mut total = 0;
    for by in [1, 1, 5] {
        let r = client()
            .post(format!("{}/o/event_views/e1?op=increment", o.url()))
            .header("content-type", "application/json")
            .body(by.to_string())
            .send()
            .await?;
        ensure!(r.status() == 202, "counter increment: {}", r.status());
        total += by;
    }
    poll(
        "the counter to be published",
        Duration::from_secs(10),
        || async {
            (get(&o, "event_views/e1").await.ok()?.1 == json!({"count": total})).then_some(())
        },
    )
    .await?;
    ensure!(o.metric("prefold_counter_publications_total").await? >= 1.0);

    // Query parameters a view does not take are refused precisely.
    for (path, status) in [
        ("event_comments/e1?after=bogus", 400),
        ("event_comments/e1?limit=21", 400),
        ("event_comments/e1?member=x", 400),
        ("order_page/o1?limit=1", 400),
        ("event_search/_search", 400),
        ("event_search/_search?q=a+b+c+d+e+f+g+h+i", 400),
        ("friends/u1?limit=3", 400),
        ("events_by_category/music?colour=red", 400),
    ] {
        let (got, body) = get(&o, path).await?;
        ensure!(got == status, "GET {path}: {got} {body}");
        ensure!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:prefold:problem:")),
            "{body}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn renaming_a_product_updates_all_ten_thousand_order_pages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = start(dir.path(), &[]).await?;
    put_ok(&o, "customer/c1", json!({"name": "Ada", "country": "GB"})).await?;
    put_ok(&o, "product/p0", json!({"code": "A1", "name": "Widget"})).await?;
    const N: usize = 10_000;
    let url = o.url();
    let failures = futures::stream::iter(0..N)
        .map(|i| {
            let url = url.clone();
            async move {
                let r = client()
                    .put(format!("{url}/o/order/o{i}"))
                    .header("content-type", "application/json")
                    .body(
                        json!({"customer": "c1", "product": "p0", "date": "2026-12-01"})
                            .to_string(),
                    )
                    .send()
                    .await;
                matches!(r, Ok(r) if r.status() == 201)
            }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    ensure!(failures == 0, "{failures} orders were not created");
    settle(&o).await?;
    assert_eq!(get_ok(&o, "product_orders/p0").await?["orders"], N);
    let published = o.metric("prefold_view_published_total").await?;

    let (status, _) = patch(&o, "product/p0", json!({"name": "Gadget"})).await?;
    ensure!(status == 200);
    settle(&o).await?;
    // Exactly the pages changed: one per order (the aggregate did not).
    assert_eq!(
        o.metric("prefold_view_published_total").await? - published,
        N as f64
    );
    let stale = futures::stream::iter(0..N)
        .map(|i| {
            let o = &o;
            async move {
                let page = get_ok(o, &format!("order_page/o{i}")).await.ok()?;
                (page["product"]["name"] != "Gadget").then_some(i)
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect::<Vec<usize>>()
        .await;
    ensure!(
        stale.is_empty(),
        "{} pages still show the old name, e.g. o{}",
        stale.len(),
        stale[0]
    );
    Ok(())
}

#[tokio::test]
async fn deletes_propagate_to_every_view() -> Result<()> {
    let (_dir, o) = demo_origin(&[]).await?;
    put_ok(
        &o,
        "comment/e1/u1.1",
        json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "a", "rating": 2}),
    )
    .await?;
    put_ok(
        &o,
        "comment/e1/u2.1",
        json!({"event": "e1", "author": "u2", "ts": 2, "seq": 1, "text": "b", "rating": 4}),
    )
    .await?;
    put_ok(
        &o,
        "friendship/u1/u2",
        json!({"user": "u1", "friend": "u2"}),
    )
    .await?;
    settle(&o).await?;

    ensure!(delete(&o, "order/o2").await? == 200);
    ensure!(delete(&o, "comment/e1/u2.1").await? == 200);
    ensure!(delete(&o, "friendship/u1/u2").await? == 200);
    ensure!(delete(&o, "event/e2").await? == 200);
    ensure!(delete(&o, "customer/c1").await? == 200);
    settle(&o).await?;
    assert_eq!(get(&o, "order_page/o2").await?.0, 404);
    assert_eq!(get_ok(&o, "product_orders/p1").await?["orders"], 1);
    assert_eq!(ids(&get_ok(&o, "event_comments/e1").await?), ["e1/u1.1"]);
    assert_eq!(get_ok(&o, "event_ratings/e1").await?["rating_avg"], 2.0);
    assert_eq!(get(&o, "friends/u1").await?.0, 404);
    assert_eq!(get(&o, "friends/u2").await?.0, 404);
    assert_eq!(get(&o, "event_page/e2").await?.0, 404);
    assert_eq!(
        ids(&get_ok(&o, "events_by_category/music").await?),
        ["e3", "e1"]
    );
    assert_eq!(get(&o, "events_by_category/tech").await?.0, 404);
    assert_eq!(get(&o, "event_search/rust").await?.0, 404);
    // A deleted reference shows as null in the page that embeds it.
    assert_eq!(get_ok(&o, "order_page/o1").await?["customer"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn cursor_paging_is_stable_under_concurrent_inserts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = start(dir.path(), &[]).await?;
    events(&o).await?;
    let comment = |author: &str, seq: u64, ts: u64| json!({"event": "e1", "author": author, "ts": ts, "seq": seq, "text": "x"});
    let mut before: BTreeSet<String> = BTreeSet::new();
    for seq in 1..=120u64 {
        put_ok(&o, &format!("comment/e1/u1.{seq}"), comment("u1", seq, seq)).await?;
        before.insert(format!("e1/u1.{seq}"));
    }
    settle(&o).await?;

    // A writer keeps adding comments (newer and interleaved timestamps)
    // while a reader walks the list by cursor, 7 at a time.
    let writer = {
        let url = o.url();
        tokio::spawn(async move {
            for seq in 1..=150u64 {
                let doc = json!({"event": "e1", "author": "u2", "ts": (seq * 37) % 400, "seq": seq, "text": "y"});
                let r = client()
                    .put(format!("{url}/o/comment/e1/u2.{seq}"))
                    .header("content-type", "application/json")
                    .body(doc.to_string())
                    .send()
                    .await;
                if !matches!(r, Ok(ref r) if r.status().is_success()) {
                    return Err(anyhow::anyhow!("insert {seq} failed: {r:?}"));
                }
            }
            Ok(())
        })
    };
    let mut seen: Vec<String> = Vec::new();
    // (ts, author, seq) of each item, in the order served.
    let mut positions: Vec<(u64, String, u64)> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(c) => format!("event_comments/e1?limit=7&after={c}"),
            None => "event_comments/e1?limit=7".to_owned(),
        };
        let page = get_ok(&o, &path).await?;
        pages += 1;
        for item in page["items"].as_array().context("items")? {
            let id = item["id"].as_str().context("id")?.to_owned();
            let seq = id
                .rsplit_once('.')
                .and_then(|(_, s)| s.parse().ok())
                .context("seq")?;
            positions.push((
                item["ts"].as_u64().context("ts")?,
                item["author"].as_str().context("author")?.to_owned(),
                seq,
            ));
            seen.push(id);
        }
        match page["next"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
        ensure!(pages < 1000, "the walk does not end");
    }
    writer.await??;
    let unique: BTreeSet<&String> = seen.iter().collect();
    ensure!(unique.len() == seen.len(), "an item was served twice");
    let missing: Vec<&String> = before.iter().filter(|k| !unique.contains(k)).collect();
    ensure!(
        missing.is_empty(),
        "items present before the walk were skipped: {missing:?}"
    );
    // The walk is in the list's order (timestamp descending, then author,
    // then sequence descending) even though the list changed under it.
    for w in positions.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let ordered = a.0 > b.0 || (a.0 == b.0 && (a.1 < b.1 || (a.1 == b.1 && a.2 > b.2)));
        ensure!(ordered, "the walk went out of order: {a:?} then {b:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_model_files_stop_the_origin_with_file_line_and_field() -> Result<()> {
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "[entity.a]\nfields = { x = \"strng\" }\n",
            "bad.toml:2:16: entity.a.fields.x:",
            &["unknown field type `strng`"],
        ),
        (
            "[entity.a]\nfields = { x = \"ref:nobody\" }\n",
            "bad.toml:2:16: entity.a.fields.x:",
            &["`nobody`, which is not a declared entity"],
        ),
        (
            "[entity.a]\nfields = { x = \"int\" }\n\n[view.v]\nkind = \"embed\"\nfrom = \"a\"\nfields = [\"y\"]\n",
            "bad.toml:7:11: view.v.fields:",
            &["`a` has no field `y`"],
        ),
        (
            "[view.v]\nkind = \"cube\"\n",
            "bad.toml:2:8: view.v.kind:",
            &["unknown view kind `cube`"],
        ),
        ("[entity.a\n", "bad.toml:1:", &["-:"]),
    ];
    for (text, position, words) in cases {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text)?;
        let out = Command::new(prefold_e2e::origin_bin())
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(["--model", "bad.toml", "--open-writes"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "exit {:?} for {text:?}: {stderr}",
            out.status.code()
        );
        ensure!(
            stderr.contains(position),
            "{stderr:?} does not name {position:?}"
        );
        for w in words {
            ensure!(stderr.contains(w), "{stderr:?} does not say {w:?}");
        }
        ensure!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "it must not start listening"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rolling_regeneration_repairs_lost_derivations() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let faults = dir.path().join("faults");
    std::fs::write(&faults, "")?;
    let o = start(
        dir.path(),
        &[
            "--fault-file",
            faults.to_str().context("path")?,
            "--regen-period-secs",
            "1",
        ],
    )
    .await?;
    purchase_orders(&o).await?;
    settle(&o).await?;
    assert_eq!(
        get_ok(&o, "order_page/o1").await?["product"]["name"],
        "Widget"
    );

    // Lose every derivation of a rename: the pages keep the old name.
    std::fs::write(&faults, "derive=drop\n")?;
    let dropped = o.metric("prefold_view_derivations_dropped_total").await?;
    let divergences = o.metric("prefold_view_divergences_total").await?;
    ensure!(patch(&o, "product/p1", json!({"name": "Gadget"})).await?.0 == 200);
    poll(
        "the derivations to be dropped",
        Duration::from_secs(10),
        || async {
            (o.metric("prefold_view_derivations_dropped_total")
                .await
                .ok()?
                >= dropped + 2.0)
                .then_some(())
        },
    )
    .await?;
    settle(&o).await?;
    assert_eq!(
        get_ok(&o, "order_page/o1").await?["product"]["name"],
        "Widget"
    );

    // With delivery restored, the sweep finds both pages wrong and repairs
    // them; nothing else is rewritten.
    std::fs::write(&faults, "")?;
    poll(
        "the sweep to repair the pages",
        Duration::from_secs(20),
        || async {
            let fixed = get_ok(&o, "order_page/o1").await.ok()?["product"]["name"] == "Gadget"
                && get_ok(&o, "order_page/o2").await.ok()?["product"]["name"] == "Gadget";
            fixed.then_some(())
        },
    )
    .await?;
    let sweeps = o.metric("prefold_view_sweeps_total").await?;
    poll("another full sweep", Duration::from_secs(20), || async {
        (o.metric("prefold_view_sweeps_total").await.ok()? >= sweeps + 1.0).then_some(())
    })
    .await?;
    settle(&o).await?;
    assert_eq!(
        o.metric("prefold_view_divergences_total").await? - divergences,
        2.0
    );
    Ok(())
}

#[tokio::test]
async fn views_are_rebuilt_from_logged_entities_after_a_crash() -> Result<()> {
    // Nothing reaches the store: everything must come back from the log.
    let (dir, o) = demo_origin(&["--flush-interval-ms", "3600000"]).await?;
    put_ok(
        &o,
        "comment/e1/u1.1",
        json!({"event": "e1", "author": "u1", "ts": 1, "seq": 1, "text": "a", "rating": 5}),
    )
    .await?;
    ensure!(patch(&o, "product/p1", json!({"name": "Gadget"})).await?.0 == 200);
    settle(&o).await?;
    let paths = [
        "order_page/o1",
        "order_page/o2",
        "product_orders/p1",
        "event_comments/e1",
        "event_ratings/e1",
        "events_by_category/music",
        "event_search/jazz",
        "event_page/e3",
    ];
    let mut before = Vec::new();
    for p in paths {
        before.push(get_ok(&o, p).await?);
    }
    ensure!(
        files_under(&dir.path().join("store")).is_empty(),
        "the store must still be empty"
    );
    o.kill9().await?;

    let o = start(dir.path(), &["--flush-interval-ms", "3600000"]).await?;
    settle(&o).await?;
    for (p, want) in paths.iter().zip(&before) {
        let got = get_ok(&o, p).await?;
        if &got != want {
            bail!("{p} after the crash: {got} (was {want})");
        }
    }
    Ok(())
}

#[tokio::test]
async fn views_evicted_from_a_small_hot_tier_are_loaded_and_updated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A hot tier far smaller than the data, and views stored at once, so
    // that many pages are evicted *and* stored: the publication has to load
    // them back (the slow path) before it can rewrite them.
    let o = start(
        dir.path(),
        &["--cache-bytes", "200000", "--view-flush-delay-ms", "0"],
    )
    .await?;
    put_ok(&o, "customer/c1", json!({"name": "Ada", "country": "GB"})).await?;
    put_ok(&o, "product/p0", json!({"code": "A1", "name": "Widget"})).await?;
    const N: usize = 2_000;
    for i in 0..N {
        put_ok(
            &o,
            &format!("order/o{i}"),
            json!({"customer": "c1", "product": "p0", "date": "2026-12-01"}),
        )
        .await?;
    }
    settle(&o).await?;
    poll("the backlog to drain", Duration::from_secs(60), || async {
        (o.metric("prefold_backlog_keys").await.ok()? == 0.0).then_some(())
    })
    .await?;
    ensure!(
        o.metric("prefold_hot_evictions_total").await? > 0.0,
        "nothing was evicted"
    );
    let loads = o.metric("prefold_store_loads_total").await?;

    ensure!(patch(&o, "product/p0", json!({"name": "Gadget"})).await?.0 == 200);
    settle(&o).await?;
    ensure!(
        o.metric("prefold_store_loads_total").await? > loads,
        "no evicted page was loaded back"
    );
    ensure!(o.metric("prefold_view_publish_failures_total").await? == 0.0);
    for i in 0..N {
        let page = get_ok(&o, &format!("order_page/o{i}")).await?;
        ensure!(
            page["product"]["name"] == "Gadget",
            "order_page/o{i}: {page}"
        );
    }
    Ok(())
}
