//! Trying the plan's models upstream: each candidate's retries with backoff, one try's
//! request and answer, and the usage an answer reports.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tracing::Instrument as _;

use super::spend::Spend;
use super::sse::{event_end, next_chunk};
use super::{ApiError, AppState};
use super::{ChatRequest, Plan, Proxy};
use crate::proxy_config::Provider;
use crate::wire::{self, Api, Effort};

/// A model the proxy may try, with what it is expected to cost.
pub(super) struct Candidate {
    pub(super) model: String,
    /// Estimated cost of this request on it (`None` without a catalog entry).
    pub(super) estimate_usd: Option<f64>,
    /// Whether that estimate is already reserved against the spend caps (the router's choice).
    pub(super) reserved: bool,
}

/// Why one try of one model failed.
pub(super) enum TryFailure {
    /// Worth retrying (connection error, timeout, 429, 5xx, a body cut short), with the
    /// upstream's Retry-After.
    Transient(String, Option<Duration>),
    /// Not worth retrying this model (401, 403, 404, 408): fall back at once.
    Model(String),
}

/// An answer's body as received: whole, or a stream whose first event has arrived.
pub(super) enum AnswerBody {
    Whole(Bytes),
    Stream {
        first: Vec<u8>,
        rest: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    },
}

/// A successful upstream answer.
pub(super) struct Answered {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: AnswerBody,
    /// Position of the model in the plan's list.
    pub(super) position: usize,
    /// Whether the relay must drop the usage chunk pointsman asked for.
    pub(super) strip_usage: bool,
    /// The API the answer is in (its provider's).
    pub(super) api: Api,
}

/// The outcome of trying the plan's models from `start`.
pub(super) enum Attempt {
    Answered(Answered),
    /// The upstream refused the request itself (400, 413, 422, ...): the client's to fix.
    Refused {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        position: usize,
        /// The API the refusal is in.
        api: Api,
    },
}

/// A request on its way through the candidates.
pub(super) struct Run {
    pub(super) deadline: Instant,
    pub(super) spend: Spend,
    /// Upstream tries so far.
    pub(super) tries: u32,
}

/// Tries `plan.models[start..]` in order, each up to `retries.attempts` times, reserving each
/// fallback's estimate against the spend caps before trying it.
pub(super) async fn attempt(
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
    let mut untranslatable = 0;
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
        // a route's effort goes to its reasoning models only (others refuse the field)
        let effort = plan.effort.filter(|_| {
            table
                .catalog
                .get(model)
                .is_some_and(|m| m.capabilities.iter().any(|c| c == "reasoning"))
        });
        let (body, strip_usage) = match upstream_body(request, provider, model, effort) {
            Ok(b) => b,
            Err(reason) => {
                tracing::warn!(%model, %reason, "the request cannot go to this model's provider");
                failures.push(format!("{model}: {reason}"));
                untranslatable += 1;
                run.spend.release(candidate);
                continue;
            }
        };
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
                        api: provider.api,
                    }));
                }
                Ok(Tried::Refused(status, headers, body)) => {
                    state.metrics.upstream(model, "status_4xx");
                    return Ok(Attempt::Refused {
                        status,
                        headers,
                        body,
                        position,
                        api: provider.api,
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
                .mark_down(model, Duration::from_secs(config.mark_down_s))
                .await;
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
    // no candidate's provider could even be sent the request: the request's fault, not an
    // upstream's (an escalation that finds none keeps the upstream error below)
    if start == 0 && untranslatable == plan.models.len() {
        return Err(ApiError::Validation(format!(
            "no candidate model's provider can take this request: {}",
            failures.join("; ")
        )));
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
pub(super) enum Tried {
    Answered(StatusCode, HeaderMap, AnswerBody),
    Refused(StatusCode, HeaderMap, Bytes),
}

/// One request to one upstream: the headers within `first_byte_ms`, then the whole body (or, for
/// a stream, its first event) within the deadline, so that an upstream that stalls or breaks
/// before the client has seen anything can still be retried or replaced.
pub(super) async fn try_once(
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
    let mut req = proxy.client.post(provider.url()).json(body);
    for name in &provider.forward_headers {
        for value in request.headers.get_all(name) {
            req = req.header(name, value);
        }
    }
    req = match provider.api {
        Api::AnthropicMessages => {
            // a client of the same API keeps its version and beta features
            let client_headers =
                (request.client == Api::AnthropicMessages).then_some(&request.headers);
            anthropic_auth(req, provider, client_headers)
        }
        Api::ChatCompletions | Api::OpenaiResponses => match &provider.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        },
    };
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
pub(super) async fn read_whole(
    response: reqwest::Response,
    deadline: Instant,
) -> Result<Bytes, String> {
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

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An Anthropic provider's key and version headers: `x-api-key`, and `anthropic-version` (and
/// `anthropic-beta`) from `client` when the client speaks the Messages API too.
pub(super) fn anthropic_auth(
    mut req: reqwest::RequestBuilder,
    provider: &Provider,
    client: Option<&HeaderMap>,
) -> reqwest::RequestBuilder {
    if let Some(key) = &provider.api_key {
        req = req.header("x-api-key", key);
    }
    let version = client
        .and_then(|h| h.get("anthropic-version"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or(wire::messages::API_VERSION);
    req = req.header("anthropic-version", version);
    if let Some(beta) = client.and_then(|h| h.get("anthropic-beta")) {
        req = req.header("anthropic-beta", beta);
    }
    req
}

/// The body sent upstream, in the provider's API: the client's own when the APIs agree, else
/// translated from the chat form; with `model` renamed for the provider, the route's reasoning
/// effort unless the client set one, and, for a chat stream, a final usage chunk asked for.
/// The flag says the client did not ask for that chunk, so that the relay drops it. An error
/// says why the request cannot go to this provider (what the translation cannot carry).
pub(super) fn upstream_body(
    request: &ChatRequest,
    provider: &Provider,
    model: &str,
    effort: Option<Effort>,
) -> Result<(Map<String, Value>, bool), String> {
    let name = provider.upstream_model(model);
    let mut body = if provider.api == request.client {
        let mut body = request.native.as_ref().unwrap_or(&request.chat).clone();
        body.insert("model".into(), Value::String(name.to_string()));
        body
    } else {
        if !request.untranslatable.is_empty() {
            return Err(format!(
                "{} cannot be translated for provider `{}` ({}); only a provider of the client's API can take this request",
                request.untranslatable.join(", "),
                provider.name,
                provider.api.name()
            ));
        }
        if !request.dropped_tools.is_empty() {
            tracing::info!(tools = %request.dropped_tools.join(", "), provider = %provider.name, api = provider.api.name(), "tools only the client's API's providers run are left out of the translated request");
        }
        wire::request_from_chat(provider.api, &request.chat, name).map_err(|e| e.to_string())?
    };
    if let Some(effort) = effort {
        wire::set_effort(provider.api, &mut body, effort);
    }
    let mut strip_usage = false;
    // a translated stream needs the usage to price it and to tell the client
    let wants_usage = provider.stream_usage || request.client != Api::ChatCompletions;
    if provider.api == Api::ChatCompletions && request.stream && wants_usage {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            if o.get("include_usage").and_then(Value::as_bool) != Some(true) {
                o.insert("include_usage".into(), Value::Bool(true));
                strip_usage = request.client == Api::ChatCompletions;
            }
        }
    }
    Ok((body, strip_usage))
}

/// Tokens an upstream reported.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub(super) prompt: u64,
    pub(super) completion: u64,
}

pub(super) fn usage_of(v: &Value) -> Option<Usage> {
    let (prompt, completion) = wire::chat_usage(v)?;
    Some(Usage { prompt, completion })
}
