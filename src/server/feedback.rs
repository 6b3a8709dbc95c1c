//! Closing the loop: `POST /v1/feedback` grades a decision by its request id, and the grade is
//! appended to the opt-in outcome log (`serve --outcome-log FILE`), one outcome line
//! (`{"prompt", "quality": {model: q}, "id"}`) that the next `build --outcomes` reads.
//!
//! The outcome log is the one place where pointsman writes prompt text, because training needs
//! it; the decision log keeps only a hash. Decisions are remembered (prompt and model, by request
//! id) only while the outcome log is on, and only the most recent [`REMEMBERED_DECISIONS`].

use std::num::NonZeroUsize;
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use lru::LruCache;
use serde::Deserialize;

use super::{ApiError, ApiJson, AppState, ErrorBody};
use crate::decision_log::DecisionLog;

/// Decisions remembered for feedback.
pub const REMEMBERED_DECISIONS: usize = 100_000;

/// The outcome log and the recent decisions it can grade.
#[derive(Debug)]
pub struct OutcomeLog {
    log: DecisionLog,
    recent: Mutex<LruCache<String, (String, String)>>,
}

impl OutcomeLog {
    /// An outcome log writing through `log`.
    pub fn new(log: DecisionLog) -> Self {
        OutcomeLog {
            log,
            recent: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_DECISIONS).expect("not zero"),
            )),
        }
    }

    /// Remembers that request `id` routed `prompt` to `model`.
    pub fn remember(&self, id: &str, prompt: &str, model: &str) {
        self.recent
            .lock()
            .expect("outcome log lock")
            .put(id.to_string(), (prompt.to_string(), model.to_string()));
    }

    /// Queues an outcome line, `prompt` graded `quality` on `model`: whether the writer's queue
    /// took it (a line it cannot take is dropped and counted).
    pub fn append(&self, id: &str, prompt: &str, model: &str, quality: f64) -> bool {
        self.log.record(&serde_json::json!({
            "prompt": prompt,
            "quality": {model: quality},
            "id": id,
        }))
    }

    fn lookup(&self, id: &str) -> Option<(String, String)> {
        self.recent
            .lock()
            .expect("outcome log lock")
            .get(id)
            .cloned()
    }

    /// Outcome lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.log.dropped()
    }
}

/// Body of `POST /v1/feedback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `x-request-id` of the routed request (a route request's or a proxied one's).
    pub request_id: String,
    /// How good the answer was, in [0, 1] (1 = right).
    pub quality: f64,
    /// The model that answered, when not the one the decision chose (e.g. after a fallback);
    /// it must be in the catalog.
    #[serde(default)]
    pub model: Option<String>,
}

/// Grades a routed request; the grade becomes an outcome line for the next `build --outcomes`.
#[utoipa::path(post, path = "/v1/feedback", tag = "routing", request_body = Feedback,
    responses((status = 200, description = "Recorded (queued for the outcome log)", body = serde_json::Value),
        (status = 429, description = "The outcome log's writer is behind: not recorded; see Retry-After", body = ErrorBody),
        (status = 404, description = "No recent decision has this request id", body = ErrorBody),
        (status = 403, description = "The outcome log is off", body = ErrorBody),
        (status = 422, description = "Quality outside [0, 1], or an unknown model", body = ErrorBody)))]
pub(super) async fn feedback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<Feedback>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit_caller(&headers).await?;
    let Some(outcomes) = &state.outcomes else {
        return Err(ApiError::Forbidden(
            "feedback is off; start `pointsman serve` with --outcome-log FILE".into(),
        ));
    };
    let ApiJson(f) = body?;
    if !(0.0..=1.0).contains(&f.quality) {
        return Err(ApiError::Validation(format!(
            "`quality` is {}; it must be a number in [0, 1]",
            f.quality
        )));
    }
    let Some((prompt, chosen)) = outcomes.lookup(&f.request_id) else {
        return Err(ApiError::NotFound(format!(
            "no decision with request id `{}` among the last {REMEMBERED_DECISIONS} this server made (send feedback to the replica that routed it, before it restarts)",
            f.request_id
        )));
    };
    let model = match f.model {
        Some(m) => {
            let known = state.engine()?.index().table().catalog.contains_key(&m);
            if !known {
                return Err(ApiError::Validation(format!(
                    "`model`: `{m}` is not in the catalog"
                )));
            }
            m
        }
        None => chosen,
    };
    if !outcomes.append(&f.request_id, &prompt, &model, f.quality) {
        return Err(ApiError::Overloaded(format!(
            "the outcome log's writer is behind (the disk is slow or full): this grade was not \
             recorded; send it again shortly ({} lines dropped so far)",
            outcomes.dropped()
        )));
    }
    Ok(Json(serde_json::json!({
        "recorded": true,
        "request_id": f.request_id,
        "model": model,
        "quality": f.quality,
    })))
}
