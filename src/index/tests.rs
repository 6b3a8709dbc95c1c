//! The artifact's tests: writing, opening, refusing mismatches and damage, search against the
//! exact scan.

use super::*;
use crate::config::{Defaults, Route};
use crate::embed::PoolingKind;

/// Small deterministic PRNG (SplitMix64) for seeded test data.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Clustered unit vectors: `clusters` random centres, points spread around them.
pub(crate) fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.next_f32()).collect())
        .collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[i % clusters];
        let mut v: Vec<f32> = c.iter().map(|x| x + 0.5 * rng.next_f32()).collect();
        similarity::normalise(&mut v);
        out.extend(v);
    }
    out
}

fn model(dim: usize) -> ModelInfo {
    ModelInfo {
        id: "test-model".into(),
        model_sha256: "m".into(),
        tokenizer_sha256: "t".into(),
        dimension: dim,
        pooling: PoolingKind::Mean,
        normalized: true,
        max_tokens: 256,
    }
}

fn table() -> RouteTable {
    table_by(Method::Neighbours)
}

fn table_by(method: Method) -> RouteTable {
    RouteTable::new(
        Defaults {
            method,
            ..Defaults::default()
        },
        "d",
        vec![Route::new("r", "m", &[])],
    )
}

fn build(dir: &Path, n: usize, dim: usize, params: IndexParams) -> Vec<f32> {
    build_by(dir, n, dim, params, Method::Neighbours)
}

fn build_by(dir: &Path, n: usize, dim: usize, params: IndexParams, method: Method) -> Vec<f32> {
    let vectors = clustered(n, dim, 20, 7);
    let utterances = (0..n)
        .map(|i| Utterance {
            route: 0,
            text: format!("u{i}"),
        })
        .collect();
    write_artifact(
        dir,
        ArtifactInput {
            table: &table_by(method),
            model: &model(dim),
            utterances,
            vectors: vectors.clone(),
            params,
            // any method: an index written before `build` left the graph out for the methods
            // that do not search still opens
            graph: true,
            classifier: None,
            quality: None,
        },
    )
    .unwrap();
    vectors
}

#[test]
fn exact_index_roundtrips_and_finds_itself() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = build(dir.path(), 50, 16, IndexParams::default());
    let index = Index::open(dir.path()).unwrap();
    assert!(!index.uses_graph());
    assert_eq!(index.len(), 50);
    let hits = index.search(&vectors[16 * 7..16 * 8], 3).unwrap();
    assert_eq!(hits[0].id, 7);
    assert!((hits[0].similarity - 1.0).abs() < 1e-5);
    assert!(hits[0].similarity >= hits[1].similarity);
}

#[test]
fn a_graph_is_verified_but_not_loaded_when_no_decision_rests_on_neighbours() {
    // `build` no longer writes a graph for such a table; one built before it did still opens
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let params = IndexParams {
        hnsw_min_vectors: 100,
        ..IndexParams::default()
    };
    let vectors = build_by(dir.path(), 600, dim, params, Method::Centroid);
    let index = Index::open(dir.path()).unwrap();
    assert!(!index.uses_graph());
    index.wait_for_graph().unwrap();
    assert_eq!(index.graph_state(), Some(GraphState::Unused));
    // searches are exact, and the reported neighbours come from the partitions
    let q = &vectors[dim * 5..dim * 6];
    assert_eq!(
        index.search(q, 5).unwrap(),
        exact_search(&vectors, dim, q, 5)
    );
    assert_eq!(index.neighbours(q, 5).unwrap()[0].id, 5);

    // a damaged graph is still refused
    let generation = current_generation(dir.path()).unwrap();
    let data = generation.join("graph.hnsw.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let index = Index::open(dir.path()).unwrap();
    let err = index.wait_for_graph().unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn exact_search_breaks_ties_by_id() {
    let v = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let hits = exact_search(&v, 2, &[1.0, 0.0], 3);
    let ids: Vec<u32> = hits.iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![0, 1, 3]);
}

#[test]
fn hnsw_agrees_with_exact_scan_on_seeded_data() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 32;
    let n = 3000;
    let params = IndexParams {
        hnsw_min_vectors: 1000,
        ..IndexParams::default()
    };
    let vectors = build(dir.path(), n, dim, params);
    let index = Index::open(dir.path()).unwrap();
    assert!(index.uses_graph());
    index.wait_for_graph().unwrap();
    assert_eq!(index.graph_state(), Some(GraphState::Ready));
    let queries = clustered(100, dim, 20, 99);
    let k = 10;
    let mut found = 0;
    for q in queries.chunks_exact(dim) {
        let truth: Vec<u32> = exact_search(&vectors, dim, q, k)
            .iter()
            .map(|h| h.id)
            .collect();
        let got = index.search(q, k).unwrap();
        for w in got.windows(2) {
            assert!(w[0].similarity >= w[1].similarity);
        }
        found += got.iter().filter(|h| truth.contains(&h.id)).count();
    }
    let recall = found as f64 / (100 * k) as f64;
    assert!(recall >= 0.98, "recall@10 {recall}");
    // a stored vector as the query (DistDot would panic here)
    let hits = index.search(&vectors[..dim], 1).unwrap();
    assert_eq!(hits[0].id, 0);
}

#[test]
fn corrupted_and_truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 20, 8, IndexParams::default());
    let generation = current_generation(dir.path()).unwrap();
    let vectors = generation.join(VECTORS_FILE);
    let mut bytes = std::fs::read(&vectors).unwrap();
    bytes[5] ^= 0x40;
    std::fs::write(&vectors, &bytes).unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("corrupted") && err.contains("checksum"),
        "{err}"
    );
    bytes.truncate(bytes.len() - 4);
    std::fs::write(&vectors, &bytes).unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    std::fs::remove_file(generation.join(MANIFEST_FILE)).unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("manifest is missing"), "{err}");
}

#[test]
fn the_search_breadth_grows_with_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let params = IndexParams {
        ef_search: 1,
        ..IndexParams::default()
    };
    build(dir.path(), 1_400, 8, params);
    let manifest = read_manifest(dir.path()).unwrap();
    assert_eq!(
        manifest.params.ef_search,
        1_400usize.div_ceil(VECTORS_PER_EF)
    );
    // a larger setting is kept
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 1_400, 8, IndexParams::default());
    assert_eq!(read_manifest(dir.path()).unwrap().params.ef_search, 128);
}

#[test]
fn a_damaged_graph_leaves_the_exact_scan_serving() {
    let dir = tempfile::tempdir().unwrap();
    let params = IndexParams {
        hnsw_min_vectors: 500,
        ..IndexParams::default()
    };
    let vectors = build(dir.path(), 600, 8, params);
    let generation = current_generation(dir.path()).unwrap();
    let data = generation.join(format!("{GRAPH_BASENAME}.hnsw.data"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();
    let index = Index::open(dir.path()).unwrap();
    let err = index.wait_for_graph().unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    assert!(matches!(index.graph_state(), Some(GraphState::Failed(_))));
    let hits = index.search(&vectors[8 * 5..8 * 6], 1).unwrap();
    assert_eq!(hits[0].id, 5);
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 5, 4, IndexParams::default());
    let generation = current_generation(dir.path()).unwrap();
    let path = generation.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            &format!("\"format_version\": {FORMAT_VERSION}"),
            "\"format_version\": 9",
        ),
    )
    .unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("format version 9"), "{err}");
    assert!(err.contains("pointsman build"), "{err}");
}

#[test]
fn missing_index_says_how_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("pointsman build"), "{err}");
}

#[test]
fn rebuild_replaces_current_and_keeps_one_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 5, 4, IndexParams::default());
    let first = current_generation(dir.path()).unwrap();
    build(dir.path(), 6, 4, IndexParams::default());
    build(dir.path(), 7, 4, IndexParams::default());
    let current = current_generation(dir.path()).unwrap();
    assert_ne!(first, current);
    assert_eq!(Index::open(dir.path()).unwrap().len(), 7);
    let generations = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(GENERATION_PREFIX)
        })
        .count();
    assert_eq!(generations, 2);
    assert!(!first.exists());
}

#[test]
fn failed_build_leaves_the_previous_index_live() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 5, 4, IndexParams::default());
    let before = current_generation(dir.path()).unwrap();
    let err = write_artifact(
        dir.path(),
        ArtifactInput {
            table: &table(),
            model: &model(4),
            utterances: vec![Utterance {
                route: 0,
                text: "x".into(),
            }],
            vectors: vec![0.0; 3],
            params: IndexParams::default(),
            graph: true,
            classifier: None,
            quality: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, IndexError::DimMismatch { .. }));
    assert_eq!(current_generation(dir.path()).unwrap(), before);
    assert_eq!(Index::open(dir.path()).unwrap().len(), 5);
}
