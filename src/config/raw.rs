//! The raw serde mirror of the YAML: every field optional and spanned, so that validation can
//! say where each problem is.

use std::collections::BTreeMap;

use super::{Aggregation, Budget, CatalogModel, Method, QualityKnob, RouteTests, Rule};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) version: Spanned<u32>,
    #[serde(default)]
    pub(super) defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    pub(super) default_route: Option<Spanned<RawDefaultRoute>>,
    #[serde(default)]
    pub(super) models: Option<Spanned<BTreeMap<String, Spanned<CatalogModel>>>>,
    #[serde(default)]
    pub(super) budgets: Vec<Spanned<Budget>>,
    #[serde(default)]
    pub(super) rules: Vec<Spanned<Rule>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[serde(default)]
    pub(super) method: Option<Method>,
    #[serde(default)]
    pub(super) lexical_weight: Option<Spanned<f32>>,
    #[serde(default)]
    pub(super) margin: Option<Spanned<f32>>,
    #[serde(default)]
    pub(super) min_similarity: Option<Spanned<f32>>,
    #[serde(default)]
    pub(super) threshold: Option<Spanned<f32>>,
    #[serde(default)]
    pub(super) top_k: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) aggregation: Option<Aggregation>,
    #[serde(default)]
    pub(super) quality: Option<Spanned<QualityKnob>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaultRoute {
    #[serde(default)]
    pub(super) model: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) models: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) model: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) models: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) expected_output_tokens: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) tests: Option<Spanned<RouteTests>>,
    #[serde(default)]
    pub(super) threshold: Option<Spanned<f32>>,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) utterances: Option<Spanned<Vec<Spanned<String>>>>,
}
