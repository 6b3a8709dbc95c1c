//! The HTTP API (axum): `fn app(state) -> Router`, the handlers, one error contract, shutdown.
//!
//! Every error, including malformed JSON and oversized bodies, answers with the same body:
//! `{"error": "...", "type": "..."}`. 4xx are the caller's and are not logged as errors; 5xx get
//! a generic message and the detail goes to the log once.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, RouteError, Routed};
use crate::index::GraphState;
use crate::metrics::{Gauges, Metrics};

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
    /// Most prompts in one `/v1/route/batch` call (422 beyond).
    pub max_batch_prompts: usize,
    /// Longest a route request may take before it is answered with 503.
    pub request_timeout_ms: u64,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_s: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            body_limit_bytes: 1024 * 1024,
            max_batch_prompts: 64,
            request_timeout_ms: 10_000,
            retry_after_s: 1,
        }
    }
}

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<OnceLock<Arc<Engine>>>,
    metrics: Arc<Metrics>,
    options: ServerOptions,
}

impl AppState {
    /// State whose engine is set later with [`AppState::set_engine`]; until then `/readyz` and
    /// the route endpoints answer 503.
    pub fn new(options: ServerOptions) -> Self {
        AppState {
            engine: Arc::new(OnceLock::new()),
            metrics: Arc::new(Metrics::default()),
            options,
        }
    }

    /// State with an engine ready.
    pub fn with_engine(engine: Arc<Engine>, options: ServerOptions) -> Self {
        let state = Self::new(options);
        state.set_engine(engine);
        state
    }

    /// Makes the engine available; later calls are ignored.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or(ApiError::NotReady)
    }
}

/// The kinds of error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is well-formed JSON but its content is wrong.
    #[error("{0}")]
    Validation(String),
    /// The body is not valid JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the limit.
    #[error("request body is larger than the server's limit (see --body-limit-bytes)")]
    PayloadTooLarge,
    /// The queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// The index is not open yet, or the engine is stopping.
    #[error("the router is not ready yet; retry shortly")]
    NotReady,
    /// The request took longer than the timeout.
    #[error("the request timed out after {0} ms")]
    Timeout(u64),
    /// No such endpoint.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// Anything else: a bug or a broken environment.
    #[error("internal error")]
    Internal(String),
}

/// The one error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
    /// Machine-readable kind.
    #[serde(rename = "type")]
    pub kind: String,
}

impl ApiError {
    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let body = ErrorBody {
            error: self.to_string(),
            kind: kind.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Overloaded { .. } => ApiError::Overloaded(e.to_string()),
            RouteError::EmptyPrompt => {
                ApiError::Validation("the prompt is empty or only whitespace".into())
            }
            RouteError::ShuttingDown => ApiError::NotReady,
            RouteError::Embed(e) => ApiError::Internal(e.to_string()),
            RouteError::Index(e) => ApiError::Internal(e.to_string()),
        }
    }
}

/// A JSON body extractor whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Validation(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "send the body as JSON with `Content-Type: application/json`".into(),
                ),
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge
                }
                other => ApiError::MalformedJson(other.body_text()),
            }),
        }
    }
}

/// One chat message (OpenAI shape); fields other than `role` and `content` are ignored.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `user`, `assistant`, `system`, ...
    pub role: String,
    /// A string, or a list of content parts of which the `text` ones are used.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// OpenAI content parts.
    Parts(Vec<ContentPart>),
}

/// One content part; only `text` parts carry routable text.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Part type (`text`, `image_url`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// Body of `POST /v1/route`: a `prompt`, or chat `messages` (routed on the last user message).
/// Other fields of a chat request (model, temperature, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct RouteRequest {
    /// The prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
}

impl RouteRequest {
    /// The text to route.
    pub fn text(self) -> Result<String, ApiError> {
        match (self.prompt, self.messages) {
            (Some(_), Some(_)) => Err(ApiError::Validation(
                "give either `prompt` or `messages`, not both".into(),
            )),
            (None, None) => Err(ApiError::Validation(
                "missing `prompt` (a string) or `messages` (a list of chat messages)".into(),
            )),
            (Some(p), None) => non_empty(p),
            (None, Some(messages)) => {
                let last_user = messages
                    .into_iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .ok_or_else(|| {
                        ApiError::Validation(
                            "`messages` has no message with role `user` to route on".into(),
                        )
                    })?;
                let text = match last_user.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t,
                    Some(Content::Parts(parts)) => parts
                        .into_iter()
                        .filter(|p| p.kind == "text")
                        .filter_map(|p| p.text)
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                non_empty(text)
            }
        }
    }
}

fn non_empty(text: String) -> Result<String, ApiError> {
    if text.trim().is_empty() {
        Err(ApiError::Validation(
            "the prompt is empty or only whitespace".into(),
        ))
    } else {
        Ok(text)
    }
}

/// Body of `POST /v1/route/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Prompts to route.
    pub prompts: Vec<String>,
}

/// Answer of `POST /v1/route/batch`, one result per prompt in order.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// The decisions.
    pub results: Vec<Routed>,
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    let limit = state.options.body_limit_bytes;
    Router::new()
        .route("/v1/route", post(route))
        .route("/v1/route/batch", post(route_batch))
        .route("/v1/routes", get(routes))
        .route("/v1/index", get(index_manifest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", req.method(), req.uri().path()))
}

fn timing_headers(routed: &Routed) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let t = &routed.timings;
    for (name, value) in [
        ("x-switchyard-queue-ms", t.queue_ms),
        ("x-switchyard-embed-ms", t.embed_ms),
        ("x-switchyard-search-ms", t.search_ms),
        ("x-switchyard-total-ms", t.total_ms),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{value:.3}")) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&routed.decision.model) {
        headers.insert(HeaderName::from_static("x-switchyard-model"), v);
    }
    headers
}

fn record(state: &AppState, endpoint: &str, result: &Result<Routed, ApiError>, started: Instant) {
    match result {
        Ok(routed) => {
            state.metrics.request(endpoint, 200);
            record_decision(state, routed);
            state
                .metrics
                .request_latency
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => state
            .metrics
            .request(endpoint, e.status_and_kind().0.as_u16()),
    }
}

fn record_decision(state: &AppState, routed: &Routed) {
    state.metrics.decision(
        routed.decision.route(),
        &routed.decision.model,
        routed.truncated,
    );
    state
        .metrics
        .embed_latency
        .observe(routed.timings.embed_ms / 1e3);
    state
        .metrics
        .queue_latency
        .observe(routed.timings.queue_ms / 1e3);
}

async fn route(
    State(state): State<AppState>,
    body: Result<ApiJson<RouteRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let ApiJson(body) = body?;
        let text = body.text()?;
        let engine = state.engine()?;
        let timeout = Duration::from_millis(state.options.request_timeout_ms);
        match tokio::time::timeout(timeout, engine.route_async(&text)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::Timeout(state.options.request_timeout_ms)),
        }
    }
    .await;
    record(&state, "/v1/route", &result, started);
    match result {
        Ok(routed) => (timing_headers(&routed), Json(routed)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn route_batch(
    State(state): State<AppState>,
    body: Result<ApiJson<BatchRequest>, ApiError>,
) -> Response {
    let result = async {
        let ApiJson(body) = body?;
        let max = state.options.max_batch_prompts;
        if body.prompts.is_empty() {
            return Err(ApiError::Validation("`prompts` is empty".into()));
        }
        if body.prompts.len() > max {
            return Err(ApiError::Validation(format!(
                "{} prompts in one batch; the limit is {max}",
                body.prompts.len()
            )));
        }
        if let Some(i) = body.prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(ApiError::Validation(format!(
                "prompt {i} is empty or only whitespace"
            )));
        }
        let engine = state.engine()?;
        let timeout = Duration::from_millis(state.options.request_timeout_ms);
        match tokio::time::timeout(timeout, engine.route_many(&body.prompts)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::Timeout(state.options.request_timeout_ms)),
        }
    }
    .await;
    match result {
        Ok(results) => {
            state.metrics.request("/v1/route/batch", 200);
            for r in &results {
                record_decision(&state, r);
            }
            Json(BatchResponse { results }).into_response()
        }
        Err(e) => {
            state
                .metrics
                .request("/v1/route/batch", e.status_and_kind().0.as_u16());
            e.into_response()
        }
    }
}

#[derive(Serialize)]
struct RouteInfo<'a> {
    name: &'a str,
    model: &'a str,
    threshold: Option<f32>,
    description: Option<&'a str>,
    utterances: usize,
}

#[derive(Serialize)]
struct RoutesResponse<'a> {
    default_model: &'a str,
    defaults: &'a crate::config::Defaults,
    routes: Vec<RouteInfo<'a>>,
}

async fn routes(State(state): State<AppState>) -> Result<Response, ApiError> {
    let index = state.engine()?.index();
    let table = index.table();
    let body = RoutesResponse {
        default_model: &table.default_model,
        defaults: &table.defaults,
        routes: table
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: &r.name,
                model: &r.model,
                threshold: r.effective_threshold(&table.defaults),
                description: r.description.as_deref(),
                utterances: r.utterances.len(),
            })
            .collect(),
    };
    Ok(Json(body).into_response())
}

async fn index_manifest(State(state): State<AppState>) -> Result<Response, ApiError> {
    let index = state.engine()?.index();
    Ok(Json(index.manifest().clone()).into_response())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = state.engine()?;
    let index = engine.index();
    let search = match index.graph_state() {
        None => "exact".to_string(),
        Some(GraphState::Ready) => "hnsw".to_string(),
        Some(GraphState::Loading) => "exact (hnsw graph loading)".to_string(),
        Some(GraphState::Failed(reason)) => format!("exact (hnsw graph failed: {reason})"),
    };
    Ok(Json(serde_json::json!({
        "status": "ready",
        "vectors": index.len(),
        "search": search,
    })))
}

async fn metrics(State(state): State<AppState>) -> Response {
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(gauges),
    )
        .into_response()
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
