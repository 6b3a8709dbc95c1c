//! A fake upstream on loopback that speaks the three APIs (OpenAI chat completions at
//! `/v1/chat/completions`, Anthropic Messages at `/v1/messages`, OpenAI Responses at
//! `/v1/responses`), each in its own wire format written out here by hand: a real HTTP server
//! whose answers the tests script per model (answer, call a tool, stream, fail with a status,
//! stall, cut a stream halfway), and which records every request it gets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the upstream does with the next request for a model.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers `answer from <model>` (streamed when asked).
    Ok,
    /// Answers with this content.
    Says(String),
    /// Answers with this status and an OpenAI-shaped error, with `Retry-After: 0` on 429.
    Status(u16),
    /// Waits this long before answering normally.
    Stall(Duration),
    /// Streams this many content chunks, then breaks the connection.
    CutAfter(usize),
    /// Streams one chunk, then goes silent for this long before the rest.
    PauseAfterFirst(Duration),
    /// Streams one chunk, then waits for [`Upstream::release`] before the rest.
    Gate,
    /// Sends the stream's headers, then waits this long before the first event.
    SilentAfterHeaders(Duration),
    /// Streams the whole answer but ends without its last event (`data: [DONE]`,
    /// `message_stop`, `response.completed`).
    NoDone,
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Answers with a call of this tool, arguments `{"city": "Paris"}` (streamed in two pieces).
    CallsTool(String),
}

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The API it came in: `chat`, `messages` or `responses`.
    pub api: &'static str,
    /// The `model` field.
    pub model: String,
    /// The whole body.
    pub body: Value,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// Every header.
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<HashMap<String, VecDeque<Behaviour>>>,
    received: Mutex<Vec<Received>>,
    /// What each streamed answer sent, byte for byte, in order.
    streamed: Mutex<Vec<Vec<u8>>>,
    gate: tokio::sync::Notify,
}

/// The running fake upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Base URL, ending in `/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
}

/// Token counts every answer reports.
pub const PROMPT_TOKENS: u64 = 1000;
pub const COMPLETION_TOKENS: u64 = 2000;

impl Upstream {
    /// Starts the upstream on a free loopback port, in the current runtime.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .route("/v1/messages", axum::routing::post(messages))
            .route("/v1/responses", axum::routing::post(responses))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            base_url: format!("http://{addr}/v1"),
            shared,
        }
    }

    /// Queues behaviours for the next requests for `model` (then it answers normally).
    pub fn script(&self, model: &str, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(model.to_string())
            .or_default()
            .extend(behaviours);
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The models asked for so far, in order.
    pub fn models(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.model).collect()
    }

    /// The bytes of every stream sent so far.
    pub fn streamed(&self) -> Vec<Vec<u8>> {
        self.shared.streamed.lock().unwrap().clone()
    }

    /// Lets a [`Behaviour::Gate`] stream finish.
    pub fn release(&self) {
        self.shared.gate.notify_one();
    }
}

fn completion(model: &str, content: &str, tool: Option<&str>) -> Value {
    let (message, finish) = match tool {
        Some(name) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_fake", "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGUMENTS}}]}),
            "tool_calls",
        ),
        None => (json!({"role": "assistant", "content": content}), "stop"),
    };
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    })
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Vec<u8> {
    let v = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {v}\n\n").into_bytes()
}

/// The events of a streamed answer: role, one event per word (or the tool call in two pieces),
/// finish, usage (when asked), DONE.
fn events(model: &str, content: &str, tool: Option<&str>, usage: bool) -> Vec<Vec<u8>> {
    let mut out = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let finish = match tool {
        Some(name) => {
            out.push(chunk(
                model,
                json!({"tool_calls": [{"index": 0, "id": "call_fake", "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            let (a, b) = TOOL_ARGUMENTS.split_at(9);
            for piece in [a, b] {
                out.push(chunk(
                    model,
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    None,
                ));
            }
            "tool_calls"
        }
        None => {
            for piece in words(content) {
                out.push(chunk(model, json!({"content": piece}), None));
            }
            "stop"
        }
    };
    out.push(chunk(model, json!({}), Some(finish)));
    if usage {
        let v = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        });
        out.push(format!("data: {v}\n\n").into_bytes());
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    answer(shared, Wire::Chat, headers, body.0).await
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    answer(shared, Wire::Messages, headers, body.0).await
}

async fn responses(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    answer(shared, Wire::Responses, headers, body.0).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    Chat,
    Messages,
    Responses,
}

/// The tool call every `CallsTool` answer makes.
pub const TOOL_ARGUMENTS: &str = r#"{"city": "Paris"}"#;

fn anthropic_event(kind: &str, data: Value) -> Vec<u8> {
    format!("event: {kind}\ndata: {data}\n\n").into_bytes()
}

/// An Anthropic Messages answer, whole.
fn anthropic_message(model: &str, content: &str, tool: Option<&str>) -> Value {
    let (blocks, stop) = match tool {
        Some(name) => (
            json!([{"type": "tool_use", "id": "toolu_fake", "name": name, "input": {"city": "Paris"}}]),
            "tool_use",
        ),
        None => (json!([{"type": "text", "text": content}]), "end_turn"),
    };
    json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": blocks, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}})
}

/// The events of an Anthropic Messages stream.
fn anthropic_events(model: &str, content: &str, tool: Option<&str>) -> Vec<Vec<u8>> {
    let mut out = vec![anthropic_event(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
    )];
    out.push(anthropic_event("ping", json!({"type": "ping"})));
    let stop = match tool {
        Some(name) => {
            out.push(anthropic_event("content_block_start", json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_fake", "name": name, "input": {}}})));
            let (a, b) = TOOL_ARGUMENTS.split_at(9);
            for piece in [a, b] {
                out.push(anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            "tool_use"
        }
        None => {
            out.push(anthropic_event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in words(content) {
                out.push(anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            "end_turn"
        }
    };
    out.push(anthropic_event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(anthropic_event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": COMPLETION_TOKENS}})));
    out.push(anthropic_event(
        "message_stop",
        json!({"type": "message_stop"}),
    ));
    out
}

/// An OpenAI Responses object.
fn responses_object(model: &str, content: &str, tool: Option<&str>, status: &str) -> Value {
    let output = match (tool, status) {
        (_, "in_progress") => json!([]),
        (Some(name), _) => {
            json!([{"type": "function_call", "id": "fc_fake", "call_id": "call_fake",
            "name": name, "arguments": TOOL_ARGUMENTS, "status": "completed"}])
        }
        (None, _) => {
            json!([{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": content, "annotations": []}]}])
        }
    };
    let usage = (status != "in_progress").then(|| json!({"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}));
    json!({"id": "resp_fake", "object": "response", "created_at": 1, "status": status, "model": model,
        "output": output, "usage": usage, "error": null, "incomplete_details": null,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": []})
}

fn responses_event(kind: &str, mut data: Value, sequence: &mut u64) -> Vec<u8> {
    data["type"] = kind.into();
    data["sequence_number"] = (*sequence).into();
    *sequence += 1;
    format!("event: {kind}\ndata: {data}\n\n").into_bytes()
}

/// The events of an OpenAI Responses stream.
fn responses_events(model: &str, content: &str, tool: Option<&str>) -> Vec<Vec<u8>> {
    let mut n = 0;
    let n = &mut n;
    let mut out = vec![responses_event(
        "response.created",
        json!({"response": responses_object(model, "", None, "in_progress")}),
        n,
    )];
    out.push(responses_event(
        "response.in_progress",
        json!({"response": responses_object(model, "", None, "in_progress")}),
        n,
    ));
    match tool {
        Some(name) => {
            out.push(responses_event("response.output_item.added", json!({"output_index": 0, "item": {"type": "function_call",
                "id": "fc_fake", "call_id": "call_fake", "name": name, "arguments": "", "status": "in_progress"}}), n));
            let (a, b) = TOOL_ARGUMENTS.split_at(9);
            for piece in [a, b] {
                out.push(responses_event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": "fc_fake", "output_index": 0, "delta": piece}),
                    n,
                ));
            }
            out.push(responses_event(
                "response.function_call_arguments.done",
                json!({"item_id": "fc_fake", "output_index": 0, "arguments": TOOL_ARGUMENTS}),
                n,
            ));
        }
        None => {
            out.push(responses_event(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message",
                "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []}}),
                n,
            ));
            out.push(responses_event(
                "response.content_part.added",
                json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
                n,
            ));
            for piece in words(content) {
                out.push(responses_event("response.output_text.delta", json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": piece}), n));
            }
            out.push(responses_event("response.output_text.done", json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": content}), n));
        }
    }
    let done = responses_object(model, content, tool, "completed");
    out.push(responses_event(
        "response.output_item.done",
        json!({"output_index": 0, "item": done["output"][0]}),
        n,
    ));
    out.push(responses_event(
        "response.completed",
        json!({"response": done}),
        n,
    ));
    out
}

/// `content` in pieces of one word each (with the space before it).
fn words(content: &str) -> Vec<String> {
    content
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

async fn answer(shared: Arc<Shared>, wire: Wire, headers: HeaderMap, body: Value) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    shared.received.lock().unwrap().push(Received {
        api: match wire {
            Wire::Chat => "chat",
            Wire::Messages => "messages",
            Wire::Responses => "responses",
        },
        model: model.clone(),
        body: body.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .or_else(|| headers.get("x-api-key"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        headers: headers.clone(),
    });
    let behaviour = shared
        .scripts
        .lock()
        .unwrap()
        .get_mut(&model)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Behaviour::Ok);
    let mut content = format!("answer from {model}");
    let mut tool = None;
    match &behaviour {
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap();
            let message = format!("fake {code}");
            let error = match wire {
                Wire::Messages => {
                    json!({"type": "error", "error": {"type": "api_error", "message": message}})
                }
                Wire::Chat | Wire::Responses => {
                    json!({"error": {"message": message, "type": "fake"}})
                }
            };
            let mut response = (status, axum::Json(error)).into_response();
            if *code == 429 {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            return response;
        }
        Behaviour::Stall(d) => tokio::time::sleep(*d).await,
        Behaviour::Says(text) => content = text.clone(),
        Behaviour::Garbage => return (StatusCode::OK, "<html>oops</html>").into_response(),
        Behaviour::CallsTool(name) => tool = Some(name.clone()),
        _ => {}
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if !stream {
        return axum::Json(match wire {
            Wire::Chat => completion(&model, &content, tool.as_deref()),
            Wire::Messages => anthropic_message(&model, &content, tool.as_deref()),
            Wire::Responses => responses_object(&model, &content, tool.as_deref(), "completed"),
        })
        .into_response();
    }
    let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let all = match wire {
        Wire::Chat => events(&model, &content, tool.as_deref(), usage),
        Wire::Messages => anthropic_events(&model, &content, tool.as_deref()),
        Wire::Responses => responses_events(&model, &content, tool.as_deref()),
    };
    let (send, cut_at, pause) = match behaviour {
        Behaviour::CutAfter(n) => (all[..n.min(all.len())].to_vec(), true, None),
        Behaviour::PauseAfterFirst(d) => (all, false, Some(Pause::For(d))),
        Behaviour::Gate => (all, false, Some(Pause::Gate)),
        Behaviour::SilentAfterHeaders(d) => (all, false, Some(Pause::Before(d))),
        Behaviour::NoDone => (all[..all.len() - 1].to_vec(), false, None),
        _ => (all, false, None),
    };
    shared.streamed.lock().unwrap().push(send.concat());
    let shared2 = Arc::clone(&shared);
    let body = futures_util::stream::unfold(
        (send.into_iter().enumerate(), pause, cut_at, shared2),
        |(mut it, pause, cut_at, shared)| async move {
            match it.next() {
                Some((i, event)) => {
                    if let (0, Some(Pause::Before(d))) = (i, &pause) {
                        tokio::time::sleep(*d).await;
                    }
                    if i == 1 {
                        match &pause {
                            Some(Pause::For(d)) => tokio::time::sleep(*d).await,
                            Some(Pause::Gate) => shared.gate.notified().await,
                            Some(Pause::Before(_)) | None => {}
                        }
                    }
                    Some((Ok(Bytes::from(event)), (it, pause, cut_at, shared)))
                }
                None if cut_at => {
                    // let what was sent reach the client before the connection breaks
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Err(std::io::Error::other("cut")), (it, None, false, shared)))
                }
                None => None,
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

enum Pause {
    For(Duration),
    Gate,
    Before(Duration),
}
