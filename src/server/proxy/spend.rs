//! A proxied request's spend: the router's reservation, each fallback's, and the settlement
//! with the usage the answers report (a request whose client goes away gives back what it
//! reserved).

use std::sync::Arc;

use super::AppState;
use super::Plan;
use super::upstream::{Candidate, Usage};
use crate::budget::CapKey;
use crate::index::Index;

/// A request's spend: estimates reserved against the caps before each model is tried, then
/// settled to the upstreams' reported usage (up or down: upstream figures are trusted, unlike
/// a caller's `/v1/usage`). Settles by itself when dropped, so that a request that fails or
/// whose client goes away gives back what it reserved.
pub(super) struct Spend {
    pub(super) state: AppState,
    pub(super) snapshot: Arc<Index>,
    pub(super) caps: Vec<CapKey>,
    /// Reserved now.
    pub(super) reserved_usd: f64,
    /// Really spent on answers that were not the last (a cascade's rejected ones).
    pub(super) spent_usd: f64,
    /// Real costs by model, for the metrics once settled.
    pub(super) costs: Vec<(String, f64)>,
    pub(super) settled: bool,
}

impl Spend {
    pub(super) fn new(state: &AppState, plan: &Plan) -> Self {
        let (caps, first) = (plan.caps.clone(), &plan.models[0]);
        Spend {
            state: state.clone(),
            snapshot: Arc::clone(&plan.snapshot),
            caps,
            reserved_usd: first.estimate_usd.filter(|_| first.reserved).unwrap_or(0.0),
            spent_usd: 0.0,
            costs: Vec::new(),
            settled: false,
        }
    }

    /// Reserves `c`'s estimate (unless already reserved); false when a cap refuses it.
    pub(super) async fn reserve(&mut self, c: &Candidate) -> bool {
        let (Some(cost), false, false) = (c.estimate_usd, c.reserved, self.caps.is_empty()) else {
            return true;
        };
        let (result, _) = self.state.ledger.reserve(&self.caps, cost).await;
        if result.is_ok() {
            self.reserved_usd += cost;
        }
        result.is_ok()
    }

    /// Gives back `c`'s reservation (it failed).
    pub(super) fn release(&mut self, c: &Candidate) {
        if let (Some(cost), false) = (c.estimate_usd, self.caps.is_empty()) {
            // the router's own reservation counts as reserved here too
            let cost = cost.min(self.reserved_usd);
            self.reserved_usd -= cost;
            self.adjust(-cost, Vec::new());
        }
    }

    /// Moves the spend counters by `delta` (off the caller's path), then counts `costs` in the
    /// metrics, so that what the metrics show the counters hold.
    pub(super) fn adjust(&self, delta: f64, costs: Vec<(String, f64)>) {
        let metrics = Arc::clone(&self.state.metrics);
        self.state
            .ledger
            .adjust_in_background(self.caps.clone(), delta, move || {
                for (model, cost) in costs {
                    metrics.usage(&model, cost);
                }
            });
    }

    /// The real cost of `usage` on `model` (0 without a catalog price).
    pub(super) fn cost(&mut self, model: &str, usage: Usage) -> f64 {
        let cost = self
            .snapshot
            .table()
            .catalog
            .get(model)
            .map_or(0.0, |m| m.cost_usd(usage.prompt, usage.completion));
        self.costs.push((model.to_string(), cost));
        cost
    }

    /// Adds an answer that was not the last (a cascade's rejected one).
    pub(super) fn add(&mut self, model: &str, usage: Option<Usage>, estimate: Option<f64>) {
        self.spent_usd += match usage {
            Some(u) => self.cost(model, u),
            None => estimate.unwrap_or(0.0),
        };
    }

    /// Settles with the final answer's usage; without a reported usage its estimate stands.
    pub(super) fn settle(&mut self, model: &str, usage: Option<Usage>, estimate: Option<f64>) {
        self.add(model, usage, estimate);
        self.finish();
    }

    pub(super) fn finish(&mut self) {
        if !self.settled {
            self.settled = true;
            let costs = std::mem::take(&mut self.costs);
            self.adjust(self.spent_usd - self.reserved_usd, costs);
        }
    }
}

impl Drop for Spend {
    fn drop(&mut self) {
        self.finish();
    }
}
