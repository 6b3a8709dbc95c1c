//! The three LLM APIs pointsman speaks, in and out: OpenAI chat completions, Anthropic
//! Messages and OpenAI Responses. Pure JSON, no HTTP: `server::proxy` calls it.
//!
//! Chat completions is the hub. A request in another API is read into a chat-completions body
//! (what the router routes on and what the retries carry), and written from it into the
//! provider's API when the provider speaks another one; an answer goes the other way. Streams
//! are translated event by event: a [`Decoder`] turns each upstream event into chat chunks, an
//! [`Encoder`] turns each chunk into the client's events, so nothing waits for the next event.
//! When the client and the provider speak the same API the request and the events pass
//! unchanged (only the model is renamed), and the decoder only reads them (usage, text).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub mod chat;
pub mod messages;
pub mod responses;

/// An LLM API, as a provider speaks it or a client calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI chat completions (`POST {base}/chat/completions`), which most providers offer.
    #[default]
    ChatCompletions,
    /// Anthropic Messages (`POST {base}/messages`).
    AnthropicMessages,
    /// OpenAI Responses (`POST {base}/responses`).
    OpenaiResponses,
}

impl Api {
    /// The path under a provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat/completions",
            Api::AnthropicMessages => "messages",
            Api::OpenaiResponses => "responses",
        }
    }

    /// The event that ends a complete stream in this API.
    pub fn end_event(self) -> &'static str {
        match self {
            Api::ChatCompletions => "`data: [DONE]`",
            Api::AnthropicMessages => "`message_stop`",
            Api::OpenaiResponses => "`response.completed`",
        }
    }

    /// The name used in the proxy file and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::AnthropicMessages => "anthropic_messages",
            Api::OpenaiResponses => "openai_responses",
        }
    }
}

/// A request or an answer that cannot be read or translated: what is wrong, by field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad(message: impl Into<String>) -> WireError {
    WireError(message.into())
}

/// How hard a reasoning model thinks, as a route asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effort {
    /// No reasoning (Anthropic: no extended thinking).
    None,
    /// OpenAI's `minimal` (Anthropic: no extended thinking).
    Minimal,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
}

impl Effort {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::None => "none",
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// Reads OpenAI's name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" => Effort::None,
            "minimal" => Effort::Minimal,
            "low" => Effort::Low,
            "medium" => Effort::Medium,
            "high" => Effort::High,
            _ => return None,
        })
    }

    /// Anthropic's extended-thinking budget for it (`None`: no thinking).
    pub fn thinking_budget(self) -> Option<u64> {
        match self {
            Effort::None | Effort::Minimal => None,
            Effort::Low => Some(2_048),
            Effort::Medium => Some(8_192),
            Effort::High => Some(24_576),
        }
    }

    /// The effort an Anthropic thinking budget stands for.
    pub fn of_thinking_budget(tokens: u64) -> Self {
        match tokens {
            0..=4_095 => Effort::Low,
            4_096..=16_383 => Effort::Medium,
            _ => Effort::High,
        }
    }
}

/// A client request read into the hub.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The chat-completions body.
    pub chat: Map<String, Value>,
    /// The client's own body, when its API is not chat completions (then `chat` is its
    /// translation).
    pub native: Option<Map<String, Value>>,
    /// What the hub could not carry (a PDF, a file, ...): the request can go unchanged to a
    /// provider of the client's own API, but not be translated into another.
    pub untranslatable: Vec<String>,
    /// Tools only the client's own API's provider runs (Anthropic's server tools, OpenAI's
    /// hosted tools): left out of a translated request, so that a model of another API answers
    /// without them rather than not at all (coding agents send them on every turn).
    pub dropped_tools: Vec<String>,
}

/// Reads a client's request body in `api` into the hub (a chat body is the hub already: it is
/// kept, not copied).
pub fn request_to_chat(api: Api, body: Map<String, Value>) -> Result<Incoming, WireError> {
    let incoming = match api {
        Api::ChatCompletions => {
            return Ok(Incoming {
                chat: body,
                native: None,
                untranslatable: Vec::new(),
                dropped_tools: Vec::new(),
            });
        }
        Api::AnthropicMessages => messages::request_to_chat(&body)?,
        Api::OpenaiResponses => responses::request_to_chat(&body)?,
    };
    Ok(Incoming {
        native: Some(body),
        ..incoming
    })
}

/// Writes a hub request in `api` for `model` (the provider's name for it).
pub fn request_from_chat(
    api: Api,
    chat: &Map<String, Value>,
    model: &str,
) -> Result<Map<String, Value>, WireError> {
    let mut body = match api {
        Api::ChatCompletions => chat.clone(),
        Api::AnthropicMessages => messages::request_from_chat(chat)?,
        Api::OpenaiResponses => responses::request_from_chat(chat)?,
    };
    body.insert("model".into(), Value::String(model.to_string()));
    Ok(body)
}

/// Sets `effort` on a request in `api` unless it asks for one itself.
pub fn set_effort(api: Api, body: &mut Map<String, Value>, effort: Effort) {
    match api {
        Api::ChatCompletions => {
            body.entry("reasoning_effort")
                .or_insert_with(|| effort.as_str().into());
        }
        Api::OpenaiResponses => {
            let reasoning = body.entry("reasoning").or_insert_with(|| json!({}));
            if let Value::Object(r) = reasoning {
                r.entry("effort").or_insert_with(|| effort.as_str().into());
            }
        }
        Api::AnthropicMessages => messages::set_thinking(body, effort),
    }
}

/// A whole answer in `api`, read into a chat completion (a chat completion is kept as it is).
pub fn answer_to_chat(api: Api, answer: Value) -> Result<Value, WireError> {
    match api {
        Api::ChatCompletions => Ok(answer),
        Api::AnthropicMessages => messages::answer_to_chat(&answer),
        Api::OpenaiResponses => responses::answer_to_chat(&answer),
    }
}

/// A chat completion written as a whole answer in `api`; `model` is the name the client sees.
pub fn answer_from_chat(api: Api, completion: &Value, model: &str) -> Value {
    match api {
        Api::ChatCompletions => completion.clone(),
        Api::AnthropicMessages => messages::answer_from_chat(completion, model),
        Api::OpenaiResponses => responses::answer_from_chat(completion, model),
    }
}

/// The error body of `api`: `kind` is OpenAI's type name (`invalid_request_error`, ...).
pub fn error_body(api: Api, status: u16, kind: &str, message: &str) -> Value {
    match api {
        Api::ChatCompletions | Api::OpenaiResponses => json!({"error": {
            "message": message, "type": kind, "param": null, "code": kind,
        }}),
        Api::AnthropicMessages => json!({"type": "error", "error": {
            "type": messages::error_type(status), "message": message,
        }}),
    }
}

/// The message of an error body in any of the APIs.
pub fn error_message(body: &Value) -> Option<&str> {
    let error = body.get("error")?;
    error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
}

/// One server-sent event: its `event:` name and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// The `event:` field, if any.
    pub name: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

impl Event {
    /// Reads one whole event (its lines up to the blank line); `None` if it is not UTF-8.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut event = Event::default();
        let mut lines = 0;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event.name = Some(name.trim().to_string());
            } else if let Some(data) = line.strip_prefix("data:") {
                if lines > 0 {
                    event.data.push('\n');
                }
                event.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                lines += 1;
            }
        }
        Some(event)
    }

    /// The data as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }
}

/// An event as bytes on the wire.
pub fn sse(name: Option<&str>, data: &Value) -> Vec<u8> {
    match name {
        Some(n) => format!("event: {n}\ndata: {data}\n\n").into_bytes(),
        None => format!("data: {data}\n\n").into_bytes(),
    }
}

/// What one upstream event said, as chat chunks.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Chat-completion chunks (`choices[0].delta`, `finish_reason`, `usage`).
    pub chunks: Vec<Value>,
    /// The stream is complete (`[DONE]`, `message_stop`, `response.completed`).
    pub done: bool,
}

/// Reads a provider's stream, event by event, into chat chunks.
pub trait Decoder: Send {
    /// One whole event; an error when the upstream reports one in the stream.
    fn decode(&mut self, event: &Event) -> Result<Decoded, WireError>;
}

/// Writes chat chunks as a client's events.
pub trait Encoder: Send {
    /// The events for one chunk (none, one or several).
    fn encode(&mut self, chunk: &Value) -> Vec<u8>;
    /// The events that end a complete stream.
    fn finish(&mut self) -> Vec<u8>;
    /// The event that ends a broken stream.
    fn error(&mut self, message: &str) -> Vec<u8>;
}

/// The decoder of a provider's stream in `api`. `every_chunk`: whether each chunk is needed
/// (to translate it, or to read the answer's text); without, a chat stream's events are read
/// only for usage, errors and the end, and the others are not parsed at all.
pub fn decoder(api: Api, every_chunk: bool) -> Box<dyn Decoder> {
    match api {
        Api::ChatCompletions => Box::new(chat::ChunkDecoder { every_chunk }),
        Api::AnthropicMessages => Box::<messages::StreamDecoder>::default(),
        Api::OpenaiResponses => Box::<responses::StreamDecoder>::default(),
    }
}

/// The encoder of a client's stream in `api`; `model` is the name the client sees, and
/// `include_usage` whether a chat client asked for the usage chunk.
pub fn encoder(api: Api, model: &str, include_usage: bool) -> Box<dyn Encoder> {
    match api {
        Api::ChatCompletions => Box::new(chat::ChunkEncoder { include_usage }),
        Api::AnthropicMessages => Box::new(messages::StreamEncoder::new(model)),
        Api::OpenaiResponses => Box::new(responses::StreamEncoder::new(model)),
    }
}

/// Text of a chat message's content: a string, or its `text` parts joined.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A fresh id with a prefix (`msg_`, `resp_`, ...), unique enough for a client to tell answers
/// apart.
pub(crate) fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}{:016x}{n:04x}",
        t ^ (u64::from(std::process::id()) << 40)
    )
}

/// Seconds since the epoch.
pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A chat chunk with `delta` and `finish_reason`.
pub(crate) fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": now_s(), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The chat chunk that carries only usage.
pub(crate) fn usage_chunk(id: &str, model: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": now_s(), "model": model,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
}

/// Tokens a chat usage object reports: prompt and completion.
pub fn chat_usage(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage").filter(|u| !u.is_null())?;
    Some((
        u.get("prompt_tokens")?.as_u64()?,
        u.get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests;
