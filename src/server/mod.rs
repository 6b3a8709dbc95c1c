//! The HTTP API (axum): `fn app(state) -> Router`, the handlers, one error contract, shutdown.
//!
//! Every error, including malformed JSON and oversized bodies, answers with the same body:
//! `{"error": "...", "type": "..."}`. 4xx are the caller's and are not logged as errors; 5xx get
//! a generic message and the detail goes to the log once.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::time::SystemTime;

use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::budget::Ledger;
use crate::decision_log::DecisionLog;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::selection::Health;

mod admin;
mod auth;
mod door;
mod error;
mod feedback;
mod ops;
mod proxy;
mod routing;

pub use admin::{DownRequest, reload_index};
use auth::{RateLimiter, identity};
pub use door::{DoorOptions, default_max_connections, listen, serve as serve_connections};
pub use error::{ApiError, ApiJson, ErrorBody};
pub use feedback::{Feedback, OutcomeLog};
use routing::record_decision;
pub use routing::{
    BatchRequest, BatchResponse, Content, ContentPart, Message, RouteRequest, RouteResponse,
    UsageReport, route_request,
};

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
    /// Largest body of a proxied chat request (413 beyond): conversations and images.
    pub proxy_body_limit_bytes: usize,
    /// Most prompts in one `/v1/route/batch` call (422 beyond).
    pub max_batch_prompts: usize,
    /// Longest prompt in bytes on the route endpoints (422 beyond); the proxy routes on the
    /// first this many bytes of each user turn instead of refusing.
    pub max_prompt_bytes: usize,
    /// Longest a route request may take before it is answered with 503.
    pub request_timeout_ms: u64,
    /// Longest a request body may stop arriving before it is answered with 408 and its
    /// connection closed.
    pub body_timeout: std::time::Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            body_limit_bytes: 1024 * 1024,
            proxy_body_limit_bytes: 32 * 1024 * 1024,
            max_batch_prompts: 64,
            max_prompt_bytes: 256 * 1024,
            request_timeout_ms: 10_000,
            body_timeout: std::time::Duration::from_secs(15),
        }
    }
}

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<OnceLock<Arc<Engine>>>,
    metrics: Arc<Metrics>,
    options: ServerOptions,
    health: Arc<Health>,
    ledger: Arc<Ledger>,
    decision_log: Option<Arc<DecisionLog>>,
    outcomes: Option<Arc<OutcomeLog>>,
    admin_key: Option<Arc<str>>,
    api_keys: Option<Arc<[String]>>,
    rate_limit: Option<Arc<RateLimiter>>,
    reload: Option<Arc<ReloadSource>>,
    proxy: Option<Arc<proxy::Proxy>>,
}

/// Where a reload finds the new index, and the route files it must match.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The index directory (its `CURRENT` generation is opened).
    pub index_dir: std::path::PathBuf,
    /// Route files the index must have been built from, if `serve --routes` was given.
    pub routes: Option<std::path::PathBuf>,
}

impl AppState {
    /// State whose engine is set later with [`AppState::set_engine`]; until then `/readyz` and
    /// the route endpoints answer 503.
    pub fn new(options: ServerOptions) -> Self {
        AppState {
            engine: Arc::new(OnceLock::new()),
            metrics: Arc::new(Metrics::default()),
            options,
            health: Arc::new(Health::default()),
            ledger: Arc::new(Ledger::in_memory()),
            decision_log: None,
            outcomes: None,
            admin_key: None,
            api_keys: None,
            rate_limit: None,
            reload: None,
            proxy: None,
        }
    }

    /// Requires one of `keys` (`Authorization: Bearer <key>`) on the route, usage and proxy
    /// endpoints. Without this they are open.
    pub fn with_api_keys(mut self, keys: Vec<String>) -> Self {
        self.api_keys = Some(keys.into());
        self
    }

    /// Limits each caller (API key, else tenant, else everyone without either together) to
    /// `per_second` requests with bursts of `burst`; beyond, 429 with `Retry-After`. With a
    /// Redis ledger ([`AppState::with_ledger`]) the buckets live in Redis, shared by replicas.
    pub fn with_rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.rate_limit = Some(Arc::new(RateLimiter::new(per_second, burst)));
        self
    }

    /// Turns on the OpenAI-compatible proxy (`/v1/chat/completions`, `/v1/models`).
    pub fn with_proxy(mut self, config: crate::proxy_config::ProxyConfig) -> Result<Self, String> {
        let proxy = proxy::Proxy::new(config)
            .map_err(|e| format!("cannot set up the proxy's HTTP client: {e}"))?;
        self.proxy = Some(Arc::new(proxy));
        Ok(self)
    }

    /// Whether the proxy (if on) can serve `table`'s routes; the problems otherwise.
    pub fn check_proxy(&self, table: &crate::config::RouteTable) -> Result<(), String> {
        let Some(proxy) = &self.proxy else {
            return Ok(());
        };
        let problems = proxy.config.check(table);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the proxy file does not fit the routes: {}",
                problems.join("; ")
            ))
        }
    }

    /// Lets the index be reloaded (admin endpoint, SIGHUP, watch) from `source`.
    pub fn with_reload(mut self, source: ReloadSource) -> Self {
        self.reload = Some(Arc::new(source));
        self
    }

    /// Turns the admin endpoints on, for callers sending `Authorization: Bearer <key>`.
    pub fn with_admin_key(mut self, key: &str) -> Self {
        self.admin_key = Some(Arc::from(key));
        self
    }

    /// Turns on `POST /v1/feedback`: grades of routed requests go to `log` as outcome lines
    /// (with the prompt's text, which training needs).
    pub fn with_outcome_log(mut self, log: DecisionLog) -> Self {
        self.outcomes = Some(Arc::new(OutcomeLog::new(log)));
        self
    }

    /// Remembers a decision for feedback under request id `id`, when the outcome log is on.
    fn remember(&self, id: Option<&str>, decided: &RouteResponse) {
        if let (Some(outcomes), Some(id)) = (&self.outcomes, id) {
            outcomes.remember(id, &decided.text, &decided.selection.model);
        }
    }

    /// Writes every decision to `log`.
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.decision_log = Some(Arc::new(log));
        self
    }

    /// Counts spend in `ledger` (e.g. one backed by Redis) instead of this process's memory.
    pub fn with_ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = Arc::new(ledger);
        self
    }

    /// Shares model health marks with every replica through `store` (see [`Health::shared`]),
    /// reading the others' every [`crate::health::SYNC_EVERY`]; call in the tokio runtime.
    pub fn with_shared_health(mut self, store: crate::budget::RedisStore) -> Self {
        let health = Arc::new(Health::shared(store));
        Health::spawn_sync(&health);
        self.health = health;
        self
    }

    /// Where spend is counted.
    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Model health marks (shared with the admin endpoints).
    pub fn health(&self) -> &Health {
        &self.health
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

    /// Refuses a prompt over `max_prompt_bytes`.
    fn check_prompt_length(&self, text: &str, what: &str) -> Result<(), ApiError> {
        let max = self.options.max_prompt_bytes;
        if text.len() > max {
            return Err(ApiError::Validation(format!(
                "{what} is {} bytes; the limit is {max} (--max-prompt-bytes). Only its first {} tokens decide the route: send its beginning",
                text.len(),
                crate::embed::DEFAULT_MAX_TOKENS
            )));
        }
        Ok(())
    }

    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or(ApiError::NotReady)
    }
}

/// Request ids: a per-process random prefix and a counter, cheap and unique enough to follow
/// one request through logs.
#[derive(Clone)]
struct RequestIds {
    prefix: u32,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        RequestIds {
            prefix: nanos ^ std::process::id().rotate_left(16),
            next: Arc::default(),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// The OpenAPI document's frame; the paths come from the handlers mounted in [`app`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "pointsman", description = "A semantic LLM router: routes each prompt to the right model."),
    modifiers(&BearerAuth),
    tags(
        (name = "routing", description = "Decisions and usage"),
        (name = "proxy", description = "The OpenAI-compatible proxy"),
        (name = "admin", description = "Reload and model health (admin key)"),
        (name = "introspection", description = "The live routes and index"),
        (name = "operations", description = "Health, readiness, metrics, the playground"),
    )
)]
struct ApiDoc;

/// `Authorization: Bearer <key>`: an API key (`--api-key`) or the admin key.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The endpoints with their OpenAPI descriptions: everything [`app`] mounts is here, so the
/// document cannot miss a route.
fn endpoints(options: &ServerOptions) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    // chat requests carry whole conversations (and images): they get their own body limit
    let proxied = OpenApiRouter::new()
        .routes(routes!(proxy::chat_completions))
        .routes(routes!(proxy::messages))
        .routes(routes!(proxy::count_tokens))
        .routes(routes!(proxy::responses))
        .layer(DefaultBodyLimit::max(options.proxy_body_limit_bytes));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routing::route))
        .routes(routes!(routing::route_batch))
        .routes(routes!(routing::usage))
        .routes(routes!(feedback::feedback))
        .merge(proxied)
        .routes(routes!(proxy::models))
        .routes(routes!(admin::admin_models))
        .routes(routes!(admin::admin_reload))
        .routes(routes!(admin::admin_model_down))
        .routes(routes!(admin::admin_model_up))
        .routes(routes!(ops::routes))
        .routes(routes!(ops::index_manifest))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::playground))
        .routes(routes!(openapi_json))
        .split_for_parts()
}

/// The OpenAPI document of this server's HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    endpoints(&ServerOptions::default()).1
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value)))]
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

/// The request id the request-id layer gave this request (the caller's own, or a new one).
fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    let limit = state.options.body_limit_bytes;
    endpoints(&state.options)
        .0
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            door::bound_body_silence,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        // every response carries `x-request-id`: the caller's own, or a new one
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        .with_state(state)
}

/// Counts the request in `pointsman_http_requests_in_flight` until its response is ready, then
/// the response in `pointsman_requests_total` by matched endpoint (the route template, or
/// `unmatched`) and status: every response, the errors of every endpoint included.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let _in_flight = state.metrics.in_flight();
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let kind = response.extensions().get::<error::ErrorKind>().map(|k| k.0);
    state
        .metrics
        .response(&endpoint, response.status().as_u16(), kind);
    response
}

/// The span of one HTTP request (exported as a trace with `--otlp-endpoint`): method, path and
/// request id, then the route and model once decided; a caller's `traceparent` is its parent.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", req.method(), req.uri().path()),
        http.method = %req.method(),
        http.path = %req.uri().path(),
        request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or(""),
        route = tracing::field::Empty,
        model = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// Reads W3C trace-context headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Notes the decision on the current request's span.
fn record_on_span(route: Option<&str>, model: &str) {
    let span = tracing::Span::current();
    span.record("route", route.unwrap_or(""));
    span.record("model", model);
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not take {}",
        req.uri().path(),
        req.method()
    ))
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
