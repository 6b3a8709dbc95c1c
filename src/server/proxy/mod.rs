//! The proxy: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` and
//! `/v1/messages/count_tokens` (Anthropic), `POST /v1/responses` (OpenAI Responses), and
//! `GET /v1/models`.
//!
//! `model: "auto"` is routed on the conversation (see [`crate::proxy_config::ConversationPolicy`]);
//! `model: "<route>"` pins a route and lets the candidates be chosen; any other model a
//! provider serves passes through unrouted. A request with a session key stays on its
//! session's model unless a turn needs a stronger one ([`crate::dispatch::SessionStep`]). The
//! chosen model's provider gets the request in the API it speaks (translated by
//! [`crate::wire`] when it is not the client's) with `model` rewritten; 429, 5xx, timeouts and
//! connection errors are retried with backoff, then the route's next candidate is tried, of
//! whatever API. Streams are relayed event by event as they arrive, translated when they must
//! be. Errors use the client's API's shape so that its SDK reads them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::{ApiError, ApiJson, AppState, Content, Message, RouteResponse};
use crate::budget::{CapKey, Identity, caps_for};
use crate::dispatch;
use crate::index::Index;
use crate::policy::Outcome;
use crate::proxy_config::{CascadeCheck, ConversationText, ProxyConfig};
use crate::session::Sessions;
use crate::wire::{self, Api};

mod request;
mod spend;
mod sse;
mod upstream;

use request::ChatRequest;
use spend::Spend;
use sse::{Relay, SseEvents, StreamRoute, collect_stream, stream_response};
use upstream::{AnswerBody, Attempt, Candidate, Run, Usage, attempt, usage_of};

/// The proxy's configuration, its HTTP client and its sticky sessions.
pub(super) struct Proxy {
    pub(super) config: ProxyConfig,
    client: reqwest::Client,
    sessions: Sessions,
}

impl Proxy {
    pub(super) fn new(config: ProxyConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.timeouts.connect_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let sessions = Sessions::new(Duration::from_secs(config.sessions.ttl_s));
        Ok(Proxy {
            config,
            client,
            sessions,
        })
    }
}

/// An error in the shape of the client's API, with our status and kind.
fn api_error(api: Api, e: ApiError) -> Response {
    let (status, kind) = e.status_and_kind();
    if let ApiError::Internal(detail) = &e {
        tracing::error!(detail = %detail, "internal error");
    }
    let body = wire::error_body(api, status.as_u16(), kind, &e.to_string());
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
/// provider serves; in Anthropic's shape when the request carries `anthropic-version`.
#[utoipa::path(get, path = "/v1/models", tag = "proxy",
    responses((status = 200, description = "OpenAI's model list", body = serde_json::Value),
        (status = 404, description = "The proxy is off (OpenAI error shape)", body = serde_json::Value)))]
pub(super) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        state.admit_caller(&headers).await?;
        let proxy = proxy_of(&state)?;
        let index = state.engine()?.index();
        let table = index.table();
        let anthropic = headers.contains_key("anthropic-version");
        let entry = |id: &str, owner: &str| {
            if anthropic {
                serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
            } else {
                serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
            }
        };
        let mut data = vec![entry("auto", "pointsman")];
        data.extend(
            table
                .routes
                .iter()
                .map(|r| entry(&r.name, "pointsman-route")),
        );
        let served = proxy.config.served_models(table);
        data.extend(served.into_iter().map(|(m, p)| entry(m, p)));
        if anthropic {
            let (first, last) = (data[0]["id"].clone(), data[data.len() - 1]["id"].clone());
            return Ok::<_, ApiError>(serde_json::json!({"data": data, "has_more": false, "first_id": first, "last_id": last}));
        }
        Ok::<_, ApiError>(serde_json::json!({"object": "list", "data": data}))
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => api_error(Api::ChatCompletions, e),
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
    /// The route's reasoning effort, if the proxy file sets one.
    effort: Option<wire::Effort>,
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
    proxied(Api::ChatCompletions, state, headers, body).await
}

/// `POST /v1/messages`: Anthropic's Messages request, routed like chat completions (`model` is
/// `auto`, a route name, or a model name); the answer is in Anthropic's shape whatever API the
/// chosen model's provider speaks (streamed as Anthropic's events with `stream: true`), and so
/// are errors. The key may come as `x-api-key`.
#[utoipa::path(post, path = "/v1/messages", tag = "proxy",
    request_body(content = serde_json::Value, description = "Anthropic Messages request"),
    responses((status = 200, description = "The answer in Anthropic's shape, with x-pointsman-* headers", body = serde_json::Value),
        (status = 404, description = "Unknown model, or the proxy is off (Anthropic error shape)", body = serde_json::Value),
        (status = 502, description = "Every candidate failed", body = serde_json::Value)))]
pub(super) async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    proxied(Api::AnthropicMessages, state, headers, body).await
}

/// `POST /v1/responses`: OpenAI's Responses request (the whole conversation in `input`;
/// `previous_response_id` is refused, as pointsman keeps no responses), routed like chat
/// completions; the answer is a Responses object (or its events with `stream: true`).
#[utoipa::path(post, path = "/v1/responses", tag = "proxy",
    request_body(content = serde_json::Value, description = "OpenAI Responses request"),
    responses((status = 200, description = "The answer as a Responses object, with x-pointsman-* headers", body = serde_json::Value),
        (status = 404, description = "Unknown model, or the proxy is off (OpenAI error shape)", body = serde_json::Value),
        (status = 502, description = "Every candidate failed", body = serde_json::Value)))]
pub(super) async fn responses(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    proxied(Api::OpenaiResponses, state, headers, body).await
}

/// `POST /v1/messages/count_tokens`: the request's input tokens. A model named directly whose
/// provider speaks Anthropic Messages counts them itself; otherwise (`auto`, a route, another
/// provider) pointsman estimates four bytes a token over the text and tool definitions.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "proxy",
    request_body(content = serde_json::Value, description = "Anthropic count_tokens request"),
    responses((status = 200, description = "`{\"input_tokens\": n}`", body = serde_json::Value)))]
pub(super) async fn count_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    let result = async {
        state.admit_caller(&headers).await?;
        let proxy = proxy_of(&state)?;
        let ApiJson(mut body) = body?;
        wire::messages::request_to_chat(&body).map_err(|e| ApiError::Validation(e.to_string()))?;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let index = state.engine()?.index();
        let provider = proxy
            .config
            .provider_for(&model, index.table())
            .filter(|p| p.api == Api::AnthropicMessages);
        if let Some(provider) = provider {
            body.insert("model".into(), provider.upstream_model(&model).into());
            let url = format!("{}/count_tokens", provider.url());
            let answer = upstream::anthropic_auth(
                proxy.client.post(url).json(&body),
                provider,
                Some(&headers),
            )
            .timeout(Duration::from_millis(proxy.config.timeouts.first_byte_ms))
            .send()
            .await
            .map_err(|e| {
                ApiError::Upstream(format!(
                    "`{}` could not count the tokens: {}",
                    provider.name,
                    upstream::error_chain(&e)
                ))
            })?;
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = answer.bytes().await.map_err(|e| {
                ApiError::Upstream(format!(
                    "`{}` broke off counting tokens: {e}",
                    provider.name
                ))
            })?;
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        let tokens = wire::messages::estimate_tokens(&body);
        Ok(axum::Json(serde_json::json!({"input_tokens": tokens})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| api_error(Api::AnthropicMessages, e))
}

/// One proxied request in `client`'s API, decided, forwarded and answered in that API.
async fn proxied(
    client: Api,
    state: AppState,
    headers: HeaderMap,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> Response {
    let result = async {
        state.admit_caller(&headers).await?;
        let proxy = proxy_of(&state)?;
        let ApiJson(body) = body?;
        let who = super::identity(&headers);
        let request_id = super::request_id(&headers).map(str::to_string);
        let request = ChatRequest::parse(client, body, headers)?;
        let mut plan = plan(&state, &proxy, &request, &who).await?;
        plan.request_id = request_id.clone();
        // kept for feedback only when the outcome log is on
        let decided = plan
            .routed
            .as_ref()
            .filter(|_| state.outcomes.is_some())
            .cloned();
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
    result.unwrap_or_else(|e| api_error(client, e))
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
    // reserved, given back and settled in the windows of this one moment
    let at = std::time::SystemTime::now();
    let caps = caps_for(&table.budgets, who, at);
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
            effort: None,
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
    // a session holds a conversation routed by meaning, not one pinned to a route
    let session_key = request
        .session
        .as_deref()
        .filter(|_| proxy.config.sessions.ttl_s > 0 && request.model == "auto");
    let redis = state.ledger.redis();
    let session_model = match session_key {
        Some(key) => proxy.sessions.get(key, redis).await,
        None => None,
    };
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
        session: session_model.as_deref(),
        at,
    };
    let cx = state.context()?;
    let result = dispatch::dispatch_on(&cx, Arc::clone(&snapshot), &req).await;
    state.log_decision(who, result.as_ref());
    let decided = result.map_err(|e| state.refused(&e))?;
    super::record_decision(state, &decided);
    // the session is on the model chosen now, for its ttl from this turn; one whose model
    // could not serve this turn stays on it for the next
    if let Some(key) = session_key {
        // unless the turn's own choice is stronger (the session's model may never fit again)
        let strength = |m: &str| crate::selection::strength(&table.catalog, m);
        let chosen = &decided.selection.model;
        let model = match &decided.session {
            Some(dispatch::SessionStep::Lost { from }) if strength(from) >= strength(chosen) => {
                from
            }
            _ => chosen,
        };
        proxy.sessions.keep(key, model, redis).await;
    }
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
    let route = decided.routed.decision.route();
    let cascade = route.and_then(|r| proxy.config.cascade.get(r).cloned());
    let effort = route.and_then(|r| proxy.config.reasoning_effort.get(r).copied());
    Ok(Plan {
        routed: Some(decided),
        models,
        cascade,
        effort,
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
                api,
            } => {
                let ours = decision_headers(&plan, position, run.tries, &escalations);
                if api == request.client {
                    return Ok(body_response(status, &headers, ours, Body::from(body)));
                }
                // the upstream's refusal, told in the client's API
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| wire::error_message(&v).map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
                let kind = match status.as_u16() {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    409 => "conflict_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    _ => "invalid_request_error",
                };
                let body = wire::error_body(request.client, status.as_u16(), kind, &message);
                let mut response = (status, axum::Json(body)).into_response();
                response.headers_mut().extend(ours);
                return Ok(response);
            }
        };
        let candidate = &plan.models[answered.position];
        let model = candidate.model.clone();
        let ours = decision_headers(&plan, answered.position, run.tries, &escalations);
        let last_candidate = answered.position + 1 == plan.models.len();
        let check = plan.cascade.as_ref().filter(|_| !last_candidate);
        let route = StreamRoute {
            upstream: answered.api,
            client: request.client,
            model: &model,
            include_usage: request.include_usage,
            strip_usage: answered.strip_usage,
        };
        let Some(check) = check else {
            // no check to make: the answer goes to the client as it comes
            return Ok(match answered.body {
                AnswerBody::Stream { first, rest } => stream_response(
                    answered.status,
                    &answered.headers,
                    ours,
                    Relay {
                        upstream: rest,
                        events: SseEvents::new(first, route, false),
                        idle: Duration::from_millis(proxy.config.timeouts.idle_ms),
                        deadline: run.deadline,
                        done: false,
                        settle: Some((run.spend, model.clone(), candidate.estimate_usd)),
                    },
                ),
                AnswerBody::Whole(bytes) => match whole_answer(route, bytes) {
                    Ok((bytes, answer)) => {
                        run.spend
                            .settle(&model, answer.usage, candidate.estimate_usd);
                        body_response(answered.status, &answered.headers, ours, Body::from(bytes))
                    }
                    Err(error) => {
                        // the estimate stands: the upstream may have charged for it
                        run.spend.settle(&model, None, candidate.estimate_usd);
                        let mut response =
                            (StatusCode::BAD_GATEWAY, axum::Json(error)).into_response();
                        response.headers_mut().extend(ours);
                        response
                    }
                },
            });
        };
        // the cascade reads the whole answer before the client sees any of it
        let (bytes, answer) = match answered.body {
            AnswerBody::Whole(bytes) => match whole_answer(route, bytes) {
                Ok(read) => read,
                Err(_) => {
                    run.spend.add(&model, None, candidate.estimate_usd);
                    escalations.push(format!("{model}: its answer could not be read"));
                    start = answered.position + 1;
                    continue;
                }
            },
            AnswerBody::Stream { first, rest } => {
                let idle = Duration::from_millis(proxy.config.timeouts.idle_ms);
                match collect_stream(first, rest, route, idle, run.deadline).await {
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

/// A whole answer from a provider speaking `route.upstream`, as the client gets it, and what it
/// said. An answer that cannot be read passes unchanged when the APIs agree (its usage
/// unknown: the estimate stands); when they do not, the error to answer with (502).
fn whole_answer(route: StreamRoute<'_>, bytes: Bytes) -> Result<(Bytes, Answer), Value> {
    let read = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| wire::answer_to_chat(route.upstream, v).map_err(|e| e.to_string()));
    match read {
        Ok(chat) => {
            let answer = Answer::of_completion(&chat);
            if route.upstream == route.client {
                return Ok((bytes, answer));
            }
            let out = wire::answer_from_chat(route.client, &chat, route.model);
            Ok((Bytes::from(out.to_string()), answer))
        }
        Err(_) if route.upstream == route.client => Ok((bytes, Answer::default())),
        Err(e) => {
            tracing::warn!(error = %e, api = route.upstream.name(), "an upstream answer could not be read");
            Err(wire::error_body(
                route.client,
                502,
                "upstream_error",
                &format!(
                    "the upstream's answer could not be read as {}: {e}",
                    route.upstream.name()
                ),
            ))
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
    if let Some(step) = plan.routed.as_ref().and_then(|r| r.session.as_ref()) {
        let name = match step {
            dispatch::SessionStep::Held => "held",
            dispatch::SessionStep::MovedUp { .. } => "moved_up",
            dispatch::SessionStep::Lost { .. } => "lost",
        };
        put("x-pointsman-session", name.into());
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

/// What an answer said, for the cascade's check and the spend.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    tool_calls: bool,
    usage: Option<Usage>,
    /// The error the upstream reported mid-stream.
    failed: Option<String>,
}

impl Answer {
    /// Reads a chat chunk of a stream: usage always, text and tool calls when `collect`.
    fn absorb(&mut self, chunk: &Value, collect: bool) {
        if let Some(u) = usage_of(chunk) {
            self.usage = Some(u);
        }
        if !collect {
            return;
        }
        if let Some(delta) = chunk.pointer("/choices/0/delta") {
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                self.text.push_str(t);
            }
            self.tool_calls |= delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty());
        }
    }

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
            failed: None,
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
        let route = |strip_usage| StreamRoute {
            upstream: Api::ChatCompletions,
            client: Api::ChatCompletions,
            model: "m",
            include_usage: false,
            strip_usage,
        };
        let mut e = SseEvents::new(Vec::new(), route(true), true);
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
        let route = StreamRoute {
            upstream: Api::ChatCompletions,
            client: Api::ChatCompletions,
            model: "m",
            include_usage: false,
            strip_usage: false,
        };
        let mut e = SseEvents::new(Vec::new(), route, false);
        e.buf
            .extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert!(e.next_event().is_some());
        assert_eq!(e.answer.usage.unwrap().prompt, 1);
    }
}
