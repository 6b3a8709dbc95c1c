//! The OpenAI-compatible proxy against a fake upstream on loopback: routing to the right
//! upstream, streaming, retries and fallbacks, timeouts, the cascade, usage accounting and
//! multi-turn routing.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::proxy_config::ProxyConfig;
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;
use crate::upstream::{Behaviour, COMPLETION_TOKENS, PROMPT_TOKENS, Upstream};

/// `premium` costs $0.30 for the upstream's 1,000 + 2,000 tokens; the others next to nothing.
const PROXY_ROUTES: &str = "\
version: 1
defaults: {method: neighbours, threshold: 0.9, top_k: 3}
models:
  premium: {provider: up, input_per_mtok: 100, output_per_mtok: 100, context_window: 100000}
  mid: {provider: up, input_per_mtok: 1, output_per_mtok: 1, context_window: 100000}
  cheap: {provider: up, input_per_mtok: 1, output_per_mtok: 1, context_window: 100000}
budgets:
  - {scope: tenant, period: day, limit_usd: 0.5}
default_route: {models: [cheap]}
routes:
  - name: greet
    models: [premium, mid, cheap]
    expected_output_tokens: 100
    utterances: [hello there, good morning friend]
  - name: data
    models: [cheap, premium]
    utterances: [give me json data]
";

pub(crate) const UPSTREAM_KEY: &str = "sk-upstream-secret";

/// First-byte and idle timeouts for the tests of them; the upstream stalls far longer, so an
/// answer that comes at all proves the timeout fired.
const SHORT_TIMEOUTS: &str =
    "timeouts: {connect_ms: 5000, first_byte_ms: 400, idle_ms: 400, total_ms: 30000}\n";

/// Longer than any test may take.
const FOREVER: Duration = Duration::from_secs(600);

struct Proxied {
    state: AppState,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

fn proxy_file(upstream: &Upstream, extra: &str) -> String {
    let defaults = [
        // generous: only the tests of timeouts (`SHORT_TIMEOUTS`) expect one to fire
        "timeouts: {connect_ms: 5000, first_byte_ms: 10000, idle_ms: 10000, total_ms: 30000}",
        "retries: {attempts: 2, backoff_ms: 10, max_backoff_ms: 50}",
        "mark_down_s: 0",
        "cascade: {data: {min_chars: 12}}",
    ];
    // `extra` replaces the defaults it names
    let kept: Vec<&str> = defaults
        .into_iter()
        .filter(|d| {
            let key = d.split(':').next().unwrap();
            !extra.lines().any(|l| l.starts_with(key))
        })
        .collect();
    format!(
        "version: 1
providers:
  up:
    base_url: {}
    api_key_env: UP_KEY
    rename: {{premium: premium-v2}}
    forward_headers: [OpenAI-Organization]
{}
{extra}",
        upstream.base_url,
        kept.join("\n")
    )
}

pub(crate) fn parse_proxy(text: &str) -> ProxyConfig {
    let env = |v: &str| (v == "UP_KEY").then(|| UPSTREAM_KEY.to_string());
    ProxyConfig::parse("proxy.yaml".as_ref(), text, &env).unwrap_or_else(|e| panic!("{e}"))
}

/// A server over [`PROXY_ROUTES`] (fake embedder) proxying to a fresh fake upstream.
async fn proxied(extra: &str) -> Proxied {
    proxied_with(PROXY_ROUTES, extra).await
}

/// [`proxied`] over other routes.
async fn proxied_with(routes: &str, extra: &str) -> Proxied {
    let upstream = Upstream::start().await;
    let (engine, dir) = fake_engine_for(routes);
    let config = parse_proxy(&proxy_file(&upstream, extra));
    assert_eq!(config.check(engine.index().table()), Vec::<String>::new());
    let state = AppState::with_engine(engine, ServerOptions::default())
        .with_proxy(config)
        .unwrap();
    Proxied {
        state,
        upstream,
        _dir: dir,
    }
}

/// One request through the router, answered in full within a minute (the upstream's stalls
/// last [`FOREVER`]: a timeout that does not fire fails the test instead of hanging it).
pub(crate) async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let exchange = async {
        let res = app(state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("no whole answer within 60 s")
}

fn chat_request(body: &Value, tenant: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-pointsman-tenant", tenant)
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn chat(state: &AppState, body: Value) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, bytes) = send(state, chat_request(&body, "t")).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, headers, v)
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0.2})
}

pub(crate) fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[tokio::test]
async fn auto_routes_to_the_chosen_model_at_its_provider() {
    let p = proxied("").await;
    let mut req = chat_request(&ask("auto", "hello there"), "t");
    let client_headers = req.headers_mut();
    client_headers.insert(
        header::AUTHORIZATION,
        "Bearer client-secret".parse().unwrap(),
    );
    client_headers.insert("openai-organization", "org-client".parse().unwrap());
    client_headers.insert("x-client-secret-sauce", "nope".parse().unwrap());
    let (status, headers, body) = send(&p.state, req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // the catalog name is renamed for the provider; the answer is the upstream's, untouched
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer from premium-v2"
    );
    assert_eq!(h(&headers, "x-pointsman-route"), "greet");
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    assert_eq!(h(&headers, "x-pointsman-outcome"), "matched");
    assert_eq!(h(&headers, "x-pointsman-fallback"), "false");
    assert!(h(&headers, "x-pointsman-score").parse::<f32>().unwrap() > 0.9);
    let sent = &p.upstream.received()[0];
    assert_eq!(sent.model, "premium-v2");
    // the provider's key, never the caller's; other fields pass as they came
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    // of the client's headers, only those the provider's `forward_headers` names
    assert_eq!(sent.headers["openai-organization"], "org-client");
    assert!(!sent.headers.contains_key("x-client-secret-sauce"));
    assert!(!sent.headers.contains_key("x-pointsman-tenant"));
    assert_eq!(sent.body["temperature"], 0.2);
    assert_eq!(
        sent.body["messages"],
        ask("auto", "hello there")["messages"]
    );

    // a prompt no route takes goes to the default route's model
    let (_, headers, _) = chat(&p.state, ask("auto", "quantum chromodynamics lecture")).await;
    assert_eq!(h(&headers, "x-pointsman-outcome"), "fallback");
    assert_eq!(h(&headers, "x-pointsman-model"), "cheap");
    assert!(headers.get("x-pointsman-route").is_none());
}

#[tokio::test]
async fn a_route_name_pins_the_route_and_a_model_name_passes_through() {
    let p = proxied("").await;
    let (status, headers, _) = chat(&p.state, ask("data", "hello there")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-outcome"), "override");
    assert_eq!(h(&headers, "x-pointsman-route"), "data");
    assert_eq!(h(&headers, "x-pointsman-model"), "cheap");

    let (status, headers, body) = chat(&p.state, ask("mid", "hello there")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h(&headers, "x-pointsman-outcome"), "passthrough");
    assert_eq!(body["choices"][0]["message"]["content"], "answer from mid");

    // unknown models get OpenAI's error shape, with what to do
    let (status, _, body) = chat(&p.state, ask("gpt-9", "hello")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/models")
    );
    let (status, _, body) = chat(&p.state, json!({"model": "auto", "messages": "hi"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`messages`")
    );

    let (status, _, models) = send(
        &p.state,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_slice(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "greet", "data", "cheap", "mid", "premium"]);
}

#[tokio::test]
async fn errors_retry_with_backoff_then_fall_back_to_the_next_candidate() {
    let p = proxied("").await;
    // premium fails twice (both tries), mid is down once and then answers
    p.upstream.script(
        "premium-v2",
        [Behaviour::Status(500), Behaviour::Status(503)],
    );
    p.upstream.script("mid", [Behaviour::Status(429)]);
    let (status, headers, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "answer from mid");
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    assert_eq!(h(&headers, "x-pointsman-fallback"), "true");
    assert_eq!(h(&headers, "x-pointsman-attempts"), "4");
    assert_eq!(
        p.upstream.models(),
        ["premium-v2", "premium-v2", "mid", "mid"]
    );

    // a request the upstream refuses as malformed is the client's: passed on, not retried
    p.upstream.script("premium-v2", [Behaviour::Status(400)]);
    let (status, _, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "fake 400");
    assert_eq!(p.upstream.models().len(), 5);

    // every candidate failing is a 502 that names each failure
    for m in ["premium-v2", "mid", "cheap"] {
        p.upstream
            .script(m, [Behaviour::Status(500), Behaviour::Status(502)]);
    }
    let (status, _, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["type"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    for m in ["premium", "mid", "cheap"] {
        assert!(
            message.contains(&format!("{m}: upstream answered 5")),
            "{message}"
        );
    }

    let (_, _, metrics) = send(
        &p.state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "pointsman_upstream_requests_total{model=\"premium\",result=\"status_5xx\"} 4"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_model_that_failed_every_try_is_marked_down_for_a_while() {
    let p = proxied("mark_down_s: 60\n").await;
    p.upstream.script(
        "premium-v2",
        [Behaviour::Status(500), Behaviour::Status(500)],
    );
    let (_, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    // the next request does not try premium at all
    let (_, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    assert_eq!(h(&headers, "x-pointsman-fallback"), "false");
    assert_eq!(
        p.upstream.models(),
        ["premium-v2", "premium-v2", "mid", "mid"]
    );
}

#[tokio::test]
async fn the_default_routes_models_are_fallbacks_in_their_order() {
    // greet's only candidate is premium; the default route lists mid before premium
    let routes = PROXY_ROUTES
        .replace("models: [premium, mid, cheap]", "models: [premium]")
        .replace(
            "default_route: {models: [cheap]}",
            "default_route: {models: [mid, premium]}",
        );
    let p = proxied_with(&routes, "").await;
    p.upstream.script(
        "premium-v2",
        [Behaviour::Status(500), Behaviour::Status(500)],
    );
    let (status, headers, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    assert_eq!(p.upstream.models(), ["premium-v2", "premium-v2", "mid"]);
}

#[tokio::test]
async fn a_stalled_upstream_times_out_and_the_next_candidate_answers() {
    let p = proxied(SHORT_TIMEOUTS).await;
    p.upstream
        .script("premium-v2", vec![Behaviour::Stall(FOREVER); 2]);
    let (status, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::OK);
    // both tries of premium timed out before their first byte
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    assert_eq!(h(&headers, "x-pointsman-attempts"), "3");

    // the total deadline bounds the whole request: 504, though no single try timed out
    let p = proxied(
        "timeouts: {connect_ms: 5000, first_byte_ms: 600000, idle_ms: 600000, total_ms: 1000}\n",
    )
    .await;
    for m in ["premium-v2", "mid", "cheap"] {
        p.upstream.script(m, vec![Behaviour::Stall(FOREVER); 2]);
    }
    let (status, _, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["type"], "upstream_timeout");
}

fn streaming(model: &str, text: &str, include_usage: bool) -> Value {
    let mut body = ask(model, text);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn streams_pass_through_event_by_event_without_buffering() {
    let p = proxied("").await;
    p.upstream.script("premium-v2", [Behaviour::Gate]);
    let res = app(p.state.clone())
        .oneshot(chat_request(&streaming("auto", "hello there", true), "t"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(h(res.headers(), "content-type"), "text/event-stream");
    assert_eq!(h(res.headers(), "x-pointsman-model"), "premium");
    let mut body = res.into_body();
    // the first event arrives while the upstream is still holding the rest back
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the first event is relayed before the answer is complete")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    p.upstream.release();
    let rest = body.collect().await.unwrap().to_bytes();
    let got = [first.to_vec(), rest.to_vec()].concat();
    // the client asked for usage: every byte is the upstream's
    assert_eq!(got, p.upstream.streamed()[0]);
    assert!(got.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn the_usage_chunk_pointsman_asked_for_is_not_shown_to_the_client() {
    let p = proxied("").await;
    let (status, _, got) = send(
        &p.state,
        chat_request(&streaming("auto", "hello there", false), "t"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        p.upstream.received()[0].body["stream_options"]["include_usage"],
        true
    );
    let sent = String::from_utf8(p.upstream.streamed()[0].clone()).unwrap();
    let got = String::from_utf8(got.to_vec()).unwrap();
    let without_usage: String = sent
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"usage\""))
        .collect();
    assert_ne!(sent, without_usage);
    assert_eq!(got, without_usage);
}

#[tokio::test]
async fn a_stream_cut_or_stalled_halfway_ends_with_an_error_event() {
    for (behaviour, needle) in [
        (Behaviour::CutAfter(3), "broke off"),
        (
            Behaviour::PauseAfterFirst(FOREVER),
            "sent nothing for 400 ms",
        ),
    ] {
        let p = proxied(SHORT_TIMEOUTS).await;
        p.upstream.script("premium-v2", [behaviour]);
        let (status, _, got) = send(
            &p.state,
            chat_request(&streaming("auto", "hello there", true), "t"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let got = String::from_utf8(got.to_vec()).unwrap();
        let events: Vec<&str> = got.split_inclusive("\n\n").collect();
        let last: Value = serde_json::from_str(
            events
                .last()
                .unwrap()
                .trim()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["error"]["type"], "upstream_error", "{got}");
        assert!(
            last["error"]["message"].as_str().unwrap().contains(needle),
            "{last}"
        );
        // what came before the failure was relayed whole
        assert!(events.len() >= 2, "{got}");
        assert!(!got.contains("[DONE]"));
        assert_eq!(
            p.upstream.models().len(),
            1,
            "a stream begun is not retried"
        );
    }
}

#[tokio::test]
async fn the_cascade_escalates_answers_that_fail_its_check() {
    let p = proxied("").await;
    // the cheap candidate's answer is too short for the route's check (12 characters)
    p.upstream.script("cheap", [Behaviour::Says("ok".into())]);
    let (status, headers, body) = chat(&p.state, ask("auto", "give me json data")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-route"), "data");
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    assert_eq!(h(&headers, "x-pointsman-escalations"), "1");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer from premium-v2"
    );
    // both answers were paid for: both are counted
    wait_for_reported_spend(&p.state, "cheap", 0.003).await;
    wait_for_reported_spend(&p.state, "premium", 0.3).await;

    // JSON asked for and not given: escalated too, also when streaming
    p.upstream
        .script("cheap", [Behaviour::Says("this is not json at all".into())]);
    let mut req = streaming("auto", "give me json data", false);
    req["response_format"] = json!({"type": "json_object"});
    let (status, headers, got) = send(&p.state, chat_request(&req, "t2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    assert!(String::from_utf8_lossy(&got).contains("premium-v2"));

    // an answer that passes is the cheap one's
    p.upstream
        .script("cheap", [Behaviour::Says("{\"valid\": \"json\"}".into())]);
    let (_, headers, got) = send(&p.state, chat_request(&req, "t3")).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "cheap");
    assert!(headers.get("x-pointsman-escalations").is_none());
    assert!(String::from_utf8_lossy(&got).contains("valid"));
}

/// Waits until the metrics report `usd` of upstream usage for `model` (settlement runs just
/// after the answer; the spend counters move before the metrics do).
pub(crate) async fn wait_for_reported_spend(state: &AppState, model: &str, usd: f64) {
    let prefix = format!("pointsman_reported_spend_usd_total{{model=\"{model}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, m) = send(state, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        let text = String::from_utf8(m.to_vec()).unwrap();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse::<f64>().unwrap());
        if value.is_some_and(|v| (v - usd).abs() < 1e-9) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{model}: {value:?}, not {usd}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn upstream_usage_feeds_the_spend_caps() {
    let p = proxied("").await;
    // each premium answer really costs $0.30 (the estimate was ~$0.01); the cap is $0.50
    let cost = (PROMPT_TOKENS + COMPLETION_TOKENS) as f64 * 100.0 / 1e6;
    assert_eq!(cost, 0.3);
    let (status, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    let (status, _, _) = send(
        &p.state,
        chat_request(&streaming("auto", "hello there", false), "t"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // streamed answers are settled when the stream ends, just after the client has it all
    wait_for_reported_spend(&p.state, "premium", 0.6).await;
    // $0.60 of reported usage leaves no room under the $0.50 cap
    let (status, _, body) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"]["type"], "budget_exhausted");
    // another tenant has its own cap
    let (status, headers, _) =
        send(&p.state, chat_request(&ask("auto", "hello there"), "other")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
}

#[tokio::test]
async fn api_keys_and_rate_limits_guard_the_route_and_proxy_endpoints() {
    let p = proxied("").await;
    let state = p
        .state
        .clone()
        .with_api_keys(vec!["key-one".into(), "key-two".into()])
        // one request each 100 s after a burst of two: nothing refills during the test (the
        // refill is unit-tested in src/server/auth.rs)
        .with_rate_limit(0.01, 2);
    let call = |key: Option<&str>, uri: &str| {
        let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        req.body(Body::from(ask("auto", "hello there").to_string()))
            .unwrap()
    };
    // every endpoint a caller uses asks for a key, before it reads the body
    for uri in [
        "/v1/route",
        "/v1/route/batch",
        "/v1/usage",
        "/v1/chat/completions",
        "GET /v1/models",
    ] {
        for key in [None, Some("key-on")] {
            let mut req = call(key, uri.trim_start_matches("GET "));
            if uri.starts_with("GET ") {
                *req.method_mut() = axum::http::Method::GET;
            }
            let (status, _, body) = send(&state, req).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with {key:?}");
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("Authorization: Bearer"), "{uri}: {body}");
        }
    }
    // two requests of burst, then 429 with Retry-After; the other key has its own bucket
    assert_eq!(
        send(&state, call(Some("key-one"), "/v1/route")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&state, call(Some("key-one"), "/v1/chat/completions"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, headers, body) = send(&state, call(Some("key-one"), "/v1/route")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h(&headers, "retry-after"), "100");
    assert!(String::from_utf8_lossy(&body).contains("rate_limited"));
    assert_eq!(
        send(&state, call(Some("key-two"), "/v1/route")).await.0,
        StatusCode::OK
    );
    // health and metrics stay open
    let (status, _, _) = send(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_proxy_file_the_proxy_endpoints_say_how_to_turn_it_on() {
    let (engine, _dir) = fake_engine_for(FAKE_ROUTES);
    let state = AppState::with_engine(engine, ServerOptions::default());
    let (status, _, body) = chat(&state, ask("auto", "hello")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--proxy"),
        "{body}"
    );
}

/// The example routes on the real model, every provider pointing at the fake upstream.
pub(crate) async fn proxied_examples() -> (AppState, Upstream) {
    let upstream = Upstream::start().await;
    let providers: String = ["openai", "groq", "anthropic", "vllm"]
        .iter()
        .map(|p| format!("  {p}: {{base_url: {}}}\n", upstream.base_url))
        .collect();
    let config = parse_proxy(&format!("version: 1\nproviders:\n{providers}"));
    let engine = example_engine();
    assert_eq!(config.check(engine.index().table()), Vec::<String>::new());
    let state = AppState::with_engine(engine, ServerOptions::default())
        .with_proxy(config)
        .unwrap();
    (state, upstream)
}

pub(crate) fn conversation(turns: &[(&str, &str)]) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    json!({"model": "auto", "messages": messages})
}

#[tokio::test]
async fn a_short_follow_up_stays_on_the_conversations_route() {
    let (state, _upstream) = proxied_examples().await;
    let order = [
        (
            "user",
            "Where is my order #12345? It was supposed to arrive on Monday.",
        ),
        (
            "assistant",
            "It left our warehouse yesterday and is on its way.",
        ),
    ];
    let (_, headers, _) = chat(&state, conversation(&order[..1])).await;
    assert_eq!(h(&headers, "x-pointsman-route"), "order_status");

    // alone, the follow-up matches nothing; in the conversation it stays on order_status
    let follow_up = "and what about the other one?";
    let (_, alone, _) = chat(&state, conversation(&[("user", follow_up)])).await;
    assert_ne!(
        alone.get("x-pointsman-route").map(|v| v.to_str().unwrap()),
        Some("order_status")
    );
    let mut turns = order.to_vec();
    turns.push(("user", follow_up));
    let (status, headers, _) = chat(&state, conversation(&turns)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-route"), "order_status");

    // a new turn that clearly matches another route moves the conversation there
    turns.push(("assistant", "The other one ships tomorrow."));
    turns.push(("user", "How do I reset my password?"));
    let (_, headers, _) = chat(&state, conversation(&turns)).await;
    assert_eq!(h(&headers, "x-pointsman-route"), "account_basics");
}

#[tokio::test]
async fn a_stream_silent_after_its_headers_is_retried_then_replaced() {
    let p = proxied(SHORT_TIMEOUTS).await;
    p.upstream.script(
        "premium-v2",
        vec![Behaviour::SilentAfterHeaders(FOREVER); 2],
    );
    let (status, headers, got) = send(
        &p.state,
        chat_request(&streaming("auto", "hello there", true), "t"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // nothing had reached the client, so the next candidate could still answer
    assert_eq!(h(&headers, "x-pointsman-model"), "mid");
    assert_eq!(h(&headers, "x-pointsman-fallback"), "true");
    assert!(String::from_utf8_lossy(&got).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_stream_that_ends_without_done_ends_with_an_error_event() {
    let p = proxied("").await;
    p.upstream.script("premium-v2", [Behaviour::NoDone]);
    let (_, _, got) = send(
        &p.state,
        chat_request(&streaming("auto", "hello there", true), "t"),
    )
    .await;
    let got = String::from_utf8(got.to_vec()).unwrap();
    let last = got.split_inclusive("\n\n").last().unwrap();
    assert!(last.contains("without `data: [DONE]`"), "{got}");
}

#[tokio::test]
async fn a_model_named_directly_is_held_to_the_same_spend_caps() {
    let p = proxied("").await;
    // $0.30 each as reported; the second crosses the $0.50 cap; the third is refused
    for _ in 0..2 {
        let (status, headers, _) = chat(&p.state, ask("premium", "hi")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h(&headers, "x-pointsman-outcome"), "passthrough");
    }
    // the second answer's settlement lands just after it
    wait_for_reported_spend(&p.state, "premium", 0.6).await;
    let (status, _, body) = chat(&p.state, ask("premium", "hi")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"]["type"], "budget_exhausted");
    assert_eq!(p.upstream.models(), ["premium-v2", "premium-v2"]);
}

#[tokio::test]
async fn failed_requests_give_back_what_they_reserved() {
    let p = proxied("").await;
    // one real answer: $0.30 of the $0.50 cap
    let (_, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    // twenty requests that fail on every candidate reserve ~$0.01 each while they run
    for _ in 0..20 {
        for m in ["premium-v2", "mid", "cheap"] {
            p.upstream.script(m, vec![Behaviour::Status(500); 2]);
        }
        let (status, _, _) = chat(&p.state, ask("auto", "hello there")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // had they kept it, premium (~$0.01) would no longer fit under the cap
    let (status, headers, _) = chat(&p.state, ask("auto", "hello there")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
}

#[tokio::test]
async fn long_conversations_fit_the_proxys_own_body_limit() {
    let p = proxied("").await;
    // 1.5 MiB of request, over the route endpoints' 1 MiB (in a field the proxy passes on as
    // it is, so that the context windows still fit)
    let mut body = ask("auto", "hello there");
    body["metadata"] = json!({"attachment": "x".repeat(1536 * 1024)});
    let (status, headers, _) = chat(&p.state, body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-route"), "greet");
    assert_eq!(
        p.upstream.received()[0].body["metadata"],
        body["metadata"],
        "forwarded whole"
    );
    // the route endpoint keeps its own, smaller limit
    let req = Request::post("/v1/route")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(send(&p.state, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_cascades_verdicts_and_feedback_on_a_proxied_answer_become_outcome_lines() {
    let p = proxied("").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outcomes.jsonl");
    let log = pointsman::decision_log::DecisionLog::open(pointsman::decision_log::LogOptions {
        path: path.clone(),
        max_bytes: 1 << 20,
        keep: 1,
    })
    .unwrap();
    let state = p.state.clone().with_outcome_log(log);
    // the cheap candidate's answer fails the route's check (too short): graded 0
    p.upstream.script("cheap", [Behaviour::Says("ok".into())]);
    let (status, headers, _) =
        send(&state, chat_request(&ask("auto", "give me json data"), "t")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "x-pointsman-model"), "premium");
    // the client grades the answer it got, by the request id the response carried
    let id = h(&headers, "x-request-id").to_string();
    let feedback = Request::post("/v1/feedback")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"request_id": id, "quality": 0.5, "model": "premium"}).to_string(),
        ))
        .unwrap();
    assert_eq!(send(&state, feedback).await.0, StatusCode::OK);
    drop((state, p));
    let graded = pointsman::quality::outcomes::read(&path).unwrap();
    assert_eq!(graded.len(), 2, "{graded:?}");
    assert_eq!(graded[0].prompt, "give me json data");
    assert_eq!(graded[0].quality["cheap"], 0.0);
    assert_eq!(
        graded[0].id.as_deref(),
        Some(format!("cascade:{id}").as_str())
    );
    assert_eq!(graded[1].quality["premium"], 0.5);
}

/// The front door's timeouts bound silence from the client, not the length of an answer: a
/// stream that goes quiet for longer than all of them, behind the real accept loop, is relayed
/// whole while the client sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_quiet_stream_is_not_cut_by_the_front_doors_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxied("").await;
    p.upstream.script(
        "premium-v2",
        [Behaviour::PauseAfterFirst(Duration::from_millis(2500))],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let short = Duration::from_millis(500);
    let door = pointsman::server::DoorOptions {
        header_timeout: short,
        idle_timeout: short,
        max_connections: 100,
        connection_threads: 0,
    };
    let metrics = p.state.metrics();
    tokio::spawn(pointsman::server::serve_connections(
        listener,
        app(p.state.clone()),
        door,
        metrics,
        std::future::pending(),
        async {},
    ));
    let body = streaming("auto", "hello there", false).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 x-pointsman-tenant: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the stream ended within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("data: [DONE]"), "cut: {answer}");
    assert!(started.elapsed() >= Duration::from_millis(2500));
}
