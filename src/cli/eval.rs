//! `eval` and `calibrate`, on labelled prompts or on graded outcomes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::{ModelArgs, Outcome, embed_all};
use crate::config;
use crate::index::Index;

/// Arguments of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Index directory written by `pointsman build`.
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub index: PathBuf,
    /// Labelled prompts: JSON lines `{"text": ..., "route": name or null}`, or a `.csv` file
    /// with a `text,route` header (empty route = should fall back).
    #[arg(
        long,
        required_unless_present = "outcomes",
        conflicts_with = "outcomes"
    )]
    pub data: Option<PathBuf>,
    /// Graded outcomes (as for `build --outcomes`; a test split the predictor was not trained
    /// on): report the cost-quality curve, APGR, CPT and the baselines instead.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// With `--outcomes`: also draw the cost-quality curve as an SVG file.
    #[arg(long, requires = "outcomes")]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when in-scope accuracy is below this.
    #[arg(long, conflicts_with = "outcomes")]
    pub min_accuracy: Option<f64>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Arguments of `calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Index directory written by `pointsman build`.
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub index: PathBuf,
    /// Labelled prompts, as for `eval`; include out-of-scope lines (route null).
    #[arg(
        long,
        required_unless_present = "outcomes",
        conflicts_with = "outcomes"
    )]
    pub data: Option<PathBuf>,
    /// Graded outcomes of a validation split: set the quality knob (`defaults.quality`) for a
    /// target given by `--target-cost`, `--target-quality` or `--max-premium-share`.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// With `--outcomes`: the most quality at a mean cost per request of at most this (USD).
    #[arg(long, requires = "outcomes", conflicts_with_all = ["target_quality", "max_premium_share"])]
    pub target_cost: Option<f64>,
    /// With `--outcomes`: the least cost at a mean quality of at least this.
    #[arg(long, requires = "outcomes", conflicts_with = "max_premium_share")]
    pub target_quality: Option<f64>,
    /// With `--outcomes`: the most quality sending at most this share of requests to the most
    /// expensive candidate.
    #[arg(long, requires = "outcomes")]
    pub max_premium_share: Option<f64>,
    /// What to optimise: `accuracy` is the mean of in-scope accuracy and out-of-scope recall.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Accuracy, conflicts_with_all = ["target_precision", "max_oos_accept"])]
    pub objective: ObjectiveArg,
    /// Instead: the most in-scope accuracy whose matches are right at least this often.
    #[arg(long, conflicts_with = "max_oos_accept")]
    pub target_precision: Option<f64>,
    /// Instead: the most in-scope accuracy letting at most this share of out-of-scope lines match.
    #[arg(long)]
    pub max_oos_accept: Option<f64>,
    /// Labelled lines a route needs for a threshold of its own (others keep the global one).
    #[arg(long, default_value_t = 10)]
    pub min_support: usize,
    /// Write the route table with the fitted thresholds to this file (then `pointsman build` it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `calibrate --objective`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ObjectiveArg {
    /// Mean of in-scope accuracy and out-of-scope recall.
    Accuracy,
}

/// An index, the labelled items `read` takes from it (checked before the model is loaded), and
/// the embeddings of each item's `text`, with the model the index was built with.
fn embedded_set<T>(
    index_dir: &Path,
    model: &ModelArgs,
    read: impl FnOnce(&Index) -> anyhow::Result<Vec<T>>,
    text: impl Fn(&T) -> &str,
) -> anyhow::Result<(Index, Vec<T>, Vec<crate::embed::Embedded>)> {
    let index = Index::open(index_dir)?;
    // the same search structure for every example, so that runs are reproducible
    index.wait_for_graph()?;
    let items = read(&index)?;
    let mut embedder = model.offline_sessions()?;
    crate::engine::check_compatible(&index, crate::embed::Embedder::info(&embedder))?;
    crate::engine::agreement::check_embedder(&index, &mut embedder)?.warn_unless_held(&index);
    let texts: Vec<&str> = items.iter().map(text).collect();
    let vectors = embed_all(&mut embedder, &texts)?;
    Ok((index, items, vectors))
}

/// An index, labelled examples for it, and their embeddings.
pub(super) fn labelled(
    index_dir: &Path,
    data: &Path,
    model: &ModelArgs,
) -> anyhow::Result<(
    Index,
    Vec<crate::eval::Example>,
    Vec<crate::embed::Embedded>,
)> {
    embedded_set(
        index_dir,
        model,
        |index| Ok(crate::eval::read_examples(data, index.table())?),
        |e| e.text.as_str(),
    )
}

pub(super) fn calibrate(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    use crate::eval::{self, Objective};
    if let Some(outcomes) = &args.outcomes {
        return calibrate_outcomes(&args, outcomes);
    }
    let data = args
        .data
        .as_deref()
        .expect("clap requires --data or --outcomes");
    let (index, examples, vectors) = labelled(&args.index, data, &args.model)?;
    let objective = match (args.target_precision, args.max_oos_accept, args.objective) {
        (Some(p), _, _) => Objective::TargetPrecision(p),
        (_, Some(r), _) => Objective::MaxOosAccept(r),
        (None, None, ObjectiveArg::Accuracy) => Objective::Accuracy,
    };
    // the scores of every line, and the lines a static rule decides whatever the thresholds
    let mut evidence = Vec::with_capacity(vectors.len());
    let mut fixed = Vec::with_capacity(vectors.len());
    for (v, e) in vectors.iter().zip(&examples) {
        evidence.push(crate::dispatch::scores(&index, &e.text, v)?);
        fixed.push(crate::dispatch::rule_route(&index, &e.text, None).map(str::to_string));
    }
    let table = index.table();
    if examples.iter().all(|e| e.route.is_some()) {
        anyhow::bail!(
            "{} has no out-of-scope lines (`\"route\": null`); calibration needs them to fit thresholds",
            data.display()
        );
    }
    let cal = eval::calibrate(
        table,
        &examples,
        &evidence,
        &fixed,
        objective,
        args.min_support,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
    } else {
        let fmt = |v: Option<f32>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
        println!(
            "fitted for {objective:?} on {} lines: threshold {}, min_similarity {}, margin {}, {} per-route thresholds",
            examples.len(),
            fmt(cal.threshold),
            fmt(cal.min_similarity),
            fmt(cal.margin),
            cal.per_route.len()
        );
        if !cal.too_little_data.is_empty() {
            let shown = cal
                .too_little_data
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>();
            let more = cal.too_little_data.len().saturating_sub(shown.len());
            println!(
                "{} routes have fewer than {} lines and keep the global threshold: {}{}",
                cal.too_little_data.len(),
                args.min_support,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        for (name, f) in [("before", &cal.before), ("after", &cal.after)] {
            println!(
                "  {name:<7} in-scope {:.3}  oos recall {}  oos precision {:.3}  overall {:.3}  macro F1 {:.3}",
                f.in_scope_accuracy,
                f.oos_recall_shown(),
                f.oos_precision,
                f.overall_accuracy,
                f.macro_f1
            );
        }
    }
    if let Some(out) = &args.out {
        let yaml = format!(
            "# Calibrated by `pointsman calibrate` on {} ({objective:?}); rebuild with `pointsman build`.\n{}",
            data.display(),
            crate::config::to_yaml(&eval::apply(table, &cal))
        );
        std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(Outcome::Success)
}

pub(super) fn eval(args: EvalArgs) -> anyhow::Result<Outcome> {
    if let Some(outcomes) = &args.outcomes {
        return eval_outcomes(&args, outcomes);
    }
    let data = args
        .data
        .as_deref()
        .expect("clap requires --data or --outcomes");
    let (index, examples, vectors) = labelled(&args.index, data, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run(&Arc::new(index), &examples, &vectors))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::eval::render(&report));
    }
    match args.min_accuracy {
        Some(min) if report.figures.in_scope_accuracy < min => {
            eprintln!(
                "in-scope accuracy {:.4} is below --min-accuracy {min}",
                report.figures.in_scope_accuracy
            );
            Ok(Outcome::CheckFailed)
        }
        _ => Ok(Outcome::Success),
    }
}

/// An index with a quality predictor, graded outcomes, and the embeddings of their prompts.
pub(super) fn graded(
    index_dir: &Path,
    outcomes: &Path,
    model: &ModelArgs,
) -> anyhow::Result<(
    Arc<Index>,
    Vec<crate::quality::Graded>,
    Vec<crate::embed::Embedded>,
)> {
    let (index, graded, vectors) = embedded_set(
        index_dir,
        model,
        |index| {
            if index.quality().is_none() {
                return Err(crate::eval::OutcomeEvalError::NoPredictor.into());
            }
            Ok(crate::quality::outcomes::read(outcomes)?)
        },
        |g| g.prompt.as_str(),
    )?;
    Ok((Arc::new(index), graded, vectors))
}

pub(super) fn eval_outcomes(args: &EvalArgs, outcomes: &Path) -> anyhow::Result<Outcome> {
    let (index, graded, vectors) = graded(&args.index, outcomes, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run_outcomes(&index, &graded, &vectors))?;
    if let Some(plot) = &args.plot {
        let name = outcomes.file_name().map_or_else(
            || outcomes.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let title = format!("{name}: {} graded prompts", report.curve.rows);
        std::fs::write(plot, crate::quality::plot::svg(&report.curve, &title))
            .with_context(|| format!("cannot write {}", plot.display()))?;
        eprintln!("wrote {}", plot.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::eval::render_outcomes(&report));
    }
    Ok(Outcome::Success)
}

pub(super) fn calibrate_outcomes(args: &CalibrateArgs, outcomes: &Path) -> anyhow::Result<Outcome> {
    use crate::quality::Target;
    let target = match (
        args.target_cost,
        args.target_quality,
        args.max_premium_share,
    ) {
        (Some(c), _, _) => Target::MaxMeanCost(c),
        (_, Some(q), _) => Target::MinMeanQuality(q),
        (_, _, Some(s)) => Target::MaxPremiumShare(s),
        _ => {
            bail!("give the target: --target-cost USD, --target-quality Q or --max-premium-share S")
        }
    };
    let (index, graded, vectors) = graded(&args.index, outcomes, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run_outcomes(&index, &graded, &vectors))?;
    let Some(fit) = crate::quality::calibrate(&report.curve.curve, target) else {
        bail!(
            "no setting of the knob meets {target:?} on {}: the cheapest setting costs ${:.6} a request at quality {:.4}, the best ${:.6} at {:.4}",
            outcomes.display(),
            report.curve.baselines.cheapest.cost_usd,
            report.curve.baselines.cheapest.quality,
            report.curve.baselines.best_single.cost_usd,
            report.curve.baselines.best_single.quality
        );
    };
    let knob = match report.curve.knob {
        // a tolerance of 1 or more already means "always the cheapest"
        crate::quality::KnobKind::Tolerance => {
            config::QualityKnob::Tolerance((fit.knob as f32).clamp(0.0, 1.0))
        }
        crate::quality::KnobKind::CostWeight => config::QualityKnob::CostWeight(fit.knob),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "target": target, "knob": knob, "fitted": fit,
            }))?
        );
    } else {
        println!(
            "fitted for {target:?} on {} graded prompts: {knob:?}, mean cost ${:.6}, quality {:.4}, {:.1}% to the premium model",
            graded.len(),
            fit.cost_usd,
            fit.quality,
            fit.premium_share * 100.0
        );
    }
    if let Some(out) = &args.out {
        let mut table = index.table().clone();
        table.defaults.quality = Some(knob);
        let yaml = format!(
            "# Calibrated by `pointsman calibrate` on {} ({target:?}); rebuild with `pointsman build --outcomes`.\n{}",
            outcomes.display(),
            crate::config::to_yaml(&table)
        );
        std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(Outcome::Success)
}
