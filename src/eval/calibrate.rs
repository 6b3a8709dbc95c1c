//! Threshold calibration on labelled data: the global threshold, the similarity gate, the
//! margin and per-route thresholds that best meet an [`Objective`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Choice, Example, Figures, figures, gold, ratio};
use crate::config::RouteTable;

/// What `calibrate` optimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Objective {
    /// The mean of in-scope accuracy and out-of-scope recall (balanced accuracy): both kinds of
    /// mistake weigh the same, however rare out-of-scope lines are in the data.
    Accuracy,
    /// The most in-scope accuracy whose matches are right at least this often.
    TargetPrecision(f64),
    /// The most in-scope accuracy that lets at most this share of out-of-scope lines match.
    MaxOosAccept(f64),
}

impl Objective {
    /// The value to maximise, or `None` when the constraint is not met.
    pub(super) fn value(&self, f: &Figures, precision: f64) -> Option<f64> {
        match *self {
            Objective::Accuracy => Some(match f.oos_recall {
                Some(oos) => (f.in_scope_accuracy + oos) / 2.0,
                None => f.in_scope_accuracy,
            }),
            Objective::TargetPrecision(p) => (precision >= p).then_some(f.in_scope_accuracy),
            Objective::MaxOosAccept(r) => {
                let accepted = 1.0 - f.oos_recall.unwrap_or(1.0);
                (accepted <= r).then_some(f.in_scope_accuracy)
            }
        }
    }
}

/// The fitted thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Global score threshold.
    pub threshold: Option<f32>,
    /// Global centroid-similarity gate.
    pub min_similarity: Option<f32>,
    /// Top-1 vs top-2 margin.
    pub margin: Option<f32>,
    /// Per-route thresholds that differ from the global one.
    pub per_route: BTreeMap<String, f32>,
    /// Routes that kept the global threshold for lack of validation lines.
    pub too_little_data: Vec<String>,
    /// Figures before (the table as built) and after, on the calibration data.
    pub before: Figures,
    /// See `before`.
    pub after: Figures,
}

/// Matched-decision precision: of the lines that matched a route, the share matched correctly.
fn match_precision(gold: &[Choice], chosen: &[Choice]) -> f64 {
    let matched = chosen.iter().filter(|c| c.is_some()).count();
    let right = gold
        .iter()
        .zip(chosen)
        .filter(|(g, c)| c.is_some() && g == c)
        .count();
    ratio(right, matched, 1.0)
}

fn quantiles(mut values: Vec<f32>, steps: usize) -> Vec<f32> {
    values.retain(|v| v.is_finite());
    values.sort_by(f32::total_cmp);
    if values.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<f32> = (0..=steps)
        .map(|i| values[(i * (values.len() - 1)) / steps])
        .collect();
    out.dedup();
    out
}

/// Fits thresholds on labelled data. `evidence[i]` holds every route's score for example `i`
/// (as [`crate::dispatch::scores`] computes them) and `fixed[i]` the route a static rule sends
/// it to whatever the thresholds ([`crate::dispatch::rule_route`]; empty when no line has one);
/// `min_support` is the number of lines a route needs for a threshold of its own.
pub fn calibrate(
    table: &RouteTable,
    examples: &[Example],
    evidence: &[Vec<crate::policy::Evidence>],
    fixed: &[Option<String>],
    objective: Objective,
    min_support: usize,
) -> Calibration {
    use crate::policy;
    let gold = gold(table, examples);
    let n = table.routes.len();
    // only the best few routes can win; keep the decision loop cheap
    let evidence: Vec<Vec<policy::Evidence>> = evidence
        .iter()
        .map(|ev| {
            let mut ev = ev.clone();
            ev.sort_by(|a, b| b.score.total_cmp(&a.score));
            ev.truncate(5);
            ev
        })
        .collect();
    let run = |t: &RouteTable| -> (Figures, f64) {
        let chosen: Vec<Choice> = evidence
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let position = |r: &str| t.routes.iter().position(|x| x.name == r);
                match fixed.get(i).and_then(|r| r.as_deref()) {
                    Some(rule_route) => position(rule_route),
                    None => policy::decide(t, ev).route().and_then(position),
                }
            })
            .collect();
        let precision = match_precision(&gold, &chosen);
        (figures(n, &gold, &chosen).0, precision)
    };
    let score = |t: &RouteTable| {
        let (f, p) = run(t);
        objective.value(&f, p).unwrap_or(f64::NEG_INFINITY)
    };
    let before = run(table).0;

    // global: threshold × min_similarity × margin on a grid of observed quantiles
    let tops: Vec<f32> = evidence
        .iter()
        .filter_map(|e| e.first())
        .map(|e| e.score)
        .collect();
    let sims: Vec<f32> = evidence
        .iter()
        .filter_map(|e| e.first())
        .map(|e| e.similarity)
        .collect();
    let mut thresholds: Vec<Option<f32>> = vec![None];
    thresholds.extend(quantiles(tops, 30).into_iter().map(Some));
    let mut gates: Vec<Option<f32>> = vec![None];
    gates.extend(quantiles(sims, 20).into_iter().map(Some));
    let margins = [None, Some(0.02), Some(0.05), Some(0.1)];
    let mut base = table.clone();
    base.routes.iter_mut().for_each(|r| r.threshold = None);
    let mut best = (f64::NEG_INFINITY, base.clone());
    for &threshold in &thresholds {
        for &min_similarity in &gates {
            for &margin in &margins {
                let mut t = base.clone();
                t.defaults.threshold = threshold;
                t.defaults.min_similarity = min_similarity;
                t.defaults.margin = margin;
                let s = score(&t);
                if s > best.0 {
                    best = (s, t);
                }
            }
        }
    }
    let (mut best_score, mut fitted) = best;

    // per route: one pass of coordinate ascent over the routes with enough lines
    let mut support = vec![0usize; n];
    for g in gold.iter().flatten() {
        support[*g] += 1;
    }
    let mut too_little_data = Vec::new();
    let mut per_route = BTreeMap::new();
    let global = fitted.defaults.threshold;
    for (r, &route_support) in support.iter().enumerate() {
        if route_support < min_support {
            too_little_data.push(table.routes[r].name.clone());
            continue;
        }
        let candidates: Vec<f32> = quantiles(
            evidence
                .iter()
                .filter_map(|ev| ev.iter().find(|e| e.route == r))
                .map(|e| e.score)
                .collect(),
            15,
        );
        for c in candidates {
            let mut t = fitted.clone();
            t.routes[r].threshold = Some(c);
            let s = score(&t);
            if s > best_score + 1e-9 {
                best_score = s;
                fitted = t;
            }
        }
        if let Some(t) = fitted.routes[r].threshold {
            if Some(t) != global {
                per_route.insert(table.routes[r].name.clone(), t);
            }
        }
    }
    let after = run(&fitted).0;
    Calibration {
        threshold: fitted.defaults.threshold,
        min_similarity: fitted.defaults.min_similarity,
        margin: fitted.defaults.margin,
        per_route,
        too_little_data,
        before,
        after,
    }
}

/// `table` with the calibration applied.
pub fn apply(table: &RouteTable, c: &Calibration) -> RouteTable {
    let mut t = table.clone();
    t.defaults.threshold = c.threshold;
    t.defaults.min_similarity = c.min_similarity;
    t.defaults.margin = c.margin;
    for r in &mut t.routes {
        r.threshold = c.per_route.get(&r.name).copied();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Route};
    use crate::policy::Evidence;

    /// Routes `a` (0) and `b` (1).
    fn two_routes() -> RouteTable {
        RouteTable::new(
            Defaults::default(),
            "d",
            vec![Route::new("a", "m", &[]), Route::new("b", "m", &[])],
        )
    }

    /// Labelled lines of [`two_routes`], each `(gold route, route that scores best, its score)`;
    /// the other route scores the rest, at a low similarity.
    fn lines(
        spec: impl IntoIterator<Item = (Option<&'static str>, usize, f32)>,
    ) -> (Vec<Example>, Vec<Vec<Evidence>>) {
        spec.into_iter()
            .enumerate()
            .map(|(i, (route, winner, score))| {
                let example = Example {
                    text: i.to_string(),
                    route: route.map(str::to_string),
                };
                let evidence = vec![
                    Evidence {
                        route: winner,
                        score,
                        similarity: score,
                    },
                    Evidence {
                        route: 1 - winner,
                        score: 1.0 - score,
                        similarity: 0.1,
                    },
                ];
                (example, evidence)
            })
            .unzip()
    }

    #[test]
    fn fits_a_threshold_that_separates_out_of_scope_lines() {
        let table = two_routes();
        let (examples, evidence) = lines((0..40).map(|i| match i % 4 {
            0 => (Some("a"), 0, 0.9),
            1 => (Some("b"), 1, 0.8),
            _ => (None, 0, 0.4 + (i as f32) * 0.001),
        }));
        let c = calibrate(&table, &examples, &evidence, &[], Objective::Accuracy, 5);
        assert_eq!(c.before.oos_recall, Some(0.0));
        assert_eq!(c.after.in_scope_accuracy, 1.0);
        assert_eq!(c.after.oos_recall, Some(1.0));
        let t = c
            .threshold
            .unwrap_or(0.0)
            .max(c.min_similarity.unwrap_or(0.0));
        assert!(t > 0.44 && t <= 0.8, "{c:?}");
        // the calibrated table decides as reported
        let applied = apply(&table, &c);
        assert_eq!(applied.defaults.threshold, c.threshold);

        let strict = calibrate(
            &table,
            &examples,
            &evidence,
            &[],
            Objective::MaxOosAccept(0.0),
            5,
        );
        assert_eq!(strict.after.oos_recall, Some(1.0));
    }

    #[test]
    fn a_target_precision_trades_in_scope_accuracy_for_right_matches() {
        let table = two_routes();
        // route a: ten lines at 0.9, ten at 0.8; route b: ten at 0.9; twenty out-of-scope lines
        // that look like a at 0.85, so a's threshold cannot keep them out and take all of a
        let (examples, evidence) = lines((0..50).map(|i| match i {
            0..10 => (Some("a"), 0, 0.9),
            10..20 => (Some("a"), 0, 0.8),
            20..30 => (Some("b"), 1, 0.9),
            _ => (None, 0, 0.85),
        }));
        let fit = |p: f64| {
            calibrate(
                &table,
                &examples,
                &evidence,
                &[],
                Objective::TargetPrecision(p),
                5,
            )
        };
        // right at least 95% of the time: a keeps only its 0.9 lines
        let strict = fit(0.95);
        assert!(
            (strict.after.in_scope_accuracy - 20.0 / 30.0).abs() < 1e-9,
            "{strict:?}"
        );
        assert_eq!(strict.after.oos_recall, Some(1.0));
        // right 60% of the time is enough to take every in-scope line
        let loose = fit(0.5);
        assert_eq!(loose.after.in_scope_accuracy, 1.0, "{loose:?}");
    }
}
