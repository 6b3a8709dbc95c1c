//! The server-sent-events relay: events passed through as they arrive, unchanged (written by
//! hand because it must not buffer or re-encode), with the usage chunk pointsman asked for
//! dropped, idle and total deadlines, and an error event when the upstream fails mid-stream.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use super::spend::Spend;
use super::upstream::{error_chain, usage_of};
use super::{Answer, body_response};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;

/// Splits an SSE byte stream into whole events (each ending with a blank line) and inspects
/// the `data:` payloads for usage, the end marker and, when asked, the answer's text.
pub(super) struct SseEvents {
    pub(super) buf: Vec<u8>,
    pub(super) strip_usage: bool,
    pub(super) collect: bool,
    pub(super) answer: Answer,
    pub(super) done_seen: bool,
}

impl SseEvents {
    pub(super) fn new(first: Vec<u8>, strip_usage: bool, collect: bool) -> Self {
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
    pub(super) fn next_event(&mut self) -> Option<Vec<u8>> {
        loop {
            let end = event_end(&self.buf)?;
            let event: Vec<u8> = self.buf.drain(..end).collect();
            if self.inspect(&event) {
                return Some(event);
            }
        }
    }

    /// Reads an event; false when it must not be passed on.
    pub(super) fn inspect(&mut self, event: &[u8]) -> bool {
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
pub(super) fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The SSE event that ends a broken stream.
pub(super) fn error_event(message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "upstream_error",
        "param": null,
        "code": "upstream_error",
    }});
    format!("data: {body}\n\n").into_bytes()
}

/// The next chunk of an upstream stream within the idle timeout and the deadline.
pub(super) async fn next_chunk(
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
pub(super) async fn collect_stream(
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
pub(super) struct Relay {
    pub(super) upstream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    pub(super) events: SseEvents,
    pub(super) idle: Duration,
    pub(super) deadline: Instant,
    pub(super) done: bool,
    pub(super) settle: Option<(Spend, String, Option<f64>)>,
}

impl Relay {
    pub(super) async fn next(&mut self) -> Option<Vec<u8>> {
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

    pub(super) fn finish(&mut self) {
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

pub(super) fn stream_response(
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
