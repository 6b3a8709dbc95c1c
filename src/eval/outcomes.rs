//! The quality-aware evaluation: graded outcomes decided through the server's path, the
//! knob swept into a cost-quality curve, and its report.

use std::collections::BTreeMap;

use serde::Serialize;

/// The quality-aware evaluation: the router's cost-quality curve on graded outcomes, beside
/// every model alone, the best single model per budget, a random mix and the oracle.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeReport {
    /// Graded prompts read.
    pub examples: usize,
    /// The curve, its metrics (`apgr`, `cpt50`, `cpt80`, `matches_best_at_cost_share`) and the
    /// baselines.
    #[serde(flatten)]
    pub curve: crate::quality::CurveReport,
    /// What the route file's own knob does on these prompts, decided through the server's path.
    pub at_knob: AtKnob,
}

/// The decisions at the route file's knob.
#[derive(Debug, Clone, Serialize)]
pub struct AtKnob {
    /// The knob.
    pub knob: crate::config::QualityKnob,
    /// Mean true cost per request, US dollars.
    pub cost_usd: f64,
    /// Mean true quality.
    pub quality: f64,
    /// Requests per chosen model.
    pub chosen: BTreeMap<String, usize>,
}

/// Why an outcome evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeEvalError {
    /// The index has no quality predictor.
    #[error(
        "the index was built without outcomes, so it predicts no quality; rebuild it with `pointsman build ROUTES --outcomes TRAIN.jsonl`"
    )]
    NoPredictor,
    /// A decision failed.
    #[error(transparent)]
    Dispatch(#[from] crate::dispatch::DispatchError),
    /// The curve could not be computed.
    #[error(transparent)]
    Curve(#[from] crate::quality::CurveError),
}

/// Decides every graded prompt as the server would (through [`crate::dispatch`], dry-run
/// ledger), then sweeps the knob over the predictions the decisions carried and reports the
/// curve. `embedded[i]` is the embedding of `graded[i]`'s prompt.
pub async fn run_outcomes(
    snapshot: &std::sync::Arc<crate::index::Index>,
    graded: &[crate::quality::Graded],
    embedded: &[crate::embed::Embedded],
) -> Result<OutcomeReport, OutcomeEvalError> {
    use crate::dispatch::{self, Request, Spend};
    let table = snapshot.table();
    if snapshot.quality().is_none() {
        return Err(OutcomeEvalError::NoPredictor);
    }
    let health = crate::selection::Health::default();
    let who = crate::budget::Identity::default();
    let knob = table.defaults.quality.unwrap_or_else(|| {
        snapshot
            .manifest()
            .quality
            .as_ref()
            .map_or(crate::config::DEFAULT_QUALITY_KNOB, |m| m.default_knob)
    });
    // decide every prompt first; a prompt no candidate can take (the server answers it with an
    // error) is left out of the figures, as `run` leaves it out of the costs
    let mut decided = Vec::with_capacity(graded.len());
    for (g, v) in graded.iter().zip(embedded) {
        let req = Request::text(&g.prompt, &who);
        match dispatch::dispatch_embedded(&health, Spend::DryRun, snapshot, &req, v).await {
            Ok(d) => decided.push((g.clone(), d)),
            Err(crate::dispatch::DispatchError::NoCandidate { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    let graded: Vec<crate::quality::Graded> = decided.iter().map(|(g, _)| g.clone()).collect();
    // the models the decisions weighed, in the order the first decision listed them (its
    // route's order, by which the choice breaks ties), then any others a later one listed
    let mut models: Vec<String> = Vec::new();
    for (_, d) in &decided {
        for c in d.selection.quality.iter().flat_map(|q| &q.candidates) {
            if c.predicted_quality.is_some() && !models.contains(&c.model) {
                models.push(c.model.clone());
            }
        }
    }
    let m = models.len();
    let (mut predicted, mut decision_cost) = (
        vec![f32::NAN; graded.len() * m],
        vec![f64::NAN; graded.len() * m],
    );
    let mut chosen_models = Vec::with_capacity(graded.len());
    for (i, (_, d)) in decided.iter().enumerate() {
        if let Some(q) = &d.selection.quality {
            for c in &q.candidates {
                if let Some(j) = models.iter().position(|x| *x == c.model) {
                    predicted[i * m + j] = c.predicted_quality.unwrap_or(f32::NAN);
                    decision_cost[i * m + j] = c.estimated_cost_usd.unwrap_or(f64::NAN);
                }
            }
        }
        chosen_models.push(d.selection.model.clone());
    }
    // an answer without a recorded cost costs what the decision estimated, on average
    let fallback: Vec<f64> = (0..m)
        .map(|j| {
            let known: Vec<f64> = (0..graded.len())
                .map(|i| decision_cost[i * m + j])
                .filter(|c| c.is_finite())
                .collect();
            known.iter().sum::<f64>() / known.len().max(1) as f64
        })
        .collect();
    // a model that was not among a prompt's candidates (another route's) keeps no predicted
    // quality, so the sweep never chooses it there; its cost only keeps the row whole
    for i in 0..graded.len() {
        for j in 0..m {
            if !decision_cost[i * m + j].is_finite() {
                decision_cost[i * m + j] = fallback[j];
            }
        }
    }
    let (quality, cost) = crate::quality::curve::matrices(&graded, &models, &fallback);
    let set = crate::quality::EvalSet {
        models: &models,
        predicted: &predicted,
        quality: &quality,
        cost_usd: &cost,
        decision_cost_usd: &decision_cost,
    };
    let curve = crate::quality::evaluate(
        &set,
        crate::quality::knob_of(knob).kind(),
        &crate::quality::CurveOptions::default(),
    )?;
    let mut at = AtKnob {
        knob,
        cost_usd: 0.0,
        quality: 0.0,
        chosen: BTreeMap::new(),
    };
    // over the rows the curve uses: those that grade every model
    let mut rows = 0usize;
    for (i, model) in chosen_models.iter().enumerate() {
        if !(0..m).all(|j| quality[i * m + j].is_finite()) {
            continue;
        }
        *at.chosen.entry(model.clone()).or_default() += 1;
        if let Some(j) = models.iter().position(|x| x == model) {
            let (q, c) = (quality[i * m + j], cost[i * m + j]);
            if q.is_finite() && c.is_finite() {
                at.quality += f64::from(q);
                at.cost_usd += c;
                rows += 1;
            }
        }
    }
    at.quality /= rows.max(1) as f64;
    at.cost_usd /= rows.max(1) as f64;
    Ok(OutcomeReport {
        examples: embedded.len(),
        curve,
        at_knob: at,
    })
}

/// The outcome report as readable text.
pub fn render_outcomes(r: &OutcomeReport) -> String {
    use std::fmt::Write;
    let c = &r.curve;
    let b = &c.baselines;
    let share = |v: Option<f64>| v.map_or_else(|| "never".to_string(), |x| format!("{x:.3}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} graded prompts ({} used), knob swept: {:?}",
        r.examples, c.rows, c.knob
    );
    let _ = writeln!(
        s,
        "APGR {:.4}   CPT(50%) {}   CPT(80%) {}   best model's quality at cost share {}   savings at its quality {}",
        c.apgr,
        share(c.cpt50),
        share(c.cpt80),
        share(c.matches_best_at_cost_share),
        c.savings_at_equal_quality
            .map_or_else(|| "none".to_string(), |x| format!("{:.1}%", x * 100.0))
    );
    let _ = writeln!(
        s,
        "baselines: best single model per budget APGR {:.4}, random mix {:.4}; oracle quality {:.4} at ${:.6}",
        b.best_single_per_budget_apgr, b.random_mix_apgr, b.oracle.quality, b.oracle.cost_usd
    );
    let _ = writeln!(
        s,
        "\n  {:<40} {:>12} {:>9}",
        "always", "mean cost", "quality"
    );
    for p in &b.per_model {
        let _ = writeln!(
            s,
            "  {:<40} {:>12.6} {:>9.4}",
            p.model, p.cost_usd, p.quality
        );
    }
    let _ = writeln!(
        s,
        "\nat the route file's knob {:?}: mean cost ${:.6}, quality {:.4}",
        r.at_knob.knob, r.at_knob.cost_usd, r.at_knob.quality
    );
    s
}
