//! Golden routing vectors, asserted row by row on every target.
//!
//! `testdata/routing-v1.json` was generated once from this implementation and
//! is frozen: it pins the owner, the full preference order and the raw scores
//! for a fixed set of origin lists and keys. The same file is checked natively
//! (`cargo test`) and on wasm32 under node (`wasm-bindgen-test-runner`), which
//! is how we know the edge and the origins route identically.
//!
//! To regenerate after a deliberate algorithm change (which needs a new
//! [`prefold_core::routing::ALGORITHM`] version), run natively with
//! `PREFOLD_BLESS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use prefold_core::routing::{Origin, OriginList, ALGORITHM};
use prefold_core::Key;
use serde::{Deserialize, Serialize};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Golden {
    algorithm: String,
    origin_sets: Vec<Vec<String>>,
    cases: Vec<Case>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Case {
    set: usize,
    key: String,
    routing_part: String,
    /// Names best first (the whole list for small sets, the top 3 for large).
    preference: Vec<String>,
    /// Scores matching `preference`, as 16 hex digits.
    scores: Vec<String>,
}

const FILE: &str = include_str!("../testdata/routing-v1.json");

fn origin_sets() -> Vec<Vec<String>> {
    let named = |n: usize| (1..=n).map(|i| format!("origin-{i}")).collect::<Vec<_>>();
    vec![
        named(1),
        named(3),
        vec![
            "fra".into(),
            "iad".into(),
            "sin".into(),
            "syd".into(),
            "gru".into(),
        ],
        named(10),
        named(100),
    ]
}

fn keys() -> Vec<String> {
    let mut keys: Vec<String> = vec![
        "user/1".into(),
        "user/2".into(),
        "event/42".into(),
        "event_page/42".into(),
        "event_page/42/comments/p2".into(),
        "order/2026-11-23T10.00.00Z~a".into(),
        "t/~".into(),
        "T/A".into(),
        "product/SKU-0001".into(),
        format!("blob/{}", "x".repeat(505)),
    ];
    keys.extend((0..40).map(|i| format!("item/{i}")));
    keys
}

fn compute() -> Golden {
    let sets = origin_sets();
    let mut cases = Vec::new();
    for (set, names) in sets.iter().enumerate() {
        let list = OriginList::new(
            names
                .iter()
                .map(|n| Origin::new(n.clone(), format!("http://{n}.invalid")))
                .collect(),
        )
        .unwrap();
        for raw in keys() {
            let key = Key::parse(&raw).unwrap();
            let pref = list.preference(&key);
            let top: Vec<&Origin> = pref.into_iter().take(10).collect();
            assert_eq!(top[0], list.owner(&key));
            cases.push(Case {
                set,
                key: raw.clone(),
                routing_part: key.routing_part().to_owned(),
                preference: top.iter().map(|o| o.name.clone()).collect(),
                scores: top
                    .iter()
                    .map(|o| format!("{:016x}", o.score(key.routing_part())))
                    .collect(),
            });
        }
    }
    Golden {
        algorithm: ALGORITHM.to_owned(),
        origin_sets: sets,
        cases,
    }
}

#[test]
fn routing_matches_golden_vectors() {
    let computed = compute();
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var_os("PREFOLD_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/routing-v1.json");
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(path, text).unwrap();
        return;
    }
    let golden: Golden = serde_json::from_str(FILE).expect("golden file parses");
    assert_eq!(golden.algorithm, computed.algorithm);
    assert_eq!(golden.origin_sets, computed.origin_sets);
    assert_eq!(golden.cases.len(), computed.cases.len());
    for (want, got) in golden.cases.iter().zip(&computed.cases) {
        assert_eq!(want, got, "set {} key {}", want.set, want.key);
    }
}
