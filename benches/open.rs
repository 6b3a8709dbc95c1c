//! Index open time at scale: builds (once, cached under target/bench-data) a synthetic artifact
//! of N clustered 384-d unit vectors with an HNSW graph, then measures in a fresh `Index::open`:
//! time to open (vectors read and verified), to answer the first query (exact scan while the
//! graph loads), until the graph is ready, and HNSW recall@10 against the exact scan.
//!
//!     cargo bench --bench open -- 100000 [1000000 ...]
//!
//! Building the graph costs about 2 minutes per 100k vectors on this machine's two cores.

use std::path::PathBuf;

#[path = "common/mod.rs"]
mod common;

use common::{DIM, clustered, write_synthetic};
use std::time::Instant;

use pointsman::index::{Index, IndexParams, exact_search};

const CLUSTERS: usize = 1000;
const QUERIES: usize = 200;
const K: usize = 10;

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
    let queries = clustered(QUERIES, CLUSTERS, 7);
    println!(
        "| vectors | build s | open s | first query ms | graph ready s | recall@10 | HNSW query ms | exact query ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/open-{n}"));
        let vectors = clustered(n, CLUSTERS, 1);
        let mut build_s = f64::NAN;
        if Index::open(&dir).is_err() {
            let t = Instant::now();
            write_synthetic(&dir, &vectors, IndexParams::default());
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
        // how recall and query time trade with the graph's search breadth, on the same graph
        let truths: Vec<Vec<u32>> = queries
            .chunks_exact(DIM)
            .map(|q| {
                exact_search(&vectors, DIM, q, K)
                    .iter()
                    .map(|h| h.id)
                    .collect()
            })
            .collect();
        for ef in [128, 512, 1024, 1536, 2048] {
            let (mut found, t) = (0, Instant::now());
            for (q, truth) in queries.chunks_exact(DIM).zip(&truths) {
                let got = index.search_with_ef(q, K, ef).unwrap();
                found += got.iter().filter(|h| truth.contains(&h.id)).count();
            }
            eprintln!(
                "  {n} vectors, ef {ef}: recall@10 {:.4}, {:.3} ms a query",
                found as f64 / (QUERIES * K) as f64,
                t.elapsed().as_secs_f64() * 1e3 / QUERIES as f64
            );
        }
    }
}
