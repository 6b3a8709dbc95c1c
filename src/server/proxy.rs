//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! `model: "auto"` is routed on the conversation (see [`crate::proxy_config::ConversationPolicy`]);
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
use crate::dispatch;
use crate::index::Index;
use crate::policy::Outcome;
use crate::proxy_config::{CascadeCheck, ConversationText, Provider, ProxyConfig};

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
        .extensions_mut()
        .insert(super::error::ErrorKind(kind));
    response
}

fn proxy_of(state: &AppState) -> Result<Arc<Proxy>, ApiError> {
    state.proxy.clone().ok_or_else(|| {
        ApiError::NotFound(
            "the OpenAI-compatible proxy is off; start `pointsman serve --proxy proxy.yaml`".into(),
        )
    })
}

/// `GET /v1/models`: `auto`, every route (a group of candidate models), and every model a
/// provider serves.
#[utoipa::path(get, path = "/v1/models", tag = "proxy",
    responses((status = 200, description = "OpenAI's model list", body = serde_json::Value),
        (status = 404, description = "The proxy is off (OpenAI error shape)", body = serde_json::Value)))]
pub(super) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        state.admit_caller(&headers).await?;
        let proxy = proxy_of(&state)?;
        let index = state.engine()?.index();
        let table = index.table();
        let entry = |id: &str, owner: &str| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner});
        let mut data = vec![entry("auto", "pointsman")];
        data.extend(
            table
                .routes
                .iter()
                .map(|r| entry(&r.name, "pointsman-route")),
        );
        let served = proxy.config.served_models(table);
        data.extend(served.into_iter().map(|(m, p)| entry(m, p)));
        Ok::<_, ApiError>(serde_json::json!({"object": "list", "data": data}))
    }
    .await;
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
    /// Bytes of message text in the whole conversation (for the context-window estimate).
    text_bytes: usize,
    capabilities: Vec<String>,
    /// The client's request headers.
    headers: HeaderMap,
}

impl ChatRequest {
    fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Reads the request; `headers` are the client's, kept for the providers that forward some.
    fn parse(body: Map<String, Value>, headers: HeaderMap) -> Result<Self, ApiError> {
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
        Ok(ChatRequest {
            body,
            model,
            stream,
            wants_json,
            user_turns,
            text_bytes,
            capabilities,
            headers,
        })
    }
}

/// How the request reached its model: what the router decided, and the models to try.
struct Plan {
    /// The routing decision (absent for a pass-through).
    routed: Option<RouteResponse>,
    /// Models to try, in order: the chosen one, then the fallbacks.
    models: Vec<Candidate>,
    /// The route's cascade check, if it asks for one.
    cascade: Option<CascadeCheck>,
    caps: Vec<CapKey>,
    /// The index snapshot the decision was made on: prices and providers are read from it.
    snapshot: Arc<Index>,
    /// The request's id, under which its decision (and a cascade's grades) are remembered.
    request_id: Option<String>,
}

/// `POST /v1/chat/completions`: OpenAI's chat-completions request; `model` is `auto`, a route
/// name, or a model name. Answers are the upstream's (streamed as server-sent events with
/// `stream: true`); errors use OpenAI's shape.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "proxy",
    request_body(content = serde_json::Value, description = "OpenAI chat-completions request"),
    responses((status = 200, description = "The upstream's answer, with x-pointsman-* headers", body = serde_json::Value),
        (status = 404, description = "Unknown model, or the proxy is off", body = serde_json::Value),
        (status = 502, description = "Every candidate failed", body = serde_json::Value),
        (status = 504, description = "No upstream answered in time", body = serde_json::Value)))]
pub(super) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    let result = async {
        state.admit_caller(&headers).await?;
        let proxy = proxy_of(&state)?;
        let ApiJson(body) = body?;
        let who = super::identity(&headers);
        let request_id = super::request_id(&headers).map(str::to_string);
        let request = ChatRequest::parse(body, headers)?;
        let mut plan = plan(&state, &proxy, &request, &who).await?;
        plan.request_id = request_id.clone();
        let decided = plan.routed.clone();
        let response = forward(&state, &proxy, request, plan).await?;
        // feedback grades the model that answered (after any fallback or escalation)
        if let Some(mut decided) = decided {
            if let Some(answered) = response
                .headers()
                .get("x-pointsman-model")
                .and_then(|v| v.to_str().ok())
            {
                decided.selection.model = answered.to_string();
            }
            state.remember(request_id.as_deref(), &decided);
        }
        Ok(response)
    }
    .await;
    result.unwrap_or_else(openai_error)
}

async fn plan(
    state: &AppState,
    proxy: &Proxy,
    request: &ChatRequest,
    who: &Identity,
) -> Result<Plan, ApiError> {
    // the one snapshot of the live index this request reads, to its end
    let snapshot = state.engine()?.index();
    let table = snapshot.table();
    let caps = caps_for(&table.budgets, who, std::time::SystemTime::now());
    let routed_name = request.model == "auto" || table.route(&request.model).is_some();
    if !routed_name {
        if proxy.config.provider_for(&request.model, table).is_none() {
            return Err(ApiError::NotFound(format!(
                "model `{}`: not `auto`, a route, or a model a provider serves (GET /v1/models lists them)",
                request.model
            )));
        }
        // unrouted, but not uncounted: its estimate is reserved like a routed request's
        let prompt_tokens = (request.text_bytes() as u64).div_ceil(4);
        let estimate_usd = table.catalog.get(&request.model).map(|m| {
            m.cost_usd(
                prompt_tokens,
                u64::from(crate::config::DEFAULT_EXPECTED_OUTPUT_TOKENS),
            )
        });
        return Ok(Plan {
            routed: None,
            models: vec![Candidate {
                model: request.model.clone(),
                estimate_usd,
                reserved: false,
            }],
            cascade: None,
            caps,
            snapshot,
            request_id: None,
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
    let req = dispatch::Request {
        prompt: dispatch::Prompt::Conversation {
            turns: &conversation,
            policy: &proxy.config.conversation,
        },
        route: (request.model != "auto").then_some(request.model.as_str()),
        who,
        capabilities: &request.capabilities,
        // the context window must hold the whole conversation
        whole_text_bytes: request.text_bytes(),
        explain: false,
    };
    let cx = state.context()?;
    let result = dispatch::dispatch_on(&cx, Arc::clone(&snapshot), &req).await;
    state.log_decision(who, result.as_ref());
    let decided = result.map_err(|e| state.refused(&e))?;
    super::record_decision(state, &decided);
    let mut models = vec![Candidate {
        model: decided.selection.model.clone(),
        estimate_usd: decided.selection.estimated_cost_usd,
        reserved: decided.selection.counted.is_some(),
    }];
    models.extend(decided.fallbacks.iter().map(|e| Candidate {
        model: e.model.clone(),
        estimate_usd: e.estimated_cost_usd,
        reserved: false,
    }));
    let cascade = decided
        .routed
        .decision
        .route()
        .and_then(|r| proxy.config.cascade.get(r).cloned());
    Ok(Plan {
        routed: Some(decided),
        models,
        cascade,
        caps,
        snapshot,
        request_id: None,
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

/// A model the proxy may try, with what it is expected to cost.
struct Candidate {
    model: String,
    /// Estimated cost of this request on it (`None` without a catalog entry).
    estimate_usd: Option<f64>,
    /// Whether that estimate is already reserved against the spend caps (the router's choice).
    reserved: bool,
}

/// Why one try of one model failed.
enum TryFailure {
    /// Worth retrying (connection error, timeout, 429, 5xx, a body cut short), with the
    /// upstream's Retry-After.
    Transient(String, Option<Duration>),
    /// Not worth retrying this model (401, 403, 404, 408): fall back at once.
    Model(String),
}

/// An answer's body as received: whole, or a stream whose first event has arrived.
enum AnswerBody {
    Whole(Bytes),
    Stream {
        first: Vec<u8>,
        rest: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    },
}

/// A successful upstream answer.
struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    body: AnswerBody,
    /// Position of the model in the plan's list.
    position: usize,
    /// Whether the relay must drop the usage chunk pointsman asked for.
    strip_usage: bool,
}

/// The outcome of trying the plan's models from `start`.
enum Attempt {
    Answered(Answered),
    /// The upstream refused the request itself (400, 413, 422, ...): the client's to fix.
    Refused {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        position: usize,
    },
}

/// A request on its way through the candidates.
struct Run {
    deadline: Instant,
    spend: Spend,
    /// Upstream tries so far.
    tries: u32,
}

/// Tries `plan.models[start..]` in order, each up to `retries.attempts` times, reserving each
/// fallback's estimate against the spend caps before trying it.
async fn attempt(
    state: &AppState,
    proxy: &Proxy,
    request: &ChatRequest,
    plan: &Plan,
    start: usize,
    run: &mut Run,
) -> Result<Attempt, ApiError> {
    let deadline = run.deadline;
    let config = &proxy.config;
    let table = plan.snapshot.table();
    let mut failures = Vec::new();
    let mut over_budget = 0;
    for (position, candidate) in plan.models.iter().enumerate().skip(start) {
        let model = &candidate.model;
        let provider = config.provider_for(model, table).ok_or_else(|| {
            ApiError::Internal(format!("no provider serves `{model}` (checked at start)"))
        })?;
        if !run.spend.reserve(candidate).await {
            failures.push(format!("{model}: over a spend cap"));
            over_budget += 1;
            continue;
        }
        let (body, strip_usage) = upstream_body(request, provider, model);
        let mut retry_after = None;
        let mut tried = 0;
        let mut gave_up = false;
        while tried < config.retries.attempts {
            if tried > 0 {
                let wait = config.retries.backoff(tried, retry_after.take());
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            tried += 1;
            run.tries += 1;
            let span = tracing::info_span!("upstream", otel.name = %format!("upstream {model}"), model = %model, provider = %provider.name, attempt = tried);
            let outcome = try_once(proxy, provider, request, &body, deadline)
                .instrument(span)
                .await;
            let failure = match outcome {
                Ok(Tried::Answered(status, headers, answer)) => {
                    state.metrics.upstream(model, "ok");
                    return Ok(Attempt::Answered(Answered {
                        status,
                        headers,
                        body: answer,
                        position,
                        strip_usage,
                    }));
                }
                Ok(Tried::Refused(status, headers, body)) => {
                    state.metrics.upstream(model, "status_4xx");
                    return Ok(Attempt::Refused {
                        status,
                        headers,
                        body,
                        position,
                    });
                }
                Err((result, failure)) => {
                    state.metrics.upstream(model, result);
                    failure
                }
            };
            match failure {
                TryFailure::Transient(detail, after) => {
                    tracing::warn!(%model, %detail, attempt = tried, "upstream try failed");
                    failures.push(format!("{model}: {detail}"));
                    retry_after = after;
                }
                TryFailure::Model(detail) => {
                    tracing::warn!(%model, %detail, "upstream refused the model; trying the next candidate");
                    failures.push(format!("{model}: {detail}"));
                    gave_up = true;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        // the model failed: its reservation goes back
        run.spend.release(candidate);
        // only a model that failed every try it was given is marked down for everyone
        if !gave_up && tried == config.retries.attempts && config.mark_down_s > 0 {
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
    if over_budget > 0 && over_budget == plan.models.len() - start {
        return Err(ApiError::BudgetExhausted(format!(
            "every candidate model is over a spend cap: {}",
            failures.join("; ")
        )));
    }
    Err(ApiError::Upstream(format!(
        "every candidate model failed: {}",
        failures.join("; ")
    )))
}

/// What one try brought back.
enum Tried {
    Answered(StatusCode, HeaderMap, AnswerBody),
    Refused(StatusCode, HeaderMap, Bytes),
}

/// One request to one upstream: the headers within `first_byte_ms`, then the whole body (or, for
/// a stream, its first event) within the deadline, so that an upstream that stalls or breaks
/// before the client has seen anything can still be retried or replaced.
async fn try_once(
    proxy: &Proxy,
    provider: &Provider,
    request: &ChatRequest,
    body: &Map<String, Value>,
    deadline: Instant,
) -> Result<Tried, (&'static str, TryFailure)> {
    let stream = request.stream;
    let timeouts = &proxy.config.timeouts;
    let left = deadline.saturating_duration_since(Instant::now());
    let first_byte = Duration::from_millis(timeouts.first_byte_ms).min(left);
    let mut req = proxy.client.post(provider.chat_url()).json(body);
    for name in &provider.forward_headers {
        for value in request.headers.get_all(name) {
            req = req.header(name, value);
        }
    }
    if let Some(key) = &provider.api_key {
        req = req.bearer_auth(key);
    }
    let transient =
        |what: &'static str, detail: String| (what, TryFailure::Transient(detail, None));
    let response = match tokio::time::timeout(first_byte, req.send()).await {
        Err(_) => {
            return Err(transient(
                "timeout",
                format!("no response within {} ms", first_byte.as_millis()),
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "upstream request failed");
            let what = if e.is_connect() {
                "could not connect"
            } else {
                "the request failed"
            };
            return Err(transient("connect", what.into()));
        }
        Ok(Ok(r)) => r,
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers().clone();
    if !status.is_success() {
        let after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let detail = format!("upstream answered {status}");
        return match status.as_u16() {
            429 => Err(("status_429", TryFailure::Transient(detail, after))),
            500..=599 => Err(("status_5xx", TryFailure::Transient(detail, after))),
            401 | 403 | 404 | 408 => Err(("status_4xx", TryFailure::Model(detail))),
            _ => match read_whole(response, deadline).await {
                Ok(bytes) => Ok(Tried::Refused(status, headers, bytes)),
                Err(detail) => Err(transient("broken", detail)),
            },
        };
    }
    if !stream {
        return match read_whole(response, deadline).await {
            Ok(bytes) => Ok(Tried::Answered(status, headers, AnswerBody::Whole(bytes))),
            Err(detail) => Err(transient("broken", detail)),
        };
    }
    // nothing reaches the client until the first whole event is here
    let mut rest = response.bytes_stream().boxed();
    let mut first = Vec::new();
    let first_event = Instant::now() + first_byte;
    while event_end(&first).is_none() {
        match next_chunk(
            &mut rest,
            Duration::from_millis(timeouts.idle_ms),
            first_event.min(deadline),
        )
        .await
        {
            Ok(Some(chunk)) => first.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(detail) => {
                return Err(transient(
                    "broken",
                    format!("before the first event: {detail}"),
                ));
            }
        }
    }
    if first.is_empty() {
        return Err(transient(
            "broken",
            "the stream ended before any event".into(),
        ));
    }
    Ok(Tried::Answered(
        status,
        headers,
        AnswerBody::Stream { first, rest },
    ))
}

/// A whole body, within the deadline; what went wrong otherwise (the detail is logged).
async fn read_whole(response: reqwest::Response, deadline: Instant) -> Result<Bytes, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, response.bytes()).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "upstream answer broke off");
            Err("the answer broke off".into())
        }
        Err(_) => Err("the answer did not finish within timeouts.total_ms".into()),
    }
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
/// stream, a final usage chunk asked for; the flag says the client did not ask for it, so that
/// the relay drops it.
fn upstream_body(
    request: &ChatRequest,
    provider: &Provider,
    model: &str,
) -> (Map<String, Value>, bool) {
    let mut body = request.body.clone();
    body.insert(
        "model".into(),
        Value::String(provider.upstream_model(model).to_string()),
    );
    let mut strip_usage = false;
    if request.stream && provider.stream_usage {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            if o.get("include_usage").and_then(Value::as_bool) != Some(true) {
                o.insert("include_usage".into(), Value::Bool(true));
                strip_usage = true;
            }
        }
    }
    (body, strip_usage)
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

/// A request's spend: estimates reserved against the caps before each model is tried, then
/// settled to the upstreams' reported usage (up or down: upstream figures are trusted, unlike
/// a caller's `/v1/usage`). Settles by itself when dropped, so that a request that fails or
/// whose client goes away gives back what it reserved.
struct Spend {
    state: AppState,
    snapshot: Arc<Index>,
    caps: Vec<CapKey>,
    /// Reserved now.
    reserved_usd: f64,
    /// Really spent on answers that were not the last (a cascade's rejected ones).
    spent_usd: f64,
    /// Real costs by model, for the metrics once settled.
    costs: Vec<(String, f64)>,
    settled: bool,
}

impl Spend {
    fn new(state: &AppState, plan: &Plan) -> Self {
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
    async fn reserve(&mut self, c: &Candidate) -> bool {
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
    fn release(&mut self, c: &Candidate) {
        if let (Some(cost), false) = (c.estimate_usd, self.caps.is_empty()) {
            // the router's own reservation counts as reserved here too
            let cost = cost.min(self.reserved_usd);
            self.reserved_usd -= cost;
            self.adjust(-cost, Vec::new());
        }
    }

    /// Moves the spend counters by `delta` (off the caller's path), then counts `costs` in the
    /// metrics, so that what the metrics show the counters hold.
    fn adjust(&self, delta: f64, costs: Vec<(String, f64)>) {
        let (ledger, caps) = (Arc::clone(&self.state.ledger), self.caps.clone());
        let metrics = Arc::clone(&self.state.metrics);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if delta != 0.0 && !caps.is_empty() {
                    ledger.adjust(&caps, delta).await;
                }
                for (model, cost) in costs {
                    metrics.usage(&model, cost);
                }
            });
        }
    }

    /// The real cost of `usage` on `model` (0 without a catalog price).
    fn cost(&mut self, model: &str, usage: Usage) -> f64 {
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
    fn add(&mut self, model: &str, usage: Option<Usage>, estimate: Option<f64>) {
        self.spent_usd += match usage {
            Some(u) => self.cost(model, u),
            None => estimate.unwrap_or(0.0),
        };
    }

    /// Settles with the final answer's usage; without a reported usage its estimate stands.
    fn settle(&mut self, model: &str, usage: Option<Usage>, estimate: Option<f64>) {
        self.add(model, usage, estimate);
        self.finish();
    }

    fn finish(&mut self) {
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

async fn forward(
    state: &AppState,
    proxy: &Proxy,
    request: ChatRequest,
    plan: Plan,
) -> Result<Response, ApiError> {
    let mut run = Run {
        deadline: Instant::now() + Duration::from_millis(proxy.config.timeouts.total_ms),
        spend: Spend::new(state, &plan),
        tries: 0,
    };
    let mut start = 0;
    let mut escalations = Vec::new();
    loop {
        let answered = match attempt(state, proxy, &request, &plan, start, &mut run).await? {
            Attempt::Answered(a) => a,
            Attempt::Refused {
                status,
                headers,
                body,
                position,
            } => {
                let ours = decision_headers(&plan, position, run.tries, &escalations);
                return Ok(body_response(status, &headers, ours, Body::from(body)));
            }
        };
        let candidate = &plan.models[answered.position];
        let model = candidate.model.clone();
        let ours = decision_headers(&plan, answered.position, run.tries, &escalations);
        let last_candidate = answered.position + 1 == plan.models.len();
        let check = plan.cascade.as_ref().filter(|_| !last_candidate);
        let Some(check) = check else {
            // no check to make: the answer goes to the client as it comes
            return Ok(match answered.body {
                AnswerBody::Stream { first, rest } => stream_response(
                    answered.status,
                    &answered.headers,
                    ours,
                    Relay {
                        upstream: rest,
                        events: SseEvents::new(first, answered.strip_usage, false),
                        idle: Duration::from_millis(proxy.config.timeouts.idle_ms),
                        deadline: run.deadline,
                        done: false,
                        settle: Some((run.spend, model, candidate.estimate_usd)),
                    },
                ),
                AnswerBody::Whole(bytes) => {
                    let usage = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| usage_of(&v));
                    run.spend.settle(&model, usage, candidate.estimate_usd);
                    body_response(answered.status, &answered.headers, ours, Body::from(bytes))
                }
            });
        };
        // the cascade reads the whole answer before the client sees any of it
        let (bytes, answer) = match answered.body {
            AnswerBody::Whole(bytes) => {
                let answer = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .map(|v| Answer::of_completion(&v))
                    .unwrap_or_default();
                (bytes, answer)
            }
            AnswerBody::Stream { first, rest } => {
                let idle = Duration::from_millis(proxy.config.timeouts.idle_ms);
                match collect_stream(first, rest, answered.strip_usage, idle, run.deadline).await {
                    Ok((bytes, answer)) => (Bytes::from(bytes), answer),
                    Err(reason) => {
                        run.spend.add(&model, None, candidate.estimate_usd);
                        escalations.push(format!("{model}: {reason}"));
                        start = answered.position + 1;
                        continue;
                    }
                }
            }
        };
        let verdict = check.failure(&answer.text, answer.tool_calls, request.wants_json);
        // the check's verdict grades the answer, for the next `build --outcomes`
        if let (Some(outcomes), Some(routed), Some(id)) =
            (&state.outcomes, &plan.routed, &plan.request_id)
        {
            let grade = if verdict.is_none() { 1.0 } else { 0.0 };
            outcomes.append(&format!("cascade:{id}"), &routed.text, &model, grade);
        }
        match verdict {
            None => {
                run.spend
                    .settle(&model, answer.usage, candidate.estimate_usd);
                return Ok(body_response(
                    answered.status,
                    &answered.headers,
                    ours,
                    Body::from(bytes),
                ));
            }
            Some(reason) => {
                tracing::info!(%model, %reason, "cascade: answer failed the check; escalating");
                run.spend.add(&model, answer.usage, candidate.estimate_usd);
                escalations.push(format!("{model}: {reason}"));
                start = answered.position + 1;
            }
        }
    }
}

/// The pointsman headers of a proxied answer.
fn decision_headers(plan: &Plan, position: usize, tries: u32, escalations: &[String]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-pointsman-model", plan.models[position].model.clone());
    put("x-pointsman-fallback", (position > 0).to_string());
    put("x-pointsman-attempts", tries.to_string());
    if !escalations.is_empty() {
        put("x-pointsman-escalations", escalations.len().to_string());
    }
    match &plan.routed {
        None => put("x-pointsman-outcome", "passthrough".into()),
        Some(r) => {
            let outcome = &r.routed.decision.outcome;
            let name = match outcome {
                Outcome::Matched { .. } => "matched",
                Outcome::Rule { .. } => "rule",
                Outcome::Override { .. } => "override",
                Outcome::Fallback { .. } => "fallback",
            };
            put("x-pointsman-outcome", name.into());
            if let Some(route) = r.routed.decision.route() {
                put("x-pointsman-route", route.to_string());
            }
            if let Outcome::Matched { score, .. } = outcome {
                put("x-pointsman-score", format!("{score:.4}"));
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

/// A response with the upstream's status and content type, and our headers.
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

/// Splits an SSE byte stream into whole events (each ending with a blank line) and inspects
/// the `data:` payloads for usage, the end marker and, when asked, the answer's text.
struct SseEvents {
    buf: Vec<u8>,
    strip_usage: bool,
    collect: bool,
    answer: Answer,
    done_seen: bool,
}

impl SseEvents {
    fn new(first: Vec<u8>, strip_usage: bool, collect: bool) -> Self {
        SseEvents {
            buf: first,
            strip_usage,
            collect,
            answer: Answer::default(),
            done_seen: false,
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
            if data == "[DONE]" {
                self.done_seen = true;
                continue;
            }
            if !(self.collect || data.contains("\"usage\"")) {
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

/// The next chunk of an upstream stream within the idle timeout and the deadline.
async fn next_chunk(
    upstream: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    idle: Duration,
    deadline: Instant,
) -> Result<Option<Bytes>, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(idle.min(left), upstream.next()).await {
        Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => {
            tracing::warn!(error = %error_chain(&e), "upstream stream broke off");
            Err("the upstream stream broke off".into())
        }
        Err(_) if left <= idle => Err("no answer within the time allowed (timeouts)".into()),
        Err(_) => Err(format!(
            "the upstream sent nothing for {} ms (timeouts.idle_ms)",
            idle.as_millis()
        )),
    }
}

/// A whole streamed answer, read for the cascade: its bytes as the client would get them, and
/// what it said.
async fn collect_stream(
    first: Vec<u8>,
    mut rest: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    strip_usage: bool,
    idle: Duration,
    deadline: Instant,
) -> Result<(Vec<u8>, Answer), String> {
    let mut events = SseEvents::new(first, strip_usage, true);
    let mut bytes = Vec::new();
    loop {
        while let Some(event) = events.next_event() {
            bytes.extend_from_slice(&event);
        }
        match next_chunk(&mut rest, idle, deadline).await? {
            Some(chunk) => events.buf.extend_from_slice(&chunk),
            None => break,
        }
    }
    if !events.done_seen {
        return Err("the stream ended without `data: [DONE]`".into());
    }
    bytes.append(&mut events.buf);
    Ok((bytes, events.answer))
}

/// Relays an upstream stream event by event; settles the spend when it ends, breaks, or the
/// client goes away (on drop).
struct Relay {
    upstream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    events: SseEvents,
    idle: Duration,
    deadline: Instant,
    done: bool,
    settle: Option<(Spend, String, Option<f64>)>,
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
            let failure = match next_chunk(&mut self.upstream, self.idle, self.deadline).await {
                Ok(Some(bytes)) => {
                    self.events.buf.extend_from_slice(&bytes);
                    continue;
                }
                Ok(None) if self.events.done_seen => {
                    self.done = true;
                    continue;
                }
                Ok(None) => "the upstream ended the stream without `data: [DONE]`".to_string(),
                Err(reason) => reason,
            };
            tracing::warn!(reason = %failure, "upstream stream failed; ending the client's stream with an error event");
            self.done = true;
            // a half-received event is dropped: the client gets whole events only
            self.events.buf.clear();
            self.finish();
            return Some(error_event(&failure));
        }
    }

    fn finish(&mut self) {
        if let Some((mut spend, model, estimate)) = self.settle.take() {
            spend.settle(&model, self.events.answer.usage, estimate);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.finish();
    }
}

fn stream_response(
    status: StatusCode,
    upstream: &HeaderMap,
    ours: HeaderMap,
    relay: Relay,
) -> Response {
    let body = futures_util::stream::unfold(relay, |mut relay| async move {
        let chunk = relay.next().await?;
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), relay))
    });
    let mut response = body_response(status, upstream, ours, Body::from_stream(body));
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
        let mut e = SseEvents::new(Vec::new(), true, true);
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
        let mut e = SseEvents::new(Vec::new(), false, false);
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
        let r = ChatRequest::parse(map, HeaderMap::new()).unwrap();
        assert!(r.stream && r.wants_json);
        assert_eq!(r.user_turns, ["first", "look"]);
        assert_eq!(r.capabilities, ["tools", "vision"]);
        assert_eq!(
            r.text_bytes(),
            "be brief".len() + "first".len() + "ok".len() + "look".len()
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
            let err = ChatRequest::parse(map, HeaderMap::new())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
