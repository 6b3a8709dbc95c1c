//! Seeded synthetic data shared by the search and open-time benches.

use pointsman::config::{Defaults, Method, Route, RouteTable};
use pointsman::embed::{ModelInfo, PoolingKind};
use pointsman::index::{ArtifactInput, IndexParams, Utterance, write_artifact};
use pointsman::similarity::normalise;

/// Vector dimension (all-MiniLM-L6-v2's).
pub const DIM: usize = 384;

/// SplitMix64: small, seeded, good enough for test vectors.
pub struct Rng(pub u64);

impl Rng {
    /// A value in [-1, 1).
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// `n` unit vectors spread around `clusters` fixed centres (uniform random vectors are a
/// pathological case for HNSW; clustered ones look like real embeddings).
pub fn clustered(n: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(42);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..DIM).map(|_| rng.next()).collect())
        .collect();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n * DIM);
    for i in 0..n {
        let mut v: Vec<f32> = centres[i % clusters]
            .iter()
            .map(|x| x + 0.6 * rng.next())
            .collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

/// A model identity for synthetic vectors.
pub fn synthetic_model() -> ModelInfo {
    ModelInfo {
        id: "synthetic".into(),
        model_sha256: "-".into(),
        tokenizer_sha256: "-".into(),
        dimension: DIM,
        pooling: PoolingKind::Mean,
        normalized: true,
        max_tokens: 256,
    }
}

/// A one-route table scored by neighbours (no classifier to train).
pub fn one_route_table() -> RouteTable {
    RouteTable::new(
        Defaults {
            method: Method::Neighbours,
            ..Defaults::default()
        },
        "d",
        vec![Route::new("r", "m", &[])],
    )
}

/// Writes an index of `vectors` (one route, utterance texts are row numbers) into `dir`.
pub fn write_synthetic(dir: &std::path::Path, vectors: &[f32], params: IndexParams) {
    let n = vectors.len() / DIM;
    write_artifact(
        dir,
        ArtifactInput {
            table: &one_route_table(),
            model: &synthetic_model(),
            utterances: (0..n)
                .map(|i| Utterance {
                    route: 0,
                    text: i.to_string(),
                })
                .collect(),
            vectors: vectors.to_vec(),
            params,
            graph: true,
            classifier: None,
            quality: None,
        },
    )
    .expect("artifact writes");
}
