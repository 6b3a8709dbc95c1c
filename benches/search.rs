//! Exact SIMD scan against HNSW at growing index sizes, in one group so the crossover shows.
//! Seeded clustered 384-d unit vectors (uniform random vectors are a pathological case for HNSW).
//! Sizes come from `POINTSMAN_BENCH_SIZES` (comma-separated, default `1000,4000,10000`); graph
//! building costs about 13 s per 10k vectors on one core, so large sizes are opt-in.

use std::hint::black_box;

#[path = "common/mod.rs"]
mod common;

use common::{DIM, clustered, write_synthetic};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pointsman::index::{Index, IndexParams, exact_search};

const CLUSTERS: usize = 150;
const K: usize = 10;

fn sizes() -> Vec<usize> {
    std::env::var("POINTSMAN_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,4000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let queries = clustered(200, CLUSTERS, 7);
    let mut g = c.benchmark_group("search_top10");
    for n in sizes() {
        let vectors = clustered(n, CLUSTERS, 1);
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(
            dir.path(),
            &vectors,
            IndexParams {
                hnsw_min_vectors: 1,
                ..IndexParams::default()
            },
        );
        let index = Index::open(dir.path()).unwrap();
        index.wait_for_graph().unwrap();
        let mut recall_hits = 0;
        for q in queries.chunks_exact(DIM) {
            let truth: Vec<u32> = exact_search(&vectors, DIM, q, K)
                .iter()
                .map(|h| h.id)
                .collect();
            recall_hits += index
                .search(q, K)
                .unwrap()
                .iter()
                .filter(|h| truth.contains(&h.id))
                .count();
        }
        eprintln!(
            "n={n}: HNSW recall@{K} against the exact scan = {:.4}",
            recall_hits as f64 / (queries.len() / DIM * K) as f64
        );
        let mut qi = 0;
        let mut next = || {
            qi = (qi + 1) % (queries.len() / DIM);
            &queries[qi * DIM..(qi + 1) * DIM]
        };
        g.bench_with_input(BenchmarkId::new("exact", n), &n, |b, _| {
            b.iter(|| black_box(exact_search(&vectors, DIM, next(), K)))
        });
        g.bench_with_input(BenchmarkId::new("hnsw", n), &n, |b, _| {
            b.iter(|| black_box(index.search(next(), K).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
