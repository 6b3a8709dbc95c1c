//! The routing endpoints: `POST /v1/route`, `POST /v1/route/batch`, `POST /v1/usage`. They
//! translate HTTP to a [`crate::dispatch::Request`] and back; nothing here decides.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::auth::identity;
use super::{ApiError, ApiJson, AppState, ErrorBody, record_on_span};
use crate::budget::{Identity, caps_for};
use crate::dispatch::{self, DispatchError};
use crate::engine::Routed;

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
    /// Also list the graded examples nearest to the prompt behind a quality prediction.
    #[serde(default)]
    pub explain: bool,
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

pub(super) fn non_empty(text: String) -> Result<String, ApiError> {
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
pub type RouteResponse = dispatch::Decided;

/// Answer of `POST /v1/route/batch`, one result per prompt in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// The decisions.
    pub results: Vec<RouteResponse>,
}

pub(super) fn timing_headers(response: &RouteResponse) -> HeaderMap {
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

pub(super) fn record(state: &AppState, result: &Result<RouteResponse, ApiError>, started: Instant) {
    if let Ok(response) = result {
        record_decision(state, response);
        state
            .metrics
            .request_latency
            .observe(started.elapsed().as_secs_f64());
    }
}

pub(super) fn record_decision(state: &AppState, response: &RouteResponse) {
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

impl AppState {
    /// What [`dispatch`] needs from this server: the engine, health marks, the spend ledger,
    /// and the request timeout for the embedding.
    pub(super) fn context(&self) -> Result<dispatch::Context<'_>, ApiError> {
        Ok(dispatch::Context {
            engine: self.engine()?,
            health: &self.health,
            spend: dispatch::Spend::Reserve(&self.ledger),
            embed_timeout: Some(Duration::from_millis(self.options.request_timeout_ms)),
        })
    }

    /// The API's answer to a request that could not be decided.
    pub(super) fn refused(&self, e: &DispatchError) -> ApiError {
        match e {
            DispatchError::UnknownRoute(r) => {
                ApiError::Validation(format!("`route`: no route named `{r}`"))
            }
            DispatchError::Route(e) => e.into(),
            DispatchError::Timeout(_) => ApiError::Timeout(self.options.request_timeout_ms),
            DispatchError::NoCandidate { refusal, .. } => {
                let reasons = serde_json::to_string(&refusal.skipped).unwrap_or_default();
                if refusal.budget_bound() {
                    ApiError::BudgetExhausted(format!(
                        "every candidate model is over a spend cap or unavailable: {reasons}"
                    ))
                } else {
                    ApiError::NoCandidate(format!(
                        "no candidate model can take this request: {reasons}"
                    ))
                }
            }
        }
    }

    /// Writes a decision, or a refusal after routing, to the decision log (if on).
    pub(super) fn log_decision(
        &self,
        who: &Identity,
        result: Result<&RouteResponse, &DispatchError>,
    ) {
        let Some(log) = &self.decision_log else {
            return;
        };
        let line = match result {
            Ok(d) => log_line(&d.text, who, Ok(d)),
            Err(e @ DispatchError::NoCandidate { routed, text, .. }) => {
                let error = self.refused(e);
                let body = ErrorBody {
                    error: error.to_string(),
                    kind: error.status_and_kind().1.to_string(),
                };
                log_line(text, who, Err((body, routed)))
            }
            Err(_) => return,
        };
        log.record(&line);
    }
}

/// One decision-log line: the response (or the error), who asked, and a hash of the prompt.
pub(super) fn log_line(
    text: &str,
    who: &Identity,
    result: Result<&RouteResponse, (ErrorBody, &Routed)>,
) -> serde_json::Value {
    let ts_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut line = match result {
        Ok(response) => serde_json::to_value(response).unwrap_or_default(),
        Err((e, routed)) => {
            let mut v = serde_json::to_value(routed).unwrap_or_default();
            v["error"] = serde_json::to_value(e).unwrap_or_default();
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

/// Decides one request as `POST /v1/route` does (every step in [`dispatch`]) and logs it.
pub async fn route_request(
    state: &AppState,
    req: &dispatch::Request<'_>,
) -> Result<RouteResponse, ApiError> {
    let cx = state.context()?;
    let result = dispatch::dispatch(&cx, req).await;
    state.log_decision(req.who, result.as_ref());
    result.map_err(|e| state.refused(&e))
}

/// Routes one prompt (or chat messages) and chooses its model.
#[utoipa::path(post, path = "/v1/route", tag = "routing", request_body = RouteRequest,
    responses((status = 200, description = "The decision and the chosen model", body = RouteResponse),
        (status = 422, description = "Invalid request", body = ErrorBody), (status = 402, description = "Spend caps leave no candidate", body = ErrorBody),
        (status = 401, description = "API key missing or wrong", body = ErrorBody), (status = 429, description = "Rate limited or overloaded; see Retry-After", body = ErrorBody), (status = 503, description = "Not ready, timed out, or no candidate", body = ErrorBody)))]
pub(super) async fn route(
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
        let req = dispatch::Request {
            route: body.route.as_deref(),
            capabilities: &body.capabilities,
            explain: body.explain,
            ..dispatch::Request::text(&text, &who)
        };
        let decided = route_request(&state, &req).await?;
        state.remember(super::request_id(&headers), &decided);
        Ok(decided)
    }
    .await;
    record(&state, &result, started);
    match result {
        Ok(response) => (timing_headers(&response), Json(response)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Routes many prompts in one call (one forward-pass batch).
#[utoipa::path(post, path = "/v1/route/batch", tag = "routing", request_body = BatchRequest,
    responses((status = 200, description = "One result per prompt, in order", body = BatchResponse),
        (status = 422, description = "Invalid request or batch too large", body = ErrorBody), (status = 401, description = "API key missing or wrong", body = ErrorBody), (status = 429, description = "Rate limited or overloaded; see Retry-After", body = ErrorBody)))]
pub(super) async fn route_batch(
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
        let who = identity(&headers);
        let cx = state.context()?;
        let result = dispatch::dispatch_many(
            &cx,
            &body.prompts,
            &who,
            &body.capabilities,
            SystemTime::now(),
        )
        .await;
        match &result {
            Ok(decided) => decided.iter().for_each(|d| state.log_decision(&who, Ok(d))),
            Err(e) => state.log_decision(&who, Err(e)),
        }
        let out = result.map_err(|e| state.refused(&e))?;
        // each prompt of a batch is graded as `<request id>:<position>`
        if let Some(id) = super::request_id(&headers) {
            for (i, d) in out.iter().enumerate() {
                state.remember(Some(&format!("{id}:{i}")), d);
            }
        }
        Ok(out)
    }
    .await;
    match result {
        Ok(results) => {
            state
                .metrics
                .request_latency
                .observe(started.elapsed().as_secs_f64());
            for r in &results {
                record_decision(&state, r);
            }
            Json(BatchResponse { results }).into_response()
        }
        Err(e) => e.into_response(),
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
pub(super) async fn usage(
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
    Ok(Json(serde_json::json!({
        "cost_usd": cost,
        "adjusted_by_usd": delta,
        "budgets": caps.iter().map(|c| c.label.clone()).collect::<Vec<_>>(),
        "counted": counted,
    })))
}
