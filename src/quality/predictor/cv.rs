//! Cross-validation: folds, out-of-fold predictions, and each candidate's score.

#![allow(clippy::needless_range_loop)]

use super::super::choose::KnobKind;
use super::super::curve::{self, CurveOptions, EvalSet};
use super::knn::knn_out_of_fold;
use super::logistic::fit_logistic_path;
use super::numerics::{logit, sigmoid};
use super::platt::fit_platt;
use super::train::Data;
use super::{CandidateScore, CostModel, Method, Selection, TrainOptions};

pub(super) struct CvResult {
    pub(super) scores: Vec<CandidateScore>,
    pub(super) score_kind: String,
    pub(super) repeats: usize,
    pub(super) best: Method,
    pub(super) calibrated: bool,
    pub(super) best_score: f64,
    pub(super) platt: Option<Vec<(f32, f32)>>,
}

/// Deterministic fold of each row: a seeded shuffle, then round-robin.
pub(super) fn assign_folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
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

pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Scores out-of-fold predictions (`n × m` probabilities).
pub(super) struct Scorer<'a> {
    pub(super) data: &'a Data<'a>,
    pub(super) folds: &'a [usize],
    pub(super) k: usize,
    pub(super) knob: KnobKind,
    /// Rows grading every model.
    pub(super) full_rows: Vec<usize>,
    /// `n × m` decision cost: the row's training folds' mean cost of each model.
    pub(super) decision: Vec<f64>,
    /// `n × m` true cost, fallback the overall estimate.
    pub(super) truth_cost: Vec<f64>,
    pub(super) use_curves: bool,
    pub(super) selection: Selection,
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
pub(super) fn repeats_for(n: usize, options: &TrainOptions) -> usize {
    if options.cv_repeats > 0 {
        options.cv_repeats
    } else {
        10_000usize.div_ceil(n.max(1)).clamp(1, 3)
    }
}

/// Out-of-fold predictions of one repetition of the K-fold split.
pub(super) struct Repeat<'a> {
    pub(super) scorer: Scorer<'a>,
    pub(super) folds: Vec<usize>,
    /// Per strength in `l2s` order: `n × m` probabilities.
    pub(super) logistic: Vec<Vec<f32>>,
    /// Per `k` in `ks` order: `n × m` probabilities.
    pub(super) knn: Vec<Vec<f32>>,
}

pub(super) fn mean_score(parts: Vec<CandidateScore>) -> CandidateScore {
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

pub(super) fn cross_validate<'a>(data: &'a Data<'a>, options: &TrainOptions) -> CvResult {
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
