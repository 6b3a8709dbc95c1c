//! The routing curve on a graded test set, and the metrics read off it (see OUTCOMES.md).
//!
//! Sweep the route's knob from "always the best predicted" to "always the cheapest"; each
//! setting gives a mean true cost and a mean true quality per request. The **envelope** is the
//! upper concave hull of those points together with always-the-cheapest-model, joined by straight
//! lines (mixing two settings at random reaches any point between them) and flat past its highest
//! point. With the **cheapest** model (lowest mean true cost on the set) and the **best single**
//! model (highest mean true quality):
//!
//! * **APGR** is the mean, over [`CurveOptions::apgr_points`] costs evenly spaced from the
//!   cheapest's mean cost to the best's, of `(envelope quality − cheapest quality) / (best quality
//!   − cheapest quality)`. A random mix of the cheapest and the best scores 0.5.
//! * **CPT(x)** is the cost share `(cost − cheapest cost) / (best cost − cheapest cost)` at which the
//!   envelope first reaches `cheapest + x·(best − cheapest)` quality. It can be below 0 when the
//!   router gets there for less than the cheapest model costs.
//! * **matches_best_at_cost_share** is the cost share at which the envelope first reaches the best
//!   single model's quality (`None` when it never does); **savings_at_equal_quality** is one minus
//!   that cost over the best model's cost.
//!
//! Rows with a missing true quality for any model (`NaN` in the matrix) are skipped for every
//! metric and counted in [`CurveReport::rows_skipped`]; the caller fills missing true costs with
//! its own estimate ([`matrices`] does that from per-model fallbacks).
//!
//! The knob grid is taken from the test set's own switching points: for every row the knob values
//! at which its choice changes are computed exactly, and [`CurveOptions::knob_points`] settings are
//! placed at evenly spaced quantiles of all of them (starting at 0, ending past the last one, where
//! every row goes to its cheapest candidate).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::choose::{self, KnobKind, Scored};
use super::outcomes::Graded;

/// Why a curve could not be computed.
#[derive(Debug, Error, PartialEq)]
pub enum CurveError {
    /// A matrix does not have `rows × models` entries.
    #[error(
        "curve input: matrix `{matrix}` has {len} entries but {rows} rows × {models} models = {} were expected; pass row-major n × m matrices",
        rows * models
    )]
    Shape {
        /// Which matrix.
        matrix: &'static str,
        /// Its length.
        len: usize,
        /// Rows implied by the predicted matrix.
        rows: usize,
        /// Number of models.
        models: usize,
    },
    /// No model, or no row with every model graded.
    #[error(
        "curve input: no usable row ({rows} rows, {skipped} skipped for a missing grade or a non-finite number, {models} models); grade every candidate model on the test prompts"
    )]
    NoRows {
        /// Rows given.
        rows: usize,
        /// Rows skipped.
        skipped: usize,
        /// Models given.
        models: usize,
    },
    /// The best single model is also the cheapest (or costs the same), so there is no gap to recover.
    #[error(
        "curve input: the best single model `{best}` (quality {best_quality:.4}, ${best_cost:.6}) is not both better and dearer than the cheapest `{cheapest}` (quality {cheapest_quality:.4}, ${cheapest_cost:.6}); APGR is undefined, route to `{best}` alone"
    )]
    Degenerate {
        /// Best single model.
        best: String,
        /// Its mean quality.
        best_quality: f64,
        /// Its mean cost.
        best_cost: f64,
        /// Cheapest model.
        cheapest: String,
        /// Its mean quality.
        cheapest_quality: f64,
        /// Its mean cost.
        cheapest_cost: f64,
    },
}

/// A graded test set with the router's predictions, all row-major `n × m` with `m = models.len()`.
#[derive(Debug, Clone, Copy)]
pub struct EvalSet<'a> {
    /// The candidates, in the route's order (ties in the choice go to the earlier).
    pub models: &'a [String],
    /// Predicted quality.
    pub predicted: &'a [f32],
    /// True quality in [0, 1]; `NaN` where a model was not graded (the row is then skipped).
    pub quality: &'a [f32],
    /// True cost in US dollars of each answer.
    pub cost_usd: &'a [f64],
    /// The cost estimate the router decides with (e.g. each model's mean cost on train).
    pub decision_cost_usd: &'a [f64],
}

/// Sweep and metric resolution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurveOptions {
    /// Number of knob settings in the sweep (at least 2).
    pub knob_points: usize,
    /// Number of evenly spaced costs APGR averages over (at least 2).
    pub apgr_points: usize,
}

impl Default for CurveOptions {
    fn default() -> Self {
        CurveOptions {
            knob_points: 200,
            apgr_points: 1000,
        }
    }
}

/// One knob setting's outcome on the set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The knob value (tolerance or cost weight).
    pub knob: f64,
    /// Mean true cost per request, US dollars.
    pub cost_usd: f64,
    /// Mean true quality per request.
    pub quality: f64,
    /// Share of requests sent to the premium candidate (highest mean decision cost).
    pub premium_share: f64,
}

/// A (cost, quality) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostQuality {
    /// Mean cost per request, US dollars.
    pub cost_usd: f64,
    /// Mean quality per request.
    pub quality: f64,
}

/// A single model's mean cost and quality on the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPoint {
    /// The model.
    pub model: String,
    /// Its mean true cost per request, US dollars.
    pub cost_usd: f64,
    /// Its mean true quality.
    pub quality: f64,
}

/// What the router is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Every model alone, in the route's order.
    pub per_model: Vec<ModelPoint>,
    /// The model with the highest mean true quality (ties: the cheaper).
    pub best_single: ModelPoint,
    /// The model with the lowest mean true cost (ties: the better).
    pub cheapest: ModelPoint,
    /// The model the router calls premium (highest mean decision cost): what
    /// [`Point::premium_share`] counts.
    pub premium: String,
    /// APGR of picking the best single model for each budget (ignoring the prompt).
    pub best_single_per_budget_apgr: f64,
    /// APGR of a random mix of the cheapest and the best model (0.5 by construction).
    pub random_mix_apgr: f64,
    /// For each prompt the cheapest of the models that scored highest on it.
    pub oracle: CostQuality,
}

/// The routing curve and its metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveReport {
    /// Which knob was swept.
    pub knob: KnobKind,
    /// Rows used.
    pub rows: usize,
    /// Rows skipped for a missing grade or a non-finite number.
    pub rows_skipped: usize,
    /// Average performance gap recovered (see module docs).
    pub apgr: f64,
    /// Cost share at which the envelope recovers 50 % of the gap (`None`: never).
    pub cpt50: Option<f64>,
    /// Cost share at which the envelope recovers 80 % of the gap (`None`: never).
    pub cpt80: Option<f64>,
    /// Cost share at which the envelope reaches the best single model's quality (`None`: never).
    pub matches_best_at_cost_share: Option<f64>,
    /// `1 − cost at the best's quality / best's cost` (`None`: never reaches it).
    pub savings_at_equal_quality: Option<f64>,
    /// The sweep, in knob order (from best predicted to cheapest).
    pub curve: Vec<Point>,
    /// The envelope's corners, cost ascending.
    pub envelope: Vec<CostQuality>,
    /// Single-model, random-mix and oracle baselines.
    pub baselines: Baselines,
}

/// Builds the true quality (`NaN` = not graded) and true cost matrices of `graded` for `models`,
/// filling a missing cost of model `j` with `fallback_cost_usd[j]`.
///
/// # Panics
/// When `fallback_cost_usd` does not have one entry per model.
pub fn matrices(
    graded: &[Graded],
    models: &[String],
    fallback_cost_usd: &[f64],
) -> (Vec<f32>, Vec<f64>) {
    assert_eq!(
        models.len(),
        fallback_cost_usd.len(),
        "one fallback per model"
    );
    let mut q = Vec::with_capacity(graded.len() * models.len());
    let mut c = Vec::with_capacity(graded.len() * models.len());
    for g in graded {
        for (j, m) in models.iter().enumerate() {
            q.push(g.quality.get(m).copied().unwrap_or(f32::NAN));
            c.push(g.cost_usd.get(m).copied().unwrap_or(fallback_cost_usd[j]));
        }
    }
    (q, c)
}

/// A monotone (non-decreasing) concave piecewise-linear envelope.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    xs: Vec<f64>,
    ys: Vec<f64>,
}

impl Envelope {
    /// The upper concave hull of `points`, cut at its highest point.
    pub(crate) fn new(points: &[(f64, f64)]) -> Envelope {
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        pts.dedup_by(|later, earlier| later.0 == earlier.0);
        let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
        for p in pts {
            while hull.len() >= 2 {
                let (x1, y1) = hull[hull.len() - 2];
                let (x2, y2) = hull[hull.len() - 1];
                let cross = (x2 - x1) * (p.1 - y1) - (y2 - y1) * (p.0 - x1);
                if cross >= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        // Keep the rising part: past the highest corner the envelope stays flat.
        let mut top = 0;
        for (i, p) in hull.iter().enumerate() {
            if p.1 > hull[top].1 {
                top = i;
            }
        }
        hull.truncate(top + 1);
        Envelope {
            xs: hull.iter().map(|p| p.0).collect(),
            ys: hull.iter().map(|p| p.1).collect(),
        }
    }

    /// The corners, cost ascending.
    pub(crate) fn corners(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.xs.iter().copied().zip(self.ys.iter().copied())
    }

    /// Quality reachable at mean cost `x`.
    pub(crate) fn at(&self, x: f64) -> f64 {
        let n = self.xs.len();
        if n == 0 {
            return f64::NAN;
        }
        if x <= self.xs[0] {
            return self.ys[0];
        }
        if x >= self.xs[n - 1] {
            return self.ys[n - 1];
        }
        let i = self.xs.partition_point(|&v| v <= x);
        let (x0, y0, x1, y1) = (self.xs[i - 1], self.ys[i - 1], self.xs[i], self.ys[i]);
        y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    }

    /// The lowest cost at which the envelope reaches quality `y` (`None`: never).
    pub(crate) fn cost_to_reach(&self, y: f64) -> Option<f64> {
        let eps = 1e-12;
        let i = self.ys.iter().position(|&v| v >= y - eps)?;
        if i == 0 {
            return Some(self.xs[0]);
        }
        let (x0, y0, x1, y1) = (self.xs[i - 1], self.ys[i - 1], self.xs[i], self.ys[i]);
        Some(x0 + (x1 - x0) * ((y - y0) / (y1 - y0)).clamp(0.0, 1.0))
    }

    /// APGR of this envelope between `cheap` and `best` (as (cost, quality)).
    pub(crate) fn apgr(&self, cheap: (f64, f64), best: (f64, f64), points: usize) -> f64 {
        let points = points.max(2);
        let gap = best.1 - cheap.1;
        let mut sum = 0.0;
        for k in 0..points {
            let x = cheap.0 + (best.0 - cheap.0) * k as f64 / (points - 1) as f64;
            sum += (self.at(x) - cheap.1) / gap;
        }
        sum / points as f64
    }
}

/// Knob values at which row `r`'s choice changes.
fn breakpoints(cands: &[Scored], kind: KnobKind, out: &mut Vec<f64>) {
    let usable: Vec<&Scored> = cands
        .iter()
        .filter(|c| c.quality.is_finite() && c.cost_usd.is_finite())
        .collect();
    if usable.len() < 2 {
        return;
    }
    match kind {
        KnobKind::Tolerance => {
            let top = usable
                .iter()
                .map(|c| c.quality)
                .fold(f32::NEG_INFINITY, f32::max);
            out.extend(
                usable
                    .iter()
                    .map(|c| f64::from(top - c.quality))
                    .filter(|&b| b > 0.0),
            );
        }
        KnobKind::CostWeight => {
            // Walk the upper envelope of the lines q_j − λ c_j from λ = 0 up.
            let Some(mut cur) = choose::choose(cands, choose::Knob::CostWeight(0.0)) else {
                return;
            };
            let mut lambda = 0.0f64;
            loop {
                let (qc, cc) = (f64::from(cands[cur].quality), cands[cur].cost_usd);
                let mut next: Option<(usize, f64)> = None;
                for (j, c) in cands.iter().enumerate() {
                    if !(c.quality.is_finite() && c.cost_usd.is_finite()) || c.cost_usd >= cc {
                        continue;
                    }
                    let l = ((qc - f64::from(c.quality)) / (cc - c.cost_usd)).max(lambda);
                    if next.is_none_or(|(_, b)| l < b) {
                        next = Some((j, l));
                    }
                }
                let Some((j, l)) = next else { break };
                out.push(l);
                lambda = l;
                cur = j;
            }
        }
    }
}

/// The knob values to sweep for `kind` on these candidates (`n` rows of `m`), ascending.
fn knob_grid(decision: &[Vec<Scored>], kind: KnobKind, points: usize) -> Vec<f64> {
    let mut bps = Vec::new();
    for row in decision {
        breakpoints(row, kind, &mut bps);
    }
    bps.retain(|b| b.is_finite() && *b >= 0.0);
    bps.sort_by(f64::total_cmp);
    let mut grid = vec![0.0];
    if bps.is_empty() {
        return grid;
    }
    let points = points.max(2);
    // A switch at 0 (a tie in predicted quality) happens just above 0.
    let tiny = bps
        .iter()
        .copied()
        .find(|&b| b > 0.0)
        .map_or(1e-9, |b| b * 1e-6);
    let nudge = |b: f64| match kind {
        // Tolerances compare in f32; step safely past the switching point.
        KnobKind::Tolerance => b + 1e-6,
        KnobKind::CostWeight if b == 0.0 => tiny,
        KnobKind::CostWeight => b * (1.0 + 1e-9),
    };
    let inner = points - 2;
    for k in 0..inner {
        let idx = ((k as f64 + 0.5) / inner as f64 * bps.len() as f64) as usize;
        grid.push(nudge(bps[idx.min(bps.len() - 1)]));
    }
    let last = nudge(bps[bps.len() - 1]);
    grid.push(match kind {
        KnobKind::Tolerance => last.max(1.0 + 1e-6),
        KnobKind::CostWeight => last * 1.01,
    });
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    grid
}

/// Sweeps the knob over `set` and computes the envelope, metrics and baselines.
pub fn evaluate(
    set: &EvalSet<'_>,
    kind: KnobKind,
    options: &CurveOptions,
) -> Result<CurveReport, CurveError> {
    let m = set.models.len();
    let n = set.predicted.len().checked_div(m).unwrap_or(0);
    for (matrix, len) in [
        ("predicted", set.predicted.len()),
        ("quality", set.quality.len()),
        ("cost_usd", set.cost_usd.len()),
        ("decision_cost_usd", set.decision_cost_usd.len()),
    ] {
        if len != n * m {
            return Err(CurveError::Shape {
                matrix,
                len,
                rows: n,
                models: m,
            });
        }
    }
    let keep: Vec<usize> = (0..n)
        .filter(|&i| {
            (0..m).all(|j| {
                let k = i * m + j;
                set.quality[k].is_finite()
                    && set.cost_usd[k].is_finite()
                    && set.decision_cost_usd[k].is_finite()
            })
        })
        .collect();
    if keep.is_empty() || m == 0 {
        return Err(CurveError::NoRows {
            rows: n,
            skipped: n - keep.len(),
            models: m,
        });
    }
    let rows = keep.len();
    let nf = rows as f64;
    let mut mean_q = vec![0.0f64; m];
    let mut mean_c = vec![0.0f64; m];
    let mut mean_dc = vec![0.0f64; m];
    for &i in &keep {
        for j in 0..m {
            mean_q[j] += f64::from(set.quality[i * m + j]) / nf;
            mean_c[j] += set.cost_usd[i * m + j] / nf;
            mean_dc[j] += set.decision_cost_usd[i * m + j] / nf;
        }
    }
    let per_model: Vec<ModelPoint> = (0..m)
        .map(|j| ModelPoint {
            model: set.models[j].clone(),
            cost_usd: mean_c[j],
            quality: mean_q[j],
        })
        .collect();
    let best = (0..m)
        .reduce(|a, b| {
            if mean_q[b] > mean_q[a] || (mean_q[b] == mean_q[a] && mean_c[b] < mean_c[a]) {
                b
            } else {
                a
            }
        })
        .unwrap_or(0);
    let cheap = (0..m)
        .reduce(|a, b| {
            if mean_c[b] < mean_c[a] || (mean_c[b] == mean_c[a] && mean_q[b] > mean_q[a]) {
                b
            } else {
                a
            }
        })
        .unwrap_or(0);
    let premium = (0..m)
        .reduce(|a, b| if mean_dc[b] > mean_dc[a] { b } else { a })
        .unwrap_or(0);
    let (cb, qb, cc, qc) = (mean_c[best], mean_q[best], mean_c[cheap], mean_q[cheap]);
    if best == cheap || qb <= qc || cb <= cc {
        return Err(CurveError::Degenerate {
            best: set.models[best].clone(),
            best_quality: qb,
            best_cost: cb,
            cheapest: set.models[cheap].clone(),
            cheapest_quality: qc,
            cheapest_cost: cc,
        });
    }

    let decision: Vec<Vec<Scored>> = keep
        .iter()
        .map(|&i| {
            (0..m)
                .map(|j| Scored {
                    quality: set.predicted[i * m + j],
                    cost_usd: set.decision_cost_usd[i * m + j],
                })
                .collect()
        })
        .collect();
    let grid = knob_grid(&decision, kind, options.knob_points);
    let curve: Vec<Point> = grid
        .iter()
        .map(|&v| {
            let knob = kind.with_value(v);
            let (mut cost, mut quality, mut premium_n) = (0.0, 0.0, 0usize);
            for (row, &i) in decision.iter().zip(&keep) {
                let j = choose::choose(row, knob).unwrap_or(0);
                cost += set.cost_usd[i * m + j];
                quality += f64::from(set.quality[i * m + j]);
                premium_n += usize::from(j == premium);
            }
            Point {
                knob: v,
                cost_usd: cost / nf,
                quality: quality / nf,
                premium_share: premium_n as f64 / nf,
            }
        })
        .collect();

    let mut pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.cost_usd, p.quality)).collect();
    pts.push((cc, qc));
    let env = Envelope::new(&pts);
    let apgr = env.apgr((cc, qc), (cb, qb), options.apgr_points);
    let share = |cost: f64| (cost - cc) / (cb - cc);
    let cpt = |x: f64| env.cost_to_reach(qc + x * (qb - qc)).map(share);
    let at_best = env.cost_to_reach(qb);

    let singles: Vec<(f64, f64)> = (0..m).map(|j| (mean_c[j], mean_q[j])).collect();
    let best_single_per_budget_apgr =
        Envelope::new(&singles).apgr((cc, qc), (cb, qb), options.apgr_points);
    let random_mix_apgr =
        Envelope::new(&[(cc, qc), (cb, qb)]).apgr((cc, qc), (cb, qb), options.apgr_points);
    let (mut oc, mut oq) = (0.0, 0.0);
    for &i in &keep {
        let row_q = &set.quality[i * m..(i + 1) * m];
        let row_c = &set.cost_usd[i * m..(i + 1) * m];
        let top = row_q.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let j = (0..m)
            .filter(|&j| row_q[j] == top)
            .min_by(|&a, &b| row_c[a].total_cmp(&row_c[b]))
            .unwrap_or(0);
        oc += row_c[j] / nf;
        oq += f64::from(row_q[j]) / nf;
    }

    Ok(CurveReport {
        knob: kind,
        rows,
        rows_skipped: n - rows,
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        matches_best_at_cost_share: at_best.map(share),
        savings_at_equal_quality: at_best.map(|c| 1.0 - c / cb),
        curve,
        envelope: env
            .corners()
            .map(|(cost_usd, quality)| CostQuality { cost_usd, quality })
            .collect(),
        baselines: Baselines {
            best_single: per_model[best].clone(),
            cheapest: per_model[cheap].clone(),
            premium: set.models[premium].clone(),
            per_model,
            best_single_per_budget_apgr,
            random_mix_apgr,
            oracle: CostQuality {
                cost_usd: oc,
                quality: oq,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: usize) -> Vec<String> {
        (0..m).map(|j| format!("m{j}")).collect()
    }

    /// Two models: "big" (index 0) right on even rows, "small" (index 1) right on rows % 4 == 0.
    fn two_model_set(n: usize) -> (Vec<f32>, Vec<f64>) {
        let mut q = Vec::new();
        let mut c = Vec::new();
        for i in 0..n {
            q.push(if i % 2 == 0 { 1.0 } else { 0.0 });
            q.push(if i % 4 == 0 { 1.0 } else { 0.0 });
            c.push(0.01);
            c.push(0.001);
        }
        (q, c)
    }

    #[test]
    fn random_mix_scores_one_half() {
        let (q, c) = two_model_set(40);
        let models = names(2);
        // A predictor with no information: always the same numbers.
        let pred: Vec<f32> = (0..40).flat_map(|_| [0.6, 0.4]).collect();
        let set = EvalSet {
            models: &models,
            predicted: &pred,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c,
        };
        let r = evaluate(&set, KnobKind::CostWeight, &CurveOptions::default()).unwrap();
        assert!((r.baselines.random_mix_apgr - 0.5).abs() < 1e-12);
        // An uninformed router is exactly the random mix.
        assert!((r.apgr - 0.5).abs() < 1e-9, "{}", r.apgr);
        assert_eq!(r.baselines.best_single.model, "m0");
        assert_eq!(r.baselines.cheapest.model, "m1");
        assert!((r.matches_best_at_cost_share.unwrap() - 1.0).abs() < 1e-9);
        assert!((r.cpt50.unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn oracle_like_router_beats_single_models() {
        let (q, c) = two_model_set(40);
        let models = names(2);
        // Predict the truth: route to big only where small fails and big succeeds.
        let pred: Vec<f32> = q.clone();
        let set = EvalSet {
            models: &models,
            predicted: &pred,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c,
        };
        for kind in [KnobKind::CostWeight, KnobKind::Tolerance] {
            let r = evaluate(&set, kind, &CurveOptions::default()).unwrap();
            assert!(r.apgr >= r.baselines.best_single_per_budget_apgr, "{r:?}");
            assert!((r.apgr - 0.875).abs() < 2e-3, "{}", r.apgr);
            // Best quality 0.5 reached by sending 1/4 of rows to big: cost 0.25*0.01+0.75*0.001.
            let cost = 0.25 * 0.01 + 0.75 * 0.001;
            let share = (cost - 0.001) / (0.01 - 0.001);
            assert!((r.matches_best_at_cost_share.unwrap() - share).abs() < 1e-9);
            assert!((r.savings_at_equal_quality.unwrap() - (1.0 - cost / 0.01)).abs() < 1e-9);
            assert!((r.baselines.oracle.quality - 0.5).abs() < 1e-12);
            assert!((r.baselines.oracle.cost_usd - cost).abs() < 1e-12);
        }
    }

    #[test]
    fn hand_computed_tiny_example() {
        // 4 rows, 2 models. Costs: big 1.0, small 0.0 (per row).
        // Quality big: 1,1,1,0 (0.75); small: 1,0,0,0 (0.25).
        // Predictions rank row 1 most in need of big, then row 2, then row 0, then row 3.
        let models = names(2);
        let q = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let c = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let pred = [0.7, 0.5, 0.9, 0.1, 0.8, 0.2, 0.6, 0.55];
        let set = EvalSet {
            models: &models,
            predicted: &pred,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c,
        };
        let r = evaluate(&set, KnobKind::CostWeight, &CurveOptions::default()).unwrap();
        // Gains (big − small) in the predicted order: row1 +1, row2 +1, row0 0, row3 0.
        // Sweep points: (0, .25), (.25, .5), (.5, .75), (.75, .75), (1, .75).
        // Envelope: (0,.25) → (.5,.75), flat after. Gap = .5 over cost 0..1.
        // APGR = mean over x in [0,1] of min(x/.5, 1) = 0.75 (with 1000 points: close).
        assert!((r.apgr - 0.75).abs() < 2e-3, "{}", r.apgr);
        assert!((r.matches_best_at_cost_share.unwrap() - 0.5).abs() < 1e-9);
        assert!((r.cpt50.unwrap() - 0.25).abs() < 1e-9);
        assert!((r.cpt80.unwrap() - 0.4).abs() < 1e-9);
        assert!((r.savings_at_equal_quality.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(r.curve.first().unwrap().knob, 0.0);
        assert!((r.curve.last().unwrap().cost_usd - 0.0).abs() < 1e-12);
        assert!((r.baselines.best_single_per_budget_apgr - 0.5).abs() < 1e-9);
        assert_eq!(r.envelope.len(), 2);
    }

    #[test]
    fn rows_with_missing_grades_are_skipped() {
        let models = names(2);
        let q = [1.0, 0.0, f32::NAN, 1.0, 1.0, 1.0];
        let c = [1.0, 0.1, 1.0, 0.1, 1.0, 0.1];
        let pred = [0.9, 0.1, 0.5, 0.5, 0.5, 0.5];
        let set = EvalSet {
            models: &models,
            predicted: &pred,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c,
        };
        let r = evaluate(&set, KnobKind::Tolerance, &CurveOptions::default()).unwrap();
        assert_eq!((r.rows, r.rows_skipped), (2, 1));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let models = names(2);
        let q = [1.0, 1.0];
        let c = [1.0, 0.1];
        let set = EvalSet {
            models: &models,
            predicted: &[0.5, 0.5],
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c[..1],
        };
        let e = evaluate(&set, KnobKind::Tolerance, &CurveOptions::default()).unwrap_err();
        assert!(matches!(
            e,
            CurveError::Shape {
                matrix: "decision_cost_usd",
                ..
            }
        ));
        let set = EvalSet {
            decision_cost_usd: &c,
            ..set
        };
        let e = evaluate(&set, KnobKind::Tolerance, &CurveOptions::default()).unwrap_err();
        assert!(e.to_string().contains("route to `m1` alone"), "{e}");
    }

    #[test]
    fn matrices_fill_missing_costs() {
        let g = super::super::outcomes::parse(
            std::path::Path::new("x"),
            r#"{"prompt": "p", "quality": {"a": 1}, "cost_usd": {"a": 0.5}}"#,
        )
        .unwrap();
        let models = vec!["a".to_string(), "b".to_string()];
        let (q, c) = matrices(&g, &models, &[9.0, 7.0]);
        assert_eq!(q[0], 1.0);
        assert!(q[1].is_nan());
        assert_eq!(c, vec![0.5, 7.0]);
    }
}
