//! Views derived across origins: three origins over one store derive what
//! one origin does, `ref:` checks ask the referenced key's owner, and an
//! origin that restarts gets back what the others hold for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use prefold_e2e::cluster::{feed, load_demo, Cluster};
use prefold_e2e::{client, poll, repo_root, OriginProc};
use serde_json::{json, Value};

fn model_path() -> PathBuf {
    repo_root().join("scripts/demo/model.toml")
}

/// The arguments every origin here gets: the demo model, and a change feed
/// that lists changes at once.
fn demo_args(model: &str) -> Vec<&str> {
    vec!["--model", model, "--feed-horizon-ms", "0"]
}

/// Views only: entities are the same objects either way.
fn views_of(objects: &std::collections::BTreeMap<String, String>) -> Vec<(String, Value)> {
    let model = std::fs::read_to_string(model_path()).unwrap();
    let entity_kinds: Vec<String> = model
        .lines()
        .filter_map(|l| l.strip_prefix("[entity."))
        .map(|l| l.trim_end_matches(']').to_owned())
        .collect();
    objects
        .iter()
        .filter(|(k, _)| !entity_kinds.iter().any(|e| k.split('/').next() == Some(e)))
        .map(|(k, b)| (k.clone(), serde_json::from_str(b).unwrap()))
        .collect()
}

async fn put(o: &OriginProc, key: &str, doc: &Value) -> Result<reqwest::Response> {
    Ok(client()
        .put(format!("{}/o/{key}", o.url()))
        .json(doc)
        .send()
        .await?)
}

async fn get_json(o: &OriginProc, key: &str) -> Result<Value> {
    let r = client().get(format!("{}/o/{key}", o.url())).send().await?;
    ensure!(r.status() == 200, "GET {key}: {}", r.status());
    Ok(r.json().await?)
}

/// The demo data set written to three origins gives every view the same
/// body as the same data on one origin, each view published by exactly one
/// origin (its owner), and derivations crossed between origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_origins_derive_every_view_as_one_origin_does() -> Result<()> {
    let model = model_path();
    let model = model.to_str().context("model path")?;
    let args = demo_args(model);

    let one_dir = tempfile::tempdir()?;
    let one = OriginProc::start(one_dir.path(), &args).await?;
    load_demo(&["--origin", &one.url()], 1).await?;
    let single = Cluster {
        list: String::new(),
        origins: vec![one],
    };
    single.settle().await?;
    let expected = views_of(&single.objects().await?);
    ensure!(expected.len() > 100, "only {} views", expected.len());

    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), 3, &args).await?;
    load_demo(&["--origins", &cluster.list], 1).await?;
    cluster.settle().await?;
    let got = views_of(&cluster.objects().await?);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !got.iter().any(|g| g.0 == e.0))
        .map(|e| &e.0)
        .take(5)
        .collect();
    ensure!(
        missing.is_empty(),
        "views missing on three origins: {missing:?}"
    );
    for ((k, want), (k2, have)) in expected.iter().zip(&got) {
        ensure!(k == k2, "{k} vs {k2}");
        ensure!(want == have, "{k}: one origin {want}, three {have}");
    }
    assert_eq!(expected.len(), got.len());
    // Text queries merge every origin's words: the same answers as one
    // origin holding them all, for words, prefixes and typos.
    let words: Vec<&str> = expected
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("event_search/"))
        .take(40)
        .collect();
    let (w1, w2, w3) = (words[0], words[words.len() / 2], words[words.len() - 1]);
    let typo: String = w2.chars().rev().collect();
    let queries = [
        w1.to_owned(),
        format!("{w1} {w3}"),
        w3[..w3.len().min(2)].to_owned(),
        format!("{w2} {}", &w1[..1]),
        typo,
    ];
    for q in &queries {
        let path = format!("event_search/_search?q={q}");
        let want = get_json(&single.origins[0], &path).await?;
        for o in &cluster.origins {
            let have = get_json(o, &path).await?;
            ensure!(
                want == have,
                "search {q:?}: one origin {want}, three {have}"
            );
        }
    }
    // Each origin published views of its own only.
    for (i, o) in cluster.origins.iter().enumerate() {
        for k in feed(&o.url()).await?.keys() {
            ensure!(cluster.owner(k) == i, "{k} published by o{i}");
        }
    }
    let mut crossed = 0.0;
    for o in &cluster.origins {
        crossed += o
            .metric("prefold_view_remote_derivation_lag_seconds_count")
            .await
            .unwrap_or(0.0);
    }
    ensure!(crossed > 0.0, "no derivation crossed between origins");
    Ok(())
}

/// A `ref:` to an entity another origin owns is checked at that origin: a
/// present one is accepted, a missing one is refused (422), and with the
/// owner down the write is refused with 503 and `Retry-After`. Refused
/// writes leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_checked_at_their_owner() -> Result<()> {
    let model = model_path();
    let model = model.to_str().context("model path")?;
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 2, &demo_args(model)).await?;
    // A customer owned by o1, and orders owned by o0.
    let customer = cluster.keys_of("customer/c", 1).next().unwrap();
    let absent = cluster.keys_of("customer/x", 1).next().unwrap();
    let product = cluster.keys_of("product/p", 0).next().unwrap();
    let orders: Vec<String> = cluster.keys_of("order/o", 0).take(3).collect();
    let [order, dangling, unreachable] = <[String; 3]>::try_from(orders).unwrap();
    let id = |k: &str| k.split('/').nth(1).unwrap().to_owned();

    let r = put(
        &cluster.origins[1],
        &customer,
        &json!({"name": "Ada", "country": "PT"}),
    )
    .await?;
    ensure!(r.status().is_success(), "{}", r.status());
    let r = put(
        &cluster.origins[0],
        &product,
        &json!({"code": "A1", "name": "Widget"}),
    )
    .await?;
    ensure!(r.status().is_success(), "{}", r.status());

    let doc = |c: &str| json!({"customer": id(c), "product": id(&product), "date": "2026-12-02"});
    let r = put(&cluster.origins[0], &order, &doc(&customer)).await?;
    ensure!(
        r.status().is_success(),
        "an order of a customer on another origin: {}",
        r.status()
    );
    let r = put(&cluster.origins[0], &dangling, &doc(&absent)).await?;
    ensure!(
        r.status() == 422,
        "a missing customer on another origin: {}",
        r.status()
    );
    let body: Value = r.json().await?;
    ensure!(
        body["type"]
            .as_str()
            .unwrap_or_default()
            .contains("model-violation"),
        "{body}"
    );

    cluster.settle().await?;
    let page = get_json(&cluster.origins[0], &format!("order_page/{}", id(&order))).await?;
    ensure!(
        page["customer"]["name"] == "Ada",
        "embedded across origins: {page}"
    );

    // The customer's owner is down: the check cannot be made.
    let o1 = cluster.origins.remove(1);
    o1.kill9().await?;
    let r = put(&cluster.origins[0], &unreachable, &doc(&customer)).await?;
    ensure!(r.status() == 503, "owner down: {}", r.status());
    ensure!(r.headers().contains_key("retry-after"));
    ensure!(
        r.headers()["content-type"] == "application/problem+json",
        "{:?}",
        r.headers()
    );
    for k in [&dangling, &unreachable] {
        let r = client()
            .get(format!("{}/o/{k}", cluster.origins[0].url()))
            .send()
            .await?;
        ensure!(r.status() == 404, "refused {k} was written: {}", r.status());
    }
    Ok(())
}

/// An origin that restarts (killed, so its view state is gone) gets back
/// from the others what its targets held, and takes up again the
/// subscriptions that reach them; an origin whose entities others embed
/// restarts and still tells them about a rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_origin_is_resynced_by_the_others() -> Result<()> {
    let model = model_path();
    let model = model.to_str().context("model path")?;
    let args = demo_args(model);
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 2, &args).await?;
    let customer = cluster.keys_of("customer/c", 1).next().unwrap();
    let product = cluster.keys_of("product/p", 1).next().unwrap();
    let order = cluster.keys_of("order/o", 0).next().unwrap();
    let id = |k: &str| k.split('/').nth(1).unwrap().to_owned();
    let page_key = format!("order_page/{}", id(&order));
    // The product's order list lives with the product, on o1.
    let list_key = format!("product_orders/{}", id(&product));

    put(
        &cluster.origins[1],
        &customer,
        &json!({"name": "Ada", "country": "PT"}),
    )
    .await?;
    put(
        &cluster.origins[1],
        &product,
        &json!({"code": "A1", "name": "Widget"}),
    )
    .await?;
    let r = put(
        &cluster.origins[0],
        &order,
        &json!({"customer": id(&customer), "product": id(&product), "date": "2026-12-02"}),
    )
    .await?;
    ensure!(r.status().is_success(), "{}", r.status());
    cluster.settle().await?;
    let before = get_json(&cluster.origins[1], &list_key).await?;
    ensure!(before["orders"] == 1, "{before}");

    // o1 loses its view state; its list of the product's orders has a
    // member on o0, which o0 sends again.
    cluster.origins[1].kill().await?;
    cluster.restart(1, &args).await?;
    cluster.settle().await?;
    ensure!(
        get_json(&cluster.origins[1], &list_key).await? == before,
        "the list after o1's restart"
    );

    // The rename of an entity on o1 reaches the page on o0: o0 took up
    // its subscription again when o1 asked for a resync.
    let r = put(
        &cluster.origins[1],
        &product,
        &json!({"code": "A1", "name": "Renamed"}),
    )
    .await?;
    ensure!(r.status().is_success(), "{}", r.status());
    poll(
        "the rename to reach the page on the other origin",
        Duration::from_secs(30),
        || async {
            let page = get_json(&cluster.origins[0], &page_key).await.ok()?;
            (page["product"]["name"] == "Renamed").then_some(())
        },
    )
    .await?;
    Ok(())
}
