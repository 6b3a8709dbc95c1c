//! Writing a route table back as a route file (`calibrate --out`).

use std::collections::BTreeMap;

use super::{
    Aggregation, Budget, CatalogModel, Method, QualityKnob, ROUTE_FILE_VERSION, RouteTable,
    RouteTests, Rule,
};
use serde::Serialize;

#[derive(Serialize)]
pub(super) struct OutFile<'a> {
    version: u32,
    defaults: OutDefaults<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    models: &'a BTreeMap<String, CatalogModel>,
    #[serde(skip_serializing_if = "<[Budget]>::is_empty")]
    budgets: &'a [Budget],
    #[serde(skip_serializing_if = "<[Rule]>::is_empty")]
    rules: &'a [Rule],
    default_route: OutDefault<'a>,
    routes: Vec<OutRoute<'a>>,
}

#[derive(Serialize)]
pub(super) struct OutDefaults<'a> {
    method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_similarity: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    margin: Option<f32>,
    top_k: usize,
    aggregation: Aggregation,
    lexical_weight: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<QualityKnob>,
    #[serde(skip)]
    _marker: std::marker::PhantomData<&'a ()>,
}

#[derive(Serialize)]
pub(super) struct OutDefault<'a> {
    models: &'a [String],
}

#[derive(Serialize)]
pub(super) struct OutRoute<'a> {
    #[serde(skip_serializing_if = "RouteTests::is_empty")]
    tests: &'a RouteTests,
    name: &'a str,
    models: &'a [String],
    expected_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    utterances: &'a [String],
}

/// Writes `table` as a version-1 route file (comments are not kept: review it with a diff).
pub fn to_yaml(table: &RouteTable) -> String {
    let d = &table.defaults;
    let out = OutFile {
        version: ROUTE_FILE_VERSION,
        defaults: OutDefaults {
            method: d.method,
            threshold: d.threshold,
            min_similarity: d.min_similarity,
            margin: d.margin,
            top_k: d.top_k,
            aggregation: d.aggregation,
            lexical_weight: d.lexical_weight,
            quality: d.quality,
            _marker: std::marker::PhantomData,
        },
        models: &table.catalog,
        budgets: &table.budgets,
        rules: &table.rules,
        default_route: OutDefault {
            models: &table.default_candidates,
        },
        routes: table
            .routes
            .iter()
            .map(|r| OutRoute {
                tests: &r.tests,
                name: &r.name,
                models: &r.candidates,
                expected_output_tokens: r.expected_output_tokens,
                threshold: r.threshold,
                description: r.description.as_deref(),
                utterances: &r.utterances,
            })
            .collect(),
    };
    serde_saphyr::to_string(&out).expect("a route table always serialises")
}
