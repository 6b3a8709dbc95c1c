//! `check`, `build` (with `--outcomes`, `--if-changed`) and `init`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::{ModelArgs, Outcome, progress_bar};
use crate::config;
use crate::embed::ModelFiles;
use crate::index::{IndexError, IndexParams};
use crate::indexer;

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A route file, or a directory whose *.yaml files form one route table.
    pub routes: PathBuf,
    /// Index directory to write (the previous index in it stays live if the build fails).
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub out: PathBuf,
    /// From this many utterances on, a `neighbours` table gets an HNSW graph instead of an exact
    /// scan (the other methods build none: they never search when they decide).
    #[arg(long, default_value_t = IndexParams::default().hnsw_min_vectors)]
    pub hnsw_min_vectors: usize,
    /// Skip the build when the current index already comes from these routes, this model and
    /// these parameters, opens whole, and this machine embeds its utterances as the build did (a
    /// damaged or older-format index, or one built on a kind of CPU that computes other
    /// vectors, is rebuilt).
    #[arg(long)]
    pub if_changed: bool,
    /// Graded outcomes (JSON lines: a prompt and each model's quality in [0, 1]) to train a
    /// quality predictor on; every graded model must be in the catalog. Repeatable.
    #[arg(long, num_args = 1..)]
    pub outcomes: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub(super) fn check(routes: &Path) -> anyhow::Result<Outcome> {
    match config::load(routes) {
        Ok(table) => {
            println!(
                "{}: ok ({} routes, {} utterances, default model `{}`)",
                routes.display(),
                table.routes.len(),
                table.utterance_count(),
                table.default_model
            );
            Ok(Outcome::Success)
        }
        Err(config::ConfigError::Invalid { issues }) => {
            for issue in &issues {
                eprintln!("{issue}");
            }
            eprintln!("{}: {} problem(s)", routes.display(), issues.len());
            Ok(Outcome::CheckFailed)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn build(args: BuildArgs) -> anyhow::Result<Outcome> {
    let table = config::load(&args.routes)?;
    let params = IndexParams {
        hnsw_min_vectors: args.hnsw_min_vectors,
        ..IndexParams::default()
    };
    let outcomes = if args.outcomes.is_empty() {
        None
    } else {
        Some(indexer::Outcomes::read(&args.outcomes)?)
    };
    let current = if args.if_changed {
        current_index(&args, &table, &params, outcomes.as_ref())
    } else {
        None
    };
    let mut embedder = args.model.offline_sessions()?;
    if let Some(index) = current {
        // built from these files, but perhaps on another kind of CPU, whose vectors this
        // machine's prompts would not match
        let agreement = crate::engine::agreement::check_embedder(&index, &mut embedder)?;
        if agreement.holds() {
            println!(
                "{} is up to date with {}",
                args.out.display(),
                args.routes.display()
            );
            return Ok(Outcome::Success);
        }
        println!(
            "{} comes from {}, but this machine embeds its utterances differently (lowest \
             cosine {:.4}; built on {}, running on {}): rebuilding it",
            args.out.display(),
            args.routes.display(),
            agreement.lowest_cosine,
            index
                .manifest()
                .built_on
                .as_deref()
                .unwrap_or("a machine the index does not name"),
            crate::embed::cpu_kind()
        );
    }
    let bar = progress_bar(table.utterance_count(), "embedding utterances");
    let built = indexer::build_with(
        &table,
        &mut embedder,
        &args.out,
        params,
        outcomes.as_ref(),
        &mut |done, _| bar.set_position(done as u64),
    );
    let report = match built {
        Err(indexer::BuildError::Index(e @ IndexError::RouteTests(_))) => {
            bar.finish_and_clear();
            eprintln!("{e}");
            return Ok(Outcome::CheckFailed);
        }
        other => other.with_context(|| format!("building the index in {}", args.out.display()))?,
    };
    bar.finish_and_clear();
    println!(
        "built {} ({} routes, {} utterances, {} search{}) in {:.2}s ({:.2}s embedding)",
        report.generation.display(),
        report.routes,
        report.utterances,
        if report.hnsw { "HNSW" } else { "exact" },
        if report.truncated > 0 {
            format!(", {} utterances truncated", report.truncated)
        } else {
            String::new()
        },
        report.total_seconds,
        report.embed_seconds
    );
    if let Some(q) = &report.quality {
        print!("{}", crate::quality::render_training(q));
        println!(
            "quality predictor trained on {} graded prompts in {:.2}s",
            outcomes.as_ref().map_or(0, |o| o.graded.len()),
            report.quality_seconds
        );
    }
    Ok(Outcome::Success)
}

/// The current index in `args.out`, opened, if it was built from `table` with the model files
/// and parameters given (reads the model's files to hash them, without loading the model), and
/// opens whole: every file verified against its manifest, in this build's format. A damaged or
/// older index is rebuilt rather than kept.
pub(super) fn current_index(
    args: &BuildArgs,
    table: &config::RouteTable,
    params: &IndexParams,
    outcomes: Option<&indexer::Outcomes>,
) -> Option<crate::index::Index> {
    let (Ok(m), Ok(files)) = (
        crate::index::read_manifest(&args.out),
        ModelFiles::read(&args.model.model_dir),
    ) else {
        return None;
    };
    let built_from_these = m.route_table_sha256 == table.canonical_hash()
        && m.model.model_sha256 == files.model_sha256
        && m.model.tokenizer_sha256 == files.tokenizer_sha256
        && m.model.pooling == args.model.pooling
        && m.model.max_tokens == args.model.max_tokens
        && m.params == *params;
    // the same outcome files, byte for byte, or none on either side
    let sums = |files: &[crate::quality::OutcomeFile]| -> Vec<String> {
        files.iter().map(|f| f.sha256.clone()).collect()
    };
    let same_outcomes = sums(m.quality.as_ref().map_or(&[], |q| &q.outcomes))
        == sums(outcomes.map_or(&[], |o| &o.files));
    if !(built_from_these && same_outcomes) {
        return None;
    }
    crate::index::Index::open(&args.out)
        .and_then(|index| index.wait_for_graph().map(|()| index))
        .inspect_err(
            |e| tracing::warn!(error = %e, "the current index does not open; rebuilding it"),
        )
        .ok()
}

/// The starter route file written by `init`.
pub const STARTER_ROUTES: &str = include_str!("../starter.yaml");

pub(super) fn init(path: &Path, force: bool) -> anyhow::Result<Outcome> {
    if path.exists() && !force {
        bail!(
            "{} already exists; choose another path or pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(path, STARTER_ROUTES)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {}; next: `pointsman check {0}`, then `pointsman build {0} --out index/`",
        path.display()
    );
    Ok(Outcome::Success)
}
