//! The three APIs in and out: every client API (chat completions, Anthropic Messages, OpenAI
//! Responses) against providers of every API on the fake upstream, plain and streamed, with
//! tool calls, failures before and in the middle of a stream, fallbacks across API kinds, spend
//! from each API's usage, and sticky sessions. The answers are read here by hand, in each
//! API's own format, not with pointsman's translation code.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;
use crate::proxy::{h, parse_proxy, proxied_examples, send, wait_for_reported_spend};
use crate::upstream::{Behaviour, COMPLETION_TOKENS, PROMPT_TOKENS, TOOL_ARGUMENTS, Upstream};

/// One model at a provider of each API; each costs $1 per million tokens in and out.
const ROUTES: &str = "\
version: 1
defaults: {method: neighbours, threshold: 0.9, top_k: 3}
models:
  gpt: {provider: chat, input_per_mtok: 1, output_per_mtok: 1, context_window: 100000, capabilities: [tools, vision]}
  claude: {provider: anthropic, input_per_mtok: 1, output_per_mtok: 1, context_window: 100000, capabilities: [tools, vision, reasoning]}
  o-resp: {provider: responses, input_per_mtok: 1, output_per_mtok: 1, context_window: 100000, capabilities: [tools, vision, reasoning]}
default_route: {models: [gpt]}
routes:
  - name: claude_first
    models: [claude, gpt]
    utterances: [hello there]
  - name: thinking
    models: [o-resp, claude, gpt]
    utterances: [think hard about this]
";

const MODELS: [(&str, &str); 3] = [
    ("gpt", "chat"),
    ("claude", "messages"),
    ("o-resp", "responses"),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    Chat,
    Messages,
    Responses,
}

const CLIENTS: [Client; 3] = [Client::Chat, Client::Messages, Client::Responses];

impl Client {
    fn path(self) -> &'static str {
        match self {
            Client::Chat => "/v1/chat/completions",
            Client::Messages => "/v1/messages",
            Client::Responses => "/v1/responses",
        }
    }

    /// A request for `model` saying `text`, in this API, with a weather tool when `tools`.
    fn body(self, model: &str, text: &str, stream: bool, tools: bool) -> Value {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut body = match self {
            Client::Chat => json!({"model": model, "messages": [
                {"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}),
            Client::Messages => json!({"model": model, "max_tokens": 200, "system": "be brief",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
            Client::Responses => json!({"model": model, "instructions": "be brief",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]}),
        };
        if stream {
            body["stream"] = json!(true);
        }
        if tools {
            body["tools"] = match self {
                Client::Chat => {
                    json!([{"type": "function", "function": {"name": "weather", "parameters": schema}}])
                }
                Client::Messages => json!([{"name": "weather", "input_schema": schema}]),
                Client::Responses => {
                    json!([{"type": "function", "name": "weather", "parameters": schema}])
                }
            };
        }
        body
    }

    /// The text and tool calls (name, arguments) of a whole answer in this API.
    fn read_whole(self, v: &Value) -> (String, Vec<(String, Value)>) {
        let mut text = String::new();
        let mut calls = Vec::new();
        let args = |a: &Value| -> Value {
            match a {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            }
        };
        match self {
            Client::Chat => {
                let m = &v["choices"][0]["message"];
                text.push_str(m["content"].as_str().unwrap_or(""));
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    calls.push((
                        c["function"]["name"].as_str().unwrap().into(),
                        args(&c["function"]["arguments"]),
                    ));
                }
            }
            Client::Messages => {
                assert_eq!(v["type"], "message", "{v}");
                for b in v["content"].as_array().unwrap() {
                    match b["type"].as_str().unwrap() {
                        "text" => text.push_str(b["text"].as_str().unwrap()),
                        "tool_use" => {
                            calls.push((b["name"].as_str().unwrap().into(), b["input"].clone()))
                        }
                        other => panic!("{other}"),
                    }
                }
            }
            Client::Responses => {
                assert_eq!(v["object"], "response", "{v}");
                for item in v["output"].as_array().unwrap() {
                    match item["type"].as_str().unwrap() {
                        "message" => {
                            for part in item["content"].as_array().unwrap() {
                                text.push_str(part["text"].as_str().unwrap());
                            }
                        }
                        "function_call" => calls.push((
                            item["name"].as_str().unwrap().into(),
                            args(&item["arguments"]),
                        )),
                        other => panic!("{other}"),
                    }
                }
            }
        }
        (text, calls)
    }

    /// Usage (in, out) of a whole answer.
    fn usage(self, v: &Value) -> (u64, u64) {
        let u = &v["usage"];
        match self {
            Client::Chat => (
                u["prompt_tokens"].as_u64().unwrap(),
                u["completion_tokens"].as_u64().unwrap(),
            ),
            Client::Messages | Client::Responses => (
                u["input_tokens"].as_u64().unwrap(),
                u["output_tokens"].as_u64().unwrap(),
            ),
        }
    }
}

/// What a client saw of a stream.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    /// Tool calls: name and the arguments as streamed, joined.
    calls: Vec<(String, String)>,
    /// The stream ended with its API's end event.
    ended: bool,
    /// Output tokens reported.
    output_tokens: Option<u64>,
    /// The error event's message, if one came.
    error: Option<String>,
    events: usize,
}

/// Reads a stream in `client`'s API by hand.
fn read_stream(client: Client, bytes: &[u8]) -> Streamed {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut s = Streamed::default();
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        s.events += 1;
        let mut name = None;
        let mut data = String::new();
        for line in event.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if data == "[DONE]" {
            assert_eq!(client, Client::Chat);
            s.ended = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
        match client {
            Client::Chat => {
                assert!(name.is_none());
                if let Some(e) = v.get("error") {
                    s.error = Some(e["message"].as_str().unwrap().into());
                    continue;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    s.output_tokens = u["completion_tokens"].as_u64();
                }
                let Some(d) = v.pointer("/choices/0/delta") else {
                    continue;
                };
                s.text.push_str(d["content"].as_str().unwrap_or(""));
                for c in d["tool_calls"].as_array().into_iter().flatten() {
                    if let Some(n) = c["function"]["name"].as_str() {
                        s.calls.push((n.into(), String::new()));
                    }
                    s.calls
                        .last_mut()
                        .unwrap()
                        .1
                        .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
                }
            }
            Client::Messages => {
                let kind = v["type"].as_str().unwrap();
                assert_eq!(name.as_deref(), Some(kind), "the event's name is its type");
                match kind {
                    "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                        s.calls.push((
                            v["content_block"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    "content_block_delta" => match v["delta"]["type"].as_str().unwrap() {
                        "text_delta" => s.text.push_str(v["delta"]["text"].as_str().unwrap()),
                        "input_json_delta" => s
                            .calls
                            .last_mut()
                            .unwrap()
                            .1
                            .push_str(v["delta"]["partial_json"].as_str().unwrap()),
                        other => panic!("{other}"),
                    },
                    "message_delta" => s.output_tokens = v["usage"]["output_tokens"].as_u64(),
                    "message_stop" => s.ended = true,
                    "error" => s.error = Some(v["error"]["message"].as_str().unwrap().into()),
                    _ => {}
                }
            }
            Client::Responses => {
                let kind = v["type"].as_str().unwrap();
                assert_eq!(name.as_deref(), Some(kind), "the event's name is its type");
                match kind {
                    "response.output_text.delta" => s.text.push_str(v["delta"].as_str().unwrap()),
                    "response.output_item.added" if v["item"]["type"] == "function_call" => {
                        s.calls
                            .push((v["item"]["name"].as_str().unwrap().into(), String::new()));
                    }
                    "response.function_call_arguments.delta" => s
                        .calls
                        .last_mut()
                        .unwrap()
                        .1
                        .push_str(v["delta"].as_str().unwrap()),
                    "response.completed" => {
                        s.ended = true;
                        s.output_tokens = v["response"]["usage"]["output_tokens"].as_u64();
                    }
                    "error" => s.error = Some(v["message"].as_str().unwrap().into()),
                    _ => {}
                }
            }
        }
    }
    s
}

struct Setup {
    state: AppState,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// The routes above, each provider of its API on one fake upstream.
async fn setup(extra: &str) -> Setup {
    let upstream = Upstream::start().await;
    let (engine, dir) = fake_engine_for(ROUTES);
    let base = &upstream.base_url;
    let config = parse_proxy(&format!(
        "version: 1
providers:
  chat: {{base_url: {base}, api_key_env: UP_KEY}}
  anthropic: {{base_url: {base}, api: anthropic_messages, api_key_env: UP_KEY}}
  responses: {{base_url: {base}, api: openai_responses, api_key_env: UP_KEY}}
retries: {{attempts: 2, backoff_ms: 10, max_backoff_ms: 50}}
mark_down_s: 0
{extra}"
    ));
    assert_eq!(config.check(engine.index().table()), Vec::<String>::new());
    let state = AppState::with_engine(engine, ServerOptions::default())
        .with_proxy(config)
        .unwrap();
    Setup {
        state,
        upstream,
        _dir: dir,
    }
}

fn post(client: Client, body: &Value) -> Request<Body> {
    Request::post(client.path())
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-pointsman-tenant", "t")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn every_client_api_reaches_every_provider_api_plain_and_streamed() {
    let s = setup("").await;
    for client in CLIENTS {
        for (model, api) in MODELS {
            // plain
            let (status, headers, bytes) = send(
                &s.state,
                post(client, &client.body(model, "hi", false, false)),
            )
            .await;
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(status, StatusCode::OK, "{client:?} → {model}: {v}");
            assert_eq!(h(&headers, "x-pointsman-model"), model);
            assert_eq!(
                client.read_whole(&v).0,
                format!("answer from {model}"),
                "{client:?} → {model}: {v}"
            );
            assert_eq!(
                client.usage(&v),
                (PROMPT_TOKENS, COMPLETION_TOKENS),
                "{client:?} → {model}"
            );
            let sent = s.upstream.received().pop().unwrap();
            assert_eq!(sent.api, api, "{client:?} → {model}");
            assert_eq!(
                sent.authorization
                    .as_deref()
                    .map(|a| a.trim_start_matches("Bearer ")),
                Some(crate::proxy::UPSTREAM_KEY)
            );
            // the system prompt reached the provider in its own form
            let system = match api {
                "chat" => sent.body["messages"][0]["content"].clone(),
                "messages" => sent.body["system"].clone(),
                _ => sent.body["instructions"].clone(),
            };
            assert_eq!(system, "be brief", "{client:?} → {api}: {}", sent.body);
            // streamed
            let (status, headers, bytes) = send(
                &s.state,
                post(client, &client.body(model, "hi", true, false)),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(h(&headers, "content-type"), "text/event-stream");
            let got = read_stream(client, &bytes);
            assert_eq!(
                got.text,
                format!("answer from {model}"),
                "{client:?} → {model}: {}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(
                got.ended && got.error.is_none(),
                "{client:?} → {model}: {got:?}"
            );
            if client != Client::Chat {
                assert_eq!(
                    got.output_tokens,
                    Some(COMPLETION_TOKENS),
                    "{client:?} → {model}"
                );
            }
        }
    }
}

#[tokio::test]
async fn tool_definitions_calls_and_results_cross_every_pair_of_apis() {
    let s = setup("").await;
    for client in CLIENTS {
        for (model, api) in MODELS {
            for stream in [false, true] {
                s.upstream
                    .script(model, [Behaviour::CallsTool("weather".into())]);
                let (status, _, bytes) = send(
                    &s.state,
                    post(
                        client,
                        &client.body(model, "weather in Paris?", stream, true),
                    ),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&bytes)
                );
                let expected: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap();
                let calls: Vec<(String, Value)> = if stream {
                    let got = read_stream(client, &bytes);
                    assert!(got.ended, "{client:?} → {model}: {got:?}");
                    got.calls
                        .into_iter()
                        .map(|(n, a)| (n, serde_json::from_str(&a).unwrap()))
                        .collect()
                } else {
                    client
                        .read_whole(&serde_json::from_slice(&bytes).unwrap())
                        .1
                };
                assert_eq!(
                    calls,
                    [("weather".to_string(), expected)],
                    "{client:?} → {model} stream {stream}"
                );
                let sent = s.upstream.received().pop().unwrap();
                let tool_name = match api {
                    "chat" => &sent.body["tools"][0]["function"]["name"],
                    _ => &sent.body["tools"][0]["name"],
                };
                assert_eq!(tool_name, "weather", "{client:?} → {api}: {}", sent.body);
            }
        }
    }
    // a tool's result goes back in the provider's form
    let result = json!({"model": "claude", "max_tokens": 100, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]});
    for (model, api) in MODELS {
        let mut body = result.clone();
        body["model"] = json!(model);
        let (status, _, _) = send(&s.state, post(Client::Messages, &body)).await;
        assert_eq!(status, StatusCode::OK);
        let sent = s.upstream.received().pop().unwrap();
        let (call_id, output) = match api {
            "chat" => (
                &sent.body["messages"][1]["tool_calls"][0]["id"],
                &sent.body["messages"][2]["content"],
            ),
            "messages" => (
                &sent.body["messages"][2]["content"][0]["tool_use_id"],
                &sent.body["messages"][2]["content"][0]["content"],
            ),
            _ => (
                &sent.body["input"][1]["call_id"],
                &sent.body["input"][2]["output"],
            ),
        };
        assert_eq!(
            (call_id.as_str(), output.as_str()),
            (Some("toolu_1"), Some("sunny")),
            "{api}: {}",
            sent.body
        );
    }
}

#[tokio::test]
async fn a_provider_down_falls_back_to_the_next_candidate_of_another_api() {
    let s = setup("").await;
    for client in CLIENTS {
        for stream in [false, true] {
            // claude (Anthropic Messages) fails both tries; gpt (chat completions) answers
            s.upstream
                .script("claude", [Behaviour::Status(503), Behaviour::Status(503)]);
            let (status, headers, bytes) = send(
                &s.state,
                post(client, &client.body("claude_first", "hello", stream, false)),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(h(&headers, "x-pointsman-model"), "gpt");
            assert_eq!(h(&headers, "x-pointsman-fallback"), "true");
            assert_eq!(h(&headers, "x-pointsman-attempts"), "3");
            let text = if stream {
                read_stream(client, &bytes).text
            } else {
                client
                    .read_whole(&serde_json::from_slice(&bytes).unwrap())
                    .0
            };
            assert_eq!(text, "answer from gpt", "{client:?}");
            let apis: Vec<&str> = s
                .upstream
                .received()
                .iter()
                .rev()
                .take(3)
                .map(|r| r.api)
                .collect();
            assert_eq!(apis, ["chat", "messages", "messages"]);
        }
    }
}

#[tokio::test]
async fn an_upstream_failing_before_or_in_the_middle_of_a_stream_is_told_in_the_clients_api() {
    let s = setup("").await;
    for client in CLIENTS {
        for (model, _) in MODELS {
            // before the first event: retried, and the client never knows
            s.upstream.script(model, [Behaviour::Status(500)]);
            let (status, headers, bytes) = send(
                &s.state,
                post(client, &client.body(model, "hi", true, false)),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(h(&headers, "x-pointsman-attempts"), "2");
            assert_eq!(
                read_stream(client, &bytes).text,
                format!("answer from {model}")
            );
            // halfway: the stream ends with the client API's error event
            s.upstream.script(model, [Behaviour::CutAfter(4)]);
            let (_, _, bytes) = send(
                &s.state,
                post(client, &client.body(model, "hi", true, false)),
            )
            .await;
            let got = read_stream(client, &bytes);
            assert!(!got.ended, "{client:?} → {model}: {got:?}");
            assert!(
                got.error
                    .as_deref()
                    .is_some_and(|e| e.contains("broke off")),
                "{client:?} → {model}: {got:?}"
            );
            // ended early without its last event
            s.upstream.script(model, [Behaviour::NoDone]);
            let (_, _, bytes) = send(
                &s.state,
                post(client, &client.body(model, "hi", true, false)),
            )
            .await;
            let got = read_stream(client, &bytes);
            assert!(
                got.error
                    .as_deref()
                    .is_some_and(|e| e.contains("ended the stream without")),
                "{client:?} → {model}: {got:?}"
            );
        }
    }
    // a translated answer that cannot be read is a 502 in the client's shape, not a 200
    s.upstream.script("gpt", [Behaviour::Garbage]);
    let (status, _, bytes) = send(
        &s.state,
        post(
            Client::Messages,
            &Client::Messages.body("gpt", "hi", false, false),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    // an upstream's own refusal (400) reaches the client in the client's shape
    s.upstream.script("claude", [Behaviour::Status(400)]);
    let (status, _, bytes) = send(
        &s.state,
        post(
            Client::Chat,
            &Client::Chat.body("claude", "hi", false, false),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["message"], "fake 400", "{v}");
    s.upstream.script("gpt", [Behaviour::Status(400)]);
    let (_, _, bytes) = send(
        &s.state,
        post(
            Client::Messages,
            &Client::Messages.body("gpt", "hi", false, false),
        ),
    )
    .await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            v["type"].as_str(),
            v["error"]["type"].as_str(),
            v["error"]["message"].as_str()
        ),
        (
            Some("error"),
            Some("invalid_request_error"),
            Some("fake 400")
        ),
        "{v}"
    );
}

#[tokio::test]
async fn streams_relay_the_first_event_before_the_upstream_sends_its_second_in_every_direction() {
    let s = setup("").await;
    for client in CLIENTS {
        for (model, _) in MODELS {
            s.upstream.script(model, [Behaviour::Gate]);
            let res = app(s.state.clone())
                .oneshot(post(client, &client.body(model, "hi", true, false)))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let mut body = res.into_body();
            let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("{client:?} → {model}: nothing relayed while the upstream holds its second event"))
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap();
            assert!(!first.is_empty());
            s.upstream.release();
            let rest = body.collect().await.unwrap().to_bytes();
            let got = read_stream(client, &[first.to_vec(), rest.to_vec()].concat());
            assert_eq!(
                got.text,
                format!("answer from {model}"),
                "{client:?} → {model}"
            );
            assert!(got.ended);
        }
    }
}

#[tokio::test]
async fn spend_is_counted_from_each_apis_usage() {
    let s = setup("").await;
    // $1 per million tokens in and out: 3,000 tokens cost $0.003 per answer
    let per_answer = (PROMPT_TOKENS + COMPLETION_TOKENS) as f64 / 1e6;
    for (i, (model, _)) in MODELS.into_iter().enumerate() {
        let client = CLIENTS[(i + 1) % 3];
        send(
            &s.state,
            post(client, &client.body(model, "hi", false, false)),
        )
        .await;
        send(
            &s.state,
            post(client, &client.body(model, "hi", true, false)),
        )
        .await;
        wait_for_reported_spend(&s.state, model, 2.0 * per_answer).await;
    }
}

#[tokio::test]
async fn a_routes_reasoning_effort_is_sent_in_each_apis_form() {
    let s = setup("reasoning_effort: {thinking: high, claude_first: low}").await;
    send(
        &s.state,
        post(
            Client::Chat,
            &Client::Chat.body("thinking", "x", false, false),
        ),
    )
    .await;
    let sent = s.upstream.received().pop().unwrap();
    assert_eq!(
        (sent.api, &sent.body["reasoning"]["effort"]),
        ("responses", &json!("high"))
    );
    s.upstream
        .script("o-resp", [Behaviour::Status(503), Behaviour::Status(503)]);
    send(
        &s.state,
        post(
            Client::Chat,
            &Client::Chat.body("thinking", "x", false, false),
        ),
    )
    .await;
    let sent = s.upstream.received().pop().unwrap();
    assert_eq!(sent.api, "messages");
    assert_eq!(
        sent.body["thinking"],
        json!({"type": "enabled", "budget_tokens": 4095}),
        "{}",
        sent.body
    );
    send(
        &s.state,
        post(
            Client::Messages,
            &Client::Messages.body("claude_first", "x", false, false),
        ),
    )
    .await;
    let sent = s.upstream.received().pop().unwrap();
    // low is 2,048 thinking tokens, more than the request's max_tokens of 200: no thinking fits
    assert!(sent.body.get("thinking").is_none(), "{}", sent.body);
    // gpt is no reasoning model: it gets no effort
    s.upstream
        .script("o-resp", [Behaviour::Status(503), Behaviour::Status(503)]);
    s.upstream
        .script("claude", [Behaviour::Status(503), Behaviour::Status(503)]);
    send(
        &s.state,
        post(
            Client::Chat,
            &Client::Chat.body("thinking", "x", false, false),
        ),
    )
    .await;
    let sent = s.upstream.received().pop().unwrap();
    assert_eq!(sent.model, "gpt");
    assert!(sent.body.get("reasoning_effort").is_none(), "{}", sent.body);
    // a client's own effort stands
    let mut body = Client::Responses.body("thinking", "x", false, false);
    body["reasoning"] = json!({"effort": "minimal"});
    send(&s.state, post(Client::Responses, &body)).await;
    assert_eq!(
        s.upstream.received().pop().unwrap().body["reasoning"]["effort"],
        "minimal"
    );
}

#[tokio::test]
async fn what_cannot_be_translated_goes_only_to_a_provider_of_the_clients_api() {
    let s = setup("").await;
    // a PDF: claude_first's Anthropic model takes it, the chat fallback could not
    let mut body = Client::Messages.body("claude_first", "summarise this", false, false);
    body["messages"][0]["content"] = json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}, {"type": "text", "text": "summarise this"}]);
    // and a server tool, which a chat provider does without
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    let (status, _, _) = send(&s.state, post(Client::Messages, &body)).await;
    assert_eq!(status, StatusCode::OK);
    let sent = s.upstream.received().pop().unwrap();
    assert_eq!(sent.body["messages"][0]["content"][0]["type"], "document");
    assert_eq!(sent.body["tools"][0]["type"], "web_search_20250305");
    s.upstream
        .script("claude", [Behaviour::Status(503), Behaviour::Status(503)]);
    let (status, _, bytes) = send(&s.state, post(Client::Messages, &body)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a `document` content block cannot be translated for provider `chat`"),
        "{message}"
    );
    // to the chat model alone it cannot go at all: the request's fault, not an upstream's
    let mut alone = body.clone();
    alone["model"] = json!("gpt");
    let before = s.upstream.received().len();
    let (status, _, bytes) = send(&s.state, post(Client::Messages, &alone)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no candidate model's provider can take this request")
            && message.contains("a `document` content block cannot be translated"),
        "{message}"
    );
    assert_eq!(s.upstream.received().len(), before, "nothing goes upstream");
    // without the PDF the chat model answers, without the server tool
    body["messages"][0]["content"] = json!("summarise this");
    s.upstream
        .script("claude", [Behaviour::Status(503), Behaviour::Status(503)]);
    let (status, headers, _) = send(&s.state, post(Client::Messages, &body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "gpt");
    let sent = s.upstream.received().pop().unwrap();
    assert!(sent.body.get("tools").is_none(), "{}", sent.body);
    // a stateful Responses request is refused with what to do
    let mut body = Client::Responses.body("gpt", "x", false, false);
    body["previous_response_id"] = json!("resp_1");
    let (status, _, bytes) = send(&s.state, post(Client::Responses, &body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(&bytes).contains("send the whole conversation in `input`"));
}

#[tokio::test]
async fn messages_errors_and_token_counts_take_anthropics_shape() {
    let s = setup("").await;
    let (status, _, bytes) = send(&s.state, post(Client::Messages, &json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("not_found_error")),
        "{v}"
    );
    let count = |body: Value| {
        Request::post("/v1/messages/count_tokens")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, _, bytes) = send(
        &s.state,
        count(json!({"model": "auto", "messages": [{"role": "user", "content": "a".repeat(400)}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["input_tokens"], 101, "{v}");
    let mut anthropic_models = HeaderMap::new();
    anthropic_models.insert("anthropic-version", "2023-06-01".parse().unwrap());
    let mut req = Request::get("/v1/models").body(Body::empty()).unwrap();
    *req.headers_mut() = anthropic_models;
    let (_, _, bytes) = send(&s.state, req).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        v["data"][0],
        json!({"type": "model", "id": "auto", "display_name": "auto", "created_at": "1970-01-01T00:00:00Z"})
    );
}

/// A conversation of `turns` user messages (the assistant's answers between them) with a
/// session key, in the Messages API, as Claude Code sends it.
fn session_turn(turns: &[&str], session: Option<&str>) -> Request<Body> {
    let mut messages = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        if i > 0 {
            messages.push(json!({"role": "assistant", "content": "Noted."}));
        }
        messages.push(json!({"role": "user", "content": t}));
    }
    let mut body = json!({"model": "auto", "max_tokens": 300, "messages": messages});
    // as Claude Code writes it: the session inside `metadata.user_id`
    if let Some(key) = session {
        let user_id = json!({"device_id": "d", "account_uuid": "", "session_id": key});
        body["metadata"] = json!({"user_id": user_id.to_string()});
    }
    post(Client::Messages, &body)
}

#[tokio::test]
async fn a_session_stays_on_its_model_as_turns_drift_and_moves_up_when_a_turn_needs_more() {
    // the example routes on the real model; every provider on the fake upstream
    let (state, _upstream) = proxied_examples().await;
    let first = "My package arrived damaged, my warranty expired yesterday and I paid with three gift cards: how do I get a refund?";
    // ten turns, each further from a refund dispute and closer to a simple look-up
    let drift = [
        "Also the box itself was crushed when it arrived.",
        "The courier left it at the door in the rain.",
        "It was the second delivery attempt.",
        "The first attempt was on Monday.",
        "I was at work that day.",
        "Can you tell me when it shipped?",
        "Has my other package shipped yet?",
        "When will my order arrive?",
        "What's the status of my order?",
        "Where is my order #12345?",
    ];
    let mut turns = vec![first];
    let (_, headers, _) = send(&state, session_turn(&turns, Some("session-a"))).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "claude-3.5-sonnet");
    let mut alone_cheaper = 0;
    for turn in drift {
        turns.push(turn);
        let (status, headers, _) = send(&state, session_turn(&turns, Some("session-a"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            h(&headers, "x-pointsman-model"),
            "claude-3.5-sonnet",
            "turn {turn:?} left the session's model"
        );
        assert_eq!(h(&headers, "x-pointsman-session"), "held");
        // the same conversation without a session key
        let (_, alone, _) = send(&state, session_turn(&turns, None)).await;
        assert!(alone.get("x-pointsman-session").is_none());
        if h(&alone, "x-pointsman-model") != "claude-3.5-sonnet" {
            alone_cheaper += 1;
        }
    }
    // without the session the drifting turns would have gone to cheaper models
    assert!(
        alone_cheaper >= 3,
        "only {alone_cheaper} of the ten turns would have moved without a session"
    );

    // a session on the small model moves up when a turn needs the premium one, and stays up
    let mut turns = vec!["Where is my order #12345?"];
    let (_, headers, _) = send(&state, session_turn(&turns, Some("session-b"))).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "llama-3.1-8b-instruct");
    turns.push("It finally came but arrived damaged, the warranty expired yesterday, and I paid with three gift cards and a credit card. How will my refund be split?");
    let (_, headers, _) = send(&state, session_turn(&turns, Some("session-b"))).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "claude-3.5-sonnet");
    assert_eq!(h(&headers, "x-pointsman-session"), "moved_up");
    let (_, headers, _) = send(
        &state,
        session_turn(&["Where is my order #12345?"], Some("session-b")),
    )
    .await;
    assert_eq!(
        h(&headers, "x-pointsman-model"),
        "claude-3.5-sonnet",
        "a session never moves down"
    );
    // a header key works for every API, and sessions are kept apart
    let (_, headers, _) = send(
        &state,
        session_turn(&["Where is my order #12345?"], Some("session-c")),
    )
    .await;
    assert_eq!(h(&headers, "x-pointsman-model"), "llama-3.1-8b-instruct");
    let req = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-pointsman-session", "session-b")
        .body(Body::from(json!({"model": "auto", "messages": [{"role": "user", "content": "Where is my order #12345?"}]}).to_string()))
        .unwrap();
    let (_, headers, _) = send(&state, req).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "claude-3.5-sonnet");
    // a plain end-user id is no session key; nor is a request pinned to a route
    let mut body = json!({"model": "auto", "max_tokens": 100, "metadata": {"user_id": "session-b"},
        "messages": [{"role": "user", "content": "Where is my order #12345?"}]});
    let (_, headers, _) = send(&state, post(Client::Messages, &body)).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "llama-3.1-8b-instruct");
    body["model"] = json!("order_status");
    let req = Request::post("/v1/messages")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-pointsman-session", "session-b")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (_, headers, _) = send(&state, req).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "llama-3.1-8b-instruct");
}
