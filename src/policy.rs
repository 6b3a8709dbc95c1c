//! The routing decision: a pure function from route scores to a [`Decision`].
//!
//! A route *passes* when it has no threshold or its score reaches its threshold; the best passing
//! route wins (ties go to the route declared first), unless `defaults.margin` is set and the
//! runner-up is closer than the margin, which makes the prompt ambiguous. When nothing wins, the
//! prompt falls back to the default model and the decision says why. No I/O, no async.
//!
//! [`neighbour_scores`] turns the `top_k` nearest utterances into route scores for the
//! `neighbours` method: each route's similarities are aggregated (max, mean or sum).

use serde::Serialize;

use crate::config::{Aggregation, RouteTable};

/// One neighbour as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vote {
    /// Index of the neighbour's route in the route table.
    pub route: usize,
    /// Cosine similarity of the neighbour to the prompt.
    pub similarity: f32,
}

/// A route's score, before thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Index of the route in the route table.
    pub route: usize,
    /// Its score (a cosine or a probability, by method).
    pub score: f32,
    /// Cosine similarity of the prompt to the route's centroid, for `min_similarity`.
    pub similarity: f32,
}

/// A route's standing in one decision.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RouteScore {
    /// Route name.
    pub route: String,
    /// Target model.
    pub model: String,
    /// The route's score.
    pub score: f32,
    /// Threshold in force, if any.
    pub threshold: Option<f32>,
    /// Cosine similarity to the route's centroid.
    pub similarity: f32,
    /// Whether the score reaches the threshold and the similarity `min_similarity` (always true
    /// without either).
    pub passed: bool,
}

/// Why a prompt went to the default model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// Some routes scored, but none reached its threshold.
    BelowThreshold,
    /// The two best routes were closer than `defaults.margin`.
    Ambiguous,
    /// No route had any score at all.
    NoNeighbours,
}

/// What the decision did.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A route matched.
    Matched {
        /// The winning route.
        route: String,
        /// Its score.
        score: f32,
    },
    /// A static rule of the route file matched, bypassing the scores.
    Rule {
        /// The rule's route.
        route: String,
        /// The rule's name.
        rule: String,
    },
    /// The request named its route (`"route": "..."`), bypassing the scores.
    Override {
        /// The route named.
        route: String,
    },
    /// No route matched; the default model gets the prompt.
    Fallback {
        /// Why.
        reason: FallbackReason,
    },
}

/// The routing decision for one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// Matched or fell back, and why.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The model the prompt should go to.
    pub model: String,
    /// Scored routes, best first (winner included).
    pub routes: Vec<RouteScore>,
}

impl Decision {
    /// The matched route's name, if any.
    pub fn route(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Matched { route, .. }
            | Outcome::Override { route }
            | Outcome::Rule { route, .. } => Some(route),
            Outcome::Fallback { .. } => None,
        }
    }
}

/// The route file's static rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<(crate::config::Rule, Option<regex::Regex>, Vec<String>)>,
}

impl Rules {
    /// Compiles `rules` (validated route files always compile).
    pub fn new(rules: &[crate::config::Rule]) -> Result<Self, regex::Error> {
        let rules = rules
            .iter()
            .map(|r| {
                let re = r.when.regex.as_deref().map(regex::Regex::new).transpose()?;
                let keywords = r.when.keywords.iter().map(|k| k.to_lowercase()).collect();
                Ok((r.clone(), re, keywords))
            })
            .collect::<Result<_, regex::Error>>()?;
        Ok(Rules { rules })
    }

    /// The first rule whose every condition holds for `text` from a request of `tier`.
    pub fn first_match(&self, text: &str, tier: Option<&str>) -> Option<&crate::config::Rule> {
        let lower = text.to_lowercase();
        self.rules
            .iter()
            .find(|(rule, re, keywords)| {
                re.as_ref().is_none_or(|re| re.is_match(text))
                    && (keywords.is_empty() || keywords.iter().any(|k| lower.contains(k)))
                    && rule.when.tier.as_deref().is_none_or(|t| Some(t) == tier)
            })
            .map(|(rule, _, _)| rule)
    }
}

/// Route scores from the top-k neighbours (`neighbours` method); routes without a neighbour get
/// no score. `votes` may come in any order.
/// The route similarities are filled in by the caller (`similarity` is set to the score here).
pub fn neighbour_scores(table: &RouteTable, votes: &[Vote]) -> Vec<Evidence> {
    let n = table.routes.len();
    let mut sums = vec![0.0f32; n];
    let mut maxes = vec![f32::NEG_INFINITY; n];
    let mut counts = vec![0usize; n];
    for v in votes.iter().filter(|v| v.route < n) {
        sums[v.route] += v.similarity;
        maxes[v.route] = maxes[v.route].max(v.similarity);
        counts[v.route] += 1;
    }
    let top_k = table.defaults.top_k.max(1) as f32;
    (0..n)
        .filter(|&i| counts[i] > 0)
        .map(|i| {
            let score = match table.defaults.aggregation {
                Aggregation::Max => maxes[i],
                Aggregation::Mean => sums[i] / counts[i] as f32,
                Aggregation::Sum => sums[i] / top_k,
            };
            Evidence {
                route: i,
                score,
                similarity: score,
            }
        })
        .collect()
}

/// Decides from route scores. `evidence` may come in any order; routes absent from it did not
/// score.
pub fn decide(table: &RouteTable, evidence: &[Evidence]) -> Decision {
    decide_listing(table, evidence, usize::MAX)
}

/// [`decide`], listing only the `listed` best routes in [`Decision::routes`] (the decision
/// itself still weighs every route): a table of many routes then costs no more than its scores.
pub fn decide_listing(table: &RouteTable, evidence: &[Evidence], listed: usize) -> Decision {
    decide_listing_with(table, evidence, listed, |e| e.similarity)
}

/// [`decide_listing`], the listed routes' similarities given by `similarity` (for a caller that
/// computes them for the listed routes alone, when no `min_similarity` needs them all).
pub fn decide_listing_with(
    table: &RouteTable,
    evidence: &[Evidence],
    listed: usize,
    similarity: impl Fn(&Evidence) -> f32,
) -> Decision {
    let min_similarity = table.defaults.min_similarity;
    let passes = |e: &Evidence| {
        table.routes[e.route]
            .effective_threshold(&table.defaults)
            .is_none_or(|t| e.score >= t)
            && min_similarity.is_none_or(|m| e.similarity >= m)
    };
    let mut scores: Vec<(&Evidence, bool)> = evidence
        .iter()
        .filter(|e| e.route < table.routes.len())
        .map(|e| (e, passes(e)))
        .collect();
    scores.sort_by(|(a, _), (b, _)| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.route.cmp(&b.route))
    });
    let winner = scores.iter().position(|&(_, passed)| passed);
    // the winner against the next-best route (routes above it failed their thresholds)
    let ambiguous = match (winner, table.defaults.margin) {
        (Some(w), Some(margin)) => scores
            .get(w + 1)
            .is_some_and(|(next, _)| scores[w].0.score - next.score < margin),
        _ => false,
    };
    let (outcome, model) = match winner {
        Some(w) if !ambiguous => {
            let w = scores[w].0;
            let route = &table.routes[w.route];
            (
                Outcome::Matched {
                    route: route.name.clone(),
                    score: w.score,
                },
                route.model.clone(),
            )
        }
        _ => (
            Outcome::Fallback {
                reason: if ambiguous {
                    FallbackReason::Ambiguous
                } else if scores.is_empty() {
                    FallbackReason::NoNeighbours
                } else {
                    FallbackReason::BelowThreshold
                },
            },
            table.default_model.clone(),
        ),
    };
    let routes = scores
        .iter()
        .take(listed)
        .map(|&(e, passed)| {
            let route = &table.routes[e.route];
            RouteScore {
                route: route.name.clone(),
                model: route.model.clone(),
                score: e.score,
                threshold: route.effective_threshold(&table.defaults),
                similarity: similarity(e),
                passed,
            }
        })
        .collect();
    Decision {
        outcome,
        model,
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Route};
    use proptest::prelude::*;

    fn table(thresholds: &[Option<f32>], default: Option<f32>, agg: Aggregation) -> RouteTable {
        RouteTable::new(
            Defaults {
                threshold: default,
                top_k: 5,
                aggregation: agg,
                ..Defaults::default()
            },
            "default-model",
            thresholds
                .iter()
                .enumerate()
                .map(|(i, t)| Route {
                    threshold: *t,
                    ..Route::new(&format!("r{i}"), &format!("m{i}"), &[&format!("u{i}")])
                })
                .collect(),
        )
    }

    fn vote(route: usize, similarity: f32) -> Vote {
        Vote { route, similarity }
    }

    /// Neighbour scores then the decision, as the `neighbours` method does.
    fn decide_votes(table: &RouteTable, votes: &[Vote]) -> Decision {
        decide(table, &neighbour_scores(table, votes))
    }

    #[test]
    fn aggregations() {
        let votes = [vote(0, 0.9), vote(0, 0.5), vote(1, 0.8)];
        let max = decide_votes(&table(&[None, None], None, Aggregation::Max), &votes);
        assert_eq!(max.route(), Some("r0"));
        assert_eq!(max.routes[0].score, 0.9);
        let mean = decide_votes(&table(&[None, None], None, Aggregation::Mean), &votes);
        assert_eq!(mean.route(), Some("r1"));
        assert!((mean.routes[1].score - 0.7).abs() < 1e-6);
        let sum = decide_votes(&table(&[None, None], None, Aggregation::Sum), &votes);
        assert_eq!(sum.route(), Some("r0"));
        assert!((sum.routes[0].score - 1.4 / 5.0).abs() < 1e-6);
        assert_eq!(sum.model, "m0");
    }

    #[test]
    fn per_route_threshold_overrides_default() {
        let votes = [vote(0, 0.7), vote(1, 0.6)];
        let d = decide_votes(
            &table(&[Some(0.8), None], Some(0.5), Aggregation::Max),
            &votes,
        );
        assert_eq!(d.route(), Some("r1"));
        assert!(!d.routes[0].passed);
        assert_eq!(d.routes[0].threshold, Some(0.8));
    }

    #[test]
    fn falls_back_with_reason() {
        let t = table(&[Some(0.8)], None, Aggregation::Max);
        let d = decide_votes(&t, &[vote(0, 0.3)]);
        assert_eq!(
            d.outcome,
            Outcome::Fallback {
                reason: FallbackReason::BelowThreshold
            }
        );
        assert_eq!(d.model, "default-model");
        let d = decide_votes(&t, &[]);
        assert_eq!(
            d.outcome,
            Outcome::Fallback {
                reason: FallbackReason::NoNeighbours
            }
        );
    }

    #[test]
    fn zero_threshold_is_a_real_threshold() {
        let d = decide_votes(
            &table(&[Some(0.0)], None, Aggregation::Max),
            &[vote(0, -0.1)],
        );
        assert_eq!(d.route(), None);
    }

    #[test]
    fn min_similarity_gates_a_confident_score() {
        let mut t = table(&[None, None], None, Aggregation::Max);
        t.defaults.min_similarity = Some(0.4);
        let ev = |route, score, similarity| Evidence {
            route,
            score,
            similarity,
        };
        // the most probable route is far from the prompt: the next one wins
        let d = decide(&t, &[ev(0, 0.9, 0.2), ev(1, 0.1, 0.5)]);
        assert_eq!(d.route(), Some("r1"));
        let d = decide(&t, &[ev(0, 0.9, 0.2), ev(1, 0.1, 0.3)]);
        assert_eq!(d.route(), None);
        assert_eq!(d.routes[0].similarity, 0.2);
    }

    #[test]
    fn rules_match_on_every_condition_in_order() {
        use crate::config::{Rule, RuleWhen};
        let rule = |name: &str, when: RuleWhen| Rule {
            name: name.into(),
            route: "r0".into(),
            when,
        };
        let rules = Rules::new(&[
            rule(
                "free-code",
                RuleWhen {
                    regex: Some("```|\\bfn ".into()),
                    tier: Some("free".into()),
                    ..RuleWhen::default()
                },
            ),
            rule(
                "code",
                RuleWhen {
                    regex: Some("```".into()),
                    ..RuleWhen::default()
                },
            ),
            rule(
                "words",
                RuleWhen {
                    keywords: vec!["Stack Trace".into(), "segfault".into()],
                    ..RuleWhen::default()
                },
            ),
        ])
        .unwrap();
        let name = |text: &str, tier| rules.first_match(text, tier).map(|r| r.name.as_str());
        assert_eq!(name("fix ```x```", Some("free")), Some("free-code"));
        assert_eq!(name("fix ```x```", Some("pro")), Some("code"));
        assert_eq!(name("fn main", Some("free")), Some("free-code"));
        assert_eq!(name("fn main", None), None);
        assert_eq!(name("here is my STACK TRACE", None), Some("words"));
        assert_eq!(name("hello", Some("free")), None);
    }

    #[test]
    fn margin_makes_close_calls_ambiguous() {
        let mut t = table(&[None, None], None, Aggregation::Max);
        t.defaults.margin = Some(0.1);
        let d = decide_votes(&t, &[vote(0, 0.8), vote(1, 0.75)]);
        assert_eq!(
            d.outcome,
            Outcome::Fallback {
                reason: FallbackReason::Ambiguous
            }
        );
        let d = decide_votes(&t, &[vote(0, 0.8), vote(1, 0.6)]);
        assert_eq!(d.route(), Some("r0"));
        // a lone route cannot be ambiguous
        assert_eq!(decide_votes(&t, &[vote(1, 0.3)]).route(), Some("r1"));
        // a route above the winner that failed its threshold does not make it ambiguous
        t.routes[0].threshold = Some(0.95);
        let d = decide_votes(&t, &[vote(0, 0.9), vote(1, 0.7)]);
        assert_eq!(d.route(), Some("r1"));
        t.defaults.margin = Some(0.0);
        assert_eq!(
            decide_votes(&t, &[vote(0, 0.9), vote(1, 0.9)]).route(),
            Some("r1")
        );
    }

    #[test]
    fn ties_go_to_the_route_declared_first() {
        let d = decide_votes(
            &table(&[None, None], None, Aggregation::Max),
            &[vote(1, 0.5), vote(0, 0.5)],
        );
        assert_eq!(d.route(), Some("r0"));
    }

    #[test]
    fn serialises_flat() {
        let d = decide_votes(&table(&[None], None, Aggregation::Max), &[vote(0, 0.5)]);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["outcome"], "matched");
        assert_eq!(json["route"], "r0");
        assert_eq!(json["model"], "m0");
        let d = decide_votes(
            &table(&[Some(0.9)], None, Aggregation::Max),
            &[vote(0, 0.5)],
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["outcome"], "fallback");
        assert_eq!(json["reason"], "below_threshold");
        assert_eq!(json["model"], "default-model");
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Option<f32>>, Vec<(usize, f32)>, usize)> {
        (1usize..6).prop_flat_map(|n| {
            (
                prop::collection::vec(prop::option::of(-1.0f32..1.0), n),
                prop::collection::vec((0..n, -1.0f32..1.0), 0..10),
                0..3usize,
            )
        })
    }

    fn agg(i: usize) -> Aggregation {
        [Aggregation::Max, Aggregation::Mean, Aggregation::Sum][i]
    }

    proptest! {
        #[test]
        fn a_shorter_listing_decides_the_same_and_lists_the_same_first_routes((ts, votes, a) in arb_case(), listed in 0usize..8) {
            let t = table(&ts, None, agg(a));
            let votes: Vec<Vote> = votes.into_iter().map(|(r, s)| vote(r, s)).collect();
            let evidence = neighbour_scores(&t, &votes);
            let mut whole = decide(&t, &evidence);
            let short = decide_listing(&t, &evidence, listed);
            whole.routes.truncate(listed);
            prop_assert_eq!(short, whole);
        }

        #[test]
        fn never_matches_a_route_below_its_threshold((ts, votes, a) in arb_case()) {
            let t = table(&ts, None, agg(a));
            let votes: Vec<Vote> = votes.into_iter().map(|(r, s)| vote(r, s)).collect();
            let d = decide_votes(&t, &votes);
            if let Outcome::Matched { route, score } = &d.outcome {
                let r = t.route(route).unwrap();
                if let Some(th) = r.effective_threshold(&t.defaults) {
                    prop_assert!(*score >= th);
                }
                // and no passing route scored higher
                for s in &d.routes {
                    prop_assert!(!s.passed || s.score <= *score);
                }
            }
        }

        #[test]
        fn raising_a_threshold_never_adds_a_match((ts, votes, a) in arb_case(), which in 0usize..6, raise in 0.0f32..1.0) {
            let votes: Vec<Vote> = votes.into_iter().map(|(r, s)| vote(r, s)).collect();
            let before = decide_votes(&table(&ts, None, agg(a)), &votes);
            let mut raised = ts.clone();
            let i = which % raised.len();
            raised[i] = Some(raised[i].unwrap_or(-1.0) + raise);
            let after = decide_votes(&table(&raised, None, agg(a)), &votes);
            let passed = |d: &Decision| d.routes.iter().filter(|s| s.passed).map(|s| s.route.clone()).collect::<Vec<_>>();
            for r in passed(&after) {
                prop_assert!(passed(&before).contains(&r));
            }
            if before.route().is_none() {
                prop_assert!(after.route().is_none());
            }
        }
    }
}
