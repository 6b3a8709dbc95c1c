//! Choosing a model among a route's candidates: health, context window and capabilities.
//!
//! Pure: given the candidates in order of preference, the catalog, which models are down, the
//! prompt's size and the capabilities asked for, it returns the candidates that may serve the
//! prompt (with their estimated cost) and the ones skipped, each with its reason. Budgets are
//! checked afterwards, candidate by candidate, by the caller (the budget store may be remote).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::CatalogModel;
pub use crate::health::Health;

/// Why a candidate was not chosen.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// Marked down by an operator (until it expires).
    Down,
    /// Prompt plus expected answer do not fit the model's context window.
    ContextWindow {
        /// Tokens needed (prompt + expected answer).
        needed: u64,
        /// The model's window.
        window: u32,
    },
    /// The request asked for a capability the model lacks.
    MissingCapability {
        /// The capability.
        capability: String,
    },
    /// The model is not in the catalog, so capabilities cannot be checked.
    NotInCatalog,
    /// Choosing it would exceed a spend cap.
    OverBudget {
        /// The cap that would be exceeded (e.g. `tenant:acme per day`).
        budget: String,
        /// Its limit in US dollars.
        limit_usd: f64,
        /// Already spent in the current window.
        spent_usd: f64,
        /// This request's estimated cost.
        cost_usd: f64,
    },
}

/// A skipped candidate.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    /// The model.
    pub model: String,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// A candidate that may serve the prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eligible {
    /// The model.
    pub model: String,
    /// Estimated cost in US dollars (`None` without a catalog entry).
    pub estimated_cost_usd: Option<f64>,
}

/// What one request needs from a model.
#[derive(Debug, Clone, Default)]
pub struct Needs<'a> {
    /// Prompt tokens (the whole prompt, before any truncation for embedding).
    pub prompt_tokens: u64,
    /// Answer tokens expected.
    pub output_tokens: u64,
    /// Capabilities asked for.
    pub capabilities: &'a [String],
}

/// Splits `candidates` into those that may serve the request, in order, and those skipped.
pub fn filter(
    candidates: &[String],
    catalog: &BTreeMap<String, CatalogModel>,
    is_down: &dyn Fn(&str) -> bool,
    needs: &Needs<'_>,
) -> (Vec<Eligible>, Vec<Skipped>) {
    let mut eligible = Vec::new();
    let mut skipped = Vec::new();
    for model in candidates {
        let skip = |reason| Skipped {
            model: model.clone(),
            reason,
        };
        if is_down(model) {
            skipped.push(skip(SkipReason::Down));
            continue;
        }
        let entry = catalog.get(model);
        if let Some(m) = entry {
            let needed = needs.prompt_tokens + needs.output_tokens;
            if needed > u64::from(m.context_window) {
                skipped.push(skip(SkipReason::ContextWindow {
                    needed,
                    window: m.context_window,
                }));
                continue;
            }
        }
        if !needs.capabilities.is_empty() {
            let Some(m) = entry else {
                skipped.push(skip(SkipReason::NotInCatalog));
                continue;
            };
            if let Some(missing) = needs
                .capabilities
                .iter()
                .find(|c| !m.capabilities.contains(c))
            {
                skipped.push(skip(SkipReason::MissingCapability {
                    capability: missing.clone(),
                }));
                continue;
            }
        }
        eligible.push(Eligible {
            model: model.clone(),
            estimated_cost_usd: entry.map(|m| m.cost_usd(needs.prompt_tokens, needs.output_tokens)),
        });
    }
    (eligible, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> BTreeMap<String, CatalogModel> {
        let m = |input, window, caps: &[&str]| CatalogModel {
            provider: None,
            input_per_mtok: input,
            output_per_mtok: input * 4.0,
            context_window: window,
            latency_ms: None,
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
        };
        [
            ("premium".to_string(), m(3.0, 200_000, &["vision", "tools"])),
            ("mid".to_string(), m(0.5, 16_000, &["tools"])),
            ("small".to_string(), m(0.05, 8_000, &[])),
        ]
        .into_iter()
        .collect()
    }

    fn names(e: &[Eligible]) -> Vec<&str> {
        e.iter().map(|e| e.model.as_str()).collect()
    }

    fn candidates() -> Vec<String> {
        ["premium", "mid", "small"].map(String::from).to_vec()
    }

    #[test]
    fn keeps_order_and_estimates_cost() {
        let needs = Needs {
            prompt_tokens: 1000,
            output_tokens: 500,
            capabilities: &[],
        };
        let (e, s) = filter(&candidates(), &catalog(), &|_| false, &needs);
        assert_eq!(names(&e), ["premium", "mid", "small"]);
        assert!(s.is_empty());
        // 1000 × $3/M + 500 × $12/M
        assert!((e[0].estimated_cost_usd.unwrap() - 0.009).abs() < 1e-12);
    }

    #[test]
    fn skips_down_models() {
        let (e, s) = filter(
            &candidates(),
            &catalog(),
            &|m| m == "premium",
            &Needs::default(),
        );
        assert_eq!(names(&e), ["mid", "small"]);
        assert_eq!(s[0].reason, SkipReason::Down);
    }

    #[test]
    fn skips_models_whose_window_is_too_small() {
        let needs = Needs {
            prompt_tokens: 10_000,
            output_tokens: 256,
            capabilities: &[],
        };
        let (e, s) = filter(&candidates(), &catalog(), &|_| false, &needs);
        assert_eq!(names(&e), ["premium", "mid"]);
        assert_eq!(
            s[0].reason,
            SkipReason::ContextWindow {
                needed: 10_256,
                window: 8_000
            }
        );
    }

    #[test]
    fn filters_by_capability() {
        let caps = vec!["vision".to_string()];
        let needs = Needs {
            capabilities: &caps,
            ..Needs::default()
        };
        let (e, s) = filter(&candidates(), &catalog(), &|_| false, &needs);
        assert_eq!(names(&e), ["premium"]);
        assert_eq!(s.len(), 2);
        let json = serde_json::to_value(&s[0]).unwrap();
        assert_eq!(json["reason"], "missing_capability");
        assert_eq!(json["capability"], "vision");
        // unknown models cannot be checked
        let (e, s) = filter(&["other".to_string()], &catalog(), &|_| false, &needs);
        assert!(e.is_empty());
        assert_eq!(s[0].reason, SkipReason::NotInCatalog);
    }
}

/// The model chosen for a request, and what was passed over on the way.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Choice {
    /// The chosen model.
    pub model: String,
    /// Its estimated cost for this request (`None` without a catalog).
    pub estimated_cost_usd: Option<f64>,
    /// What the most expensive catalog model would have cost for the same tokens.
    pub premium_cost_usd: Option<f64>,
    /// Whether the matched route's candidates were all passed over and the default route's
    /// candidates were used.
    pub from_default: bool,
    /// Candidates passed over, in order, with reasons.
    pub skipped: Vec<Skipped>,
    /// Which spend counter answered (absent when no cap applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted: Option<crate::budget::Counted>,
    /// How predicted quality and cost ordered the candidates (an index built with outcomes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityChoice>,
}

/// The quality step of a decision: each candidate's predicted quality and estimated cost, the
/// knob, and the graded examples nearest to the prompt when an explanation was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualityChoice {
    /// The knob in force (`{"tolerance": t}` or `{"cost_weight": w}`).
    #[schema(value_type = Object)]
    pub knob: crate::config::QualityKnob,
    /// The candidates in the order the knob ranks them (the first eligible one is chosen).
    pub candidates: Vec<QualityCandidate>,
    /// The graded examples nearest to the prompt (explanations only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nearest_graded: Vec<crate::quality::GradedNeighbour>,
}

/// One candidate as the quality step saw it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualityCandidate {
    /// The model.
    pub model: String,
    /// Predicted quality in [0, 1] (`None` for a model the outcomes did not grade).
    pub predicted_quality: Option<f32>,
    /// Estimated cost of this request on it, in US dollars.
    pub estimated_cost_usd: Option<f64>,
}

/// No candidate could take the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoCandidate {
    /// Every candidate tried, with its reason.
    pub skipped: Vec<Skipped>,
}

impl NoCandidate {
    /// Whether spend caps alone stood in the way of at least one candidate.
    pub fn budget_bound(&self) -> bool {
        self.skipped
            .iter()
            .any(|s| matches!(s.reason, SkipReason::OverBudget { .. }))
    }
}

/// How strong a model counts as for sticky sessions: its catalog price, input plus output per
/// million tokens (0 without a catalog entry). A session only moves to a stronger model.
pub fn strength(catalog: &BTreeMap<String, CatalogModel>, model: &str) -> f64 {
    catalog
        .get(model)
        .map_or(0.0, |c| c.input_per_mtok + c.output_per_mtok)
}

/// The candidate lists of a decision, in the order to try them: the route's candidates (when a
/// route was decided), then the default route's that are not among them, each with whether it
/// is the default route's list.
pub fn candidate_lists(
    table: &crate::config::RouteTable,
    route: Option<&crate::config::Route>,
) -> Vec<(Vec<String>, bool)> {
    let tried: &[String] = route.map_or(&[], |r| &r.candidates);
    let default_rest: Vec<String> = table
        .default_candidates
        .iter()
        .filter(|m| !tried.contains(m))
        .cloned()
        .collect();
    let mut lists = Vec::new();
    if let Some(r) = route {
        lists.push((r.candidates.clone(), false));
    }
    lists.push((default_rest, route.is_some()));
    lists
}

/// Picks the first candidate of `lists` (see [`candidate_lists`]) that passes [`filter`] and
/// whose estimated cost fits every cap in `caps`, reserving that cost.
pub async fn choose(
    table: &crate::config::RouteTable,
    lists: &[(Vec<String>, bool)],
    needs: &Needs<'_>,
    health: &Health,
    ledger: &crate::budget::Ledger,
    caps: &[crate::budget::CapKey],
) -> Result<Choice, NoCandidate> {
    let premium_cost_usd = table
        .catalog
        .values()
        .map(|m| m.cost_usd(needs.prompt_tokens, needs.output_tokens))
        .reduce(f64::max);
    let mut skipped = Vec::new();
    let mut counted = None;
    for (candidates, from_default) in lists {
        let from_default = *from_default;
        let (eligible, passed_over) =
            filter(candidates, &table.catalog, &|m| health.is_down(m), needs);
        skipped.extend(passed_over);
        for e in eligible {
            if let (Some(cost), false) = (e.estimated_cost_usd, caps.is_empty()) {
                let (result, how) = ledger.reserve(caps, cost).await;
                counted = Some(how);
                if let Err(refusal) = result {
                    skipped.push(Skipped {
                        model: e.model.clone(),
                        reason: SkipReason::OverBudget {
                            budget: refusal.label,
                            limit_usd: refusal.limit_usd,
                            spent_usd: refusal.spent_usd,
                            cost_usd: cost,
                        },
                    });
                    continue;
                }
            }
            return Ok(Choice {
                model: e.model,
                estimated_cost_usd: e.estimated_cost_usd,
                premium_cost_usd,
                from_default,
                skipped,
                counted,
                quality: None,
            });
        }
    }
    Err(NoCandidate { skipped })
}
