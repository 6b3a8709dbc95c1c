//! The admin endpoints (admin key): reload the index, mark models down and up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ApiError, ApiJson, AppState, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;

/// Body of `POST /v1/admin/models/{model}/down`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownRequest {
    /// How long the mark lasts, in seconds (default 300); it expires by itself.
    #[serde(default = "default_down_ttl_s")]
    pub ttl_s: u64,
}

pub(super) fn default_down_ttl_s() -> u64 {
    300
}

/// Lists the models marked down.
#[utoipa::path(get, path = "/v1/admin/models", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Models marked down, with seconds left", body = serde_json::Value),
        (status = 401, description = "Wrong admin key", body = ErrorBody), (status = 403, description = "Admin endpoints off", body = ErrorBody)))]
pub(super) async fn admin_models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    let down: Vec<serde_json::Value> = state
        .health
        .snapshot()
        .into_iter()
        .map(|(model, left)| serde_json::json!({"model": model, "down_for_s": left}))
        .collect();
    Ok(Json(serde_json::json!({ "down": down })))
}

/// Reloads the index from the state's [`ReloadSource`] (off the async runtime); the current
/// index keeps serving if anything fails. Reports the outcome in the log and the metrics.
pub async fn reload_index(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let source = state.reload.clone().ok_or_else(|| {
        ApiError::Forbidden("this server was not started with a reloadable index".into())
    })?;
    let engine = Arc::clone(state.engine()?);
    let proxy_state = state.clone();
    let started = Instant::now();
    let result =
        tokio::task::spawn_blocking(move || -> Result<Arc<crate::index::Index>, String> {
            // the route files are read first, so that a broken one refuses the reload
            let expected = match &source.routes {
                Some(routes) => Some((
                    routes.clone(),
                    crate::config::load(routes)
                        .map_err(|e| e.to_string())?
                        .canonical_hash(),
                )),
                None => None,
            };
            engine
                .reload(&source.index_dir, |index| match &expected {
                    Some((routes, hash)) if *hash != index.manifest().route_table_sha256 => {
                        Err(crate::index::IndexError::RoutesMismatch {
                            path: index.generation().to_path_buf(),
                            routes: routes.clone(),
                            built: index
                                .manifest()
                                .route_table_sha256
                                .chars()
                                .take(12)
                                .collect(),
                            current: hash.chars().take(12).collect(),
                        })
                    }
                    _ => proxy_state.check_proxy(index.table()).map_err(|reason| {
                        crate::index::IndexError::Unfit {
                            path: index.generation().to_path_buf(),
                            reason,
                        }
                    }),
                })
                .inspect(|index| {
                    // the new index serves already: a failed check is only reported
                    match engine.agreement(index) {
                        Ok(agreement) => agreement.warn_unless_held(index),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "cannot compare the new index's vectors with this machine's"
                        ),
                    }
                })
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match result {
        Ok(index) => {
            state.metrics.reload(true);
            tracing::info!(generation = %index.generation().display(), vectors = index.len(), seconds = started.elapsed().as_secs_f64(), "index reloaded");
            Ok(serde_json::json!({
                "reloaded": true,
                "generation": index.generation().display().to_string(),
                "vectors": index.len(),
            }))
        }
        Err(reason) => {
            state.metrics.reload(false);
            tracing::error!(%reason, "index reload failed; the previous index keeps serving");
            Err(ApiError::ReloadFailed(format!(
                "reload failed, the previous index keeps serving: {reason}"
            )))
        }
    }
}

/// Reloads the index from its directory; the old one keeps serving on failure.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Reloaded", body = serde_json::Value),
        (status = 422, description = "Refused; the previous index keeps serving", body = ErrorBody),
        (status = 401, description = "Wrong admin key", body = ErrorBody), (status = 403, description = "Admin endpoints off", body = ErrorBody)))]
pub(super) async fn admin_reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    reload_index(&state).await.map(Json)
}

/// Refuses names that are neither in the catalog nor a candidate of any route.
pub(super) fn known_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    let engine = state.engine()?;
    let index = engine.index();
    let table = index.table();
    let known = table.catalog.contains_key(model)
        || table.default_candidates.iter().any(|m| m == model)
        || table
            .routes
            .iter()
            .any(|r| r.candidates.iter().any(|m| m == model));
    if known {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no model named `{model}` in the catalog or the routes"
        )))
    }
}

/// Marks a model down (skipped by the choice) for `ttl_s` seconds.
#[utoipa::path(post, path = "/v1/admin/models/{model}/down", tag = "admin", security(("bearer" = [])),
    params(("model" = String, Path, description = "A catalog or candidate model")), request_body(content = DownRequest, description = "Optional"),
    responses((status = 200, description = "Marked down", body = serde_json::Value),
        (status = 404, description = "No such model", body = ErrorBody), (status = 401, description = "Wrong admin key", body = ErrorBody)))]
pub(super) async fn admin_model_down(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(model): axum::extract::Path<String>,
    body: Result<ApiJson<DownRequest>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    known_model(&state, &model)?;
    // the body is optional: `{"ttl_s": N}`, or none for the default
    let ttl_s = match body {
        Ok(ApiJson(b)) => b.ttl_s,
        Err(ApiError::UnsupportedMediaType(_)) => default_down_ttl_s(),
        Err(e) => return Err(e),
    };
    if ttl_s == 0 || ttl_s > 7 * 86_400 {
        return Err(ApiError::Validation(
            "`ttl_s` must be between 1 and 604800".into(),
        ));
    }
    let shared = state
        .health
        .mark_down(&model, Duration::from_secs(ttl_s))
        .await;
    if shared {
        // the other replicas read it before this answers
        tokio::time::sleep(crate::health::SETTLE).await;
    }
    tracing::info!(%model, ttl_s, shared, "model marked down");
    Ok(Json(
        serde_json::json!({"model": model, "down_for_s": ttl_s, "shared": shared}),
    ))
}

/// Clears a model's down mark.
#[utoipa::path(post, path = "/v1/admin/models/{model}/up", tag = "admin", security(("bearer" = [])),
    params(("model" = String, Path, description = "A catalog or candidate model")),
    responses((status = 200, description = "Marked up", body = serde_json::Value),
        (status = 404, description = "No such model", body = ErrorBody), (status = 401, description = "Wrong admin key", body = ErrorBody)))]
pub(super) async fn admin_model_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    known_model(&state, &model)?;
    let was_down = state.health.mark_up(&model).await;
    if state.health.is_shared() {
        tokio::time::sleep(crate::health::SETTLE).await;
    }
    tracing::info!(%model, "model marked up");
    Ok(Json(
        serde_json::json!({"model": model, "was_down": was_down}),
    ))
}
