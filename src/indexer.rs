//! Offline index building: embeds every utterance of a route table and writes the artifact.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Method, RouteTable};
use crate::embed::{EmbedError, Embedded, Embedder};
use crate::index::{self, ArtifactInput, Index, IndexError, IndexParams, Utterance};
use crate::scoring::Classifier;

/// Most graded prompts for which kNN predictors are tried (their exact scan of every graded
/// prompt stays under about 0.1 ms a decision; measured in `benches/quality.rs`).
pub const KNN_MAX_EXAMPLES: usize = 1_000;

/// Utterances embedded per forward pass while building.
pub const BUILD_BATCH: usize = 32;

/// The training options of `build --outcomes` for `examples` graded prompts: the route file's
/// kind of knob, catalog prices for models whose lines give no cost, and kNN methods only where
/// their prediction stays cheap ([`KNN_MAX_EXAMPLES`]).
pub fn train_options(
    knob: crate::quality::KnobKind,
    fallback_cost_usd: std::collections::BTreeMap<String, f64>,
    examples: usize,
) -> crate::quality::TrainOptions {
    let mut options = crate::quality::TrainOptions {
        knob,
        fallback_cost_usd,
        ..crate::quality::TrainOptions::default()
    };
    if examples > KNN_MAX_EXAMPLES {
        // a kNN prediction scans every graded prompt: beyond this many it would cost a
        // decision more than 0.1 ms, so only the linear methods (about 1 µs) are tried
        options.k_grid.clear();
        options.blend_grid.clear();
    }
    options
}

/// Graded outcomes to train a quality predictor on (`build --outcomes`).
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// The files, with their sha256 and line counts.
    pub files: Vec<crate::quality::OutcomeFile>,
    /// Every graded prompt of every file, in order.
    pub graded: Vec<crate::quality::Graded>,
}

impl Outcomes {
    /// Reads outcome files (JSON lines; see [`crate::quality::outcomes`]). Every bad line of a
    /// file is reported at once with its `file:line`.
    pub fn read(paths: &[PathBuf]) -> Result<Self, crate::quality::OutcomeError> {
        use sha2::{Digest, Sha256};
        let mut files = Vec::new();
        let mut graded = Vec::new();
        for path in paths {
            let bytes =
                std::fs::read(path).map_err(|source| crate::quality::OutcomeError::Read {
                    path: path.clone(),
                    source,
                })?;
            let text = String::from_utf8_lossy(&bytes);
            let lines = crate::quality::outcomes::parse(path, &text)?;
            files.push(crate::quality::OutcomeFile {
                path: path.clone(),
                sha256: crate::config::hex(&Sha256::digest(&bytes)),
                examples: lines.len(),
            });
            graded.extend(lines);
        }
        Ok(Outcomes { files, graded })
    }
}

/// Errors of `build`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The outcomes cannot train a predictor for these routes.
    #[error("{0}")]
    Outcomes(String),
    /// Training the quality predictor failed.
    #[error("training the quality predictor: {0}")]
    Train(#[from] crate::quality::TrainError),
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// Writing the artifact failed (the previous index, if any, is still live).
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What a build did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// The generation written.
    pub generation: PathBuf,
    /// Routes indexed.
    pub routes: usize,
    /// Utterances embedded.
    pub utterances: usize,
    /// Whether an HNSW graph was built.
    pub hnsw: bool,
    /// Utterances cut to the model's window.
    pub truncated: usize,
    /// Time spent embedding.
    pub embed_seconds: f64,
    /// Wall time of the whole build.
    pub total_seconds: f64,
    /// The quality predictor's training, when outcomes were given.
    pub quality: Option<crate::quality::TrainReport>,
    /// Time spent embedding graded prompts and training the predictor.
    pub quality_seconds: f64,
}

/// Embeds `texts` in batches of [`BUILD_BATCH`], calling `progress` with (done, total) after
/// each batch.
pub fn embed_batched(
    embedder: &mut dyn Embedder,
    texts: &[&str],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Embedded>, EmbedError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(BUILD_BATCH) {
        out.extend(embedder.embed(chunk)?);
        progress(out.len(), texts.len());
    }
    Ok(out)
}

/// Checks every route's `tests` against a freshly built index: `match` prompts must be routed to
/// their route, `no_match` prompts must not (static rules apply, as in the server).
pub fn run_route_tests(index: &Index, embedder: &mut dyn Embedder) -> Result<(), IndexError> {
    let table = index.table();
    let cases: Vec<(&str, &str, bool)> = table
        .routes
        .iter()
        .flat_map(|r| {
            let yes = r
                .tests
                .should_match
                .iter()
                .map(move |p| (r.name.as_str(), p.as_str(), true));
            let no = r
                .tests
                .should_not_match
                .iter()
                .map(move |p| (r.name.as_str(), p.as_str(), false));
            yes.chain(no)
        })
        .collect();
    let mut failures = Vec::new();
    let texts: Vec<&str> = cases.iter().map(|c| c.1).collect();
    let embedded = embed_batched(embedder, &texts, &mut |_, _| {})
        .map_err(|e| IndexError::Graph(e.to_string()))?;
    for ((route, prompt, should), e) in cases.iter().zip(embedded) {
        // as the server decides: static rules first, then the scores
        let chosen = crate::dispatch::decide_embedded(index, prompt, &e, None, None)
            .map_err(|e| IndexError::Graph(e.to_string()))?
            .decision
            .route()
            .map(str::to_string);
        let matched = chosen.as_deref() == Some(*route);
        if matched != *should {
            let went = chosen.map_or("the default route".to_string(), |r| format!("route `{r}`"));
            failures.push(if *should {
                format!("  route `{route}`: {prompt:?} should match it, but went to {went}")
            } else {
                format!("  route `{route}`: {prompt:?} should not match it, but did")
            });
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(IndexError::RouteTests(failures))
    }
}

/// Embeds `table` with `embedder` and writes the artifact into `out`. `progress` is called with
/// (utterances done, total) after every batch.
pub fn build(
    table: &RouteTable,
    embedder: &mut dyn Embedder,
    out: &Path,
    params: IndexParams,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BuildReport, BuildError> {
    build_with(table, embedder, out, params, None, progress)
}

/// Embeds the graded prompts and fits the quality predictor, choosing its method by
/// cross-validation. Every graded model must be in the catalog.
pub fn train_quality(
    table: &RouteTable,
    embedder: &mut dyn Embedder,
    outcomes: &Outcomes,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(crate::quality::QualityArtifact, crate::quality::TrainReport), BuildError> {
    let models: Vec<String> = crate::quality::outcomes::models(&outcomes.graded)
        .into_iter()
        .collect();
    let unknown: Vec<&str> = models
        .iter()
        .filter(|m| !table.catalog.contains_key(*m))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(BuildError::Outcomes(format!(
            "the outcomes grade models that are not in the route files' `models` catalog: {}; add them to the catalog (with their prices) or drop their grades",
            unknown.join(", ")
        )));
    }
    if outcomes.graded.is_empty() {
        return Err(BuildError::Outcomes(
            "the outcome files hold no graded prompt".into(),
        ));
    }
    let texts: Vec<&str> = outcomes.graded.iter().map(|g| g.prompt.as_str()).collect();
    let embedded = embed_batched(embedder, &texts, progress)?;
    let dim = embedder.info().dimension;
    let mut prompt_tokens = 0u64;
    let vectors: Vec<f32> = embedded
        .into_iter()
        .flat_map(|e| {
            prompt_tokens += e.prompt_tokens as u64;
            e.vector
        })
        .collect();
    // a model whose lines give no cost costs its catalog price for a prompt of mean length
    let mean_tokens = prompt_tokens / outcomes.graded.len() as u64;
    let fallback_cost_usd = models
        .iter()
        .filter_map(|m| {
            let c = table.catalog.get(m)?;
            Some((
                m.clone(),
                c.cost_usd(
                    mean_tokens,
                    u64::from(crate::config::DEFAULT_EXPECTED_OUTPUT_TOKENS),
                ),
            ))
        })
        .collect();
    let knob = table
        .defaults
        .quality
        .map_or(crate::quality::KnobKind::CostWeight, |k| {
            crate::quality::knob_of(k).kind()
        });
    let mut options = crate::quality::TrainOptions {
        knob,
        fallback_cost_usd,
        ..crate::quality::TrainOptions::default()
    };
    if outcomes.graded.len() > KNN_MAX_EXAMPLES {
        // a kNN prediction scans every graded prompt: beyond this many it would cost a
        // decision more than 0.1 ms, so only the linear methods (1 µs) are tried
        options.k_grid.clear();
        options.blend_grid.clear();
    }
    let (mut predictor, report) =
        crate::quality::train(&vectors, dim, &outcomes.graded, &models, &options)?;
    predictor.strip_vectors();
    predictor.strip_examples();
    let mean_chars = outcomes
        .graded
        .iter()
        .map(|g| g.prompt.chars().count())
        .sum::<usize>()
        / outcomes.graded.len();
    let default_knob = crate::quality::default_knob(&predictor, mean_chars);
    let examples = outcomes
        .graded
        .iter()
        .map(|g| crate::quality::ExampleSummary {
            prompt: crate::quality::prompt_start(&g.prompt),
            quality: g.quality.clone(),
        })
        .collect();
    let manifest = crate::quality::QualityManifest {
        outcomes: outcomes.files.clone(),
        models,
        examples: outcomes.graded.len(),
        default_knob,
        training: serde_json::to_value(&report).unwrap_or_default(),
    };
    Ok((
        crate::quality::QualityArtifact {
            predictor,
            examples,
            vectors,
            manifest,
        },
        report,
    ))
}

/// [`build`], with a quality predictor trained on `outcomes` when given.
pub fn build_with(
    table: &RouteTable,
    embedder: &mut dyn Embedder,
    out: &Path,
    params: IndexParams,
    outcomes: Option<&Outcomes>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BuildReport, BuildError> {
    let start = Instant::now();
    let utterances: Vec<Utterance> = table
        .routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.utterances.iter().map(move |u| Utterance {
                route: i as u32,
                text: u.clone(),
            })
        })
        .collect();
    let total = utterances.len();
    let dim = embedder.info().dimension;
    let texts: Vec<&str> = utterances.iter().map(|u| u.text.as_str()).collect();
    let t = Instant::now();
    let embedded = embed_batched(embedder, &texts, progress)?;
    let embed_time = t.elapsed();
    let mut vectors = Vec::with_capacity(total * dim);
    let mut truncated = 0;
    for e in embedded {
        if e.vector.len() != dim {
            return Err(IndexError::DimMismatch {
                expected: dim,
                got: e.vector.len(),
            }
            .into());
        }
        truncated += usize::from(e.truncated);
        vectors.extend(e.vector);
    }
    let classifier = (table.defaults.method == Method::Classifier && !table.routes.is_empty())
        .then(|| {
            let labels: Vec<usize> = utterances.iter().map(|u| u.route as usize).collect();
            Classifier::train(&vectors, dim, &labels, table.routes.len())
        });
    // only the `neighbours` method searches the vectors when it decides (see ArtifactInput::graph)
    let hnsw = table.defaults.method == Method::Neighbours && total >= params.hnsw_min_vectors;
    let t = Instant::now();
    let (quality, quality_report) = match outcomes {
        Some(o) => {
            let (artifact, report) = train_quality(table, embedder, o, &mut |_, _| {})?;
            (Some(artifact), Some(report))
        }
        None => (None, None),
    };
    let quality_seconds = t.elapsed().as_secs_f64();
    let model = embedder.info().clone();
    let generation = index::write_checked_artifact(
        out,
        ArtifactInput {
            table,
            model: &model,
            utterances,
            vectors,
            params,
            graph: hnsw,
            classifier,
            quality,
        },
        |index| run_route_tests(index, embedder),
    )?;
    Ok(BuildReport {
        generation,
        routes: table.routes.len(),
        utterances: total,
        hnsw,
        truncated,
        embed_seconds: embed_time.as_secs_f64(),
        total_seconds: start.elapsed().as_secs_f64(),
        quality: quality_report,
        quality_seconds,
    })
}
