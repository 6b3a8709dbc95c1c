//! Exact SIMD scan against HNSW at growing index sizes, in one group so the crossover shows.
//! Seeded clustered 384-d unit vectors (uniform random vectors are a pathological case for HNSW).
//! Sizes come from `SWITCHYARD_BENCH_SIZES` (comma-separated, default `1000,4000,10000`); graph
//! building costs about 13 s per 10k vectors on one core, so large sizes are opt-in.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::config::{Defaults, Method, Route, RouteTable};
use switchyard::embed::{ModelInfo, PoolingKind};
use switchyard::index::{
    ArtifactInput, Index, IndexParams, Utterance, exact_search, write_artifact,
};
use switchyard::similarity::normalise;

const DIM: usize = 384;
const CLUSTERS: usize = 150;
const K: usize = 10;
const SEED: u64 = 42;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(SEED);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..DIM).map(|_| rng.next()).collect())
        .collect();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n * DIM);
    for i in 0..n {
        let mut v: Vec<f32> = centres[i % CLUSTERS]
            .iter()
            .map(|x| x + 0.6 * rng.next())
            .collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

fn sizes() -> Vec<usize> {
    std::env::var("SWITCHYARD_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,4000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let model = ModelInfo {
        id: "synthetic".into(),
        model_sha256: "-".into(),
        tokenizer_sha256: "-".into(),
        dimension: DIM,
        pooling: PoolingKind::Mean,
        normalized: true,
        max_tokens: 256,
    };
    let table = RouteTable {
        defaults: Defaults {
            method: Method::Neighbours,
            ..Defaults::default()
        },
        default_model: "d".into(),
        default_candidates: vec!["d".into()],
        catalog: Default::default(),
        budgets: Vec::new(),
        rules: Vec::new(),
        routes: vec![Route {
            name: "r".into(),
            model: "m".into(),
            threshold: None,
            description: None,
            candidates: vec!["m".into()],
            expected_output_tokens: 256,
            utterances: vec![],
            tests: Default::default(),
        }],
    };
    let queries = clustered(200, 7);
    let mut g = c.benchmark_group("search_top10");
    for n in sizes() {
        let vectors = clustered(n, 1);
        let dir = tempfile::tempdir().unwrap();
        write_artifact(
            dir.path(),
            ArtifactInput {
                table: &table,
                model: &model,
                utterances: (0..n)
                    .map(|i| Utterance {
                        route: 0,
                        text: i.to_string(),
                    })
                    .collect(),
                vectors: vectors.clone(),
                params: IndexParams {
                    hnsw_min_vectors: 1,
                    ..IndexParams::default()
                },
                classifier: None,
            },
        )
        .unwrap();
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
