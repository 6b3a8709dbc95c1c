//! The server-sent-events relay: events passed through as they arrive (written by hand because
//! it must not buffer), unchanged when the client speaks the provider's API and translated event
//! by event otherwise (`crate::wire`), with the usage chunk pointsman asked for dropped, idle
//! and total deadlines, and an error event when the upstream fails mid-stream.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use super::spend::Spend;
use super::upstream::error_chain;
use super::{Answer, body_response};
use crate::wire::{self, Api, Decoder, Encoder, Event, WireError};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;

/// Splits an SSE byte stream into whole events (each ending with a blank line), reads each
/// into chat chunks (usage, the end, and, when asked, the answer's text) and writes what the
/// client gets: the event unchanged when the client speaks the provider's API, else the
/// client's own events for it, as soon as it is read.
pub(super) struct SseEvents {
    pub(super) buf: Vec<u8>,
    /// The client's API (for the error event that ends a broken stream).
    client: Api,
    /// The provider's API.
    pub(super) upstream: Api,
    decoder: Box<dyn Decoder>,
    /// `None`: the events pass unchanged.
    encoder: Option<Box<dyn Encoder>>,
    /// Drop the usage-only chat chunk pointsman asked for (events passing unchanged only).
    strip_usage: bool,
    collect: bool,
    pub(super) answer: Answer,
    pub(super) done_seen: bool,
}

impl SseEvents {
    /// Events of a provider speaking `upstream` for a client speaking `client`; `model` is the
    /// name the client sees in translated events.
    pub(super) fn new(first: Vec<u8>, route: StreamRoute<'_>, collect: bool) -> Self {
        let encoder = (route.upstream != route.client)
            .then(|| wire::encoder(route.client, route.model, route.include_usage));
        let decoder = wire::decoder(route.upstream, encoder.is_some() || collect);
        SseEvents {
            buf: first,
            client: route.client,
            upstream: route.upstream,
            decoder,
            encoder,
            strip_usage: route.strip_usage,
            collect,
            answer: Answer::default(),
            done_seen: false,
        }
    }

    /// The next whole event (or events, translated) in the buffer to pass on.
    pub(super) fn next_event(&mut self) -> Option<Vec<u8>> {
        loop {
            let end = event_end(&self.buf)?;
            let event: Vec<u8> = self.buf.drain(..end).collect();
            let out = self.read(event);
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    /// Reads one event; what the client gets for it (maybe nothing).
    fn read(&mut self, raw: Vec<u8>) -> Vec<u8> {
        if self.done_seen {
            // nothing after the end counts (a chat stream's trailing comments, say)
            return self.unread(raw);
        }
        let Some(event) = Event::parse(&raw) else {
            return self.unread(raw);
        };
        let decoded = match self.decoder.decode(&event) {
            Ok(d) => d,
            Err(WireError(message)) => {
                tracing::warn!(%message, "the upstream reported an error mid-stream");
                self.done_seen = true;
                self.answer.failed = Some(message.clone());
                return match &mut self.encoder {
                    None => raw,
                    Some(e) => e.error(&message),
                };
            }
        };
        let mut keep = true;
        for chunk in &decoded.chunks {
            self.answer.absorb(chunk, self.collect);
            let usage_only = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(|c| c.is_empty());
            if self.strip_usage && usage_only && chunk.get("usage").is_some() {
                keep = false;
            }
        }
        self.done_seen = decoded.done;
        match &mut self.encoder {
            None if keep => raw,
            None => Vec::new(),
            Some(e) => {
                let mut out = Vec::new();
                for chunk in &decoded.chunks {
                    out.extend(e.encode(chunk));
                }
                if decoded.done {
                    out.extend(e.finish());
                }
                out
            }
        }
    }

    /// What is left in the buffer at the end, for the client (see [`SseEvents::unread`]).
    pub(super) fn rest(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.buf);
        self.unread(rest)
    }

    /// What the client gets of bytes that were not read as an event: the bytes when the events
    /// pass unchanged, nothing when they are translated (they are in the provider's API).
    fn unread(&self, raw: Vec<u8>) -> Vec<u8> {
        if self.encoder.is_none() {
            raw
        } else {
            Vec::new()
        }
    }

    /// The event that ends the client's stream when the upstream's broke.
    pub(super) fn error_event(&mut self, message: &str) -> Vec<u8> {
        match &mut self.encoder {
            Some(e) => e.error(message),
            None => wire::encoder(self.client, "", false).error(message),
        }
    }
}

/// Which APIs a stream is read from and written in.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamRoute<'a> {
    pub(super) upstream: Api,
    pub(super) client: Api,
    /// The model name the client sees in translated events.
    pub(super) model: &'a str,
    /// A chat client asked for the usage chunk.
    pub(super) include_usage: bool,
    /// Drop the usage chunk pointsman asked for (chat to chat).
    pub(super) strip_usage: bool,
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
    route: StreamRoute<'_>,
    idle: Duration,
    deadline: Instant,
) -> Result<(Vec<u8>, Answer), String> {
    let mut events = SseEvents::new(first, route, true);
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
    if let Some(failure) = events.answer.failed.take() {
        return Err(format!(
            "the upstream reported an error mid-stream: {failure}"
        ));
    }
    if !events.done_seen {
        return Err(format!(
            "the stream ended without {}",
            events.upstream.end_event()
        ));
    }
    bytes.extend(events.rest());
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
                let rest = self.events.rest();
                return (!rest.is_empty()).then_some(rest);
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
                Ok(None) => format!(
                    "the upstream ended the stream without {}",
                    self.events.upstream.end_event()
                ),
                Err(reason) => reason,
            };
            tracing::warn!(reason = %failure, "upstream stream failed; ending the client's stream with an error event");
            self.done = true;
            // a half-received event is dropped: the client gets whole events only
            self.events.buf.clear();
            self.finish();
            return Some(self.events.error_event(&failure));
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
