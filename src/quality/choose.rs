//! The choice: given each candidate's predicted quality and estimated cost for this prompt, and
//! the route's knob, pick one model (and the order of fallbacks).
//!
//! Two knobs; a route declares exactly one:
//!
//! * [`Knob::Tolerance`]`(t)`: the cheapest candidate whose predicted quality is at least
//!   `max q̂ − t`. `t = 0` picks the best predicted; `t ≥ 1` picks the cheapest.
//! * [`Knob::CostWeight`]`(λ)`: the candidate maximising `q̂ − λ·cost` (λ in quality per US
//!   dollar). `λ = 0` picks the best predicted; a large λ picks the cheapest.
//!
//! Ties go to the earlier candidate in the route's order. A candidate whose predicted quality or
//! estimated cost is not a finite number is never preferred over one whose numbers are: it is
//! ranked after them, in the route's order.

use serde::{Deserialize, Serialize};

/// One candidate's numbers for this prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Predicted quality in [0, 1].
    pub quality: f32,
    /// Estimated cost of answering this prompt, US dollars.
    pub cost_usd: f64,
}

/// The route's cost/quality knob.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// Cheapest candidate within this much predicted quality of the best predicted one.
    Tolerance(f32),
    /// Maximise `predicted quality − weight × cost_usd`.
    CostWeight(f64),
}

/// The kind of a knob, without its value (what a sweep varies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnobKind {
    /// [`Knob::Tolerance`].
    Tolerance,
    /// [`Knob::CostWeight`].
    CostWeight,
}

impl Knob {
    /// This knob's kind.
    pub fn kind(self) -> KnobKind {
        match self {
            Knob::Tolerance(_) => KnobKind::Tolerance,
            Knob::CostWeight(_) => KnobKind::CostWeight,
        }
    }

    /// The knob's value as a number (the tolerance or the cost weight).
    pub fn value(self) -> f64 {
        match self {
            Knob::Tolerance(t) => f64::from(t),
            Knob::CostWeight(w) => w,
        }
    }
}

impl KnobKind {
    /// The knob of this kind with the given value.
    pub fn with_value(self, value: f64) -> Knob {
        match self {
            KnobKind::Tolerance => Knob::Tolerance(value as f32),
            KnobKind::CostWeight => Knob::CostWeight(value),
        }
    }
}

fn usable(c: &Scored) -> bool {
    c.quality.is_finite() && c.cost_usd.is_finite()
}

/// Picks among the candidates whose index has `alive[i]`; `None` when none is alive.
fn pick(cands: &[Scored], alive: &[bool], knob: Knob) -> Option<usize> {
    let live = || {
        cands
            .iter()
            .enumerate()
            .filter(|(i, c)| alive[*i] && usable(c))
    };
    let chosen = match knob {
        Knob::CostWeight(w) => {
            let mut best: Option<(usize, f64)> = None;
            for (i, c) in live() {
                let s = f64::from(c.quality) - w * c.cost_usd;
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
            best.map(|(i, _)| i)
        }
        Knob::Tolerance(t) => {
            let top = live()
                .map(|(_, c)| c.quality)
                .fold(f32::NEG_INFINITY, f32::max);
            let floor = top - t.max(0.0);
            let mut best: Option<(usize, f64)> = None;
            for (i, c) in live() {
                if c.quality >= floor && best.is_none_or(|(_, b)| c.cost_usd < b) {
                    best = Some((i, c.cost_usd));
                }
            }
            best.map(|(i, _)| i)
        }
    };
    chosen.or_else(|| (0..cands.len()).find(|&i| alive[i]))
}

/// The candidate the knob picks, or `None` when there is no candidate.
pub fn choose(cands: &[Scored], knob: Knob) -> Option<usize> {
    let alive = vec![true; cands.len()];
    pick(cands, &alive, knob)
}

/// Every candidate, in the order to try them: the chosen one first, then each next one is what
/// [`choose`] would pick among those not yet listed (so skipping a candidate that is down or over
/// budget falls back by the same criterion).
pub fn rank(cands: &[Scored], knob: Knob) -> Vec<usize> {
    let mut alive = vec![true; cands.len()];
    let mut order = Vec::with_capacity(cands.len());
    while let Some(i) = pick(cands, &alive, knob) {
        alive[i] = false;
        order.push(i);
    }
    order
}

/// One candidate's line in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateExplanation {
    /// The model.
    pub model: String,
    /// Its predicted quality for this prompt.
    pub predicted_quality: f32,
    /// Its estimated cost for this prompt, US dollars.
    pub estimated_cost_usd: f64,
    /// `q̂ − λ·cost` under a cost-weight knob; `max q̂ − q̂` (the quality given up) under a
    /// tolerance knob.
    pub score: f64,
    /// Its place in the fallback order (0 = chosen).
    pub rank: usize,
    /// Whether the knob picked it.
    pub chosen: bool,
}

/// Why a model was chosen: every candidate's numbers and the knob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The knob in force.
    pub knob: Knob,
    /// The candidates, in the route's order.
    pub candidates: Vec<CandidateExplanation>,
    /// The chosen model, if any.
    pub chosen: Option<String>,
}

/// Explains the choice among `cands`; `models[i]` names `cands[i]`.
///
/// # Panics
/// When `models` and `cands` differ in length.
pub fn explain(models: &[String], cands: &[Scored], knob: Knob) -> Explanation {
    assert_eq!(models.len(), cands.len(), "one model name per candidate");
    let order = rank(cands, knob);
    let mut place = vec![0; cands.len()];
    for (r, &i) in order.iter().enumerate() {
        place[i] = r;
    }
    let top = cands
        .iter()
        .filter(|c| usable(c))
        .map(|c| c.quality)
        .fold(f32::NEG_INFINITY, f32::max);
    let candidates = models
        .iter()
        .zip(cands)
        .enumerate()
        .map(|(i, (m, c))| CandidateExplanation {
            model: m.clone(),
            predicted_quality: c.quality,
            estimated_cost_usd: c.cost_usd,
            score: match knob {
                Knob::CostWeight(w) => f64::from(c.quality) - w * c.cost_usd,
                Knob::Tolerance(_) => f64::from(top - c.quality),
            },
            rank: place[i],
            chosen: order.first() == Some(&i),
        })
        .collect();
    Explanation {
        knob,
        candidates,
        chosen: order.first().map(|&i| models[i].clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(q: f32, c: f64) -> Scored {
        Scored {
            quality: q,
            cost_usd: c,
        }
    }

    #[test]
    fn tolerance_picks_cheapest_within_tolerance() {
        let c = [s(0.9, 0.01), s(0.85, 0.001), s(0.5, 0.0001)];
        assert_eq!(choose(&c, Knob::Tolerance(0.0)), Some(0));
        assert_eq!(choose(&c, Knob::Tolerance(0.06)), Some(1));
        assert_eq!(choose(&c, Knob::Tolerance(1.0)), Some(2));
        assert_eq!(rank(&c, Knob::Tolerance(0.06)), vec![1, 0, 2]);
    }

    #[test]
    fn cost_weight_trades_quality_for_cost() {
        let c = [s(0.9, 0.01), s(0.85, 0.001), s(0.5, 0.0001)];
        assert_eq!(choose(&c, Knob::CostWeight(0.0)), Some(0));
        // 0.9 - 10*0.01 = 0.8 < 0.85 - 0.01 = 0.84
        assert_eq!(choose(&c, Knob::CostWeight(10.0)), Some(1));
        assert_eq!(choose(&c, Knob::CostWeight(1e6)), Some(2));
        assert_eq!(rank(&c, Knob::CostWeight(10.0)), vec![1, 0, 2]);
    }

    #[test]
    fn ties_go_to_the_earlier_candidate() {
        let c = [s(0.5, 0.01), s(0.5, 0.01)];
        assert_eq!(choose(&c, Knob::CostWeight(3.0)), Some(0));
        assert_eq!(choose(&c, Knob::Tolerance(0.1)), Some(0));
    }

    #[test]
    fn non_finite_numbers_rank_last() {
        let c = [s(f32::NAN, 0.0), s(0.1, 1.0), s(0.9, f64::NAN)];
        assert_eq!(rank(&c, Knob::CostWeight(0.0)), vec![1, 0, 2]);
        assert_eq!(rank(&c, Knob::Tolerance(0.0)), vec![1, 0, 2]);
        assert_eq!(choose(&[], Knob::Tolerance(0.0)), None);
    }

    #[test]
    fn explanation_serialises() {
        let models = vec!["a".to_string(), "b".to_string()];
        let e = explain(
            &models,
            &[s(0.9, 0.01), s(0.8, 0.001)],
            Knob::CostWeight(20.0),
        );
        assert_eq!(e.chosen.as_deref(), Some("b"));
        assert!(e.candidates[1].chosen && !e.candidates[0].chosen);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"cost_weight\":20.0"), "{json}");
        let back: Explanation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    fn cands() -> impl Strategy<Value = Vec<Scored>> {
        prop::collection::vec((0.0f32..=1.0, 0.0f64..0.05), 1..8)
            .prop_map(|v| v.into_iter().map(|(q, c)| s(q, c)).collect())
    }

    proptest! {
        #[test]
        fn tolerance_zero_picks_the_best_predicted(c in cands()) {
            let i = choose(&c, Knob::Tolerance(0.0)).unwrap();
            let top = c.iter().map(|x| x.quality).fold(f32::MIN, f32::max);
            prop_assert_eq!(c[i].quality, top);
        }

        #[test]
        fn huge_tolerance_picks_the_cheapest(c in cands()) {
            let i = choose(&c, Knob::Tolerance(2.0)).unwrap();
            let low = c.iter().map(|x| x.cost_usd).fold(f64::MAX, f64::min);
            prop_assert_eq!(c[i].cost_usd, low);
        }

        #[test]
        fn raising_the_cost_weight_never_raises_the_cost(c in cands(), a in 0.0f64..1e4, b in 0.0f64..1e4) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let i = choose(&c, Knob::CostWeight(lo)).unwrap();
            let j = choose(&c, Knob::CostWeight(hi)).unwrap();
            prop_assert!(c[j].cost_usd <= c[i].cost_usd);
        }

        #[test]
        fn rank_is_a_permutation_led_by_choose(c in cands(), t in 0.0f32..1.0) {
            let r = rank(&c, Knob::Tolerance(t));
            let mut sorted = r.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..c.len()).collect::<Vec<_>>());
            prop_assert_eq!(Some(r[0]), choose(&c, Knob::Tolerance(t)));
        }
    }
}
