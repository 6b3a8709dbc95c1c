//! Introspection and operations: the live route table and manifest, liveness, readiness,
//! Prometheus metrics, the playground page.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, AppState, ErrorBody};
use crate::index::GraphState;
use crate::metrics::Gauges;

/// The playground page: static, embedded in the binary.
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub(super) async fn playground() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../playground.html"))
}

#[derive(Serialize)]
pub(super) struct RouteInfo<'a> {
    name: &'a str,
    model: &'a str,
    models: &'a [String],
    threshold: Option<f32>,
    description: Option<&'a str>,
    utterances: usize,
}

#[derive(Serialize)]
pub(super) struct RoutesResponse<'a> {
    default_model: &'a str,
    default_models: &'a [String],
    models: &'a std::collections::BTreeMap<String, crate::config::CatalogModel>,
    rules: &'a [crate::config::Rule],
    defaults: &'a crate::config::Defaults,
    routes: Vec<RouteInfo<'a>>,
}

/// The route table: default model, catalog, rules, defaults and each route.
#[utoipa::path(get, path = "/v1/routes", tag = "introspection",
    responses((status = 200, description = "The route table", body = serde_json::Value), (status = 503, description = "Not ready", body = ErrorBody)))]
pub(super) async fn routes(State(state): State<AppState>) -> Result<Response, ApiError> {
    let index = state.engine()?.index();
    let table = index.table();
    let body = RoutesResponse {
        default_model: &table.default_model,
        default_models: &table.default_candidates,
        models: &table.catalog,
        rules: &table.rules,
        defaults: &table.defaults,
        routes: table
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: &r.name,
                model: &r.model,
                models: &r.candidates,
                threshold: r.effective_threshold(&table.defaults),
                description: r.description.as_deref(),
                utterances: r.utterances.len(),
            })
            .collect(),
    };
    Ok(Json(body).into_response())
}

/// The live index's manifest (model, checksums, parameters).
#[utoipa::path(get, path = "/v1/index", tag = "introspection",
    responses((status = 200, description = "The manifest", body = serde_json::Value), (status = 503, description = "Not ready", body = ErrorBody)))]
pub(super) async fn index_manifest(State(state): State<AppState>) -> Result<Response, ApiError> {
    let index = state.engine()?.index();
    Ok(Json(index.manifest().clone()).into_response())
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = serde_json::Value)))]
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 503 until the index is open.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready, with the search in use", body = serde_json::Value), (status = 503, description = "Not ready", body = ErrorBody)))]
pub(super) async fn readyz(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = state.engine()?;
    let index = engine.index();
    // only the `neighbours` method searches (exactly or by the graph); the others report
    // neighbours from the route partitions
    let search = match (index.table().defaults.method, index.graph_state()) {
        (crate::config::Method::Neighbours, state) => match state {
            None => "exact".to_string(),
            Some(GraphState::Ready) => "hnsw".to_string(),
            Some(GraphState::Loading) => "exact (hnsw graph loading)".to_string(),
            Some(GraphState::Failed(reason)) => format!("exact (hnsw graph failed: {reason})"),
            Some(GraphState::Unused) => "exact".to_string(),
        },
        (_, Some(GraphState::Failed(reason))) => {
            format!("partitions (the hnsw graph's files are damaged: {reason})")
        }
        _ => "partitions".to_string(),
    };
    Ok(Json(serde_json::json!({
        "status": "ready",
        "vectors": index.len(),
        "search": search,
    })))
}

/// Prometheus metrics (OpenMetrics text format), every name prefixed `pointsman_`.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = state.engine.get().map(|e| {
        let cache = e.cache_stats();
        Gauges {
            queue_len: e.queue_len(),
            index_vectors: e.index().len(),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_entries: cache.entries,
        }
    });
    let dropped = state.decision_log.as_ref().map(|log| log.dropped());
    let text = state.metrics.render(gauges, dropped);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
