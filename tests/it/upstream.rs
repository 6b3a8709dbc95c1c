//! A fake OpenAI-compatible upstream on loopback: a real HTTP server whose answers the tests
//! script per model (answer, stream, fail with a status, stall, cut a stream halfway), and
//! which records every request it gets.

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
    /// Streams the whole answer but ends without `data: [DONE]`.
    NoDone,
}

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
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
            .route("/v1/chat/completions", axum::routing::post(completions))
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

fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
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

/// The events of a streamed answer: role, one event per word, finish, usage (when asked), DONE.
fn events(model: &str, content: &str, usage: bool) -> Vec<Vec<u8>> {
    let mut out = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let mut first = true;
    for word in content.split(' ') {
        let piece = if first {
            word.to_string()
        } else {
            format!(" {word}")
        };
        first = false;
        out.push(chunk(model, json!({"content": piece}), None));
    }
    out.push(chunk(model, json!({}), Some("stop")));
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

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    shared.received.lock().unwrap().push(Received {
        model: model.clone(),
        body: body.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
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
    match &behaviour {
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap();
            let mut response = (
                status,
                axum::Json(json!({"error": {"message": format!("fake {code}"), "type": "fake"}})),
            )
                .into_response();
            if *code == 429 {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            return response;
        }
        Behaviour::Stall(d) => tokio::time::sleep(*d).await,
        Behaviour::Says(text) => content = text.clone(),
        _ => {}
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if !stream {
        return axum::Json(completion(&model, &content)).into_response();
    }
    let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let all = events(&model, &content, usage);
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
