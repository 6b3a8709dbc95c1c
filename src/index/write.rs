//! Writing a generation: files and their checksums, the HNSW graph, the manifest, then an
//! atomic switch of `CURRENT` once the new generation opens and passes its checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use serde::Serialize;

use super::{
    CLASSIFIER_FILE, CURRENT_FILE, FORMAT_VERSION, FileEntry, GENERATION_PREFIX, GRAPH_BASENAME,
    Index, IndexError, IndexParams, MANIFEST_FILE, Manifest, QUALITY_EXAMPLES_FILE, QUALITY_FILE,
    QUALITY_VECTORS_FILE, ROUTES_FILE, SearchKind, UTTERANCES_FILE, Utterance, VECTORS_FILE,
    VECTORS_PER_EF, checksum, io_err,
};
use crate::config::RouteTable;
use crate::embed::ModelInfo;
use crate::scoring::Classifier;
use crate::similarity::UnitDot;

/// What `build` needs to write an artifact.
pub struct ArtifactInput<'a> {
    /// The validated routes.
    pub table: &'a RouteTable,
    /// The model the vectors come from.
    pub model: &'a ModelInfo,
    /// One row per utterance, in route-table order.
    pub utterances: Vec<Utterance>,
    /// Row-major vectors, `utterances.len() * model.dimension` values.
    pub vectors: Vec<f32>,
    /// Search parameters.
    pub params: IndexParams,
    /// Whether to build the HNSW graph (if the table has at least `params.hnsw_min_vectors`
    /// utterances). `build` asks for it only for the `neighbours` method, the only one whose
    /// decision searches: the others report neighbours from the route partitions, and an index
    /// with a graph they do not use still opens (the graph verified, not loaded).
    pub graph: bool,
    /// The trained classifier, for the `classifier` method.
    pub classifier: Option<Classifier>,
    /// The quality predictor trained on outcomes (`build --outcomes`).
    pub quality: Option<crate::quality::QualityArtifact>,
}

/// Writes a new generation into `dir` and makes it current. Returns the generation's path.
///
/// The previous generation stays on disk until the next build, so a server that is reading it
/// while it is replaced still finds its files.
pub fn write_artifact(dir: &Path, input: ArtifactInput<'_>) -> Result<PathBuf, IndexError> {
    write_checked_artifact(dir, input, |_| Ok(()))
}

/// [`write_artifact`], running `check` on the complete generation (opened from its staging
/// directory) before it is published; if the check fails, nothing is published and the
/// previous index stays live.
pub fn write_checked_artifact(
    dir: &Path,
    input: ArtifactInput<'_>,
    check: impl FnOnce(&Index) -> Result<(), IndexError>,
) -> Result<PathBuf, IndexError> {
    let dim = input.model.dimension;
    // no vectors is valid: a table without routes sends every prompt to the default route
    let n = input.utterances.len();
    if input.vectors.len() != n * dim {
        return Err(IndexError::DimMismatch {
            expected: n * dim,
            got: input.vectors.len(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let gen_name = format!(
        "{GENERATION_PREFIX}{}-{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    );
    let staging = dir.join(format!(".{gen_name}.partial"));
    // checked by exact scan: a graph loader thread would outlive the check, still reading the
    // files while they are renamed into place (and hnsw_rs exits the process on a short read)
    let result = write_generation(&staging, &input, now.as_secs())
        .and_then(|()| check(&Index::open_generation_with(&staging, false)?));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let generation = dir.join(&gen_name);
    std::fs::rename(&staging, &generation).map_err(io_err(&generation))?;
    sync_dir(dir)?;

    let tmp = dir.join(format!(".{CURRENT_FILE}.{}.tmp", std::process::id()));
    let publish = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(format!("{gen_name}\n").as_bytes())
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        let current = dir.join(CURRENT_FILE);
        std::fs::rename(&tmp, &current).map_err(io_err(&current))?;
        sync_dir(dir)
    })();
    if let Err(e) = publish {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(&generation);
        return Err(e);
    }
    remove_stale_generations(dir, &gen_name);
    Ok(generation)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Keeps the new generation and the one before it (a server may still be opening it); removes
/// older ones and leftovers of failed builds.
pub(super) fn remove_stale_generations(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<(String, Option<SystemTime>)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            (e.file_name().to_string_lossy().into_owned(), modified)
        })
        .collect();
    // leftovers of builds that died: staging directories and CURRENT temp files an hour old
    // (a younger one may belong to a build running now)
    let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
    for (name, modified) in &names {
        let staging =
            name.starts_with(&format!(".{GENERATION_PREFIX}")) && name.ends_with(".partial");
        let temp = name.starts_with(&format!(".{CURRENT_FILE}.")) && name.ends_with(".tmp");
        if (staging || temp) && modified.is_some_and(|m| m < hour_ago) {
            let path = dir.join(name);
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    let mut generations: Vec<String> = names
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(GENERATION_PREFIX) && name.as_str() != keep)
        .collect();
    generations.sort();
    // generation names sort by build time; the last one is the previous live generation
    generations.pop();
    for name in generations {
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
}

pub(super) fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    files: &mut BTreeMap<String, FileEntry>,
) -> Result<(), IndexError> {
    let path = dir.join(name);
    let mut f = File::create(&path).map_err(io_err(&path))?;
    f.write_all(bytes).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    files.insert(
        name.to_string(),
        FileEntry {
            bytes: bytes.len() as u64,
            xxh3: checksum(bytes),
        },
    );
    Ok(())
}

pub(super) fn write_generation(
    staging: &Path,
    input: &ArtifactInput<'_>,
    built_at_unix: u64,
) -> Result<(), IndexError> {
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    let mut files = BTreeMap::new();
    write_file(staging, ROUTES_FILE, &to_json(input.table), &mut files)?;
    write_file(
        staging,
        UTTERANCES_FILE,
        &to_json(&input.utterances),
        &mut files,
    )?;
    let raw: Vec<u8> = input.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_file(staging, VECTORS_FILE, &raw, &mut files)?;
    if let Some(c) = &input.classifier {
        write_file(staging, CLASSIFIER_FILE, &to_json(c), &mut files)?;
    }
    if let Some(q) = &input.quality {
        write_file(
            staging,
            QUALITY_FILE,
            q.predictor.to_json().as_bytes(),
            &mut files,
        )?;
        write_file(
            staging,
            QUALITY_EXAMPLES_FILE,
            &to_json(&q.examples),
            &mut files,
        )?;
        let raw: Vec<u8> = q.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_file(staging, QUALITY_VECTORS_FILE, &raw, &mut files)?;
    }

    let n = input.utterances.len();
    let search = if input.graph && n >= input.params.hnsw_min_vectors {
        let basename = build_graph(
            staging,
            &input.vectors,
            input.model.dimension,
            &input.params,
        )?;
        for suffix in ["hnsw.graph", "hnsw.data"] {
            let name = format!("{basename}.{suffix}");
            let path = staging.join(&name);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
            files.insert(
                name,
                FileEntry {
                    bytes: bytes.len() as u64,
                    xxh3: checksum(&bytes),
                },
            );
        }
        SearchKind::Hnsw { basename }
    } else {
        SearchKind::Exact
    };

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        pointsman_version: env!("CARGO_PKG_VERSION").to_string(),
        built_at_unix,
        model: input.model.clone(),
        built_on: Some(crate::embed::cpu_kind()),
        route_table_sha256: input.table.canonical_hash(),
        vectors: n,
        params: IndexParams {
            ef_search: input.params.ef_search.max(n.div_ceil(VECTORS_PER_EF)),
            ..input.params
        },
        search,
        files,
        quality: input.quality.as_ref().map(|q| q.manifest.clone()),
    };
    let path = staging.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let mut f = File::create(&path).map_err(io_err(&path))?;
    f.write_all(&bytes).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    Ok(())
}

pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("artifact data serialises")
}

pub(super) fn build_graph(
    dir: &Path,
    vectors: &[f32],
    dim: usize,
    params: &IndexParams,
) -> Result<String, IndexError> {
    let n = vectors.len() / dim;
    // hnsw_rs can only dump graphs created with the full layer count.
    let hnsw: Hnsw<'_, f32, UnitDot> = Hnsw::new(params.m, n, 16, params.ef_construction, UnitDot);
    let rows: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..n).collect();
    hnsw.parallel_insert_slice(&rows);
    hnsw.file_dump(dir, GRAPH_BASENAME)
        .map_err(|e| IndexError::Graph(format!("dump failed: {e:#}")))
}
