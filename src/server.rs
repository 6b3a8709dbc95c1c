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
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::budget::{Identity, Ledger, caps_for};
use crate::config::DEFAULT_EXPECTED_OUTPUT_TOKENS;
use crate::decision_log::DecisionLog;
use crate::engine::{Engine, RouteError, Routed};
use crate::index::GraphState;
use crate::metrics::{Gauges, Metrics};
use crate::policy::Outcome;
use crate::selection::{self, Choice, Health, Needs};

mod proxy;

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
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            body_limit_bytes: 1024 * 1024,
            proxy_body_limit_bytes: 32 * 1024 * 1024,
            max_batch_prompts: 64,
            max_prompt_bytes: 256 * 1024,
            request_timeout_ms: 10_000,
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
    pub fn with_proxy(mut self, config: crate::proxy::ProxyConfig) -> Result<Self, String> {
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

    /// Admits a caller of the route, usage and proxy endpoints: its API key (when keys are
    /// required, compared in constant time), then its request rate: in Redis when spend is
    /// counted there, so that the limit holds across replicas, else (or while Redis does not
    /// answer) in this process.
    async fn admit_caller(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = bearer(headers);
        if let Some(keys) = &self.api_keys {
            // every key is compared, so that the time taken does not say which one was close
            let known = keys.iter().fold(false, |found, k| {
                found | constant_time_eq(given.as_bytes(), k.as_bytes())
            });
            if !known {
                return Err(ApiError::Unauthorized(
                    "send an API key as `Authorization: Bearer <key>` (this server requires one)"
                        .into(),
                ));
            }
        }
        if let Some(limiter) = &self.rate_limit {
            let who = identity(headers);
            let caller = who
                .key
                .map(|k| format!("key:{k}"))
                .or(who.tenant.map(|t| format!("tenant:{t}")))
                .unwrap_or_default();
            let shared = match self.ledger.redis() {
                Some(store) => store
                    .take_token(&caller, limiter.per_second, limiter.burst)
                    .await
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, "rate-limit store unavailable; limiting in this process");
                    })
                    .ok(),
                None => None,
            };
            let verdict = shared.unwrap_or_else(|| limiter.check(&caller, Instant::now()));
            if let Err(wait) = verdict {
                return Err(ApiError::RateLimited {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        Ok(())
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

    /// Admits a caller of an admin endpoint, comparing keys in constant time.
    fn admit_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.admin_key else {
            return Err(ApiError::Forbidden(
                "the admin endpoints are off; start `pointsman serve` with --admin-key".into(),
            ));
        };
        let given = bearer(headers);
        if constant_time_eq(given.as_bytes(), key.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "send the admin key as `Authorization: Bearer <key>`".into(),
            ))
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

/// The token of `Authorization: Bearer <token>`, or "".
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(|c: char| c.is_ascii_whitespace())?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .unwrap_or("")
}

/// Token buckets, one per caller, refilled continuously.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, Instant)>>,
}

/// Callers tracked before idle, full buckets are swept.
const RATE_LIMIT_SWEEP_AT: usize = 10_000;

impl RateLimiter {
    fn new(per_second: f64, burst: u32) -> Self {
        // at least one request an hour, so that waits stay finite
        let per_second = per_second.max(1.0 / 3600.0);
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Default::default(),
        }
    }

    /// Takes one token from `caller`'s bucket, or says how long until one is there.
    fn check(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate-limit lock");
        if buckets.len() >= RATE_LIMIT_SWEEP_AT && !buckets.contains_key(caller) {
            let (rate, burst) = (self.per_second, self.burst);
            // a bucket that has refilled holds no information
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets
            .entry(caller.to_string())
            .or_insert((self.burst, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// Every candidate that could serve the request is over a spend cap.
    #[error("{0}")]
    BudgetExhausted(String),
    /// No candidate model can serve the request (down, too small, lacking a capability).
    #[error("{0}")]
    NoCandidate(String),
    /// No such endpoint, or no such thing.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthorized(String),
    /// The endpoint is turned off.
    #[error("{0}")]
    Forbidden(String),
    /// The caller sent more requests than its rate limit allows.
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request will be admitted.
        retry_after_s: u64,
    },
    /// Every upstream model tried failed (proxy).
    #[error("{0}")]
    Upstream(String),
    /// The upstreams did not answer in time (proxy).
    #[error("{0}")]
    UpstreamTimeout(String),
    /// A new index was refused; the previous one keeps serving.
    #[error("{0}")]
    ReloadFailed(String),
    /// Anything else: a bug or a broken environment.
    #[error("internal error")]
    Internal(String),
}

/// The one error body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
            ApiError::BudgetExhausted(_) => (StatusCode::PAYMENT_REQUIRED, "budget_exhausted"),
            ApiError::NoCandidate(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_candidate"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ApiError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ApiError::ReloadFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "reload_failed"),
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
        self.add_retry_after(response.headers_mut());
        response
    }
}

impl ApiError {
    /// `Retry-After`, only where trying again soon can help.
    fn add_retry_after(&self, headers: &mut HeaderMap) {
        let seconds = match self {
            ApiError::Overloaded(_) | ApiError::NotReady | ApiError::Timeout(_) => 1,
            ApiError::RateLimited { retry_after_s } => *retry_after_s,
            _ => return,
        };
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::MalformedJson(e.body_text()),
            })?;
        // serde would also read a struct from an array of its fields: bodies are objects
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
        {
            return Err(ApiError::Validation(
                "the body must be a JSON object (`{...}`)".into(),
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Validation(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
                other => ApiError::MalformedJson(other.body_text()),
            }),
        }
    }
}

/// Whether the request declares a JSON body (`application/json`, or a `+json` type).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// One chat message (OpenAI shape); fields other than `role` and `content` are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// `user`, `assistant`, `system`, ...
    pub role: String,
    /// A string, or a list of content parts of which the `text` ones are used.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or parts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// OpenAI content parts.
    Parts(Vec<ContentPart>),
}

/// One content part; only `text` parts carry routable text.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RouteRequest {
    /// The prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// Capabilities the chosen model must have (`vision`, `tools`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Send to this route, bypassing the scores (it must exist).
    #[serde(default)]
    pub route: Option<String>,
}

impl RouteRequest {
    /// The text to route.
    pub fn text(&mut self) -> Result<String, ApiError> {
        match (self.prompt.take(), self.messages.take()) {
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Prompts to route.
    pub prompts: Vec<String>,
    /// Capabilities the chosen models must have.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A routed prompt with the model chosen among its route's candidates.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteResponse {
    /// The decision; its `model` is the chosen candidate.
    #[serde(flatten)]
    pub routed: Routed,
    /// How the model was chosen among the candidates.
    pub selection: Choice,
}

/// Answer of `POST /v1/route/batch`, one result per prompt in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// The decisions.
    pub results: Vec<RouteResponse>,
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
        .layer(DefaultBodyLimit::max(options.proxy_body_limit_bytes));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(route))
        .routes(routes!(route_batch))
        .routes(routes!(usage))
        .merge(proxied)
        .routes(routes!(proxy::models))
        .routes(routes!(admin_models))
        .routes(routes!(admin_reload))
        .routes(routes!(admin_model_down))
        .routes(routes!(admin_model_up))
        .routes(routes!(routes))
        .routes(routes!(index_manifest))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(playground))
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
            count_in_flight,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        // every response carries `x-request-id`: the caller's own, or a new one
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        .with_state(state)
}

/// Counts the request in `pointsman_http_requests_in_flight` until its response is ready.
async fn count_in_flight(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let _in_flight = state.metrics.in_flight();
    next.run(req).await
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

/// The playground page: static, embedded in the binary.
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn playground() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("playground.html"))
}

fn timing_headers(response: &RouteResponse) -> HeaderMap {
    let routed = &response.routed;
    let mut headers = HeaderMap::new();
    let t = &routed.timings;
    for (name, value) in [
        ("x-pointsman-queue-ms", t.queue_ms),
        ("x-pointsman-embed-ms", t.embed_ms),
        ("x-pointsman-search-ms", t.search_ms),
        ("x-pointsman-total-ms", t.total_ms),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{value:.3}")) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&routed.decision.model) {
        headers.insert(HeaderName::from_static("x-pointsman-model"), v);
    }
    headers
}

fn record(
    state: &AppState,
    endpoint: &str,
    result: &Result<RouteResponse, ApiError>,
    started: Instant,
) {
    match result {
        Ok(response) => {
            state.metrics.request(endpoint, 200);
            record_decision(state, response);
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

fn record_decision(state: &AppState, response: &RouteResponse) {
    let routed = &response.routed;
    if let Some(cost) = response.selection.estimated_cost_usd {
        state.metrics.spend(
            &response.selection.model,
            cost,
            response.selection.premium_cost_usd.unwrap_or(cost),
        );
    }
    state.metrics.decision(
        routed.decision.route(),
        &routed.decision.model,
        routed.truncated,
    );
    record_on_span(routed.decision.route(), &routed.decision.model);
    // a cache hit neither waited nor embedded: it would only pull the histograms down
    if !routed.timings.cached {
        state
            .metrics
            .embed_latency
            .observe(routed.timings.embed_ms / 1e3);
        state
            .metrics
            .queue_latency
            .observe(routed.timings.queue_ms / 1e3);
    }
}

/// Who a request is for: `x-pointsman-tenant`, `x-pointsman-tier`, and the API key from
/// `Authorization: Bearer ...`, kept only as a hash prefix.
fn identity(headers: &HeaderMap) -> Identity {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    // the key as [`bearer`] reads it, so that spacing cannot make one key two callers
    let key = Some(bearer(headers))
        .filter(|k| !k.is_empty())
        .map(|k| crate::config::hex(&Sha256::digest(k.as_bytes()))[..16].to_string());
    Identity {
        key,
        tenant: text("x-pointsman-tenant"),
        tier: text("x-pointsman-tier"),
    }
}

/// The route file's static rules take precedence over the scores.
fn apply_rules(engine: &Engine, text: &str, who: &Identity, routed: &mut Routed) {
    if let Some(rule) = engine
        .index()
        .rules()
        .first_match(text, who.tier.as_deref())
    {
        routed.decision.outcome = Outcome::Rule {
            route: rule.route.clone(),
            rule: rule.name.clone(),
        };
    }
}

/// Chooses the model for a routed prompt among its route's candidates (health, context window,
/// capabilities, spend caps), falling back to the default route's candidates.
async fn select(
    state: &AppState,
    engine: &Engine,
    routed: Routed,
    text: &str,
    who: &Identity,
    capabilities: &[String],
) -> Result<RouteResponse, ApiError> {
    let result = choose_model(state, engine, routed, who, capabilities).await;
    if let Some(log) = &state.decision_log {
        log.record(&log_line(text, who, &result));
    }
    result.map_err(|(e, _)| e)
}

/// One decision-log line: the response (or the error), who asked, and a hash of the prompt.
fn log_line(
    text: &str,
    who: &Identity,
    result: &Result<RouteResponse, (ApiError, Box<Routed>)>,
) -> serde_json::Value {
    let ts_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut line = match result {
        Ok(response) => serde_json::to_value(response).unwrap_or_default(),
        Err((e, routed)) => {
            let mut v = serde_json::to_value(routed.as_ref()).unwrap_or_default();
            v["error"] = serde_json::json!({"error": e.to_string(), "type": e.status_and_kind().1});
            v
        }
    };
    line["ts_ms"] = ts_ms.into();
    line["prompt_sha256"] = crate::config::hex(&Sha256::digest(text.as_bytes()))[..16]
        .to_string()
        .into();
    line["tenant"] = who.tenant.clone().into();
    line["tier"] = who.tier.clone().into();
    line["key"] = who.key.clone().into();
    line
}

async fn choose_model(
    state: &AppState,
    engine: &Engine,
    mut routed: Routed,
    who: &Identity,
    capabilities: &[String],
) -> Result<RouteResponse, (ApiError, Box<Routed>)> {
    let index = engine.index();
    let table = index.table();
    let route = routed.decision.route().and_then(|r| table.route(r));
    let needs = Needs {
        prompt_tokens: routed.prompt_tokens as u64,
        output_tokens: u64::from(
            route.map_or(DEFAULT_EXPECTED_OUTPUT_TOKENS, |r| r.expected_output_tokens),
        ),
        capabilities,
    };
    let caps = caps_for(&table.budgets, who, SystemTime::now());
    match selection::choose(table, route, &needs, &state.health, &state.ledger, &caps).await {
        Ok(choice) => {
            routed.decision.model = choice.model.clone();
            Ok(RouteResponse {
                routed,
                selection: choice,
            })
        }
        Err(none) => {
            let reasons = serde_json::to_string(&none.skipped).unwrap_or_default();
            let error = if none.budget_bound() {
                ApiError::BudgetExhausted(format!(
                    "every candidate model is over a spend cap or unavailable: {reasons}"
                ))
            } else {
                ApiError::NoCandidate(format!(
                    "no candidate model can take this request: {reasons}"
                ))
            };
            Err((error, Box::new(routed)))
        }
    }
}

/// Routes one request as `POST /v1/route` does: an explicit route, else the static rules,
/// else the scores; then the model among the route's candidates.
pub async fn route_request(
    state: &AppState,
    text: &str,
    route_override: Option<String>,
    who: &Identity,
    capabilities: &[String],
) -> Result<RouteResponse, ApiError> {
    let engine = state.engine()?;
    if let Some(r) = &route_override {
        if engine.index().table().route(r).is_none() {
            return Err(ApiError::Validation(format!(
                "`route`: no route named `{r}`"
            )));
        }
    }
    let timeout = Duration::from_millis(state.options.request_timeout_ms);
    let mut routed = match tokio::time::timeout(timeout, engine.route_async(text)).await {
        Ok(r) => r.map_err(ApiError::from)?,
        Err(_) => return Err(ApiError::Timeout(state.options.request_timeout_ms)),
    };
    match route_override {
        Some(r) => routed.decision.outcome = Outcome::Override { route: r },
        None => apply_rules(engine, text, who, &mut routed),
    }
    select(state, engine, routed, text, who, capabilities).await
}

/// Routes one prompt (or chat messages) and chooses its model.
#[utoipa::path(post, path = "/v1/route", tag = "routing", request_body = RouteRequest,
    responses((status = 200, description = "The decision and the chosen model", body = RouteResponse),
        (status = 422, description = "Invalid request", body = ErrorBody), (status = 402, description = "Spend caps leave no candidate", body = ErrorBody),
        (status = 401, description = "API key missing or wrong", body = ErrorBody), (status = 429, description = "Rate limited or overloaded; see Retry-After", body = ErrorBody), (status = 503, description = "Not ready, timed out, or no candidate", body = ErrorBody)))]
async fn route(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<RouteRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        state.admit_caller(&headers).await?;
        let ApiJson(mut body) = body?;
        let text = body.text()?;
        state.check_prompt_length(&text, "the prompt")?;
        let who = identity(&headers);
        route_request(&state, &text, body.route.take(), &who, &body.capabilities).await
    }
    .await;
    record(&state, "/v1/route", &result, started);
    match result {
        Ok(response) => (timing_headers(&response), Json(response)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Routes many prompts in one call (one forward-pass batch).
#[utoipa::path(post, path = "/v1/route/batch", tag = "routing", request_body = BatchRequest,
    responses((status = 200, description = "One result per prompt, in order", body = BatchResponse),
        (status = 422, description = "Invalid request or batch too large", body = ErrorBody), (status = 401, description = "API key missing or wrong", body = ErrorBody), (status = 429, description = "Rate limited or overloaded; see Retry-After", body = ErrorBody)))]
async fn route_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<BatchRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        state.admit_caller(&headers).await?;
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
        for (i, p) in body.prompts.iter().enumerate() {
            state.check_prompt_length(p, &format!("prompt {i}"))?;
        }
        let engine = state.engine()?;
        let timeout = Duration::from_millis(state.options.request_timeout_ms);
        let routed = match tokio::time::timeout(timeout, engine.route_many(&body.prompts)).await {
            Ok(r) => r.map_err(ApiError::from)?,
            Err(_) => return Err(ApiError::Timeout(state.options.request_timeout_ms)),
        };
        let who = identity(&headers);
        let mut out: Vec<RouteResponse> = Vec::with_capacity(routed.len());
        for (mut r, text) in routed.into_iter().zip(&body.prompts) {
            apply_rules(engine, text, &who, &mut r);
            match select(&state, engine, r, text, &who, &body.capabilities).await {
                Ok(response) => out.push(response),
                Err(e) => {
                    // the batch fails as a whole: give back what its earlier prompts reserved
                    let caps = caps_for(&engine.index().table().budgets, &who, SystemTime::now());
                    for reserved in &out {
                        if let (Some(cost), Some(_)) = (
                            reserved.selection.estimated_cost_usd,
                            &reserved.selection.counted,
                        ) {
                            state.ledger.adjust(&caps, -cost).await;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
    .await;
    match result {
        Ok(results) => {
            state.metrics.request("/v1/route/batch", 200);
            state
                .metrics
                .request_latency
                .observe(started.elapsed().as_secs_f64());
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

/// Body of `POST /v1/usage`: what a request really used, reported after the LLM answered.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The model that answered (must be in the catalog).
    pub model: String,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Answer tokens billed.
    pub output_tokens: u64,
    /// The estimate charged when the request was routed (`selection.estimated_cost_usd`), so
    /// that only the difference is added; 0 when the request was not routed by pointsman.
    #[serde(default)]
    pub estimated_cost_usd: f64,
}

/// Reports a request's real token usage for the spend caps.
#[utoipa::path(post, path = "/v1/usage", tag = "routing", request_body = UsageReport,
    responses((status = 200, description = "Cost counted", body = serde_json::Value),
        (status = 422, description = "Unknown model or bad numbers", body = ErrorBody), (status = 401, description = "API key missing or wrong", body = ErrorBody), (status = 429, description = "Rate limited or overloaded; see Retry-After", body = ErrorBody)))]
async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<UsageReport>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_caller(&headers).await?;
    let ApiJson(report) = body?;
    let engine = state.engine()?;
    let index = engine.index();
    let table = index.table();
    let model = table.catalog.get(&report.model).ok_or_else(|| {
        ApiError::Validation(format!("`model`: `{}` is not in the catalog", report.model))
    })?;
    if report.estimated_cost_usd.is_nan() || report.estimated_cost_usd < 0.0 {
        return Err(ApiError::Validation(
            "`estimated_cost_usd` must be a non-negative number".into(),
        ));
    }
    let cost = model.cost_usd(report.input_tokens, report.output_tokens);
    let caps = caps_for(&table.budgets, &identity(&headers), SystemTime::now());
    // only what exceeds the estimate is added: an overestimate is not refunded, so that no
    // caller can lower its own counters
    let delta = (cost - report.estimated_cost_usd).max(0.0);
    let counted = state.ledger.adjust(&caps, delta).await;
    state.metrics.usage(&report.model, cost);
    state.metrics.request("/v1/usage", 200);
    Ok(Json(serde_json::json!({
        "cost_usd": cost,
        "adjusted_by_usd": delta,
        "budgets": caps.iter().map(|c| c.label.clone()).collect::<Vec<_>>(),
        "counted": counted,
    })))
}

/// Body of `POST /v1/admin/models/{model}/down`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownRequest {
    /// How long the mark lasts, in seconds (default 300); it expires by itself.
    #[serde(default = "default_down_ttl_s")]
    pub ttl_s: u64,
}

fn default_down_ttl_s() -> u64 {
    300
}

/// Lists the models marked down.
#[utoipa::path(get, path = "/v1/admin/models", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Models marked down, with seconds left", body = serde_json::Value),
        (status = 401, description = "Wrong admin key", body = ErrorBody), (status = 403, description = "Admin endpoints off", body = ErrorBody)))]
async fn admin_models(
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
async fn admin_reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    reload_index(&state).await.map(Json)
}

/// Refuses names that are neither in the catalog nor a candidate of any route.
fn known_model(state: &AppState, model: &str) -> Result<(), ApiError> {
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
async fn admin_model_down(
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
    state.health.mark_down(&model, Duration::from_secs(ttl_s));
    tracing::info!(%model, ttl_s, "model marked down");
    state.metrics.request("/v1/admin/models/down", 200);
    Ok(Json(
        serde_json::json!({"model": model, "down_for_s": ttl_s}),
    ))
}

/// Clears a model's down mark.
#[utoipa::path(post, path = "/v1/admin/models/{model}/up", tag = "admin", security(("bearer" = [])),
    params(("model" = String, Path, description = "A catalog or candidate model")),
    responses((status = 200, description = "Marked up", body = serde_json::Value),
        (status = 404, description = "No such model", body = ErrorBody), (status = 401, description = "Wrong admin key", body = ErrorBody)))]
async fn admin_model_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_admin(&headers)?;
    known_model(&state, &model)?;
    let was_down = state.health.mark_up(&model);
    tracing::info!(%model, "model marked up");
    state.metrics.request("/v1/admin/models/up", 200);
    Ok(Json(
        serde_json::json!({"model": model, "was_down": was_down}),
    ))
}

#[derive(Serialize)]
struct RouteInfo<'a> {
    name: &'a str,
    model: &'a str,
    models: &'a [String],
    threshold: Option<f32>,
    description: Option<&'a str>,
    utterances: usize,
}

#[derive(Serialize)]
struct RoutesResponse<'a> {
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
async fn routes(State(state): State<AppState>) -> Result<Response, ApiError> {
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
async fn index_manifest(State(state): State<AppState>) -> Result<Response, ApiError> {
    let index = state.engine()?.index();
    Ok(Json(index.manifest().clone()).into_response())
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = serde_json::Value)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 503 until the index is open.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready, with the search in use", body = serde_json::Value), (status = 503, description = "Not ready", body = ErrorBody)))]
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

/// Prometheus metrics (text format), every name prefixed `pointsman_`.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
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
    let mut text = state.metrics.render(gauges);
    if let Some(log) = &state.decision_log {
        text.push_str(&format!(
            "# HELP pointsman_decision_log_dropped_total Decision-log lines dropped because the writer was behind.\n# TYPE pointsman_decision_log_dropped_total counter\npointsman_decision_log_dropped_total {}\n",
            log.dropped()
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_one_caller_however_its_header_is_spaced() {
        let who = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            (bearer(&headers).to_string(), identity(&headers).key)
        };
        let plain = who("Bearer key-one");
        assert_eq!(plain.0, "key-one");
        for spaced in [
            "Bearer  key-one",
            "bearer key-one",
            " Bearer\tkey-one ",
            "BEARER key-one  ",
        ] {
            assert_eq!(who(spaced), plain, "{spaced:?}");
        }
        assert_eq!(who("Basic a2V5LW9uZQ=="), (String::new(), None));
    }

    #[test]
    fn rate_limits_allow_a_burst_then_refill_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t0), Ok(()));
        }
        // empty: the next token is half a second away
        assert_eq!(limiter.check("a", t0), Err(Duration::from_millis(500)));
        assert_eq!(limiter.check("a", at(250)), Err(Duration::from_millis(250)));
        // another caller has its own bucket
        assert_eq!(limiter.check("b", t0), Ok(()));
        assert_eq!(limiter.check("a", at(500)), Ok(()));
        assert!(limiter.check("a", at(500)).is_err());
        // a long pause refills to the burst, not beyond
        for _ in 0..3 {
            assert_eq!(limiter.check("a", at(60_000)), Ok(()));
        }
        assert!(limiter.check("a", at(60_000)).is_err());
    }
}
