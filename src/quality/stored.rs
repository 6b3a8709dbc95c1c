//! The quality predictor as the index artifact holds it: the fitted predictor, the graded
//! examples it was trained on (the start of each prompt and its grades, for explanations), their
//! embeddings, and the manifest entry that pins the outcome files by sha256.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::predictor::QualityPredictor;

/// Characters of a graded prompt kept for explanations.
pub const EXAMPLE_PROMPT_CHARS: usize = 200;

/// One outcome file a predictor was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeFile {
    /// Its path as given to `build --outcomes`.
    pub path: PathBuf,
    /// sha256 of its bytes.
    pub sha256: String,
    /// Graded prompts read from it.
    pub examples: usize,
}

/// The manifest's record of a quality predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityManifest {
    /// The outcome files, with their sha256.
    pub outcomes: Vec<OutcomeFile>,
    /// The models it predicts, in its order.
    pub models: Vec<String>,
    /// Graded prompts it was trained on.
    pub examples: usize,
    /// The knob used when the route file sets none (see [`default_knob`]).
    pub default_knob: crate::config::QualityKnob,
    /// The method chosen by cross-validation, and every candidate's figures.
    pub training: serde_json::Value,
}

/// A graded example kept for explanations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleSummary {
    /// The start of its prompt ([`EXAMPLE_PROMPT_CHARS`] characters at most).
    pub prompt: String,
    /// Its grades, by model.
    pub quality: BTreeMap<String, f32>,
}

/// A graded example near a prompt, in a decision's explanation.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GradedNeighbour {
    /// The start of its prompt.
    pub prompt: String,
    /// Cosine similarity to the prompt.
    pub similarity: f32,
    /// Its grades, by model.
    pub quality: BTreeMap<String, f32>,
}

/// What a build writes into the artifact.
#[derive(Debug, Clone)]
pub struct QualityArtifact {
    /// The fitted predictor (without its training vectors: they are stored once, beside it).
    pub predictor: QualityPredictor,
    /// The graded examples, row-aligned with `vectors`.
    pub examples: Vec<ExampleSummary>,
    /// Their embeddings, row-major.
    pub vectors: Vec<f32>,
    /// The manifest entry.
    pub manifest: QualityManifest,
}

/// The predictor of an open index.
#[derive(Debug)]
pub struct QualityIndex {
    /// The fitted predictor.
    pub predictor: QualityPredictor,
    examples: Vec<ExampleSummary>,
    vectors: Vec<f32>,
    dim: usize,
}

impl QualityIndex {
    /// Rebuilds the predictor from its stored parts; the reason when they do not fit together.
    pub fn open(
        predictor_json: &str,
        examples: Vec<ExampleSummary>,
        vectors: Vec<f32>,
        dim: usize,
    ) -> Result<Self, String> {
        let mut predictor =
            QualityPredictor::from_json(predictor_json).map_err(|e| e.to_string())?;
        if dim == 0 || vectors.len() != examples.len() * dim {
            return Err(format!(
                "{} example vectors of dimension {dim} for {} examples",
                vectors.len() / dim.max(1),
                examples.len()
            ));
        }
        if predictor.dim() != dim {
            return Err(format!(
                "the predictor has dimension {}, the index {dim}",
                predictor.dim()
            ));
        }
        if predictor.needs_vectors() {
            predictor
                .set_training_vectors(vectors.clone())
                .map_err(|e| e.to_string())?;
        }
        Ok(QualityIndex {
            predictor,
            examples,
            vectors,
            dim,
        })
    }

    /// The `k` graded examples most similar to `vector`, most similar first (an exact scan:
    /// only explanations ask for it).
    pub fn nearest(&self, vector: &[f32], k: usize) -> Vec<GradedNeighbour> {
        if vector.len() != self.dim {
            return Vec::new();
        }
        let mut scored: Vec<(usize, f32)> = self
            .vectors
            .chunks_exact(self.dim)
            .map(|row| crate::similarity::similarity(vector, row))
            .enumerate()
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
            .into_iter()
            .take(k)
            .map(|(i, similarity)| GradedNeighbour {
                prompt: self.examples[i].prompt.clone(),
                similarity,
                quality: self.examples[i].quality.clone(),
            })
            .collect()
    }
}

/// The knob when the route file sets none: a cost weight at which the most expensive graded
/// model's price for a prompt of mean length (`mean_prompt_chars`; the outcomes' costs, else
/// the catalog's) is worth five points of predicted quality, so that it is chosen only where it
/// is predicted that much better than a free answer; a tolerance of 0.05 when no cost is known.
pub fn default_knob(
    predictor: &QualityPredictor,
    mean_prompt_chars: usize,
) -> crate::config::QualityKnob {
    let premium = predictor
        .models()
        .iter()
        .filter_map(|m| predictor.estimate_cost_usd(m, mean_prompt_chars))
        .fold(0.0f64, f64::max);
    if premium > 0.0 && premium.is_finite() {
        crate::config::QualityKnob::CostWeight(0.05 / premium)
    } else {
        crate::config::DEFAULT_QUALITY_KNOB
    }
}

/// The route file's knob as the choice takes it.
pub fn knob_of(knob: crate::config::QualityKnob) -> super::choose::Knob {
    match knob {
        crate::config::QualityKnob::Tolerance(t) => super::choose::Knob::Tolerance(t),
        crate::config::QualityKnob::CostWeight(w) => super::choose::Knob::CostWeight(w),
    }
}

/// The start of `prompt`, at most [`EXAMPLE_PROMPT_CHARS`] characters.
pub fn prompt_start(prompt: &str) -> String {
    prompt.chars().take(EXAMPLE_PROMPT_CHARS).collect()
}

/// The training report as the build prints it: each method tried with its cross-validated
/// figures, and the one chosen.
pub fn render_training(r: &super::TrainReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "quality predictor: {} graded prompts, {} models; methods compared by {} over {} folds × {}:",
        r.rows,
        r.models.len(),
        r.score,
        r.folds,
        r.cv_repeats
    );
    for c in &r.candidates {
        let apgr = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.4}"));
        let _ = writeln!(
            s,
            "  {:<58} score {:.4}  pooled APGR {}  fold APGR {}  log loss {:.4}",
            format!(
                "{}{}",
                serde_json::to_string(&c.method).unwrap_or_default(),
                if c.calibrated { " + Platt" } else { "" }
            ),
            c.score,
            apgr(c.pooled_apgr),
            apgr(c.fold_mean_apgr),
            c.log_loss
        );
    }
    let _ = writeln!(
        s,
        "  chosen: {}{}; {:.1} µs a prediction ({} multiply-adds), trained in {:.1} s{}",
        serde_json::to_string(&r.chosen).unwrap_or_default(),
        if r.calibrated { " + Platt" } else { "" },
        r.predict_micros,
        r.predict_multiply_adds,
        r.train_seconds,
        r.cv_skipped
            .as_deref()
            .map_or_else(String::new, |why| format!(" (no cross-validation: {why})"))
    );
    s
}
