//! Per-model quality predictors on prompt embeddings, chosen by cross-validated APGR.
//!
//! [`train`] fits, for each candidate model `m`, a predictor `q̂_m(x) ∈ [0, 1]` of the quality
//! its answer to a prompt with (L2-normalised) embedding `x` will get. Three methods:
//!
//! * **Logistic** ([`Method::Logistic`]): a logistic regression per model on the centred embedding
//!   (`x − training mean`), cross-entropy with soft labels in [0, 1], an L2 penalty on the weights
//!   (the bias is not penalised). The penalty is `l2 × tr(XᵀX)/d` (the mean eigenvalue of the
//!   centred Gram matrix, which grows with the number of examples), so `l2` is comparable across
//!   data sets. It is fitted by a deterministic full-batch majorise–minimise Newton method: the
//!   fixed bound `¼·XᵀX + λI` on the Hessian is factored once (Cholesky) per model and penalty,
//!   and accelerated steps with restarts run to a tight tolerance. Only rows that grade model `m`
//!   train model `m`. Prediction is one dot product per model.
//! * **kNN** ([`Method::Knn`]): the similarity-weighted mean grade of the `k` most similar graded
//!   prompts (exact cosine scan over the training vectors; per model, among the prompts that grade
//!   it). Prediction scans every training vector (about 1 ms for 10,000 × 384).
//! * **Blend** ([`Method::Blend`]): `w·logistic + (1 − w)·kNN`.
//!
//! With [`TrainOptions::length_feature`] (the default) the logistic part also sees the prompt's
//! length, `ln(characters)` standardised, as one unpenalised term: longer prompts tend to be
//! harder (on RouteLLM GSM8K this alone lifts test APGR from about 0.63 to 0.68). Call
//! [`QualityPredictor::predict_prompt`] to use it; [`QualityPredictor::predict`] takes the prompt
//! to be of typical length. The predictor also fits a per-model cost line in the prompt length
//! ([`QualityPredictor::estimate_costs_usd`]) from the lines' `cost_usd`, so the choice can weigh
//! this prompt's cost rather than the model's mean cost.
//!
//! Any of them may be followed by per-model **Platt calibration** (`σ(a·logit(q̂) + b)`, fitted on
//! out-of-fold predictions), which makes the models' numbers comparable with each other.
//!
//! The method and its hyperparameters are chosen by K-fold cross-validation on the training data
//! (deterministic folds from [`TrainOptions::seed`], repeated with other seeds on small sets,
//! see [`TrainOptions::cv_repeats`]): every candidate's out-of-fold predictions are scored by the
//! APGR of the routing curve they give ([`super::curve`]), and every score lands in the
//! [`TrainReport`]. When too few rows grade every model to draw a curve (e.g. pairwise
//! preferences), candidates are scored by out-of-fold cross-entropy instead. The winner is refitted on all the data. The report also gives the chosen
//! method's prediction cost ([`TrainReport::predict_micros`], [`TrainReport::predict_multiply_adds`]).
//!
//! The [`QualityPredictor`] serialises to JSON without the training vectors; those (needed by kNN
//! prediction and by [`QualityPredictor::nearest_graded`] explanations) are kept apart so the hot
//! path stays light: store [`QualityPredictor::vectors_le_bytes`] as a binary file and give it
//! back with [`QualityPredictor::set_training_vectors`] after loading. The prompts' ids and
//! first [`SNIPPET_CHARS`] characters are kept in [`QualityPredictor::examples`], which can be
//! dropped with [`QualityPredictor::strip_examples`].

// Index loops over rows and models read more plainly than iterator chains in the numerics.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::choose::KnobKind;

mod cv;
mod knn;
mod logistic;
mod numerics;
mod platt;
mod train;

use knn::knn_predict;
use numerics::{dot, log_length, logit, sigmoid};
use train::Data;

pub use train::train;

/// How many characters of each training prompt [`Examples`] keeps.
pub const SNIPPET_CHARS: usize = 200;

/// Format version of the serialised [`QualityPredictor`].
pub const FORMAT_VERSION: u32 = 1;

/// A quality-prediction method and its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Logistic regression per model; `l2` is relative to the centred Gram matrix's mean eigenvalue.
    Logistic {
        /// Relative L2 strength.
        l2: f64,
    },
    /// Similarity-weighted k nearest neighbours.
    Knn {
        /// Number of neighbours.
        k: usize,
    },
    /// `logistic_weight × logistic + (1 − logistic_weight) × kNN`.
    Blend {
        /// Weight of the logistic part, in [0, 1].
        logistic_weight: f32,
        /// Relative L2 strength of the logistic part.
        l2: f64,
        /// Neighbours of the kNN part.
        k: usize,
    },
}

impl Method {
    fn uses_knn(self) -> bool {
        !matches!(self, Method::Logistic { .. })
    }
    fn uses_logistic(self) -> bool {
        !matches!(self, Method::Knn { .. })
    }
}

/// How the cross-validation scores a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// APGR of one curve over all out-of-fold predictions (steadier on small sets).
    PooledApgr,
    /// Mean of the folds' APGRs.
    FoldMeanApgr,
}

/// Training options. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Cross-validation folds (at least 2).
    pub folds: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// How many times the K-fold split is repeated with other seeds, scores averaged (0: as many
    /// as it takes to score about 10,000 held-out predictions, between 1 and 3).
    pub cv_repeats: usize,
    /// The knob the route uses (the CV curves sweep it).
    pub knob: KnobKind,
    /// How a candidate is scored.
    pub selection: Selection,
    /// Relative L2 strengths tried for logistic regression (empty: no logistic candidates).
    pub l2_grid: Vec<f64>,
    /// Neighbour counts tried for kNN (empty: no kNN candidates).
    pub k_grid: Vec<usize>,
    /// Logistic weights tried for blends of the best logistic and the best kNN (values strictly
    /// between 0 and 1; empty: no blends).
    pub blend_grid: Vec<f32>,
    /// Whether per-model Platt calibration is tried on top of the best candidate.
    pub try_calibration: bool,
    /// Cost per request, US dollars, for models whose lines give no `cost_usd`.
    pub fallback_cost_usd: BTreeMap<String, f64>,
    /// Whether the logistic part also sees the prompt's length (`ln` of its characters,
    /// standardised, unpenalised): longer prompts tend to be harder. Then use
    /// [`QualityPredictor::predict_prompt`].
    pub length_feature: bool,
    /// Whether the CV curves decide with a per-model cost estimate linear in the prompt's length
    /// (as [`QualityPredictor::estimate_cost_usd`] gives) rather than each model's mean cost.
    pub cost_by_length: bool,
    /// Whether the predictor keeps each training prompt's id and first characters.
    pub keep_examples: bool,
    /// Most optimiser iterations per logistic fit.
    pub max_iterations: usize,
    /// Stop a logistic fit when the Newton decrement per graded row falls below this.
    pub tolerance: f64,
    /// The method used when the data are too few to cross-validate (fewer than 4 rows per fold).
    pub fallback_method: Method,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            folds: 5,
            seed: 0,
            cv_repeats: 0,
            knob: KnobKind::CostWeight,
            selection: Selection::PooledApgr,
            l2_grid: vec![0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            k_grid: vec![5, 10, 20, 50, 100],
            blend_grid: vec![0.25, 0.5, 0.75],
            try_calibration: true,
            fallback_cost_usd: BTreeMap::new(),
            length_feature: true,
            cost_by_length: true,
            keep_examples: true,
            max_iterations: 500,
            tolerance: 1e-7,
            fallback_method: Method::Logistic { l2: 0.1 },
        }
    }
}

/// One candidate's cross-validation score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// The method.
    pub method: Method,
    /// Whether Platt calibration was applied (cross-fitted on the other folds).
    pub calibrated: bool,
    /// The selection score (see [`TrainReport::score`]).
    pub score: f64,
    /// APGR over all out-of-fold predictions (`None`: no curve could be drawn).
    pub pooled_apgr: Option<f64>,
    /// Mean of the folds' APGRs (`None`: no fold had a curve).
    pub fold_mean_apgr: Option<f64>,
    /// Mean cross-entropy of the out-of-fold predictions on the graded entries.
    pub log_loss: f64,
}

/// One model's training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model.
    pub model: String,
    /// Training prompts that grade it.
    pub graded: usize,
    /// Its mean quality on them.
    pub mean_quality: f64,
    /// Its mean observed cost (`None`: only a fallback price was known).
    pub mean_cost_usd: Option<f64>,
}

/// What training did: every candidate's CV score, the choice, and the costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Training prompts.
    pub rows: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Per-model data.
    pub models: Vec<ModelSummary>,
    /// Folds used (0 when CV was skipped).
    pub folds: usize,
    /// Repetitions of the K-fold split (0 when CV was skipped).
    pub cv_repeats: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// The knob the CV curves swept.
    pub knob: KnobKind,
    /// What a candidate's [`CandidateScore::score`] is: `pooled_apgr`, `fold_mean_apgr`, or
    /// `negative_log_loss` when too few rows grade every model to draw routing curves.
    pub score: String,
    /// Every candidate, in the order tried.
    pub candidates: Vec<CandidateScore>,
    /// The chosen method.
    pub chosen: Method,
    /// Whether the chosen method is Platt-calibrated.
    pub calibrated: bool,
    /// The chosen candidate's score (`None` when CV was skipped).
    pub chosen_score: Option<f64>,
    /// Why CV was skipped, when it was.
    pub cv_skipped: Option<String>,
    /// Wall time of the whole training, seconds.
    pub train_seconds: f64,
    /// Measured mean time of one [`QualityPredictor::predict`], microseconds.
    pub predict_micros: f64,
    /// Multiply-adds of one prediction.
    pub predict_multiply_adds: usize,
}

/// The training prompts' ids and first [`SNIPPET_CHARS`] characters, for explanations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Examples {
    /// Each training row's id, if its line had one.
    pub ids: Vec<Option<String>>,
    /// Each training row's first characters.
    pub snippets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Linear {
    /// `models × dim`, applied to the raw (uncentred) vector; the centring is folded into `bias`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// The length feature: `(mean, sd)` of `ln(prompt chars)` on train and each model's
    /// coefficient of the standardised value.
    length: Option<LengthTerm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LengthTerm {
    mean: f32,
    sd: f32,
    coef: Vec<f32>,
}

/// Per-model linear cost estimate `max(intercept + per_char × chars, floor)`, least squares on
/// the training lines' `cost_usd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CostModel {
    intercept: Vec<f64>,
    per_char: Vec<f64>,
    floor: Vec<f64>,
}

impl CostModel {
    /// Fits on the rows `use_row` accepts; a model without a cost there gets `fallback[j]` flat.
    fn fit(data: &Data<'_>, fallback: &[f64], use_row: impl Fn(usize) -> bool) -> CostModel {
        let (n, m) = (data.n, data.m);
        let mut out = CostModel {
            intercept: Vec::with_capacity(m),
            per_char: Vec::with_capacity(m),
            floor: Vec::with_capacity(m),
        };
        for j in 0..m {
            let pts: Vec<(f64, f64)> = (0..n)
                .filter(|&i| use_row(i) && data.cost[i * m + j].is_finite())
                .map(|i| (f64::from(data.chars[i]), data.cost[i * m + j]))
                .collect();
            if pts.is_empty() {
                out.intercept.push(fallback[j]);
                out.per_char.push(0.0);
                out.floor.push(fallback[j] * 0.1);
                continue;
            }
            let k = pts.len() as f64;
            let (mx, my) = (
                pts.iter().map(|p| p.0).sum::<f64>() / k,
                pts.iter().map(|p| p.1).sum::<f64>() / k,
            );
            let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
            let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
            out.intercept.push(my - slope * mx);
            out.per_char.push(slope);
            let min = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            out.floor.push(min.max(my * 0.05) * 0.5);
        }
        out
    }

    fn estimate(&self, j: usize, chars: f64) -> f64 {
        (self.intercept[j] + self.per_char[j] * chars).max(self.floor[j])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Neighbours {
    k: usize,
    /// `rows × models` grades; negative where a row does not grade a model.
    labels: Vec<f32>,
}

/// A fitted quality predictor (serialisable; see the module docs about the training vectors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityPredictor {
    version: u32,
    models: Vec<String>,
    dim: usize,
    rows: usize,
    method: Method,
    linear: Option<Linear>,
    knn: Option<Neighbours>,
    /// Per model `(a, b)`: `q = σ(a·logit(q̂) + b)`.
    platt: Option<Vec<(f32, f32)>>,
    prior: Vec<f32>,
    mean_cost_usd: Vec<Option<f64>>,
    cost_model: CostModel,
    graded: Vec<usize>,
    examples: Option<Examples>,
    #[serde(skip)]
    vectors: Vec<f32>,
}

/// Why training failed.
#[derive(Debug, Error, PartialEq)]
pub enum TrainError {
    /// The embedding slice does not hold one vector per graded prompt.
    #[error(
        "training input: {values} embedding values for {rows} graded prompts of dimension {dim} (expected {}); pass one embedding per graded prompt, row-major",
        rows * dim
    )]
    Shape {
        /// Values given.
        values: usize,
        /// Graded prompts.
        rows: usize,
        /// Dimension.
        dim: usize,
    },
    /// Dimension 0, or no graded prompt.
    #[error("training input: {what}; pass at least one graded prompt and its embedding")]
    Empty {
        /// What is empty.
        what: &'static str,
    },
    /// An embedding holds NaN or infinity.
    #[error(
        "training input: embedding of graded prompt {row} (0-based) holds a non-finite value; re-embed that prompt"
    )]
    NonFinite {
        /// 0-based row.
        row: usize,
    },
    /// No model to predict, or one listed twice.
    #[error("training input: {what}; list each candidate model of the route once")]
    Models {
        /// What is wrong.
        what: String,
    },
    /// A model is graded on no training prompt.
    #[error(
        "training input: model `{model}` is graded on none of the {rows} training prompts; grade it, or drop it from the candidates"
    )]
    Ungraded {
        /// The model.
        model: String,
        /// Training prompts.
        rows: usize,
    },
    /// No cost is known for a model.
    #[error(
        "training input: no cost known for model `{model}`: no graded line gives its cost_usd and no fallback price was given; add cost_usd to the outcomes or a fallback_cost_usd for it"
    )]
    NoCost {
        /// The model.
        model: String,
    },
    /// An option is out of range.
    #[error("training options: {what}")]
    Options {
        /// What is wrong and what to do.
        what: String,
    },
}

/// Why a predictor could not be loaded or completed.
#[derive(Debug, Error)]
pub enum PredictorError {
    /// The JSON does not parse as a predictor.
    #[error(
        "predictor JSON, line {line} column {column}: {source}; regenerate the predictor with this version"
    )]
    Json {
        /// Line of the problem.
        line: usize,
        /// Column of the problem.
        column: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The format version is not this code's.
    #[error(
        "predictor format version {found}, this code reads version {FORMAT_VERSION}; retrain the predictor"
    )]
    Version {
        /// Version in the file.
        found: u32,
    },
    /// The vectors do not match the predictor.
    #[error("training vectors: got {got} values, the predictor was trained on {rows} rows of dimension {dim} ({} values); give the vectors file written with this predictor", rows * dim)]
    Vectors {
        /// Values given.
        got: usize,
        /// Training rows.
        rows: usize,
        /// Dimension.
        dim: usize,
    },
    /// The vector bytes are not a whole number of little-endian f32.
    #[error(
        "training vectors: {len} bytes is not a multiple of 4 (little-endian f32); the file is truncated or not a vectors file"
    )]
    Bytes {
        /// Length in bytes.
        len: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// The fitted predictor.

impl QualityPredictor {
    /// The models predicted, in order: [`Self::predict`]'s output follows it.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The method in use.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Whether per-model Platt calibration is applied.
    pub fn calibrated(&self) -> bool {
        self.platt.is_some()
    }

    /// Mean observed cost per request of `model` on the training data (`None`: unknown model or
    /// no line gave its cost).
    pub fn mean_cost_usd(&self, model: &str) -> Option<f64> {
        let j = self.models.iter().position(|m| m == model)?;
        self.mean_cost_usd[j]
    }

    /// Training prompts that grade `model`.
    pub fn graded_count(&self, model: &str) -> Option<usize> {
        let j = self.models.iter().position(|m| m == model)?;
        Some(self.graded[j])
    }

    /// Number of training rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Predicted quality in [0, 1] of each model (in [`Self::models`] order) for an L2-normalised
    /// prompt embedding, taking the prompt to be of typical length. When
    /// [`Self::uses_prompt_length`], prefer [`Self::predict_prompt`].
    ///
    /// A kNN-based method whose training vectors were not given back after loading
    /// ([`Self::is_complete`] is false) predicts each model's mean training quality for its kNN
    /// part.
    ///
    /// # Panics
    /// When `vector.len()` differs from [`Self::dim`].
    pub fn predict(&self, vector: &[f32]) -> Vec<f32> {
        self.predict_inner(vector, None)
    }

    /// Like [`Self::predict`], for the prompt `prompt` (only its length is used, and only when
    /// [`Self::uses_prompt_length`]).
    ///
    /// # Panics
    /// When `vector.len()` differs from [`Self::dim`].
    pub fn predict_prompt(&self, vector: &[f32], prompt: &str) -> Vec<f32> {
        self.predict_inner(vector, Some(log_length(prompt.chars().count() as f32)))
    }

    /// Whether the logistic part uses the prompt's length (see [`TrainOptions::length_feature`]).
    pub fn uses_prompt_length(&self) -> bool {
        self.linear.as_ref().is_some_and(|l| l.length.is_some())
    }

    fn predict_inner(&self, vector: &[f32], log_chars: Option<f32>) -> Vec<f32> {
        assert_eq!(vector.len(), self.dim, "embedding dimension");
        let m = self.models.len();
        let logistic = self.linear.as_ref().map(|lin| {
            let len_z = match (&lin.length, log_chars) {
                (Some(t), Some(l)) => (l - t.mean) / t.sd,
                _ => 0.0,
            };
            (0..m)
                .map(|j| {
                    let mut s =
                        dot(&lin.weights[j * self.dim..(j + 1) * self.dim], vector) + lin.bias[j];
                    if let Some(t) = &lin.length {
                        s += t.coef[j] * len_z;
                    }
                    sigmoid(s)
                })
                .collect::<Vec<f32>>()
        });
        let knn = self.knn.as_ref().map(|nb| {
            if self.vectors.len() == self.rows * self.dim && self.rows > 0 {
                let sims: Vec<f32> = self
                    .vectors
                    .chunks_exact(self.dim)
                    .map(|row| dot(row, vector))
                    .collect();
                knn_predict(&sims, &nb.labels, m, nb.k, &self.prior, |_| true)
            } else {
                self.prior.clone()
            }
        });
        let raw = match (self.method, logistic, knn) {
            (
                Method::Blend {
                    logistic_weight, ..
                },
                Some(a),
                Some(b),
            ) => a
                .iter()
                .zip(&b)
                .map(|(x, y)| logistic_weight * x + (1.0 - logistic_weight) * y)
                .collect(),
            (_, Some(a), _) => a,
            (_, None, Some(b)) => b,
            (_, None, None) => self.prior.clone(),
        };
        match &self.platt {
            Some(ab) => raw
                .iter()
                .zip(ab)
                .map(|(&q, &(a, b))| sigmoid(a * logit(q) + b))
                .collect(),
            None => raw,
        }
    }

    /// Estimated cost in US dollars of `model` answering a prompt of `prompt_chars` characters:
    /// a per-model line in the prompt length fitted by least squares on the training lines'
    /// `cost_usd` (flat at the mean or fallback price when the costs do not vary). `None` for an
    /// unknown model.
    pub fn estimate_cost_usd(&self, model: &str, prompt_chars: usize) -> Option<f64> {
        let j = self.models.iter().position(|m| m == model)?;
        Some(self.cost_model.estimate(j, prompt_chars as f64))
    }

    /// [`Self::estimate_cost_usd`] of every model, in [`Self::models`] order.
    pub fn estimate_costs_usd(&self, prompt: &str) -> Vec<f64> {
        let chars = prompt.chars().count() as f64;
        (0..self.models.len())
            .map(|j| self.cost_model.estimate(j, chars))
            .collect()
    }

    /// Whether everything [`Self::predict`] needs is present (a kNN-based method needs the
    /// training vectors).
    pub fn is_complete(&self) -> bool {
        !self.method.uses_knn() || self.vectors.len() == self.rows * self.dim
    }

    /// Whether [`Self::predict`] needs the training vectors (kNN or blend).
    pub fn needs_vectors(&self) -> bool {
        self.method.uses_knn()
    }

    /// The training vectors (`rows × dim`, row-major), empty when not attached.
    pub fn training_vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// Attaches the training vectors after loading (they are not part of the JSON).
    pub fn set_training_vectors(&mut self, vectors: Vec<f32>) -> Result<(), PredictorError> {
        if vectors.len() != self.rows * self.dim {
            return Err(PredictorError::Vectors {
                got: vectors.len(),
                rows: self.rows,
                dim: self.dim,
            });
        }
        self.vectors = vectors;
        Ok(())
    }

    /// Drops the training vectors (a logistic predictor does not need them to predict).
    pub fn strip_vectors(&mut self) {
        self.vectors = Vec::new();
    }

    /// The training vectors as little-endian f32 bytes, for a binary side file.
    pub fn vectors_le_bytes(&self) -> Vec<u8> {
        self.vectors.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Decodes a side file written from [`Self::vectors_le_bytes`].
    pub fn vectors_from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, PredictorError> {
        if bytes.len() % 4 != 0 {
            return Err(PredictorError::Bytes { len: bytes.len() });
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The predictor as JSON (without the training vectors).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a predictor from [`Self::to_json`]'s output; attach the vectors afterwards when
    /// [`Self::needs_vectors`].
    pub fn from_json(json: &str) -> Result<QualityPredictor, PredictorError> {
        let p: QualityPredictor =
            serde_json::from_str(json).map_err(|source| PredictorError::Json {
                line: source.line(),
                column: source.column(),
                source,
            })?;
        if p.version != FORMAT_VERSION {
            return Err(PredictorError::Version { found: p.version });
        }
        Ok(p)
    }

    /// The training prompts' ids and snippets, when kept.
    pub fn examples(&self) -> Option<&Examples> {
        self.examples.as_ref()
    }

    /// Drops the ids and snippets.
    pub fn strip_examples(&mut self) {
        self.examples = None;
    }

    /// The `k` training rows most similar to `vector` (exact scan), most similar first, as
    /// `(row, cosine similarity)`. Empty when the training vectors are not attached. Meant for
    /// explanations; it costs a full scan.
    pub fn nearest_graded(&self, vector: &[f32], k: usize) -> Vec<(usize, f32)> {
        if self.vectors.len() != self.rows * self.dim || vector.len() != self.dim {
            return Vec::new();
        }
        let mut sims: Vec<(usize, f32)> = self
            .vectors
            .chunks_exact(self.dim)
            .map(|row| dot(row, vector))
            .enumerate()
            .collect();
        let k = k.min(sims.len());
        if k == 0 {
            return Vec::new();
        }
        let cmp = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k < sims.len() {
            sims.select_nth_unstable_by(k - 1, cmp);
            sims.truncate(k);
        }
        sims.sort_by(cmp);
        sims
    }
}

#[cfg(test)]
mod tests;
