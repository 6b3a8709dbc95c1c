//! The one error contract: [`ApiError`], its status and body, and the JSON extractor whose
//! rejections answer in the same shape.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::engine::RouteError;

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
    /// The body stopped arriving for longer than the server waits (its connection is closed).
    #[error(
        "the request body stopped arriving for {0} s (see --body-read-timeout-s); send it again"
    )]
    BodyTimeout(f64),
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

/// The kind of error a response carries (its body's `type`), for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub(super) struct ErrorKind(pub(super) &'static str);

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
    pub(super) fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
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
        response.extensions_mut().insert(ErrorKind(kind));
        response
    }
}

impl ApiError {
    /// `Retry-After`, only where trying again soon can help.
    pub(super) fn add_retry_after(&self, headers: &mut HeaderMap) {
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
        ApiError::from(&e)
    }
}

impl From<&RouteError> for ApiError {
    fn from(e: &RouteError) -> Self {
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
pub(super) fn json_content_type(headers: &HeaderMap) -> bool {
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
