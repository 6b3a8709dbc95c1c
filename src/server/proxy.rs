//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! `model: "auto"` is routed on the conversation (see [`crate::proxy::ConversationPolicy`]);
//! `model: "<route>"` pins a route and lets the candidates be chosen; any other model a
//! provider serves passes through unrouted. The chosen model's provider gets the request with
//! `model` rewritten; 429, 5xx, timeouts and connection errors are retried with backoff, then
//! the route's next candidate is tried. Streams are relayed event by event as they arrive.
//! Errors use OpenAI's shape (`{"error": {"message", "type", "code"}}`) so that SDKs read them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tracing::Instrument as _;

use super::{ApiError, ApiJson, AppState, Content, Message, RouteResponse};
use crate::budget::{CapKey, Identity, caps_for};
use crate::policy::Outcome;
use crate::proxy::{CascadeCheck, ConversationText, Provider, ProxyConfig, TurnChoice};
use crate::selection::{self, Needs};

/// The proxy's configuration and its HTTP client.
pub(super) struct Proxy {
    pub(super) config: ProxyConfig,
    client: reqwest::Client,
}

impl Proxy {
    pub(super) fn new(config: ProxyConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.timeouts.connect_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Proxy { config, client })
    }
}

/// An error in OpenAI's shape, with our status and kind.
fn openai_error(e: ApiError) -> Response {
    let (status, kind) = e.status_and_kind();
    if let ApiError::Internal(detail) = &e {
        tracing::error!(detail = %detail, "internal error");
    }
    let body = serde_json::json!({"error": {
        "message": e.to_string(),
        "type": kind,
        "param": null,
        "code": kind,
    }});
    let mut response = (status, axum::Json(body)).into_response();
    e.add_retry_after(response.headers_mut());
    response
}

fn proxy_of(state: &AppState) -> Result<Arc<Proxy>, ApiError> {
    state.proxy.clone().ok_or_else(|| {
        ApiError::NotFound(
            "the OpenAI-compatible proxy is off; start `switchyard serve --proxy proxy.yaml`"
                .into(),
        )
    })
}

/// `GET /v1/models`: `auto`, every route (a group of candidate models), and every model a
/// provider serves.
#[utoipa::path(get, path = "/v1/models", tag = "proxy",
    responses((status = 200, description = "OpenAI's model list", body = serde_json::Value),
        (status = 404, description = "The proxy is off (OpenAI error shape)", body = serde_json::Value)))]
pub(super) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = (|| {
        state.admit_caller(&headers)?;
        let proxy = proxy_of(&state)?;
        let index = state.engine()?.index();
        let table = index.table();
        let entry = |id: &str, owner: &str| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner});
        let mut data = vec![entry("auto", "switchyard")];
        data.extend(
            table
                .routes
                .iter()
                .map(|r| entry(&r.name, "switchyard-route")),
        );
        let mut served: Vec<(&str, &str)> = table
            .catalog
            .keys()
            .filter_map(|m| {
                let p = proxy.config.provider_for(m, table)?;
                Some((m.as_str(), p.name.as_str()))
            })
            .collect();
        served.sort();
        data.extend(served.into_iter().map(|(m, p)| entry(m, p)));
        Ok::<_, ApiError>(serde_json::json!({"object": "list", "data": data}))
    })();
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => openai_error(e),
    }
}

/// What the request is, read from its body.
struct ChatRequest {
    body: Map<String, Value>,
    model: String,
    stream: bool,
    wants_json: bool,
    user_turns: Vec<String>,
    /// Bytes of message text outside the last user turn (for the context-window estimate).
    other_text_bytes: usize,
    capabilities: Vec<String>,
}

impl ChatRequest {
    fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
            _ => {
                return Err(ApiError::Validation(
                    "`model` must be a string: `auto`, a route name, or a model name (GET /v1/models lists them)".into(),
                ));
            }
        };
        let messages: Vec<Message> = match body.get("messages") {
            Some(v @ Value::Array(a)) if !a.is_empty() => serde_json::from_value(v.clone())
                .map_err(|e| ApiError::Validation(format!("`messages`: {e}")))?,
            _ => {
                return Err(ApiError::Validation(
                    "`messages` must be a non-empty list of chat messages".into(),
                ));
            }
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::Validation("`stream` must be a boolean".into())),
        };
        let wants_json = matches!(
            body.get("response_format")
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str),
            Some("json_object" | "json_schema")
        );
        let mut capabilities = Vec::new();
        if body.get("tools").is_some_and(|t| !t.is_null()) {
            capabilities.push("tools".to_string());
        }
        let mut user_turns = Vec::new();
        let mut text_bytes = 0;
        let mut images = false;
        for m in &messages {
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    images |= parts.iter().any(|p| p.kind == "image_url");
                    parts
                        .iter()
                        .filter(|p| p.kind == "text")
                        .filter_map(|p| p.text.as_deref())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            text_bytes += text.len();
            if m.role == "user" {
                user_turns.push(text);
            }
        }
        if images {
            capabilities.push("vision".to_string());
        }
        let last_len = user_turns.last().map_or(0, String::len);
        Ok(ChatRequest {
            body,
            model,
            stream,
            wants_json,
            user_turns,
            other_text_bytes: text_bytes - last_len,
            capabilities,
        })
    }
}

/// How the request reached its model: what the router decided, and the models to try.
struct Plan {
    /// The routing decision (absent for a pass-through).
    routed: Option<RouteResponse>,
    /// Models to try, in order: the chosen one, then the fallbacks.
    models: Vec<String>,
    /// The route's cascade check, if it asks for one.
    cascade: Option<CascadeCheck>,
    caps: Vec<CapKey>,
}

/// `POST /v1/chat/completions`: OpenAI's chat-completions request; `model` is `auto`, a route
/// name, or a model name. Answers are the upstream's (streamed as server-sent events with
/// `stream: true`); errors use OpenAI's shape.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "proxy",
    request_body(content = serde_json::Value, description = "OpenAI chat-completions request"),
    responses((status = 200, description = "The upstream's answer, with x-switchyard-* headers", body = serde_json::Value),
        (status = 404, description = "Unknown model, or the proxy is off", body = serde_json::Value),
        (status = 502, description = "Every candidate failed", body = serde_json::Value),
        (status = 504, description = "No upstream answered in time", body = serde_json::Value)))]
pub(super) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    let result = async {
        state.admit_caller(&headers)?;
        let proxy = proxy_of(&state)?;
        let ApiJson(body) = body?;
        let request = ChatRequest::parse(body)?;
        let who = super::identity(&headers);
        let plan = plan(&state, &proxy, &request, &who).await?;
        forward(&state, &proxy, request, plan).await
    }
    .await;
    let response = result.unwrap_or_else(openai_error);
    state
        .metrics
        .request("/v1/chat/completions", response.status().as_u16());
    response
}

async fn plan(
    state: &AppState,
    proxy: &Proxy,
    request: &ChatRequest,
    who: &Identity,
) -> Result<Plan, ApiError> {
    let engine = state.engine()?;
    let index = engine.index();
    let table = index.table();
    let caps = caps_for(&table.budgets, who, std::time::SystemTime::now());
    let routed_name = request.model == "auto" || table.route(&request.model).is_some();
    if !routed_name {
        if proxy.config.provider_for(&request.model, table).is_none() {
            return Err(ApiError::NotFound(format!(
                "model `{}`: not `auto`, a route, or a model a provider serves (GET /v1/models lists them)",
                request.model
            )));
        }
        return Ok(Plan {
            routed: None,
            models: vec![request.model.clone()],
            cascade: None,
            caps,
        });
    }
    // routing reads the beginning of each turn: a long document is forwarded whole, not refused
    let max = state.options.max_prompt_bytes;
    let turns: Vec<String> = request
        .user_turns
        .iter()
        .map(|t| clip(t, max).to_string())
        .collect();
    let conversation =
        ConversationText::new(&turns, proxy.config.conversation.window).ok_or_else(|| {
            ApiError::Validation("`messages` has no user message with text to route on".into())
        })?;
    let timeout = Duration::from_millis(state.options.request_timeout_ms);
    let (mut routed, text) = if request.model != "auto" {
        let r = tokio::time::timeout(timeout, engine.route_async(&conversation.last))
            .await
            .map_err(|_| ApiError::Timeout(state.options.request_timeout_ms))??;
        (r, conversation.last)
    } else {
        route_conversation(state, engine, conversation, who, timeout).await?
    };
    if request.model != "auto" {
        routed.decision.outcome = Outcome::Override {
            route: request.model.clone(),
        };
    }
    // the context window must hold the whole conversation, not just the routed text
    let clipped_bytes: usize = request
        .user_turns
        .iter()
        .map(|t| t.len() - clip(t, max).len())
        .sum();
    routed.prompt_tokens += (request.other_text_bytes + clipped_bytes).div_ceil(4);
    let response = super::select(state, engine, routed, &text, who, &request.capabilities).await?;
    super::record_decision(state, &response);
    let route = response
        .routed
        .decision
        .route()
        .and_then(|r| table.route(r));
    let needs = Needs {
        prompt_tokens: response.routed.prompt_tokens as u64,
        output_tokens: 0,
        capabilities: &request.capabilities,
    };
    // fallbacks: the candidates after the chosen one, then the default route's
    let mut models = vec![response.selection.model.clone()];
    let lists = route
        .filter(|_| !response.selection.from_default)
        .map(|r| r.candidates.as_slice())
        .into_iter()
        .chain([table.default_candidates.as_slice()]);
    for list in lists {
        let after = list
            .iter()
            .position(|m| *m == response.selection.model)
            .map_or(0, |i| i + 1);
        let (eligible, _) = selection::filter(
            &list[after..],
            &table.catalog,
            &|m| state.health.is_down(m),
            &needs,
        );
        for e in eligible {
            if !models.contains(&e.model) {
                models.push(e.model);
            }
        }
    }
    let cascade = route.and_then(|r| proxy.config.cascade.get(&r.name).cloned());
    Ok(Plan {
        routed: Some(response),
        models,
        cascade,
        caps,
    })
}

/// The longest prefix of `text` of at most `max` bytes, cut at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Routes the last user turn and, when there are earlier turns, the recent window together
/// (one batch), then applies the multi-turn policy. Returns the decision and its text.
async fn route_conversation(
    state: &AppState,
    engine: &crate::engine::Engine,
    conversation: ConversationText,
    who: &Identity,
    timeout: Duration,
) -> Result<(crate::engine::Routed, String), ApiError> {
    let timed_out = || ApiError::Timeout(state.options.request_timeout_ms);
    let Some(window) = conversation.window else {
        let mut r = tokio::time::timeout(timeout, engine.route_async(&conversation.last))
            .await
            .map_err(|_| timed_out())??;
        super::apply_rules(engine, &conversation.last, who, &mut r);
        return Ok((r, conversation.last));
    };
    let texts = [conversation.last, window];
    let mut both = tokio::time::timeout(timeout, engine.route_many(&texts))
        .await
        .map_err(|_| timed_out())??;
    for (r, text) in both.iter_mut().zip(&texts) {
        super::apply_rules(engine, text, who, r);
    }
    let window_routed = both.pop().expect("two decisions");
    let last_routed = both.pop().expect("two decisions");
    let [last_text, window_text] = texts;
    let last = match &last_routed.decision.outcome {
        Outcome::Matched { route, score } => {
            let threshold = last_routed
                .decision
                .routes
                .iter()
                .find(|s| s.route == *route)
                .and_then(|s| s.threshold);
            Some((route.as_str(), *score, threshold))
        }
        // a rule on the last message is as clear as a match can be
        Outcome::Rule { route, .. } => Some((route.as_str(), f32::INFINITY, None)),
        _ => None,
    };
    let choice = crate::proxy::choose_turn(
        &state.proxy.as_ref().expect("proxy on").config.conversation,
        last,
        window_routed.decision.route(),
    );
    Ok(match choice {
        TurnChoice::Last => (last_routed, last_text),
        TurnChoice::Window => (window_routed, window_text),
    })
}

/// Why one try of one model failed.
enum TryFailure {
    /// Worth retrying (connection error, timeout, 429, 5xx), with the upstream's Retry-After.
    Transient(String, Option<Duration>),
    /// Not worth retrying this model (401, 403, 404): fall back at once.
    Model(String),
}

/// A successful upstream answer, headers received.
struct Answered {
    response: reqwest::Response,
    /// Position of the model in the plan's list.
    position: usize,
    tries: u32,
}

/// The outcome of trying the plan's models from `start`.
enum Attempt {
    Answered(Answered),
    /// The upstream refused the request itself (400, 413, 422, ...): the client's to fix.
    Refused(reqwest::Response),
}

/// Tries `models[start..]` in order, each up to `retries.attempts` times.
async fn attempt(
    state: &AppState,
    proxy: &Proxy,
    request: &ChatRequest,
    models: &[String],
    start: usize,
    deadline: Instant,
    strip_usage: &mut bool,
) -> Result<Attempt, ApiError> {
    let config = &proxy.config;
    let engine = state.engine()?;
    let index = engine.index();
    let table = index.table();
    let mut failures = Vec::new();
    let mut tries = 0;
    for (position, model) in models.iter().enumerate().skip(start) {
        let provider = config.provider_for(model, table).ok_or_else(|| {
            ApiError::Internal(format!("no provider serves `{model}` (checked at start)"))
        })?;
        let body = upstream_body(request, provider, model, strip_usage);
        let mut retry_after = None;
        let mut exhausted = true;
        for t in 1..=config.retries.attempts {
            if t > 1 {
                let wait = config.retries.backoff(t - 1, retry_after.take());
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = Duration::from_millis(config.timeouts.first_byte_ms).min(left);
            let mut req = proxy.client.post(provider.chat_url()).json(&body);
            if let Some(key) = &provider.api_key {
                req = req.bearer_auth(key);
            }
            let span = tracing::info_span!("upstream", otel.name = %format!("upstream {model}"), model = %model, provider = %provider.name, attempt = t);
            let sent = tokio::time::timeout(wait, req.send()).instrument(span);
            let failure = match sent.await {
                Err(_) => {
                    state.metrics.upstream(model, "timeout");
                    TryFailure::Transient(
                        format!("{model}: no response within {} ms", wait.as_millis()),
                        None,
                    )
                }
                Ok(Err(e)) => {
                    state.metrics.upstream(model, "connect");
                    TryFailure::Transient(format!("{model}: {}", error_chain(&e)), None)
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    if status.is_success() {
                        state.metrics.upstream(model, "ok");
                        return Ok(Attempt::Answered(Answered {
                            response,
                            position,
                            tries,
                        }));
                    }
                    let after = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let detail = format!("{model}: upstream answered {status}");
                    match status.as_u16() {
                        429 => {
                            state.metrics.upstream(model, "status_429");
                            TryFailure::Transient(detail, after)
                        }
                        500..=599 => {
                            state.metrics.upstream(model, "status_5xx");
                            TryFailure::Transient(detail, after)
                        }
                        401 | 403 | 404 | 408 => {
                            state.metrics.upstream(model, "status_4xx");
                            TryFailure::Model(detail)
                        }
                        _ => {
                            state.metrics.upstream(model, "status_4xx");
                            return Ok(Attempt::Refused(response));
                        }
                    }
                }
            };
            match failure {
                TryFailure::Transient(detail, after) => {
                    tracing::warn!(%detail, try_ = t, "upstream try failed");
                    failures.push(detail);
                    retry_after = after;
                }
                TryFailure::Model(detail) => {
                    tracing::warn!(%detail, "upstream refused the model; trying the next candidate");
                    failures.push(detail);
                    exhausted = false;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if exhausted && config.mark_down_s > 0 {
            state
                .health
                .mark_down(model, Duration::from_secs(config.mark_down_s));
            tracing::warn!(%model, seconds = config.mark_down_s, "model marked down after failing every try");
        }
        if Instant::now() >= deadline {
            return Err(ApiError::UpstreamTimeout(format!(
                "no upstream answered within {} ms (timeouts.total_ms): {}",
                config.timeouts.total_ms,
                failures.join("; ")
            )));
        }
    }
    Err(ApiError::Upstream(format!(
        "every candidate model failed: {}",
        failures.join("; ")
    )))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The body sent upstream: the client's, with `model` renamed for the provider and, for a
/// stream, a final usage chunk asked for (`strip_usage` is set when the client did not ask, so
/// that the relay drops it).
fn upstream_body(
    request: &ChatRequest,
    provider: &Provider,
    model: &str,
    strip_usage: &mut bool,
) -> Map<String, Value> {
    let mut body = request.body.clone();
    body.insert(
        "model".into(),
        Value::String(provider.upstream_model(model).to_string()),
    );
    *strip_usage = false;
    if request.stream && provider.stream_usage {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            if o.get("include_usage").and_then(Value::as_bool) != Some(true) {
                o.insert("include_usage".into(), Value::Bool(true));
                *strip_usage = true;
            }
        }
    }
    body
}

/// Tokens an upstream reported.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    prompt: u64,
    completion: u64,
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    Some(Usage {
        prompt: u.get("prompt_tokens")?.as_u64()?,
        completion: u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// Counts an answer's real cost: metrics, and the spend counters by what exceeds the
/// estimate already reserved.
#[derive(Clone)]
struct Accounting {
    state: AppState,
    caps: Vec<CapKey>,
    /// Estimate reserved when routing (0 for a pass-through).
    estimate_usd: f64,
    /// Real cost of earlier answers of this request (a cascade's rejected ones).
    spent_usd: f64,
}

impl Accounting {
    fn cost(&self, model: &str, usage: Option<Usage>) -> f64 {
        let Some(u) = usage else { return 0.0 };
        let index = self.state.engine.get().map(|e| e.index());
        let cost = index
            .as_ref()
            .and_then(|i| {
                i.table()
                    .catalog
                    .get(model)
                    .map(|m| m.cost_usd(u.prompt, u.completion))
            })
            .unwrap_or(0.0);
        self.state.metrics.usage(model, cost);
        cost
    }

    /// Adds an answer that was not the last (a cascade's rejected one).
    fn add(&mut self, model: &str, usage: Option<Usage>) {
        self.spent_usd += self.cost(model, usage);
    }

    /// Settles the request with its final answer's usage (`None`: not reported, the estimate
    /// stands).
    async fn settle(self, model: &str, usage: Option<Usage>) {
        let total = self.spent_usd + self.cost(model, usage);
        let delta = (total - self.estimate_usd).max(0.0);
        if delta > 0.0 && !self.caps.is_empty() {
            self.state.ledger.adjust(&self.caps, delta).await;
        }
    }
}

async fn forward(
    state: &AppState,
    proxy: &Proxy,
    request: ChatRequest,
    plan: Plan,
) -> Result<Response, ApiError> {
    let deadline = Instant::now() + Duration::from_millis(proxy.config.timeouts.total_ms);
    let mut accounting = Accounting {
        state: state.clone(),
        caps: plan.caps.clone(),
        estimate_usd: plan
            .routed
            .as_ref()
            .and_then(|r| {
                r.selection
                    .estimated_cost_usd
                    .filter(|_| r.selection.counted.is_some())
            })
            .unwrap_or(0.0),
        spent_usd: 0.0,
    };
    let mut start = 0;
    let mut tries = 0;
    let mut escalations = Vec::new();
    loop {
        let mut strip_usage = false;
        let answered = match attempt(
            state,
            proxy,
            &request,
            &plan.models,
            start,
            deadline,
            &mut strip_usage,
        )
        .await?
        {
            Attempt::Answered(a) => a,
            Attempt::Refused(response) => return Ok(relay_refusal(response).await),
        };
        tries += answered.tries;
        let model = plan.models[answered.position].clone();
        let headers = decision_headers(&plan, &model, answered.position, tries, &escalations);
        let last_candidate = answered.position + 1 == plan.models.len();
        let check = plan.cascade.as_ref().filter(|_| !last_candidate);
        let Some(check) = check else {
            // no check to make: the answer goes to the client as it comes
            return Ok(if request.stream {
                stream_response(
                    answered.response,
                    headers,
                    strip_usage,
                    proxy,
                    deadline,
                    accounting,
                    model,
                )
            } else {
                let (status, upstream_headers, bytes) =
                    read_body(answered.response, deadline, &model).await?;
                let usage = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| usage_of(&v));
                accounting.settle(&model, usage).await;
                body_response(status, &upstream_headers, headers, Body::from(bytes))
            });
        };
        // the cascade reads the whole answer before the client sees any of it
        let (status, upstream_headers, bytes, answer) = if request.stream {
            match collect_stream(answered.response, strip_usage, proxy, deadline).await {
                Ok(c) => (StatusCode::OK, c.headers, Bytes::from(c.bytes), c.answer),
                Err(reason) => {
                    escalations.push(format!("{model}: {reason}"));
                    start = answered.position + 1;
                    continue;
                }
            }
        } else {
            let (status, upstream_headers, bytes) =
                read_body(answered.response, deadline, &model).await?;
            let answer = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .map(|v| Answer::of_completion(&v))
                .unwrap_or_default();
            (status, upstream_headers, bytes, answer)
        };
        match check.failure(&answer.text, answer.tool_calls, request.wants_json) {
            None => {
                accounting.settle(&model, answer.usage).await;
                return Ok(body_response(
                    status,
                    &upstream_headers,
                    headers,
                    Body::from(bytes),
                ));
            }
            Some(reason) => {
                tracing::info!(%model, %reason, "cascade: answer failed the check; escalating");
                accounting.add(&model, answer.usage);
                escalations.push(format!("{model}: {reason}"));
                start = answered.position + 1;
            }
        }
    }
}

/// The switchyard headers of a proxied answer.
fn decision_headers(
    plan: &Plan,
    model: &str,
    position: usize,
    tries: u32,
    escalations: &[String],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-switchyard-model", model.to_string());
    put("x-switchyard-fallback", (position > 0).to_string());
    put("x-switchyard-attempts", tries.to_string());
    if !escalations.is_empty() {
        put("x-switchyard-escalations", escalations.len().to_string());
    }
    match &plan.routed {
        None => put("x-switchyard-outcome", "passthrough".into()),
        Some(r) => {
            let outcome = &r.routed.decision.outcome;
            let name = match outcome {
                Outcome::Matched { .. } => "matched",
                Outcome::Rule { .. } => "rule",
                Outcome::Override { .. } => "override",
                Outcome::Fallback { .. } => "fallback",
            };
            put("x-switchyard-outcome", name.into());
            if let Some(route) = r.routed.decision.route() {
                put("x-switchyard-route", route.to_string());
            }
            if let Outcome::Matched { score, .. } = outcome {
                put("x-switchyard-score", format!("{score:.4}"));
            }
        }
    }
    headers
}

/// What an answer said, for the cascade's check.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    tool_calls: bool,
    usage: Option<Usage>,
}

impl Answer {
    fn of_completion(v: &Value) -> Self {
        let message = v.pointer("/choices/0/message");
        Answer {
            text: message
                .and_then(|m| m.get("content"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            tool_calls: message
                .and_then(|m| m.get("tool_calls"))
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty()),
            usage: usage_of(v),
        }
    }
}

async fn read_body(
    response: reqwest::Response,
    deadline: Instant,
    model: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
    let headers = response.headers().clone();
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, response.bytes()).await {
        Ok(Ok(bytes)) => Ok((status, headers, bytes)),
        Ok(Err(e)) => Err(ApiError::Upstream(format!(
            "{model}: the answer broke off: {}",
            error_chain(&e)
        ))),
        Err(_) => Err(ApiError::UpstreamTimeout(format!(
            "{model}: the answer did not finish within timeouts.total_ms"
        ))),
    }
}

/// A response with the upstream's content type and our headers.
fn body_response(
    status: StatusCode,
    upstream: &HeaderMap,
    ours: HeaderMap,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(ct) = upstream.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, ct.clone());
    }
    response.headers_mut().extend(ours);
    response
}

/// An upstream's refusal of the request itself, passed on as it came.
async fn relay_refusal(response: reqwest::Response) -> Response {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    body_response(status, &headers, HeaderMap::new(), Body::from(bytes))
}

/// Splits an SSE byte stream into whole events (each ending with a blank line) and inspects
/// the `data:` payloads for usage and, when asked, the answer's text.
struct SseEvents {
    buf: Vec<u8>,
    strip_usage: bool,
    collect: bool,
    answer: Answer,
}

impl SseEvents {
    fn new(strip_usage: bool, collect: bool) -> Self {
        SseEvents {
            buf: Vec::new(),
            strip_usage,
            collect,
            answer: Answer::default(),
        }
    }

    /// The next whole event in the buffer to pass on (usage-only events the client did not ask
    /// for are consumed silently).
    fn next_event(&mut self) -> Option<Vec<u8>> {
        loop {
            let end = event_end(&self.buf)?;
            let event: Vec<u8> = self.buf.drain(..end).collect();
            if self.inspect(&event) {
                return Some(event);
            }
        }
    }

    /// Reads an event; false when it must not be passed on.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(event) else {
            return true;
        };
        let mut keep = true;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" || !(self.collect || data.contains("\"usage\"")) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(u) = usage_of(&v) {
                self.answer.usage = Some(u);
                let no_choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_none_or(|c| c.is_empty());
                if self.strip_usage && no_choices {
                    keep = false;
                }
            }
            if self.collect {
                if let Some(delta) = v.pointer("/choices/0/delta") {
                    if let Some(t) = delta.get("content").and_then(Value::as_str) {
                        self.answer.text.push_str(t);
                    }
                    self.answer.tool_calls |= delta
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .is_some_and(|t| !t.is_empty());
                }
            }
        }
        keep
    }
}

/// The end (exclusive) of the first whole event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The SSE event that ends a broken stream.
fn error_event(message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "upstream_error",
        "param": null,
        "code": "upstream_error",
    }});
    format!("data: {body}\n\n").into_bytes()
}

/// The next chunk of an upstream stream within the idle and total timeouts.
async fn next_chunk(
    upstream: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    idle: Duration,
    deadline: Instant,
) -> Result<Option<Bytes>, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(idle.min(left), upstream.next()).await {
        Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(format!(
            "the upstream stream broke off: {}",
            error_chain(&e)
        )),
        Err(_) if left <= idle => Err("the answer did not finish within timeouts.total_ms".into()),
        Err(_) => Err(format!(
            "the upstream sent nothing for {} ms (timeouts.idle_ms)",
            idle.as_millis()
        )),
    }
}

/// A whole streamed answer, read for the cascade.
struct Collected {
    headers: HeaderMap,
    bytes: Vec<u8>,
    answer: Answer,
}

async fn collect_stream(
    response: reqwest::Response,
    strip_usage: bool,
    proxy: &Proxy,
    deadline: Instant,
) -> Result<Collected, String> {
    let headers = response.headers().clone();
    let idle = Duration::from_millis(proxy.config.timeouts.idle_ms);
    let mut upstream = response.bytes_stream();
    let mut events = SseEvents::new(strip_usage, true);
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(&mut upstream, idle, deadline).await? {
        events.buf.extend_from_slice(&chunk);
        while let Some(event) = events.next_event() {
            bytes.extend_from_slice(&event);
        }
    }
    bytes.append(&mut events.buf);
    Ok(Collected {
        headers,
        bytes,
        answer: events.answer,
    })
}

/// Relays an upstream stream event by event; settles the spend when it ends, breaks, or the
/// client goes away (on drop).
struct Relay {
    upstream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    events: SseEvents,
    idle: Duration,
    deadline: Instant,
    done: bool,
    settle: Option<(Accounting, String)>,
}

impl Relay {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(event) = self.events.next_event() {
                return Some(event);
            }
            if self.done {
                self.finish();
                return (!self.events.buf.is_empty()).then(|| std::mem::take(&mut self.events.buf));
            }
            match next_chunk(&mut self.upstream, self.idle, self.deadline).await {
                Ok(Some(bytes)) => self.events.buf.extend_from_slice(&bytes),
                Ok(None) => self.done = true,
                Err(reason) => {
                    tracing::warn!(%reason, "upstream stream failed; ending the client's stream with an error event");
                    self.done = true;
                    // a half-received event is dropped: the client gets whole events only
                    self.events.buf.clear();
                    self.finish();
                    return Some(error_event(&reason));
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some((accounting, model)) = self.settle.take() {
            let usage = self.events.answer.usage;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { accounting.settle(&model, usage).await });
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.finish();
    }
}

fn stream_response(
    response: reqwest::Response,
    ours: HeaderMap,
    strip_usage: bool,
    proxy: &Proxy,
    deadline: Instant,
    accounting: Accounting,
    model: String,
) -> Response {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
    let upstream_headers = response.headers().clone();
    let relay = Relay {
        upstream: response.bytes_stream().boxed(),
        events: SseEvents::new(strip_usage, false),
        idle: Duration::from_millis(proxy.config.timeouts.idle_ms),
        deadline,
        done: false,
        settle: Some((accounting, model)),
    };
    let body = futures_util::stream::unfold(relay, |mut relay| async move {
        let chunk = relay.next().await?;
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), relay))
    });
    let mut response = body_response(status, &upstream_headers, ours, Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("hi", 10), "hi");
    }

    #[test]
    fn events_split_on_blank_lines_and_usage_chunks_can_be_dropped() {
        let mut e = SseEvents::new(true, true);
        e.buf.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\npartial");
        let mut out = Vec::new();
        while let Some(event) = e.next_event() {
            out.push(String::from_utf8(event).unwrap());
        }
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[1].ends_with("\r\n\r\n"));
        assert_eq!(out[2], "data: [DONE]\n\n");
        assert_eq!(e.answer.text, "Hello");
        let u = e.answer.usage.unwrap();
        assert_eq!((u.prompt, u.completion), (3, 2));
        assert_eq!(e.buf, b"partial");
    }

    #[test]
    fn a_usage_chunk_the_client_asked_for_is_kept() {
        let mut e = SseEvents::new(false, false);
        e.buf
            .extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert!(e.next_event().is_some());
        assert_eq!(e.answer.usage.unwrap().prompt, 1);
    }

    #[test]
    fn requests_are_read_with_their_needs() {
        let body = serde_json::json!({
            "model": "auto",
            "stream": true,
            "tools": [{"type": "function"}],
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            ],
        });
        let Value::Object(map) = body else {
            unreachable!()
        };
        let r = ChatRequest::parse(map).unwrap();
        assert!(r.stream && r.wants_json);
        assert_eq!(r.user_turns, ["first", "look"]);
        assert_eq!(r.capabilities, ["tools", "vision"]);
        assert_eq!(
            r.other_text_bytes,
            "be brief".len() + "first".len() + "ok".len()
        );
        for (bad, needle) in [
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}]}),
                "`model`",
            ),
            (
                serde_json::json!({"model": "auto", "messages": []}),
                "`messages`",
            ),
            (
                serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "`stream`",
            ),
        ] {
            let Value::Object(map) = bad else {
                unreachable!()
            };
            let err = ChatRequest::parse(map).err().unwrap().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
