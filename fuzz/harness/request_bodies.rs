//! The request-body fuzz harness, shared by `fuzz/fuzz_targets/request_bodies.rs` and the
//! regression test `tests/it/fuzz_regressions.rs`: arbitrary bytes POSTed to the JSON endpoints
//! of `app(state)`, over a small route table embedded by a fake model and a proxy whose only
//! upstream refuses connections. Any answer is fine except a panic, a 5xx other than 502, 503
//! or 504, a body that is not JSON in its endpoint's shape, an error `type` that does not go
//! with the status, a body read as JSON without being declared so, or well-formed JSON called
//! malformed.
//!
//! An input's first byte picks the request, its other bytes are the body:
//! bits 0-1 the endpoint ([`ENDPOINTS`]), bits 2-3 the `Content-Type` ([`CONTENT_TYPES`]),
//! bit 6 adds tenant and tier headers (so that the spend caps apply). The digits `0`-`3` are
//! the four endpoints with `application/json`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::config;

use pointsman::engine::{Engine, EngineOptions};
use pointsman::index::IndexParams;
use pointsman::indexer;
use pointsman::proxy_config::ProxyConfig;
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::Value;
use tower::ServiceExt;

/// The endpoints, by the first byte's bits 0-1.
pub const ENDPOINTS: [&str; 4] = [
    "/v1/route",
    "/v1/route/batch",
    "/v1/usage",
    "/v1/chat/completions",
];

/// The `Content-Type` sent, by the first byte's bits 2-3 (`None`: no header).
pub const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    None,
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
];

/// The request body limits of the fuzzed server (the proxy has its own): small, so that short
/// inputs reach them.
const BODY_LIMIT_BYTES: usize = 3000;
const PROXY_BODY_LIMIT_BYTES: usize = 3500;

/// The models the fuzz routes can choose.
const MODELS: [&str; 3] = ["big", "mid", "small"];

/// The status each error `type` of the API contract answers with (those a JSON POST can meet).
const ERROR_STATUS: [(&str, u16); 12] = [
    ("validation", 422),
    ("malformed_json", 400),
    ("unsupported_media_type", 415),
    ("payload_too_large", 413),
    ("overloaded", 429),
    ("not_ready", 503),
    ("timeout", 503),
    ("budget_exhausted", 402),
    ("no_candidate", 503),
    ("not_found", 404),
    ("upstream_error", 502),
    ("upstream_timeout", 504),
];

const ROUTES: &str = r#"
version: 1
defaults: {threshold: 0.4, top_k: 3, margin: 0.02, min_similarity: 0.05}
models:
  big: {provider: up, input_per_mtok: 10, output_per_mtok: 30, context_window: 100000, capabilities: [vision, tools]}
  mid: {provider: up, input_per_mtok: 1, output_per_mtok: 2, context_window: 8000, capabilities: [tools]}
  small: {provider: up, input_per_mtok: 0.1, output_per_mtok: 0.2, context_window: 300}
budgets:
  - {scope: tenant, period: day, limit_usd: 1000}
rules:
  - {name: code_fence, route: code, when: {regex: "(?i)```|\\bfn\\b"}}
  - {name: gold_urgent, route: help, when: {tier: gold, keywords: [urgent]}}
default_route: {models: [mid, big]}
routes:
  - name: greet
    models: [small, mid]
    expected_output_tokens: 50
    utterances: [hello there, good morning friend, hi how are you]
  - name: help
    models: [big, mid]
    utterances: [my order is late, I want a refund, the package arrived damaged]
  - name: code
    model: big
    threshold: 0.3
    utterances: [write a function, fix this bug in my program]
"#;

/// The only upstream is a port nothing listens on: valid requests end quickly with 502.
const PROXY: &str = "
version: 1
providers:
  up:
    base_url: http://127.0.0.1:1/v1
    api_key_env: UP_KEY
    rename: {big: big-v2}
timeouts: {connect_ms: 200, first_byte_ms: 1000, idle_ms: 1000, total_ms: 2000}
retries: {attempts: 1}
mark_down_s: 0
cascade: {greet: {min_chars: 5}}
";

use pointsman::test_util::FakeEmbedder;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
}

/// Built once per process: the index, the engine's worker and the runtime.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let table = config::parse_sources(&[(PathBuf::from("fuzz.yaml"), ROUTES.into())])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut fake = FakeEmbedder::new("fuzz");
        // the engine reads the whole index when it opens, so the directory can go at once
        let dir = tempfile::tempdir().expect("a temporary directory");
        indexer::build(
            &table,
            &mut fake,
            dir.path(),
            IndexParams::default(),
            &mut |_, _| {},
        )
        .expect("the fuzz routes build");
        let engine = Engine::open(dir.path(), vec![fake], EngineOptions::default())
            .expect("the engine opens");
        let env = |var: &str| (var == "UP_KEY").then(|| "k".to_string());
        let proxy = ProxyConfig::parse("proxy.yaml".as_ref(), PROXY, &env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(proxy.check(&table), Vec::<String>::new());
        // small limits, so that short inputs reach the size checks and the prompt clipping
        let options = ServerOptions {
            body_limit_bytes: BODY_LIMIT_BYTES,
            proxy_body_limit_bytes: PROXY_BODY_LIMIT_BYTES,
            max_batch_prompts: 8,
            max_prompt_bytes: 300,
            ..ServerOptions::default()
        };
        let state = AppState::with_engine(Arc::new(engine), options)
            .with_proxy(proxy)
            .expect("the proxy's client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Harness {
            runtime,
            app: app(state),
        }
    })
}

/// Sends one input; panics on a bug.
pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let uri = ENDPOINTS[usize::from(selector & 3)];
    let content_type = CONTENT_TYPES[usize::from((selector >> 2) & 3)];
    let mut request = Request::post(uri);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if selector & 0x40 != 0 {
        request = request
            .header("x-pointsman-tenant", "fuzz")
            .header("x-pointsman-tier", "gold");
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a valid request");
    let (status, answer_type, bytes) = send(request);
    let shown = || {
        format!(
            "POST {uri} ({content_type:?}) {:?} -> {status} {:?}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&bytes)
        )
    };
    assert!(
        !status.is_server_error()
            || matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
        "a server error: {}",
        shown()
    );
    assert_eq!(
        answer_type.as_deref(),
        Some("application/json"),
        "{}",
        shown()
    );
    let json: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", shown()));
    if status.is_success() {
        check_answer(uri, body, &json).unwrap_or_else(|e| panic!("{e}: {}", shown()));
    } else {
        let kind = error_kind(uri, &json).unwrap_or_else(|e| panic!("{e}: {}", shown()));
        let expected = ERROR_STATUS.iter().find(|(k, _)| *k == kind).map(|e| e.1);
        assert_eq!(
            expected,
            Some(status.as_u16()),
            "error type `{kind}`: {}",
            shown()
        );
    }
    // a body is read as JSON only when declared so, and well-formed JSON is never malformed
    let declared_json = content_type.is_some_and(|t| t.starts_with("application/json"));
    let limit = match uri {
        "/v1/chat/completions" => PROXY_BODY_LIMIT_BYTES,
        _ => BODY_LIMIT_BYTES,
    };
    if !declared_json {
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", shown());
    } else if body.len() <= limit && serde_json::from_slice::<Value>(body).is_ok() {
        assert_ne!(status, StatusCode::BAD_REQUEST, "{}", shown());
    }
}

/// The `type` of an error body in its endpoint's shape: the API's `{"error", "type"}`, or
/// OpenAI's `{"error": {"message", "type", "param", "code"}}` on the proxy.
fn error_kind<'a>(uri: &str, json: &'a Value) -> Result<&'a str, String> {
    let text = |v: &'a Value, what: &str| v.as_str().ok_or(format!("`{what}` is not a string"));
    if uri == "/v1/chat/completions" {
        let error = &json["error"];
        let fields = error.as_object().map(|o| o.len());
        if fields != Some(4) || !error["param"].is_null() {
            return Err("not an OpenAI error".into());
        }
        text(&error["message"], "error.message")?;
        let kind = text(&error["type"], "error.type")?;
        if text(&error["code"], "error.code")? != kind {
            return Err("`code` is not `type`".into());
        }
        Ok(kind)
    } else {
        if json.as_object().map(|o| o.len()) != Some(2) {
            return Err("not `{\"error\", \"type\"}`".into());
        }
        text(&json["error"], "error")?;
        text(&json["type"], "type")
    }
}

/// What a successful answer must hold.
fn check_answer(uri: &str, request: &[u8], json: &Value) -> Result<(), String> {
    let model = |v: &Value| match v["model"].as_str() {
        Some(m) if MODELS.contains(&m) => Ok(()),
        _ => Err(format!("`model` is not one of {MODELS:?}")),
    };
    match uri {
        "/v1/route" => model(json),
        "/v1/route/batch" => {
            let asked = serde_json::from_slice::<Value>(request).map_err(|e| e.to_string())?;
            // only an object is a batch (serde would also read `[["a", "b"]]`; the server
            // refuses it with 422)
            let asked = asked.get("prompts").and_then(Value::as_array).map(Vec::len);
            let results = json["results"].as_array().ok_or("no `results`")?;
            if asked != Some(results.len()) {
                return Err(format!("{} results for {asked:?} prompts", results.len()));
            }
            results.iter().try_for_each(model)
        }
        "/v1/usage" => match json["cost_usd"].as_f64() {
            Some(c) if c >= 0.0 => Ok(()),
            _ => Err("`cost_usd` is not a non-negative number".into()),
        },
        // its only upstream refuses connections
        _ => Err("a proxied request succeeded".into()),
    }
}

/// Whether the engine still answers (a panic in its worker thread would leave it deaf; under
/// the fuzzer, libFuzzer's panic hook aborts on a panic in any thread).
pub fn check_alive() {
    let request = Request::post(ENDPOINTS[0])
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"prompt": "hello there"}"#))
        .expect("a valid request");
    let (status, _, bytes) = send(request);
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

/// The status, `Content-Type` and body of the answer to `request`.
fn send(request: Request<Body>) -> (StatusCode, Option<String>, axum::body::Bytes) {
    let h = harness();
    h.runtime.block_on(async {
        let response = h
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is read")
            .to_bytes();
        (status, content_type, bytes)
    })
}
