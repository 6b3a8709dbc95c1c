//! Training: the data prepared per model, the candidates tried, the chosen one refitted on all
//! of it.

#![allow(clippy::needless_range_loop)]

use std::collections::BTreeSet;
use std::time::Instant;

use super::super::outcomes::Graded;
use super::cv::cross_validate;
use super::logistic::fit_logistic_path;
use super::numerics::log_length;
use super::{
    CostModel, Examples, FORMAT_VERSION, LengthTerm, Linear, Method, ModelSummary, Neighbours,
    QualityPredictor, SNIPPET_CHARS, TrainError, TrainOptions, TrainReport,
};

/// Per-model training data shared by all stages.
pub(super) struct Data<'a> {
    pub(super) x: &'a [f32],
    pub(super) d: usize,
    pub(super) n: usize,
    pub(super) m: usize,
    /// `n × m`, NaN where not graded.
    pub(super) y: Vec<f32>,
    /// `n × m`, NaN where unknown.
    pub(super) cost: Vec<f64>,
    /// Per model: observed mean cost, else the fallback.
    pub(super) cost_estimate: Vec<f64>,
    /// Prompt length in characters.
    pub(super) chars: Vec<f32>,
    /// `ln(max(chars, 1))`.
    pub(super) log_chars: Vec<f32>,
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

pub(super) fn column_mean(y: &[f32], m: usize, j: usize) -> f64 {
    let (mut s, mut c) = (0.0f64, 0usize);
    for v in y.iter().skip(j).step_by(m) {
        if v.is_finite() {
            s += f64::from(*v);
            c += 1;
        }
    }
    if c == 0 { 0.5 } else { s / c as f64 }
}

pub(super) fn prepare<'a>(
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
