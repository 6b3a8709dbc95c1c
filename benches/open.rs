//! Index open time at scale: builds (once, cached under target/bench-data) a synthetic artifact
//! of N clustered 384-d unit vectors with an HNSW graph, then measures in a fresh `Index::open`:
//! time to open (vectors read and verified), to answer the first query (exact scan while the
//! graph loads), until the graph is ready, and HNSW recall@10 against the exact scan.
//!
//!     cargo bench --bench open -- 100000 [1000000 ...]
//!
//! Building the graph costs about 2 minutes per 100k vectors on this machine's two cores.

use std::path::PathBuf;
use std::time::Instant;

use switchyard::config::{Defaults, Method, Route, RouteTable};
use switchyard::embed::{ModelInfo, PoolingKind};
use switchyard::index::{
    ArtifactInput, Index, IndexParams, Utterance, exact_search, write_artifact,
};
use switchyard::similarity::normalise;

const DIM: usize = 384;
const CLUSTERS: usize = 1000;
const QUERIES: usize = 200;
const K: usize = 10;

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
    let mut rng = Rng(42);
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

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000]
    } else {
        sizes
    };
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
    let queries = clustered(QUERIES, 7);
    println!(
        "| vectors | build s | open s | first query ms | graph ready s | recall@10 | HNSW query ms | exact query ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/open-{n}"));
        let vectors = clustered(n, 1);
        let mut build_s = f64::NAN;
        if Index::open(&dir).is_err() {
            let t = Instant::now();
            write_artifact(
                &dir,
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
                    params: IndexParams::default(),
                    classifier: None,
                },
            )
            .expect("artifact writes");
            build_s = t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        let index = Index::open(&dir).expect("opens");
        let open_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        index.search(&queries[..DIM], K).unwrap();
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        index.wait_for_graph().expect("graph loads");
        let ready_s = open_s + first_ms / 1e3 + t.elapsed().as_secs_f64();
        let (mut found, mut hnsw_s, mut exact_s) = (0, 0.0, 0.0);
        for q in queries.chunks_exact(DIM) {
            let t = Instant::now();
            let truth: Vec<u32> = exact_search(&vectors, DIM, q, K)
                .iter()
                .map(|h| h.id)
                .collect();
            exact_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let got = index.search(q, K).unwrap();
            hnsw_s += t.elapsed().as_secs_f64();
            found += got.iter().filter(|h| truth.contains(&h.id)).count();
        }
        println!(
            "| {n} | {build_s:.1} | {open_s:.3} | {first_ms:.2} | {ready_s:.2} | {:.4} | {:.3} | {:.3} |",
            found as f64 / (QUERIES * K) as f64,
            hnsw_s * 1e3 / QUERIES as f64,
            exact_s * 1e3 / QUERIES as f64
        );
    }
}
