//! Micro benchmarks of the shared crate's hot functions: routing a key over
//! 3, 10 and 100 origins, validating keys, encoding and decoding the stored
//! envelope, and verifying a write token (what authentication adds to every
//! write, at the origin and again at the edge). `prefold-bench` runs these
//! and reports their medians.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use prefold_core::routing::{Origin, OriginList};
use prefold_core::{Envelope, Key};

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_owner");
    let key = Key::parse("event_page/8f3a2c71-42/comments").unwrap();
    for n in [3usize, 10, 100] {
        let list = OriginList::new(
            (0..n)
                .map(|i| Origin::new(format!("origin-{i}"), format!("http://10.0.0.{i}:8080")))
                .collect(),
        )
        .unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(n), &list, |b, list| {
            b.iter(|| black_box(list).owner(black_box(&key)).name.len())
        });
    }
    g.finish();
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_parse");
    let short = "user/42";
    let typical = "event_page/2026-11-23T10.00.00Z~ada-1/comments/p2";
    let encoded = "event_page/2026-11-23T10.00.00Z%7Eada-1/comments/p2";
    let long = format!("blob/{}", "x".repeat(500));
    for (name, k) in [
        ("short", short),
        ("typical", typical),
        ("encoded", encoded),
        ("512B", &long),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), k, |b, k| {
            b.iter(|| Key::parse(black_box(k)).unwrap())
        });
    }
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for size in [1024usize, 64 * 1024] {
        let body = vec![b'x'; size];
        let env = Envelope {
            version: 1_795_458_349_387_341,
            content_type: "application/json",
            body: &body,
            tombstone: false,
        };
        let record = env.encode().unwrap();
        g.bench_with_input(BenchmarkId::new("encode", size), &env, |b, e| {
            b.iter(|| black_box(e).encode().unwrap())
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &record, |b, r| {
            b.iter(|| Envelope::decode(black_box(r)).unwrap().version)
        });
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    use prefold_core::auth::{authorize_write, mint, Claims};
    let secret = b"0123456789abcdef0123456789abcdef";
    let token = mint(
        secret,
        &Claims {
            sub: Some("u1".into()),
            exp: 4_000_000_000,
            scope: "write:comment/* write:user/u1".into(),
        },
    );
    let header = format!("Bearer {token}");
    let key = Key::parse("comment/e1/c9").unwrap();
    c.bench_function("token/authorize_write", |b| {
        b.iter(|| {
            authorize_write(secret, Some(black_box(&header)), &key, 1_800_000_000)
                .unwrap()
                .exp
        })
    });
}

criterion_group!(micro, routing, keys, envelope, tokens);
criterion_main!(micro);
