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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::choose::KnobKind;
use super::curve::{self, CurveOptions, EvalSet};
use super::outcomes::Graded;

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

// ---------------------------------------------------------------------------------------------
// Training.

/// Per-model training data shared by all stages.
struct Data<'a> {
    x: &'a [f32],
    d: usize,
    n: usize,
    m: usize,
    /// `n × m`, NaN where not graded.
    y: Vec<f32>,
    /// `n × m`, NaN where unknown.
    cost: Vec<f64>,
    /// Per model: observed mean cost, else the fallback.
    cost_estimate: Vec<f64>,
    /// Prompt length in characters.
    chars: Vec<f32>,
    /// `ln(max(chars, 1))`.
    log_chars: Vec<f32>,
}

/// Trains a quality predictor for `models` on `graded` prompts and their embeddings
/// (`vectors`, row-major `graded.len() × dim`, L2-normalised). Grades of models not in `models`
/// are ignored. See the module docs for the methods and the cross-validation.
pub fn train(
    vectors: &[f32],
    dim: usize,
    graded: &[Graded],
    models: &[String],
    options: &TrainOptions,
) -> Result<(QualityPredictor, TrainReport), TrainError> {
    let started = Instant::now();
    let data = prepare(vectors, dim, graded, models, options)?;
    let (n, m) = (data.n, data.m);

    let prior: Vec<f32> = (0..m).map(|j| column_mean(&data.y, m, j) as f32).collect();
    let graded_counts: Vec<usize> = (0..m)
        .map(|j| (0..n).filter(|&i| data.y[i * m + j].is_finite()).count())
        .collect();
    let observed_cost: Vec<Option<f64>> = (0..m)
        .map(|j| {
            let v: Vec<f64> = (0..n)
                .map(|i| data.cost[i * m + j])
                .filter(|c| c.is_finite())
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();

    let k_folds = options.folds;
    let cv_possible = n >= 4 * k_folds;
    let mut candidates = Vec::new();
    let mut score_kind = String::new();
    let mut cv_repeats = 0;
    let (chosen, calibrated, chosen_score, platt, cv_skipped) = if cv_possible {
        let cv = cross_validate(&data, options);
        score_kind = cv.score_kind.clone();
        cv_repeats = cv.repeats;
        candidates = cv.scores.clone();
        (cv.best, cv.calibrated, Some(cv.best_score), cv.platt, None)
    } else {
        (
            options.fallback_method,
            false,
            None,
            None,
            Some(format!(
                "{n} training rows are too few for {k_folds}-fold CV (need {}); used {:?}",
                4 * k_folds,
                options.fallback_method
            )),
        )
    };

    // Refit the chosen method on everything.
    let all: Vec<usize> = (0..n).collect();
    let linear = if chosen.uses_logistic() {
        let l2 = match chosen {
            Method::Logistic { l2 } | Method::Blend { l2, .. } => l2,
            Method::Knn { .. } => unreachable!("kNN has no logistic part"),
        };
        let fit = fit_logistic_path(&data, &all, &[l2], options);
        let mut weights = vec![0.0f32; m * dim];
        let mut bias = vec![0.0f32; m];
        let mut coef = vec![0.0f32; m];
        let theta = &fit.thetas[0];
        let w = fit.width();
        for j in 0..m {
            let t = &theta[j * w..(j + 1) * w];
            let mut b = t[w - 1];
            for a in 0..dim {
                weights[j * dim + a] = t[a] as f32;
                b -= t[a] * f64::from(fit.mean[a]);
            }
            bias[j] = b as f32;
            if fit.length.is_some() {
                coef[j] = t[dim] as f32;
            }
        }
        Some(Linear {
            weights,
            bias,
            length: fit.length.map(|(mean, sd)| LengthTerm { mean, sd, coef }),
        })
    } else {
        None
    };
    let knn = match chosen {
        Method::Knn { k } | Method::Blend { k, .. } => Some(Neighbours {
            k,
            labels: data
                .y
                .iter()
                .map(|&v| if v.is_finite() { v } else { -1.0 })
                .collect(),
        }),
        Method::Logistic { .. } => None,
    };
    let examples = options.keep_examples.then(|| Examples {
        ids: graded.iter().map(|g| g.id.clone()).collect(),
        snippets: graded
            .iter()
            .map(|g| g.prompt.chars().take(SNIPPET_CHARS).collect())
            .collect(),
    });
    let predictor = QualityPredictor {
        version: FORMAT_VERSION,
        models: models.to_vec(),
        dim,
        rows: n,
        method: chosen,
        linear,
        knn,
        platt: if calibrated { platt } else { None },
        prior,
        mean_cost_usd: observed_cost.clone(),
        cost_model: CostModel::fit(&data, &data.cost_estimate, |_| true),
        graded: graded_counts.clone(),
        examples,
        vectors: vectors.to_vec(),
    };

    // Measure prediction on (up to) 200 training vectors.
    let probe = n.min(200);
    let t0 = Instant::now();
    let mut sink = 0.0f32;
    for i in 0..probe {
        sink += predictor.predict(&vectors[i * dim..(i + 1) * dim])[0];
    }
    let predict_micros = t0.elapsed().as_secs_f64() * 1e6 / probe.max(1) as f64;
    std::hint::black_box(sink);
    let predict_multiply_adds = match chosen {
        Method::Logistic { .. } => m * dim,
        Method::Knn { .. } => n * dim,
        Method::Blend { .. } => m * dim + n * dim,
    };

    let report = TrainReport {
        rows: n,
        dim,
        models: (0..m)
            .map(|j| ModelSummary {
                model: models[j].clone(),
                graded: graded_counts[j],
                mean_quality: column_mean(&data.y, m, j),
                mean_cost_usd: observed_cost[j],
            })
            .collect(),
        folds: if cv_possible { k_folds } else { 0 },
        cv_repeats,
        seed: options.seed,
        knob: options.knob,
        score: score_kind,
        candidates,
        chosen,
        calibrated,
        chosen_score,
        cv_skipped,
        train_seconds: started.elapsed().as_secs_f64(),
        predict_micros,
        predict_multiply_adds,
    };
    Ok((predictor, report))
}

fn column_mean(y: &[f32], m: usize, j: usize) -> f64 {
    let (mut s, mut c) = (0.0f64, 0usize);
    for v in y.iter().skip(j).step_by(m) {
        if v.is_finite() {
            s += f64::from(*v);
            c += 1;
        }
    }
    if c == 0 { 0.5 } else { s / c as f64 }
}

fn prepare<'a>(
    vectors: &'a [f32],
    dim: usize,
    graded: &[Graded],
    models: &[String],
    options: &TrainOptions,
) -> Result<Data<'a>, TrainError> {
    if dim == 0 {
        return Err(TrainError::Empty {
            what: "embedding dimension is 0",
        });
    }
    if graded.is_empty() {
        return Err(TrainError::Empty {
            what: "no graded prompt",
        });
    }
    let n = graded.len();
    if vectors.len() != n * dim {
        return Err(TrainError::Shape {
            values: vectors.len(),
            rows: n,
            dim,
        });
    }
    if let Some(row) = (0..n).find(|&i| {
        vectors[i * dim..(i + 1) * dim]
            .iter()
            .any(|v| !v.is_finite())
    }) {
        return Err(TrainError::NonFinite { row });
    }
    if models.is_empty() {
        return Err(TrainError::Models {
            what: "no model to predict".to_string(),
        });
    }
    let mut seen = BTreeSet::new();
    for model in models {
        if !seen.insert(model) {
            return Err(TrainError::Models {
                what: format!("model `{model}` is listed twice"),
            });
        }
    }
    if options.folds < 2 {
        return Err(TrainError::Options {
            what: format!("folds is {}; use at least 2 (5 is usual)", options.folds),
        });
    }
    if options.l2_grid.iter().any(|&l| !(l.is_finite() && l > 0.0))
        || !options.fallback_method_l2_ok()
    {
        return Err(TrainError::Options {
            what: "every l2 strength must be a positive number".to_string(),
        });
    }
    if options.k_grid.contains(&0) {
        return Err(TrainError::Options {
            what: "k_grid holds 0; every neighbour count must be at least 1".to_string(),
        });
    }
    if options
        .blend_grid
        .iter()
        .any(|w| !(w.is_finite() && *w > 0.0 && *w < 1.0))
    {
        return Err(TrainError::Options {
            what: "blend weights must lie strictly between 0 and 1".to_string(),
        });
    }
    if options.l2_grid.is_empty() && options.k_grid.is_empty() {
        return Err(TrainError::Options {
            what: "both l2_grid and k_grid are empty; give at least one candidate".to_string(),
        });
    }
    let m = models.len();
    let mut y = vec![f32::NAN; n * m];
    let mut cost = vec![f64::NAN; n * m];
    for (i, g) in graded.iter().enumerate() {
        for (j, model) in models.iter().enumerate() {
            if let Some(&q) = g.quality.get(model) {
                y[i * m + j] = q;
            }
            if let Some(&c) = g.cost_usd.get(model) {
                cost[i * m + j] = c;
            }
        }
    }
    let mut cost_estimate = Vec::with_capacity(m);
    for (j, model) in models.iter().enumerate() {
        if (0..n).all(|i| !y[i * m + j].is_finite()) {
            return Err(TrainError::Ungraded {
                model: model.clone(),
                rows: n,
            });
        }
        let known: Vec<f64> = (0..n)
            .map(|i| cost[i * m + j])
            .filter(|c| c.is_finite())
            .collect();
        let est = if known.is_empty() {
            match options.fallback_cost_usd.get(model) {
                Some(&c) => c,
                None => {
                    return Err(TrainError::NoCost {
                        model: model.clone(),
                    });
                }
            }
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        cost_estimate.push(est);
    }
    let chars: Vec<f32> = graded
        .iter()
        .map(|g| g.prompt.chars().count() as f32)
        .collect();
    let log_chars = chars.iter().map(|&c| log_length(c)).collect();
    Ok(Data {
        x: vectors,
        d: dim,
        n,
        m,
        y,
        cost,
        cost_estimate,
        chars,
        log_chars,
    })
}

impl TrainOptions {
    fn fallback_method_l2_ok(&self) -> bool {
        match self.fallback_method {
            Method::Logistic { l2 } | Method::Blend { l2, .. } => l2.is_finite() && l2 > 0.0,
            Method::Knn { k } => k > 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-validation.

struct CvResult {
    scores: Vec<CandidateScore>,
    score_kind: String,
    repeats: usize,
    best: Method,
    calibrated: bool,
    best_score: f64,
    platt: Option<Vec<(f32, f32)>>,
}

/// Deterministic fold of each row: a seeded shuffle, then round-robin.
fn assign_folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut fold = vec![0; n];
    for (pos, &row) in order.iter().enumerate() {
        fold[row] = pos % k;
    }
    fold
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Scores out-of-fold predictions (`n × m` probabilities).
struct Scorer<'a> {
    data: &'a Data<'a>,
    folds: &'a [usize],
    k: usize,
    knob: KnobKind,
    /// Rows grading every model.
    full_rows: Vec<usize>,
    /// `n × m` decision cost: the row's training folds' mean cost of each model.
    decision: Vec<f64>,
    /// `n × m` true cost, fallback the overall estimate.
    truth_cost: Vec<f64>,
    use_curves: bool,
    selection: Selection,
}

impl<'a> Scorer<'a> {
    fn new(data: &'a Data<'a>, folds: &'a [usize], k: usize, options: &TrainOptions) -> Self {
        let (n, m) = (data.n, data.m);
        let full_rows: Vec<usize> = (0..n)
            .filter(|&i| (0..m).all(|j| data.y[i * m + j].is_finite()))
            .collect();
        // Mean cost of each model on each fold's training part.
        let mut fold_cost = vec![0.0f64; k * m];
        for f in 0..k {
            for j in 0..m {
                let (mut s, mut c) = (0.0, 0usize);
                for i in 0..n {
                    let v = data.cost[i * m + j];
                    if folds[i] != f && v.is_finite() {
                        s += v;
                        c += 1;
                    }
                }
                fold_cost[f * m + j] = if c == 0 {
                    data.cost_estimate[j]
                } else {
                    s / c as f64
                };
            }
        }
        let decision: Vec<f64> = if options.cost_by_length {
            let per_fold: Vec<CostModel> = (0..k)
                .map(|f| CostModel::fit(data, &data.cost_estimate, |i| folds[i] != f))
                .collect();
            (0..n * m)
                .map(|ij| per_fold[folds[ij / m]].estimate(ij % m, f64::from(data.chars[ij / m])))
                .collect()
        } else {
            (0..n * m)
                .map(|ij| fold_cost[folds[ij / m] * m + ij % m])
                .collect()
        };
        let truth_cost: Vec<f64> = (0..n * m)
            .map(|ij| {
                let c = data.cost[ij];
                if c.is_finite() {
                    c
                } else {
                    data.cost_estimate[ij % m]
                }
            })
            .collect();
        let use_curves = full_rows.len() >= 10 * k;
        Scorer {
            data,
            folds,
            k,
            knob: options.knob,
            full_rows,
            decision,
            truth_cost,
            use_curves,
            selection: options.selection,
        }
    }

    fn apgr_of(&self, rows: &[usize], pred: &[f32]) -> Option<f64> {
        let m = self.data.m;
        let gather_f32 = |src: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&i| src[i * m..(i + 1) * m].iter().copied())
                .collect()
        };
        let gather_f64 = |src: &[f64]| -> Vec<f64> {
            rows.iter()
                .flat_map(|&i| src[i * m..(i + 1) * m].iter().copied())
                .collect()
        };
        let (p, q) = (gather_f32(pred), gather_f32(&self.data.y));
        let (c, dc) = (gather_f64(&self.truth_cost), gather_f64(&self.decision));
        let models: Vec<String> = (0..m).map(|j| j.to_string()).collect();
        let set = EvalSet {
            models: &models,
            predicted: &p,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &dc,
        };
        let opts = CurveOptions {
            knob_points: 100,
            apgr_points: 500,
        };
        curve::evaluate(&set, self.knob, &opts).ok().map(|r| r.apgr)
    }

    fn score(&self, method: Method, calibrated: bool, pred: &[f32]) -> CandidateScore {
        let (n, m) = (self.data.n, self.data.m);
        let (mut ll, mut cnt) = (0.0f64, 0usize);
        for ij in 0..n * m {
            let y = self.data.y[ij];
            if y.is_finite() {
                let p = f64::from(pred[ij]).clamp(1e-6, 1.0 - 1e-6);
                let y = f64::from(y);
                ll -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
                cnt += 1;
            }
        }
        let log_loss = ll / cnt.max(1) as f64;
        let (pooled, fold_mean) = if self.use_curves {
            let pooled = self.apgr_of(&self.full_rows, pred);
            let per: Vec<f64> = (0..self.k)
                .filter_map(|f| {
                    let rows: Vec<usize> = self
                        .full_rows
                        .iter()
                        .copied()
                        .filter(|&i| self.folds[i] == f)
                        .collect();
                    self.apgr_of(&rows, pred)
                })
                .collect();
            let mean = (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64);
            (pooled, mean)
        } else {
            (None, None)
        };
        let score = match (self.use_curves, self.selection) {
            (false, _) => -log_loss,
            (true, Selection::PooledApgr) => pooled.unwrap_or(f64::NEG_INFINITY),
            (true, Selection::FoldMeanApgr) => fold_mean.unwrap_or(f64::NEG_INFINITY),
        };
        CandidateScore {
            method,
            calibrated,
            score,
            pooled_apgr: pooled,
            fold_mean_apgr: fold_mean,
            log_loss,
        }
    }

    fn kind(&self) -> String {
        match (self.use_curves, self.selection) {
            (false, _) => "negative_log_loss",
            (true, Selection::PooledApgr) => "pooled_apgr",
            (true, Selection::FoldMeanApgr) => "fold_mean_apgr",
        }
        .to_string()
    }
}

/// How many times the K-fold split is repeated (with different seeds): as many as it takes to
/// score about 10,000 held-out predictions, between 1 and 3, unless the options fix it.
fn repeats_for(n: usize, options: &TrainOptions) -> usize {
    if options.cv_repeats > 0 {
        options.cv_repeats
    } else {
        10_000usize.div_ceil(n.max(1)).clamp(1, 3)
    }
}

/// Out-of-fold predictions of one repetition of the K-fold split.
struct Repeat<'a> {
    scorer: Scorer<'a>,
    folds: Vec<usize>,
    /// Per strength in `l2s` order: `n × m` probabilities.
    logistic: Vec<Vec<f32>>,
    /// Per `k` in `ks` order: `n × m` probabilities.
    knn: Vec<Vec<f32>>,
}

fn mean_score(parts: Vec<CandidateScore>) -> CandidateScore {
    let r = parts.len().max(1) as f64;
    let mean_opt = |f: &dyn Fn(&CandidateScore) -> Option<f64>| {
        let v: Vec<f64> = parts.iter().filter_map(f).collect();
        (v.len() == parts.len() && !v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    CandidateScore {
        method: parts[0].method,
        calibrated: parts[0].calibrated,
        score: parts.iter().map(|p| p.score).sum::<f64>() / r,
        pooled_apgr: mean_opt(&|p| p.pooled_apgr),
        fold_mean_apgr: mean_opt(&|p| p.fold_mean_apgr),
        log_loss: parts.iter().map(|p| p.log_loss).sum::<f64>() / r,
    }
}

fn cross_validate<'a>(data: &'a Data<'a>, options: &TrainOptions) -> CvResult {
    let (n, m) = (data.n, data.m);
    let k = options.folds;
    let repeats = repeats_for(n, options);
    let mut l2s: Vec<f64> = options.l2_grid.clone();
    l2s.sort_by(|a, b| b.total_cmp(a)); // strongest first: warm starts go downhill
    l2s.dedup();
    let mut ks = options.k_grid.clone();
    ks.sort_unstable();
    ks.dedup();

    let fold_sets: Vec<Vec<usize>> = (0..repeats)
        .map(|r| {
            assign_folds(
                n,
                k,
                options.seed.wrapping_add(0x51_7CC1_B727_220A * r as u64),
            )
        })
        .collect();
    let mut reps: Vec<Repeat<'_>> = Vec::with_capacity(repeats);
    for folds in &fold_sets {
        // Logistic: out-of-fold probabilities for every strength.
        let mut logistic: Vec<Vec<f32>> = vec![vec![0.0; n * m]; l2s.len()];
        if !l2s.is_empty() {
            for f in 0..k {
                let train_rows: Vec<usize> = (0..n).filter(|&i| folds[i] != f).collect();
                let fit = fit_logistic_path(data, &train_rows, &l2s, options);
                for (a, theta) in fit.thetas.iter().enumerate() {
                    for i in (0..n).filter(|&i| folds[i] == f) {
                        let xi = &data.x[i * data.d..(i + 1) * data.d];
                        for j in 0..m {
                            logistic[a][i * m + j] =
                                sigmoid(fit.logit(theta, j, xi, data.log_chars[i]));
                        }
                    }
                }
            }
        }
        let knn = if ks.is_empty() {
            Vec::new()
        } else {
            knn_out_of_fold(data, folds, &ks)
        };
        reps.push(Repeat {
            scorer: Scorer::new(data, folds, k, options),
            folds: folds.clone(),
            logistic,
            knn,
        });
    }
    let kind = reps[0].scorer.kind();
    let score_all = |method: Method, calibrated: bool, pred: &dyn Fn(&Repeat<'_>) -> Vec<f32>| {
        mean_score(
            reps.iter()
                .map(|r| r.scorer.score(method, calibrated, &pred(r)))
                .collect(),
        )
    };

    let mut scores = Vec::new();
    let mut best_l2: Option<(usize, f64)> = None;
    for (a, &l2) in l2s.iter().enumerate() {
        let s = score_all(Method::Logistic { l2 }, false, &|r| r.logistic[a].clone());
        if best_l2.is_none_or(|(_, b)| s.score > b) {
            best_l2 = Some((a, s.score));
        }
        scores.push(s);
    }
    let mut best_k: Option<(usize, f64)> = None;
    for (a, &kk) in ks.iter().enumerate() {
        let s = score_all(Method::Knn { k: kk }, false, &|r| r.knn[a].clone());
        if best_k.is_none_or(|(_, b)| s.score > b) {
            best_k = Some((a, s.score));
        }
        scores.push(s);
    }

    // Blends of the best of each.
    let blend_pred = |r: &Repeat<'_>, w: f32, la: usize, ka: usize| -> Vec<f32> {
        r.logistic[la]
            .iter()
            .zip(&r.knn[ka])
            .map(|(a, b)| w * a + (1.0 - w) * b)
            .collect()
    };
    if let (Some((la, _)), Some((ka, _))) = (best_l2, best_k) {
        for &w in &options.blend_grid {
            let method = Method::Blend {
                logistic_weight: w,
                l2: l2s[la],
                k: ks[ka],
            };
            scores.push(score_all(method, false, &|r| blend_pred(r, w, la, ka)));
        }
    }

    // The best uncalibrated candidate (ties: the first tried).
    let mut best_i = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.score > scores[best_i].score {
            best_i = i;
        }
    }
    let best_method = scores[best_i].method;
    let best_pred = |r: &Repeat<'_>| -> Vec<f32> {
        match best_method {
            Method::Logistic { .. } => r.logistic[best_l2.map_or(0, |b| b.0)].clone(),
            Method::Knn { .. } => r.knn[best_k.map_or(0, |b| b.0)].clone(),
            Method::Blend {
                logistic_weight, ..
            } => blend_pred(
                r,
                logistic_weight,
                best_l2.map_or(0, |b| b.0),
                best_k.map_or(0, |b| b.0),
            ),
        }
    };
    let mut result = CvResult {
        scores: Vec::new(),
        score_kind: kind,
        repeats,
        best: best_method,
        calibrated: false,
        best_score: scores[best_i].score,
        platt: None,
    };

    // Platt calibration of the best, cross-fitted: each fold calibrated on the others.
    if options.try_calibration {
        let calibrated = |r: &Repeat<'_>| -> Vec<f32> {
            let raw = best_pred(r);
            let mut cal = vec![0.0f32; n * m];
            for f in 0..k {
                let ab = fit_platt(data, &raw, |i| r.folds[i] != f);
                for i in (0..n).filter(|&i| r.folds[i] == f) {
                    for j in 0..m {
                        let (a, b) = ab[j];
                        cal[i * m + j] = sigmoid(a * logit(raw[i * m + j]) + b);
                    }
                }
            }
            cal
        };
        let s = score_all(best_method, true, &calibrated);
        if s.score > result.best_score {
            result.best_score = s.score;
            result.calibrated = true;
        }
        scores.push(s);
        // The final calibration is fitted on the first repetition's out-of-fold predictions.
        result.platt = Some(fit_platt(data, &best_pred(&reps[0]), |_| true));
    }
    result.scores = scores;
    result
}

// ---------------------------------------------------------------------------------------------
// Logistic regression.

struct LogisticPath {
    /// Training mean of the embedding.
    mean: Vec<f32>,
    d: usize,
    /// Standardisation of the log prompt length (`None`: the length feature is off).
    length: Option<(f32, f32)>,
    /// Per strength: `m × width` with `width = d (+ 1 for the length) + 1 (bias)`: weights on
    /// the centred vector, the length coefficient, then the bias.
    thetas: Vec<Vec<f64>>,
}

impl LogisticPath {
    fn width(&self) -> usize {
        self.d + usize::from(self.length.is_some()) + 1
    }

    fn logit(&self, theta: &[f64], j: usize, x: &[f32], log_chars: f32) -> f32 {
        let w = self.width();
        let t = &theta[j * w..(j + 1) * w];
        let mut s = t[w - 1];
        for a in 0..self.d {
            s += t[a] * f64::from(x[a] - self.mean[a]);
        }
        if let Some((mu, sd)) = self.length {
            s += t[self.d] * f64::from((log_chars - mu) / sd);
        }
        s as f32
    }
}

/// Fits logistic regressions for every model on `rows`, for each relative strength in `l2s`
/// (in the order given, each warm-started from the previous).
fn fit_logistic_path(
    data: &Data<'_>,
    rows: &[usize],
    l2s: &[f64],
    options: &TrainOptions,
) -> LogisticPath {
    let (d, m) = (data.d, data.m);
    let nt = rows.len();
    let mut mean = vec![0.0f64; d];
    for &i in rows {
        for (acc, v) in mean.iter_mut().zip(&data.x[i * d..(i + 1) * d]) {
            *acc += f64::from(*v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|v| (v / nt.max(1) as f64) as f32).collect();
    let length = options.length_feature.then(|| {
        let vals: Vec<f64> = rows.iter().map(|&i| f64::from(data.log_chars[i])).collect();
        let mu = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        let var = vals.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / vals.len().max(1) as f64;
        (mu as f32, var.sqrt().max(1e-3) as f32)
    });
    let e = usize::from(length.is_some());
    let p = d + e; // columns of z
    let w = p + 1; // parameters per model
    let mut z = vec![0.0f32; nt * p];
    let mut trace = 0.0f64;
    for (r, &i) in rows.iter().enumerate() {
        for a in 0..d {
            let v = data.x[i * d + a] - mean[a];
            z[r * p + a] = v;
            trace += f64::from(v) * f64::from(v);
        }
        if let Some((mu, sd)) = length {
            z[r * p + d] = (data.log_chars[i] - mu) / sd;
        }
    }
    let scale = (trace / d as f64).max(1e-12);

    // Models with the same graded rows share a Gram matrix.
    let mut groups: BTreeMap<Vec<u32>, Vec<usize>> = BTreeMap::new();
    for j in 0..m {
        let local: Vec<u32> = rows
            .iter()
            .enumerate()
            .filter(|(_, i)| data.y[**i * m + j].is_finite())
            .map(|(r, _)| r as u32)
            .collect();
        groups.entry(local).or_default().push(j);
    }

    let mut thetas = vec![vec![0.0f64; m * w]; l2s.len()];
    for (local, group) in &groups {
        let labels: Vec<Vec<f32>> = group
            .iter()
            .map(|&j| {
                local
                    .iter()
                    .map(|&r| data.y[rows[r as usize] * m + j])
                    .collect()
            })
            .collect();
        let mut theta: Vec<Vec<f64>> = labels
            .iter()
            .map(|ys| {
                let mut t = vec![0.0f64; w];
                let mean_y = if ys.is_empty() {
                    0.5
                } else {
                    ys.iter().map(|&v| f64::from(v)).sum::<f64>() / ys.len() as f64
                };
                t[w - 1] = f64::from(logit(mean_y as f32));
                t
            })
            .collect();
        if local.is_empty() {
            for (a, _) in l2s.iter().enumerate() {
                for (g, &j) in group.iter().enumerate() {
                    thetas[a][j * w..(j + 1) * w].copy_from_slice(&theta[g]);
                }
            }
            continue;
        }
        let gram = augmented_gram(&z, p, local);
        for (a, &l2) in l2s.iter().enumerate() {
            let lambda = l2 * scale;
            // Majoriser of the Hessian: a little over ¼ of the Gram matrix, plus the penalty
            // (and a whisker on the unpenalised length column, keeping it definite).
            let mut b = gram.iter().map(|v| v * 0.2505).collect::<Vec<f64>>();
            for t in 0..d {
                b[t * w + t] += lambda;
            }
            for t in d..p {
                b[t * w + t] += 1e-6 * local.len() as f64;
            }
            let chol = cholesky(&mut b, w);
            debug_assert!(chol, "majoriser is positive definite");
            mm_fit(&z, p, d, local, &labels, &mut theta, &b, lambda, options);
            for (g, &j) in group.iter().enumerate() {
                thetas[a][j * w..(j + 1) * w].copy_from_slice(&theta[g]);
            }
        }
    }
    LogisticPath {
        mean,
        d,
        length,
        thetas,
    }
}

/// `(d+1) × (d+1)` Gram matrix of the rows `local` of `z` (`d` columns) with a constant column
/// appended.
fn augmented_gram(z: &[f32], d: usize, local: &[u32]) -> Vec<f64> {
    let w = d + 1;
    let mut gram = vec![0.0f64; w * w];
    let mut block = vec![0.0f32; d * d];
    let mut sums = vec![0.0f64; d];
    let flush = |block: &mut Vec<f32>, gram: &mut Vec<f64>| {
        for a in 0..d {
            for b in a..d {
                gram[a * w + b] += f64::from(block[a * d + b]);
            }
        }
        block.iter_mut().for_each(|v| *v = 0.0);
    };
    for (cnt, chunk) in local.chunks(4).enumerate() {
        let rows: Vec<&[f32]> = chunk
            .iter()
            .map(|&r| &z[r as usize * d..(r as usize + 1) * d])
            .collect();
        for row in &rows {
            for (s, v) in sums.iter_mut().zip(row.iter()) {
                *s += f64::from(*v);
            }
        }
        if rows.len() == 4 {
            let (r0, r1, r2, r3) = (rows[0], rows[1], rows[2], rows[3]);
            for a in 0..d {
                let (c0, c1, c2, c3) = (r0[a], r1[a], r2[a], r3[a]);
                let out = &mut block[a * d + a..(a + 1) * d];
                for ((((o, x0), x1), x2), x3) in out
                    .iter_mut()
                    .zip(&r0[a..])
                    .zip(&r1[a..])
                    .zip(&r2[a..])
                    .zip(&r3[a..])
                {
                    *o += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3;
                }
            }
        } else {
            for row in &rows {
                for a in 0..d {
                    let c = row[a];
                    let out = &mut block[a * d + a..(a + 1) * d];
                    for (o, x) in out.iter_mut().zip(&row[a..]) {
                        *o += c * x;
                    }
                }
            }
        }
        if cnt % 64 == 63 {
            flush(&mut block, &mut gram);
        }
    }
    flush(&mut block, &mut gram);
    for a in 0..d {
        for b in 0..a {
            gram[a * w + b] = gram[b * w + a];
        }
        gram[a * w + d] = sums[a];
        gram[d * w + a] = sums[a];
    }
    gram[d * w + d] = local.len() as f64;
    gram
}

/// Accelerated majorise–minimise for the logistic fits of a group of models sharing rows:
/// `z` has `d` columns, the first `penalised` of them under the L2 penalty `lambda`; `chol`
/// holds the Cholesky factor of the majoriser.
#[allow(clippy::too_many_arguments)]
fn mm_fit(
    z: &[f32],
    d: usize,
    penalised: usize,
    local: &[u32],
    labels: &[Vec<f32>],
    theta: &mut [Vec<f64>],
    chol: &[f64],
    lambda: f64,
    options: &TrainOptions,
) {
    let g_count = labels.len();
    let w = d + 1;
    let n_rows = local.len() as f64;
    // Per model: the iterate x, the extrapolated point y, the momentum t, whether active.
    let mut x: Vec<Vec<f64>> = theta.to_vec();
    let mut yv: Vec<Vec<f64>> = theta.to_vec();
    let mut t = vec![1.0f64; g_count];
    let mut active: Vec<usize> = (0..g_count).collect();
    let mut w32 = vec![0.0f32; g_count * w];
    let mut grad = vec![0.0f64; g_count * w];
    let mut block = vec![0.0f32; g_count * w];
    for _iter in 0..options.max_iterations.max(1) {
        if active.is_empty() {
            break;
        }
        for &g in &active {
            for a in 0..w {
                w32[g * w + a] = yv[g][a] as f32;
            }
        }
        grad.iter_mut().for_each(|v| *v = 0.0);
        block.iter_mut().for_each(|v| *v = 0.0);
        for (cnt, &r) in local.iter().enumerate() {
            let zi = &z[r as usize * d..(r as usize + 1) * d];
            for &g in &active {
                let wg = &w32[g * w..g * w + d];
                let s = dot(wg, zi) + w32[g * w + d];
                let res = sigmoid(s) - labels[g][cnt];
                let out = &mut block[g * w..(g + 1) * w];
                for (o, v) in out[..d].iter_mut().zip(zi) {
                    *o += res * v;
                }
                out[d] += res;
            }
            if cnt % 128 == 127 {
                for &g in &active {
                    for a in 0..w {
                        grad[g * w + a] += f64::from(block[g * w + a]);
                        block[g * w + a] = 0.0;
                    }
                }
            }
        }
        for &g in &active {
            for a in 0..w {
                grad[g * w + a] += f64::from(block[g * w + a]);
            }
        }
        let mut still = Vec::with_capacity(active.len());
        for &g in &active {
            let gr = &mut grad[g * w..(g + 1) * w];
            for a in 0..penalised {
                gr[a] += lambda * yv[g][a];
            }
            let mut step = gr.to_vec();
            cholesky_solve(chol, w, &mut step);
            let decrement: f64 = gr.iter().zip(&step).map(|(a, b)| a * b).sum();
            let x_new: Vec<f64> = yv[g].iter().zip(&step).map(|(a, b)| a - b).collect();
            if decrement <= options.tolerance * n_rows.max(1.0) {
                x[g] = x_new;
                continue;
            }
            // Gradient restart (O'Donoghue & Candès): drop momentum when it points uphill.
            let uphill: f64 = gr
                .iter()
                .zip(x_new.iter().zip(&x[g]))
                .map(|(gv, (a, b))| gv * (a - b))
                .sum();
            if uphill > 0.0 {
                t[g] = 1.0;
                yv[g] = x_new.clone();
            } else {
                let t_next = (1.0 + (1.0 + 4.0 * t[g] * t[g]).sqrt()) / 2.0;
                let beta = (t[g] - 1.0) / t_next;
                yv[g] = x_new
                    .iter()
                    .zip(&x[g])
                    .map(|(a, b)| a + beta * (a - b))
                    .collect();
                t[g] = t_next;
            }
            x[g] = x_new;
            still.push(g);
        }
        active = still;
    }
    for (g, th) in theta.iter_mut().enumerate() {
        th.clone_from(&x[g]);
    }
}

// ---------------------------------------------------------------------------------------------
// kNN.

/// Weight of a neighbour at cosine similarity `s`.
fn knn_weight(s: f32) -> f32 {
    // Inverse cosine distance, bounded: near-duplicates count most, never infinitely.
    1.0 / (1.0 - s + 0.05)
}

/// Similarity-weighted mean label of the `k` most similar rows (among those `allowed`) per model.
fn knn_predict(
    sims: &[f32],
    labels: &[f32],
    m: usize,
    k: usize,
    prior: &[f32],
    allowed: impl Fn(usize) -> bool,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(m);
    let mut cand: Vec<(f32, f32)> = Vec::with_capacity(sims.len());
    for j in 0..m {
        cand.clear();
        cand.extend(
            sims.iter()
                .enumerate()
                .filter(|&(i, _)| allowed(i) && labels[i * m + j] >= 0.0)
                .map(|(i, &s)| (s, labels[i * m + j])),
        );
        out.push(weighted_top_k(&mut cand, k).unwrap_or(prior[j]));
    }
    out
}

fn weighted_top_k(cand: &mut [(f32, f32)], k: usize) -> Option<f32> {
    if cand.is_empty() {
        return None;
    }
    let k = k.min(cand.len());
    let cmp = |a: &(f32, f32), b: &(f32, f32)| b.0.total_cmp(&a.0);
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, cmp);
    }
    let (mut s, mut wsum) = (0.0f32, 0.0f32);
    for &(sim, y) in &cand[..k] {
        let w = knn_weight(sim);
        s += w * y;
        wsum += w;
    }
    Some(s / wsum)
}

/// Out-of-fold kNN predictions for each `k` in `ks` (ascending): `ks.len()` matrices `n × m`.
fn knn_out_of_fold(data: &Data<'_>, folds: &[usize], ks: &[usize]) -> Vec<Vec<f32>> {
    let (n, m, d) = (data.n, data.m, data.d);
    let kmax = *ks.last().unwrap_or(&1);
    let prior_by_fold: Vec<Vec<f32>> = (0..=*folds.iter().max().unwrap_or(&0))
        .map(|f| {
            (0..m)
                .map(|j| {
                    let (mut s, mut c) = (0.0f64, 0usize);
                    for i in 0..n {
                        let v = data.y[i * m + j];
                        if folds[i] != f && v.is_finite() {
                            s += f64::from(v);
                            c += 1;
                        }
                    }
                    if c == 0 { 0.5 } else { (s / c as f64) as f32 }
                })
                .collect()
        })
        .collect();
    let mut out = vec![vec![0.0f32; n * m]; ks.len()];
    // Similarities are computed for a block of query rows at a time, so each training vector is
    // read from memory once per block rather than once per query.
    const BLOCK: usize = 16;
    let mut block_sims = vec![0.0f32; BLOCK * n];
    let mut cand: Vec<(f32, f32)> = Vec::with_capacity(n);
    for i in 0..n {
        let slot = i % BLOCK;
        if slot == 0 {
            let queries: Vec<usize> = (i..(i + BLOCK).min(n)).collect();
            for r in 0..n {
                let xr = &data.x[r * d..(r + 1) * d];
                for (b, &q) in queries.iter().enumerate() {
                    block_sims[b * n + r] = if folds[r] == folds[q] {
                        f32::NEG_INFINITY
                    } else {
                        dot(xr, &data.x[q * d..(q + 1) * d])
                    };
                }
            }
        }
        let sims = &block_sims[slot * n..(slot + 1) * n];
        for j in 0..m {
            cand.clear();
            cand.extend(
                (0..n)
                    .filter(|&r| sims[r] > f32::NEG_INFINITY && data.y[r * m + j].is_finite())
                    .map(|r| (sims[r], data.y[r * m + j])),
            );
            let prior = prior_by_fold[folds[i]][j];
            if cand.is_empty() {
                for o in out.iter_mut() {
                    o[i * m + j] = prior;
                }
                continue;
            }
            let top = kmax.min(cand.len());
            let cmp = |a: &(f32, f32), b: &(f32, f32)| b.0.total_cmp(&a.0);
            if top < cand.len() {
                cand.select_nth_unstable_by(top - 1, cmp);
            }
            cand[..top].sort_by(cmp);
            let (mut s, mut wsum, mut taken) = (0.0f32, 0.0f32, 0usize);
            for (a, &kk) in ks.iter().enumerate() {
                while taken < kk.min(top) {
                    let (sim, y) = cand[taken];
                    let w = knn_weight(sim);
                    s += w * y;
                    wsum += w;
                    taken += 1;
                }
                out[a][i * m + j] = s / wsum;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Platt calibration.

/// Per model `(a, b)` minimising the cross-entropy of `σ(a·logit(p) + b)` on the rows `use_row`
/// accepts (Newton on two parameters, with a tiny ridge keeping it defined).
fn fit_platt(data: &Data<'_>, pred: &[f32], use_row: impl Fn(usize) -> bool) -> Vec<(f32, f32)> {
    let (n, m) = (data.n, data.m);
    (0..m)
        .map(|j| {
            let pts: Vec<(f64, f64)> = (0..n)
                .filter(|&i| use_row(i) && data.y[i * m + j].is_finite())
                .map(|i| {
                    (
                        f64::from(logit(pred[i * m + j])),
                        f64::from(data.y[i * m + j]),
                    )
                })
                .collect();
            if pts.len() < 2 {
                return (1.0, 0.0);
            }
            let (mut a, mut b) = (1.0f64, 0.0f64);
            let ridge = 1e-3;
            for _ in 0..50 {
                let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
                    (ridge * (a - 1.0), ridge * b, ridge, 0.0, ridge);
                for &(s, y) in &pts {
                    let p = 1.0 / (1.0 + (-(a * s + b)).exp());
                    let r = p - y;
                    let h = (p * (1.0 - p)).max(1e-12);
                    ga += r * s;
                    gb += r;
                    haa += h * s * s;
                    hab += h * s;
                    hbb += h;
                }
                let det = haa * hbb - hab * hab;
                if det <= 0.0 || !det.is_finite() {
                    break;
                }
                let da = (hbb * ga - hab * gb) / det;
                let db = (haa * gb - hab * ga) / det;
                a -= da;
                b -= db;
                if da.abs() + db.abs() < 1e-9 {
                    break;
                }
            }
            if a.is_finite() && b.is_finite() {
                (a as f32, b as f32)
            } else {
                (1.0, 0.0)
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Numerics.

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn sigmoid(s: f32) -> f32 {
    1.0 / (1.0 + (-s).exp())
}

fn log_length(chars: f32) -> f32 {
    chars.max(1.0).ln()
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// In-place Cholesky factorisation (lower triangle) of the `n × n` matrix `a`; false if not
/// positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return false;
        }
        let l = diag.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            let (ri, rj) = (&a[i * n..i * n + j], &a[j * n..j * n + j]);
            for (x, y) in ri.iter().zip(rj) {
                s -= x * y;
            }
            a[i * n + j] = s / l;
        }
    }
    true
}

/// Solves `L Lᵀ x = b` in place with the factor from [`cholesky`].
fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random unit vectors and grades from a planted linear signal.
    pub(super) fn synthetic(
        n: usize,
        d: usize,
        m: usize,
        seed: u64,
    ) -> (Vec<f32>, Vec<Graded>, Vec<String>) {
        let mut st = seed;
        fn uniform(st: &mut u64) -> f64 {
            (splitmix64(st) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gauss(st: &mut u64) -> f32 {
            let (u1, u2) = (uniform(st), uniform(st));
            ((-2.0 * (u1 + 1e-300).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        }
        let models: Vec<String> = (0..m).map(|j| format!("model-{j}")).collect();
        let dirs: Vec<Vec<f32>> = (0..m)
            .map(|_| (0..d).map(|_| gauss(&mut st)).collect())
            .collect();
        let mut x = Vec::with_capacity(n * d);
        let mut graded = Vec::with_capacity(n);
        for i in 0..n {
            let mut v: Vec<f32> = (0..d).map(|_| gauss(&mut st)).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            let mut quality = BTreeMap::new();
            let mut cost = BTreeMap::new();
            for (j, name) in models.iter().enumerate() {
                // Dearer models are better on average; each has its own strengths.
                let strength = dot(&dirs[j], &v) * 3.0 + (j as f32 - m as f32 / 2.0) * 0.4;
                let p = sigmoid(strength);
                let u = uniform(&mut st) as f32;
                quality.insert(name.clone(), if u < p { 1.0 } else { 0.0 });
                cost.insert(name.clone(), 0.0001 * (1.0 + j as f64 * j as f64));
            }
            x.extend_from_slice(&v);
            graded.push(Graded {
                prompt: format!("prompt {i}"),
                quality,
                cost_usd: cost,
                id: Some(format!("id-{i}")),
            });
        }
        (x, graded, models)
    }

    fn data_for<'a>(x: &'a [f32], d: usize, g: &[Graded], models: &[String]) -> Data<'a> {
        prepare(x, d, g, models, &TrainOptions::default()).unwrap()
    }

    /// Reference: plain Newton with the exact Hessian (small d only); `z` has `p` columns, the
    /// first `penalised` under the penalty.
    fn newton_reference(z: &[f32], p: usize, penalised: usize, y: &[f32], lambda: f64) -> Vec<f64> {
        let n = y.len();
        let w = p + 1;
        let mut th = vec![0.0f64; w];
        for _ in 0..50 {
            let mut g = vec![0.0f64; w];
            let mut h = vec![0.0f64; w * w];
            for i in 0..n {
                let zi: Vec<f64> = z[i * p..(i + 1) * p]
                    .iter()
                    .map(|&v| f64::from(v))
                    .chain([1.0])
                    .collect();
                let s: f64 = zi.iter().zip(&th).map(|(a, b)| a * b).sum();
                let q = 1.0 / (1.0 + (-s).exp());
                for a in 0..w {
                    g[a] += (q - f64::from(y[i])) * zi[a];
                    for b in 0..w {
                        h[a * w + b] += q * (1.0 - q) * zi[a] * zi[b];
                    }
                }
            }
            for a in 0..penalised {
                g[a] += lambda * th[a];
                h[a * w + a] += lambda;
            }
            assert!(cholesky(&mut h, w));
            cholesky_solve(&h, w, &mut g);
            for a in 0..w {
                th[a] -= g[a];
            }
        }
        th
    }

    #[test]
    fn majorise_minimise_matches_newton() {
        let (x, mut g, models) = synthetic(300, 12, 2, 7);
        // Prompts of varied length, so the length feature has something to fit.
        for (i, row) in g.iter_mut().enumerate() {
            row.prompt = "x".repeat(5 + (i * 37) % 200);
        }
        let data = data_for(&x, 12, &g, &models);
        let rows: Vec<usize> = (0..300).collect();
        for length_feature in [false, true] {
            let opts = TrainOptions {
                length_feature,
                ..TrainOptions::default()
            };
            let path = fit_logistic_path(&data, &rows, &[0.03, 0.3], &opts);
            let d = 12;
            let p = d + usize::from(length_feature);
            let mut z = vec![0.0f32; 300 * p];
            let mut trace = 0.0;
            for i in 0..300 {
                for a in 0..d {
                    z[i * p + a] = x[i * d + a] - path.mean[a];
                    trace += f64::from(z[i * p + a]).powi(2);
                }
                if let Some((mu, sd)) = path.length {
                    z[i * p + d] = (data.log_chars[i] - mu) / sd;
                }
            }
            for (a, l2) in [0.03, 0.3].iter().enumerate() {
                let lambda = l2 * trace / d as f64;
                for j in 0..2 {
                    let y: Vec<f32> = (0..300).map(|i| data.y[i * 2 + j]).collect();
                    let reference = newton_reference(&z, p, d, &y, lambda);
                    let got = &path.thetas[a][j * (p + 1)..(j + 1) * (p + 1)];
                    for (r, v) in reference.iter().zip(got) {
                        assert!(
                            (r - v).abs() < 2e-3 * (1.0 + r.abs()),
                            "l2 {l2} model {j}: {reference:?} vs {got:?}"
                        );
                    }
                    // Predictions through the path agree with the reference too.
                    let xi = &x[..d];
                    let mut s = reference[p];
                    for a2 in 0..d {
                        s += reference[a2] * f64::from(xi[a2] - path.mean[a2]);
                    }
                    if length_feature {
                        s += reference[d] * f64::from(z[d]);
                    }
                    let mine = path.logit(&path.thetas[a], j, xi, data.log_chars[0]);
                    assert!((s as f32 - mine).abs() < 1e-2, "{s} vs {mine}");
                }
            }
        }
    }

    #[test]
    fn cholesky_solves() {
        let mut a = vec![4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let orig = a.clone();
        assert!(cholesky(&mut a, 3));
        let mut b = vec![1.0, 2.0, 3.0];
        cholesky_solve(&a, 3, &mut b);
        for i in 0..3 {
            let r: f64 = (0..3).map(|k| orig[i * 3 + k] * b[k]).sum();
            assert!((r - [1.0, 2.0, 3.0][i]).abs() < 1e-12);
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky(&mut bad, 2));
    }

    #[test]
    fn folds_are_deterministic_and_balanced() {
        let f = assign_folds(103, 5, 42);
        assert_eq!(f, assign_folds(103, 5, 42));
        assert_ne!(f, assign_folds(103, 5, 43));
        for k in 0..5 {
            let c = f.iter().filter(|&&v| v == k).count();
            assert!((20..=21).contains(&c));
        }
    }

    #[test]
    fn trains_and_beats_the_single_models() {
        let (x, g, models) = synthetic(600, 16, 3, 1);
        let (p, report) = train(&x, 16, &g, &models, &TrainOptions::default()).unwrap();
        assert!(report.chosen_score.unwrap() > 0.6, "{report:#?}");
        assert_eq!(report.candidates.len(), 8 + 5 + 3 + 1);
        assert_eq!(report.cv_repeats, 3);
        assert_eq!(p.models(), &models[..]);
        let q = p.predict(&x[..16]);
        assert_eq!(q.len(), 3);
        assert!(q.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(p.mean_cost_usd("model-2").unwrap() > p.mean_cost_usd("model-0").unwrap());
        assert_eq!(p.graded_count("model-1"), Some(600));
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"candidates\""));
    }

    #[test]
    fn each_method_predicts_like_its_cross_validation() {
        let (x, g, models) = synthetic(400, 8, 2, 3);
        for method in [
            Method::Logistic { l2: 0.1 },
            Method::Knn { k: 10 },
            Method::Blend {
                logistic_weight: 0.5,
                l2: 0.1,
                k: 10,
            },
        ] {
            let opts = TrainOptions {
                fallback_method: method,
                folds: 200, // too many folds for 400 rows: CV is skipped
                ..TrainOptions::default()
            };
            let (p, report) = train(&x, 8, &g, &models, &opts).unwrap();
            assert!(report.cv_skipped.is_some());
            assert_eq!(p.method(), method);
            assert!(p.is_complete());
            // The predictor round-trips through JSON plus the vectors file.
            let mut back = QualityPredictor::from_json(&p.to_json()).unwrap();
            assert_eq!(back.needs_vectors(), method != Method::Logistic { l2: 0.1 });
            if back.needs_vectors() {
                assert!(!back.is_complete());
                let v = QualityPredictor::vectors_from_le_bytes(&p.vectors_le_bytes()).unwrap();
                back.set_training_vectors(v).unwrap();
            }
            for i in 0..5 {
                assert_eq!(
                    back.predict(&x[i * 8..(i + 1) * 8]),
                    p.predict(&x[i * 8..(i + 1) * 8])
                );
            }
        }
    }

    #[test]
    fn knn_prediction_of_a_training_row_leans_on_itself() {
        let (x, g, models) = synthetic(200, 8, 2, 5);
        let opts = TrainOptions {
            fallback_method: Method::Knn { k: 1 },
            folds: 100,
            ..TrainOptions::default()
        };
        let (p, _) = train(&x, 8, &g, &models, &opts).unwrap();
        for i in 0..20 {
            let q = p.predict(&x[i * 8..(i + 1) * 8]);
            assert_eq!(q[0], g[i].quality["model-0"]);
        }
        let near = p.nearest_graded(&x[24..32], 3);
        assert_eq!(near[0].0, 3);
        assert!(near[0].1 > 0.999 && near[1].1 <= near[0].1);
        assert_eq!(p.examples().unwrap().ids[3].as_deref(), Some("id-3"));
    }

    #[test]
    fn partial_grades_train_each_model_on_its_rows() {
        let (x, mut g, models) = synthetic(300, 8, 3, 9);
        for (i, row) in g.iter_mut().enumerate() {
            // Each line grades only two of the three models (like pairwise preferences).
            let drop = &models[i % 3];
            row.quality.remove(drop);
        }
        let (p, report) = train(&x, 8, &g, &models, &TrainOptions::default()).unwrap();
        assert_eq!(report.score, "negative_log_loss");
        assert_eq!(p.graded_count("model-0"), Some(200));
        assert!(p.predict(&x[..8]).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_input_is_reported() {
        let (x, g, models) = synthetic(50, 4, 2, 1);
        let o = TrainOptions::default();
        assert!(matches!(
            train(&x[..10], 4, &g, &models, &o),
            Err(TrainError::Shape { .. })
        ));
        let mut bad = x.clone();
        bad[9] = f32::NAN;
        assert_eq!(
            train(&bad, 4, &g, &models, &o).unwrap_err(),
            TrainError::NonFinite { row: 2 }
        );
        let e = train(&x, 4, &g, &["nobody".to_string()], &o).unwrap_err();
        assert!(e.to_string().contains("`nobody` is graded on none"), "{e}");
        let twice = vec![models[0].clone(), models[0].clone()];
        assert!(matches!(
            train(&x, 4, &g, &twice, &o),
            Err(TrainError::Models { .. })
        ));
        let mut nocost = g.clone();
        nocost.iter_mut().for_each(|r| r.cost_usd.clear());
        let e = train(&x, 4, &nocost, &models, &o).unwrap_err();
        assert!(matches!(e, TrainError::NoCost { .. }), "{e}");
        let with_fallback = TrainOptions {
            fallback_cost_usd: models.iter().map(|m| (m.clone(), 0.01)).collect(),
            ..TrainOptions::default()
        };
        assert!(train(&x, 4, &nocost, &models, &with_fallback).is_ok());
    }

    #[test]
    fn predictor_json_errors_say_where() {
        let e = QualityPredictor::from_json("{\"version\": 1,\n \"models\": 3}").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(QualityPredictor::vectors_from_le_bytes(&[0, 1, 2]).is_err());
    }
}
