//! The on-disk index artifact and nearest-neighbour search over it.
//!
//! An index directory holds generations and a `CURRENT` file naming the live one (the layout
//! LevelDB uses): `build` writes a complete generation, fsyncs it, then atomically replaces
//! `CURRENT`. A failed build leaves the previous generation live and untouched, and a reader never
//! sees a half-written artifact. Each generation holds:
//!
//! - `manifest.json`: format version, model identity, route-table hash, search parameters, and the
//!   size and xxh3 checksum of every other file (a truncated or corrupted file is refused);
//! - `routes.json`: the validated route table the vectors were built from;
//! - `utterances.json`: for each vector, its route and text;
//! - `vectors.f32`: the L2-normalised vectors, little-endian `f32`, row-major;
//! - for large indexes, the HNSW graph dumped by hnsw_rs (`graph.hnsw.graph`, `graph.hnsw.data`).
//!
//! Search ([`Index::search`], for the `neighbours` method, whose decision rests on it) is an exact
//! SIMD scan below [`IndexParams::hnsw_min_vectors`] and HNSW above it, with HNSW candidates
//! re-scored exactly against the stored vectors. The other methods only report neighbours and
//! take them from route partitions ([`Index::neighbours`], `probe.rs`); their graph, if the
//! artifact has one, is verified but not loaded. No hnsw_rs type leaves this
//! module: the reloaded graph borrows its loader, so it lives on a dedicated thread that owns both
//! and answers searches over a channel (no `unsafe`, no leaks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Method, RouteTable};
use crate::embed::ModelInfo;
use crate::policy::Rules;
use crate::scoring::{self, Classifier, Lexical};
use crate::similarity::{self};

mod probe;
mod search;
mod write;

pub use probe::{PART_MAX, PROBE_VECTORS};
use search::{GraphHandle, best};
pub use search::{GraphState, exact_search};
pub use write::{ArtifactInput, write_artifact, write_checked_artifact};

/// Artifact format written by this build; opening any other is refused.
pub const FORMAT_VERSION: u32 = 3;
/// Name of the file that points at the live generation.
pub const CURRENT_FILE: &str = "CURRENT";
const MANIFEST_FILE: &str = "manifest.json";
const ROUTES_FILE: &str = "routes.json";
const UTTERANCES_FILE: &str = "utterances.json";
const VECTORS_FILE: &str = "vectors.f32";
const CLASSIFIER_FILE: &str = "classifier.json";
const QUALITY_FILE: &str = "quality.json";
const QUALITY_EXAMPLES_FILE: &str = "quality-examples.json";
const QUALITY_VECTORS_FILE: &str = "quality-vectors.f32";
const GRAPH_BASENAME: &str = "graph";
const GENERATION_PREFIX: &str = "gen-";

/// Parameters of the search structure, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// From this many vectors on, an HNSW graph is built; below it, search is an exact scan.
    /// Chosen from `benches/search.rs` (384-d, top-10, this 2-core machine): the exact scan
    /// costs about 60 ns a vector (0.22 ms at 4k, 0.59 ms at 10k), a graph search with exact
    /// re-scoring 0.35-0.7 ms, so they cross between 10k and 20k vectors.
    pub hnsw_min_vectors: usize,
    /// HNSW: links per node.
    pub m: usize,
    /// HNSW: candidate list size while building.
    pub ef_construction: usize,
    /// HNSW: candidate list size while searching (at least `k`); an artifact records at least
    /// one per [`VECTORS_PER_EF`] vectors.
    pub ef_search: usize,
}

/// A graph search looks at one candidate per this many vectors at least, so that recall holds
/// as the index grows: on 1M synthetic clustered vectors (`cargo bench --bench open`), recall@10
/// against the exact scan is 0.73 at ef 128, 0.97 at 1024 and 0.98 at 1536 (n / 650).
pub const VECTORS_PER_EF: usize = 650;

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            hnsw_min_vectors: 16_384,
            m: 16,
            ef_construction: 200,
            ef_search: 128,
        }
    }
}

/// Which search structure an artifact carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SearchKind {
    /// Exact scan over all vectors.
    Exact,
    /// An HNSW graph dumped by hnsw_rs under `basename`.
    Hnsw {
        /// Dump basename inside the generation directory.
        basename: String,
    },
}

/// Size and checksum of one artifact file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Length in bytes.
    pub bytes: u64,
    /// xxh3-64 of the contents, hex.
    pub xxh3: String,
}

/// The artifact's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Artifact format version.
    pub format_version: u32,
    /// pointsman version that wrote it.
    pub pointsman_version: String,
    /// Build time, seconds since the Unix epoch.
    pub built_at_unix: u64,
    /// The embedding model the vectors come from.
    pub model: ModelInfo,
    /// The CPU the vectors were computed on ([`crate::embed::cpu_kind`]); absent in an index
    /// built before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_on: Option<String>,
    /// Canonical hash of the route table (see [`RouteTable::canonical_hash`]).
    pub route_table_sha256: String,
    /// Number of vectors.
    pub vectors: usize,
    /// Search parameters in force at build time.
    pub params: IndexParams,
    /// Search structure present.
    pub search: SearchKind,
    /// Every other file of the generation, with size and checksum.
    pub files: BTreeMap<String, FileEntry>,
    /// The quality predictor, when the index was built with outcomes: the files it was trained
    /// on (with their sha256), the models it predicts, and its cross-validated figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::quality::QualityManifest>,
}

/// One stored utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// Index of its route in the route table.
    pub route: u32,
    /// The utterance text.
    pub text: String,
}

/// One search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row of the vector (and utterance).
    pub id: u32,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// Errors of the index layer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// No index has been built in this directory.
    #[error(
        "no index found in {0} (no {CURRENT_FILE} file); build one with `pointsman build ROUTES --out {0}`"
    )]
    NotBuilt(PathBuf),
    /// A file is damaged or does not match the manifest.
    #[error("index at {path} is corrupted: {reason}; rebuild it with `pointsman build`")]
    Corrupted {
        /// The generation directory or file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The artifact was written in another format.
    #[error(
        "index at {path} has format version {found}, this pointsman reads {FORMAT_VERSION}; rebuild it with `pointsman build`"
    )]
    Format {
        /// The generation directory.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// The artifact was built with a different embedding model.
    #[error(
        "index at {path} was built with model `{built_id}` ({built_detail}) but the loaded model is `{loaded_id}` ({loaded_detail}); rebuild it with `pointsman build` using this model, or serve with the model it was built with"
    )]
    ModelMismatch {
        /// The generation directory.
        path: PathBuf,
        /// Model id in the manifest.
        built_id: String,
        /// What differs, as recorded.
        built_detail: String,
        /// Model id loaded now.
        loaded_id: String,
        /// What differs, as loaded.
        loaded_detail: String,
    },
    /// The artifact's routes are not the route files given.
    #[error(
        "index at {path} was built from other routes than {routes} (route table hash {built} vs {current}); rebuild it with `pointsman build {routes}`"
    )]
    RoutesMismatch {
        /// The generation directory.
        path: PathBuf,
        /// The route files compared against.
        routes: PathBuf,
        /// Hash in the manifest.
        built: String,
        /// Hash of the route files now.
        current: String,
    },
    /// The artifact is sound but does not fit the server's other configuration.
    #[error("index at {path} does not fit this server: {reason}")]
    Unfit {
        /// The generation directory.
        path: PathBuf,
        /// What does not fit, and what to do.
        reason: String,
    },
    /// Vectors do not agree with the model or each other.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimMismatch {
        /// Expected dimension.
        expected: usize,
        /// Dimension found.
        got: usize,
    },
    /// The HNSW graph could not be built, written or loaded.
    #[error("HNSW graph: {0}")]
    Graph(String),
    /// Route tests of the route files failed; the index was not published.
    #[error("{} route test(s) failed; the new index was not published:\n{}", .0.len(), .0.join("\n"))]
    RouteTests(Vec<String>),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// An opened, verified index held in memory.
pub struct Index {
    generation: PathBuf,
    manifest: Manifest,
    table: RouteTable,
    utterances: Vec<Utterance>,
    vectors: Vec<f32>,
    graph: Option<GraphHandle>,
    /// For the reported neighbours; none for the `neighbours` method, which searches exactly.
    partitions: Option<probe::Partitions>,
    centroids: Vec<f32>,
    lexical: Lexical,
    classifier: Option<Classifier>,
    quality: Option<crate::quality::QualityIndex>,
    rules: Rules,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("generation", &self.generation)
            .field("vectors", &self.manifest.vectors)
            .field("search", &self.manifest.search)
            .finish()
    }
}

/// Reads the live generation's manifest alone (no vectors, no graph).
pub fn read_manifest(dir: &Path) -> Result<Manifest, IndexError> {
    let path = current_generation(dir)?.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    parse_json(&path, &bytes)
}

/// Resolves the live generation of an index directory.
pub fn current_generation(dir: &Path) -> Result<PathBuf, IndexError> {
    let current = dir.join(CURRENT_FILE);
    let name = match std::fs::read_to_string(&current) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IndexError::NotBuilt(dir.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(IndexError::Corrupted {
                path: current,
                reason: "it is not text (it should name a generation)".into(),
            });
        }
        Err(e) => return Err(io_err(&current)(e)),
    };
    let valid = name.starts_with(GENERATION_PREFIX)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(IndexError::Corrupted {
            path: current,
            reason: format!("{CURRENT_FILE} names {name:?}, which is not a generation"),
        });
    }
    let generation = dir.join(&name);
    if !generation.is_dir() {
        return Err(IndexError::Corrupted {
            path: current,
            reason: format!("{CURRENT_FILE} names {name}, which does not exist"),
        });
    }
    Ok(generation)
}

fn read_verified(
    generation: &Path,
    name: &str,
    files: &BTreeMap<String, FileEntry>,
) -> Result<Vec<u8>, IndexError> {
    let path = generation.join(name);
    let entry = files.get(name).ok_or_else(|| IndexError::Corrupted {
        path: generation.to_path_buf(),
        reason: format!("the manifest does not list {name}"),
    })?;
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IndexError::Corrupted {
            path: path.clone(),
            reason: "file is missing".into(),
        },
        _ => io_err(&path)(e),
    })?;
    if bytes.len() as u64 != entry.bytes {
        return Err(IndexError::Corrupted {
            path,
            reason: format!(
                "{} bytes on disk, {} in the manifest (truncated?)",
                bytes.len(),
                entry.bytes
            ),
        });
    }
    let sum = checksum(&bytes);
    if sum != entry.xxh3 {
        return Err(IndexError::Corrupted {
            path,
            reason: format!(
                "checksum {sum} does not match the manifest's {}",
                entry.xxh3
            ),
        });
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupted {
        path: path.to_path_buf(),
        reason: format!("unreadable JSON: {e}"),
    })
}

impl Index {
    /// Opens the live generation of `dir`, verifying every file against the manifest.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let generation = current_generation(dir)?;
        Self::open_generation(&generation)
    }

    /// Opens one generation directory, loading its HNSW graph (if it has one) in the background.
    pub fn open_generation(generation: &Path) -> Result<Self, IndexError> {
        Self::open_generation_with(generation, true)
    }

    /// [`Index::open_generation`]; without `load_graph`, every search is an exact scan.
    fn open_generation_with(generation: &Path, load_graph: bool) -> Result<Self, IndexError> {
        let manifest_path = generation.join(MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IndexError::Corrupted {
                path: manifest_path.clone(),
                reason: "manifest is missing".into(),
            },
            _ => io_err(&manifest_path)(e),
        })?;
        // read the format version alone first, so an old or future manifest gets the right error
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = parse_json(&manifest_path, &bytes)?;
        if version.format_version != FORMAT_VERSION {
            return Err(IndexError::Format {
                path: generation.to_path_buf(),
                found: version.format_version,
            });
        }
        let manifest: Manifest = parse_json(&manifest_path, &bytes)?;
        let files = &manifest.files;
        let table: RouteTable = parse_json(
            &generation.join(ROUTES_FILE),
            &read_verified(generation, ROUTES_FILE, files)?,
        )?;
        if table.canonical_hash() != manifest.route_table_sha256 {
            return Err(IndexError::Corrupted {
                path: generation.join(ROUTES_FILE),
                reason: "route table hash does not match the manifest".into(),
            });
        }
        let utterances: Vec<Utterance> = parse_json(
            &generation.join(UTTERANCES_FILE),
            &read_verified(generation, UTTERANCES_FILE, files)?,
        )?;
        let raw = read_verified(generation, VECTORS_FILE, files)?;
        let dim = manifest.model.dimension;
        let n = manifest.vectors;
        let corrupted = |reason: String| IndexError::Corrupted {
            path: generation.to_path_buf(),
            reason,
        };
        if n.checked_mul(dim).and_then(|x| x.checked_mul(4)) != Some(raw.len())
            || utterances.len() != n
            || dim == 0
        {
            return Err(corrupted(format!(
                "{} vector bytes and {} utterances for {n} vectors of dimension {dim}",
                raw.len(),
                utterances.len()
            )));
        }
        if let Some(bad) = utterances
            .iter()
            .find(|u| u.route as usize >= table.routes.len())
        {
            return Err(corrupted(format!(
                "utterance {:?} points at route {} of {}",
                bad.text,
                bad.route,
                table.routes.len()
            )));
        }
        let vectors: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let graph = match &manifest.search {
            SearchKind::Exact => None,
            SearchKind::Hnsw { .. } if !load_graph => None,
            SearchKind::Hnsw { basename } => {
                // both files must be listed; their contents are verified by the loader thread
                for suffix in ["hnsw.graph", "hnsw.data"] {
                    let name = format!("{basename}.{suffix}");
                    if !files.contains_key(&name) {
                        return Err(corrupted(format!("the manifest does not list {name}")));
                    }
                }
                // only the `neighbours` method decides on neighbours; the others report them
                // from the partitions
                let used = table.defaults.method == Method::Neighbours;
                Some(GraphHandle::load(
                    generation,
                    basename,
                    dim,
                    files.clone(),
                    used,
                )?)
            }
        };
        let classifier = match table.defaults.method {
            // a table without routes has nothing to classify
            Method::Classifier if table.routes.is_empty() => None,
            Method::Classifier => {
                let c: Classifier = parse_json(
                    &generation.join(CLASSIFIER_FILE),
                    &read_verified(generation, CLASSIFIER_FILE, files)?,
                )?;
                if c.routes() != table.routes.len()
                    || c.mean.len() != dim
                    || c.weights.len() != dim * table.routes.len()
                {
                    return Err(corrupted(format!(
                        "the classifier has {} routes of dimension {}, the index {} of {dim}",
                        c.routes(),
                        c.mean.len(),
                        table.routes.len()
                    )));
                }
                Some(c)
            }
            Method::Neighbours | Method::Centroid => None,
        };
        let labels: Vec<usize> = utterances.iter().map(|u| u.route as usize).collect();
        let centroids = scoring::centroids(&vectors, dim, &labels, table.routes.len());
        let partitions = (table.defaults.method != Method::Neighbours)
            .then(|| probe::Partitions::new(&vectors, dim, &labels, table.routes.len()));
        let lexical = Lexical::new(
            table.routes.len(),
            utterances
                .iter()
                .map(|u| (u.route as usize, u.text.as_str())),
        );
        let rules = Rules::new(&table.rules)
            .map_err(|e| corrupted(format!("a rule's regex does not compile: {e}")))?;
        let quality = match &manifest.quality {
            None => None,
            Some(_) => {
                let json = read_verified(generation, QUALITY_FILE, files)?;
                let json = String::from_utf8(json)
                    .map_err(|_| corrupted(format!("{QUALITY_FILE} is not UTF-8")))?;
                let examples = parse_json(
                    &generation.join(QUALITY_EXAMPLES_FILE),
                    &read_verified(generation, QUALITY_EXAMPLES_FILE, files)?,
                )?;
                let raw = read_verified(generation, QUALITY_VECTORS_FILE, files)?;
                let vectors: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Some(
                    crate::quality::QualityIndex::open(&json, examples, vectors, dim)
                        .map_err(|reason| corrupted(format!("{QUALITY_FILE}: {reason}")))?,
                )
            }
        };
        Ok(Index {
            generation: generation.to_path_buf(),
            rules,
            manifest,
            table,
            utterances,
            vectors,
            graph,
            partitions,
            centroids,
            lexical,
            classifier,
            quality,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The route table the index was built from.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The generation directory this index was read from.
    pub fn generation(&self) -> &Path {
        &self.generation
    }

    /// Stored utterance `id`.
    pub fn utterance(&self, id: u32) -> &Utterance {
        &self.utterances[id as usize]
    }

    /// Stored vector `id`.
    pub fn vector(&self, id: u32) -> &[f32] {
        let dim = self.manifest.model.dimension;
        &self.vectors[id as usize * dim..(id as usize + 1) * dim]
    }

    /// Per-route normalised mean vectors, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// BM25 over each route's utterances.
    pub fn lexical(&self) -> &Lexical {
        &self.lexical
    }

    /// The route file's static rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The trained classifier (`classifier` method only).
    pub fn classifier(&self) -> Option<&Classifier> {
        self.classifier.as_ref()
    }

    /// The quality predictor, when the index was built with outcomes.
    pub fn quality(&self) -> Option<&crate::quality::QualityIndex> {
        self.quality.as_ref()
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.utterances.len()
    }

    /// Whether the index holds no vectors (never true for an opened index).
    pub fn is_empty(&self) -> bool {
        self.utterances.is_empty()
    }

    /// Whether the index has an HNSW graph that searches use (once it has loaded).
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some() && self.table.defaults.method == Method::Neighbours
    }

    /// The `k` nearest stored vectors to `query`, best first, ties broken by id.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        self.search_with_ef(query, k, self.manifest.params.ef_search)
    }

    /// About the `k` nearest stored vectors to `query`, best first, with exact similarities, at a
    /// cost that barely grows with the index: the members of the partitions nearest to the
    /// query, ranked by their `i8` codes (see [`PROBE_VECTORS`]). For the neighbours a decision
    /// reports but does not rest on; a `neighbours` table has no partitions and searches
    /// ([`Index::search`]).
    pub fn neighbours(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        self.neighbours_within(query, k, PROBE_VECTORS)
    }

    /// [`Index::neighbours`] looking at `budget` vectors at least (more finds more of the true
    /// neighbours; `usize::MAX` looks at every vector, the best few ranked by codes re-scored).
    pub fn neighbours_within(
        &self,
        query: &[f32],
        k: usize,
        budget: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        let dim = self.query_dimension(query)?;
        match &self.partitions {
            Some(p) => Ok(p.search(&self.vectors, dim, query, k, budget)),
            None => self.search(query, k),
        }
    }

    /// The index's dimension, or the error for a query of another.
    fn query_dimension(&self, query: &[f32]) -> Result<usize, IndexError> {
        let dim = self.manifest.model.dimension;
        if query.len() != dim {
            return Err(IndexError::DimMismatch {
                expected: dim,
                got: query.len(),
            });
        }
        Ok(dim)
    }

    /// [`Index::search`] with the graph's search breadth `ef` chosen by the caller (more is
    /// slower and finds more of the true neighbours); the exact scan ignores it.
    pub fn search_with_ef(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        let dim = self.query_dimension(query)?;
        match &self.graph {
            Some(graph) if graph.state() == GraphState::Ready => {
                let ef = ef.max(k);
                let ids = graph.search(query.to_vec(), k, ef)?;
                let hits = ids
                    .into_iter()
                    .map(|id| Hit {
                        id,
                        similarity: similarity::similarity(query, self.vector(id)),
                    })
                    .collect();
                Ok(best(hits, k))
            }
            _ => Ok(exact_search(&self.vectors, dim, query, k)),
        }
    }

    /// The HNSW graph's state, `None` for an exact-scan index.
    pub fn graph_state(&self) -> Option<GraphState> {
        self.graph.as_ref().map(GraphHandle::state)
    }

    /// Blocks until the HNSW graph (if any) has loaded; an error if it could not be.
    pub fn wait_for_graph(&self) -> Result<(), IndexError> {
        match self.graph.as_ref().map(GraphHandle::wait) {
            None | Some(GraphState::Ready | GraphState::Unused) => Ok(()),
            // a damaged file's reason already says where and what to do
            Some(GraphState::Failed(reason)) if reason.contains("pointsman build") => {
                Err(IndexError::Graph(reason))
            }
            Some(GraphState::Failed(reason)) => Err(IndexError::Corrupted {
                path: self.generation.clone(),
                reason: format!("HNSW graph does not load: {reason}"),
            }),
            Some(GraphState::Loading) => unreachable!("wait returns once loading ends"),
        }
    }
}

#[cfg(test)]
mod tests;
