//! The HTTP API through `app(state).oneshot(..)`, without a socket.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::engine::EngineOptions;
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// Asserts the one error shape and returns its message.
    fn error(&self, status: StatusCode, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        assert_eq!(v["type"], kind, "{}", self.text);
        assert_eq!(v.as_object().unwrap().len(), 2, "{}", self.text);
        v["error"].as_str().unwrap().to_string()
    }
}

async fn send(state: &AppState, req: Request<Body>) -> Reply {
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn post(state: &AppState, uri: &str, body: &str) -> Reply {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(state, req).await
}

async fn get(state: &AppState, uri: &str) -> Reply {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn real_state() -> AppState {
    AppState::with_engine(example_engine(), ServerOptions::default())
}

// on the caller's thread (an idle session lent) and on a worker (a batch goes through the queue)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_fails_its_request_with_500_and_the_router_goes_on() {
    let (engine, _dir) = fake_engine_for(FAKE_ROUTES);
    let state = AppState::with_engine(engine, ServerOptions::default());
    let boom = pointsman::test_util::FAKE_PANICS_ON;
    for _ in 0..2 {
        let r = post(&state, "/v1/route", &json!({ "prompt": boom }).to_string()).await;
        // the detail (the panic's message) goes to the log, as every internal error's does
        r.error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
        let r = post(
            &state,
            "/v1/route/batch",
            &json!({ "prompts": [boom, "hello there"] }).to_string(),
        )
        .await;
        r.error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
        // the session and the worker are still there
        let r = post(&state, "/v1/route", r#"{"prompt": "hello there"}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = post(
            &state,
            "/v1/route/batch",
            r#"{"prompts": ["hello there", "good morning"]}"#,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
}

#[tokio::test]
async fn route_returns_decision_scores_neighbours_and_timings() {
    let state = real_state();
    let r = post(
        &state,
        "/v1/route",
        r#"{"prompt": "Where is my order #12345?"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["outcome"], "matched");
    assert_eq!(v["route"], "order_status");
    assert_eq!(v["model"], "llama-3.1-8b-instruct");
    assert!(v["score"].as_f64().unwrap() > 0.8);
    assert!(!v["routes"].as_array().unwrap().is_empty());
    assert_eq!(v["neighbours"].as_array().unwrap().len(), 5);
    assert!(v["neighbours"][0]["similarity"].as_f64().unwrap() > 0.9);
    assert_eq!(v["truncated"], false);
    for key in ["queue_ms", "embed_ms", "search_ms", "total_ms"] {
        assert!(v["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
        // to the microsecond, as the headers are
        let written = v["timings"][key].to_string();
        let decimals = written.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{key}: {written}");
    }
    for h in [
        "x-pointsman-embed-ms",
        "x-pointsman-total-ms",
        "x-pointsman-model",
    ] {
        assert!(r.headers.contains_key(h), "{h} missing");
    }
}

#[tokio::test]
async fn route_accepts_openai_messages_and_uses_the_last_user_message() {
    let state = real_state();
    let body = json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a Python function that sorts a list"},
            {"role": "assistant", "content": "Sure, here it is."},
            {"role": "user", "content": [{"type": "text", "text": "Where is my order #12345?"}]}
        ]
    });
    let r = post(&state, "/v1/route", &body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["route"], "order_status");

    let r = post(
        &state,
        "/v1/route",
        r#"{"messages": [{"role": "system", "content": "x"}]}"#,
    )
    .await;
    let msg = r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert!(msg.contains("role `user`"), "{msg}");
}

#[tokio::test]
async fn the_code_block_rule_sends_code_to_the_coder() {
    let state = real_state();
    let r = post(
        &state,
        "/v1/route",
        r#"{"prompt": "What does this print?\n```\nprint(1 + 1)\n```"}"#,
    )
    .await;
    let v = r.json();
    assert_eq!(v["outcome"], "rule", "{v}");
    assert_eq!(v["rule"], "code-blocks-to-coder");
    assert_eq!(v["model"], "qwen-2.5-coder-32b");
}

#[tokio::test]
async fn fallback_is_reported_with_reason() {
    let state = real_state();
    let r = post(
        &state,
        "/v1/route",
        r#"{"prompt": "What is the best season to plant tomatoes in my garden?"}"#,
    )
    .await;
    let v = r.json();
    assert_eq!(v["outcome"], "fallback");
    assert_eq!(v["reason"], "below_threshold");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v.get("route").is_none());
}

#[tokio::test]
async fn validation_errors_share_one_shape() {
    let state = real_state();
    let cases = [
        (r#"{"prompt": ""}"#, "empty"),
        (r#"{"prompt": "   \n\t "}"#, "empty"),
        (r#"{}"#, "missing `prompt`"),
        (r#"{"prompt": "a", "messages": []}"#, "not both"),
        (r#"{"prompt": 42}"#, "prompt"),
    ];
    for (body, needle) in cases {
        let r = post(&state, "/v1/route", body).await;
        let msg = r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_content_type_415() {
    let state = real_state();
    let r = post(&state, "/v1/route", r#"{"prompt": "unterminated"#).await;
    r.error(StatusCode::BAD_REQUEST, "malformed_json");
    let r = post(&state, "/v1/route", "\u{feff}not json").await;
    r.error(StatusCode::BAD_REQUEST, "malformed_json");
    let req = Request::post("/v1/route")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"prompt": "hi"}"#))
        .unwrap();
    send(&state, req)
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let state = AppState::with_engine(
        example_engine(),
        ServerOptions {
            body_limit_bytes: 1024,
            ..ServerOptions::default()
        },
    );
    let body = json!({"prompt": "x".repeat(4096)}).to_string();
    post(&state, "/v1/route", &body)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn prompts_over_the_length_limit_are_refused_with_the_flag_to_raise() {
    let state = AppState::with_engine(
        example_engine(),
        ServerOptions {
            max_prompt_bytes: 100,
            ..ServerOptions::default()
        },
    );
    let body = json!({"prompt": "x ".repeat(60)}).to_string();
    let r = post(&state, "/v1/route", &body).await;
    assert!(r.text.contains("--max-prompt-bytes"), "{}", r.text);
    r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let body = json!({"prompts": ["fine", "y ".repeat(60)]}).to_string();
    let r = post(&state, "/v1/route/batch", &body).await;
    assert!(r.text.contains("prompt 1 is 120 bytes"), "{}", r.text);
    r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let body = json!({"prompt": "x".repeat(100)}).to_string();
    assert_eq!(
        post(&state, "/v1/route", &body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn batch_routes_many_prompts_in_order_and_bounds_the_size() {
    let state = AppState::with_engine(
        example_engine(),
        ServerOptions {
            max_batch_prompts: 3,
            ..ServerOptions::default()
        },
    );
    let r = post(
        &state,
        "/v1/route/batch",
        r#"{"prompts": ["Where is my order #12345?", "Translate this sentence into French", "How do I reset my password?"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let routes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["order_status", "translation", "account_basics"]);

    let r = post(
        &state,
        "/v1/route/batch",
        r#"{"prompts": ["a", "b", "c", "d"]}"#,
    )
    .await;
    let msg = r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert!(msg.contains("limit is 3"), "{msg}");
    let r = post(&state, "/v1/route/batch", r#"{"prompts": []}"#).await;
    r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let r = post(&state, "/v1/route/batch", r#"{"prompts": ["ok", " "]}"#).await;
    let msg = r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert!(msg.contains("prompt 1"), "{msg}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let state = real_state();
    let req = Request::get("/healthz")
        .header("x-request-id", "caller-42")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, req).await.headers["x-request-id"], "caller-42");
    let a = get(&state, "/healthz").await.headers["x-request-id"].clone();
    let b = get(&state, "/healthz").await.headers["x-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn info_endpoints() {
    let state = real_state();
    let r = get(&state, "/v1/routes").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["default_model"], "gpt-4o-mini");
    let names: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"order_status") && names.contains(&"code"),
        "{names:?}"
    );

    let v = get(&state, "/v1/index").await.json();
    assert_eq!(v["format_version"], pointsman::index::FORMAT_VERSION);
    assert_eq!(v["model"]["dimension"], 384);
    assert_eq!(v["model"]["pooling"], "mean");
    assert_eq!(v["search"]["kind"], "exact");

    assert_eq!(get(&state, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&state, "/readyz").await.status, StatusCode::OK);
    get(&state, "/nope")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    let msg = get(&state, "/v1/route")
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(msg.contains("GET"), "{msg}");
}

#[tokio::test]
async fn metrics_count_requests_decisions_and_latency() {
    let state = real_state();
    post(
        &state,
        "/v1/route",
        r#"{"prompt": "Where is my order #12345?"}"#,
    )
    .await;
    post(
        &state,
        "/v1/route",
        r#"{"prompt": "Can you recommend a good fantasy novel?"}"#,
    )
    .await;
    post(&state, "/v1/route", r#"{"prompt": ""}"#).await;
    let r = get(&state, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let m = r.text;
    assert!(
        m.contains("pointsman_requests_total{endpoint=\"/v1/route\",status=\"200\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("pointsman_requests_total{endpoint=\"/v1/route\",status=\"422\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "pointsman_decisions_total{route=\"order_status\",model=\"llama-3.1-8b-instruct\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("pointsman_fallbacks_total 1"), "{m}");
    assert!(
        m.contains("pointsman_request_duration_seconds_count 2"),
        "{m}"
    );
}

#[tokio::test]
async fn not_ready_until_the_engine_is_set() {
    let state = AppState::new(ServerOptions::default());
    get(&state, "/readyz")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    post(&state, "/v1/route", r#"{"prompt": "hi"}"#)
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert_eq!(get(&state, "/healthz").await.status, StatusCode::OK);
    state.set_engine(example_engine());
    assert_eq!(get(&state, "/readyz").await.status, StatusCode::OK);
}

// the first request runs on a runtime thread with the idle worker's session (the engine lends it),
// held there by the fake: the test goes on on the other
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_with_retry_after_at_once() {
    let mut fake = FakeEmbedder::new("fake");
    let dir = fake_index(&mut fake);
    let engine = fake_engine(
        &fake,
        dir.path(),
        EngineOptions {
            queue_capacity: 2,
            max_batch: 1,
            ..EngineOptions::default()
        },
    );
    let state = AppState::with_engine(engine.clone(), ServerOptions::default());
    fake.set_open(false);
    // one request held by the only session, two queued: the queue is full
    let send = |i: usize| {
        let s = state.clone();
        tokio::spawn(async move {
            post(
                &s,
                "/v1/route",
                &format!(r#"{{"prompt": "hello there {i}"}}"#),
            )
            .await
        })
    };
    let mut held = vec![send(0)];
    until("the session to take the first request", || {
        fake.waiting() == 1
    })
    .await;
    held.extend([send(1), send(2)]);
    until("two requests queued", || engine.queue_len() == 2).await;
    let r = post(&state, "/v1/route", r#"{"prompt": "hello there 3"}"#).await;
    let msg = r.error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
    assert!(msg.contains("overloaded"), "{msg}");
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    fake.set_open(true);
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json()["route"], "greet");
    }
}

#[tokio::test]
async fn a_short_prompt_is_embedded_on_the_callers_thread_and_a_long_one_by_a_worker() {
    let mut fake = FakeEmbedder::new("fake");
    let dir = fake_index(&mut fake);
    let engine = fake_engine(
        &fake,
        dir.path(),
        EngineOptions {
            embed_cache_entries: 0,
            ..EngineOptions::default()
        },
    );
    // on this thread: not queued at all
    let short = engine.route_async("hello there").await.unwrap();
    assert_eq!(short.timings.queue_ms, 0.0, "{:?}", short.timings);
    // past HERE_MAX_TOKENS: through the queue, to a worker that had to be woken
    let long = "hello there ".repeat(pointsman::engine::HERE_MAX_TOKENS);
    let long = engine.route_async(&long).await.unwrap();
    assert!(long.timings.queue_ms > 0.0, "{:?}", long.timings);
    assert_eq!(long.decision.route(), short.decision.route());
    // the worker, done, leaves its session in the queue again (just after it answered): short
    // prompts run here again
    let mut here = false;
    for _ in 0..200 {
        let again = engine.route_async("hello again").await.unwrap();
        if again.timings.queue_ms == 0.0 {
            here = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(here, "the session never came back to the queue");
}

#[tokio::test]
async fn repeated_prompts_come_from_the_embedding_cache() {
    let mut fake = FakeEmbedder::new("fake");
    let dir = fake_index(&mut fake);
    let engine = fake_engine(&fake, dir.path(), EngineOptions::default());
    let state = AppState::with_engine(engine.clone(), ServerOptions::default());
    let first = post(&state, "/v1/route", r#"{"prompt": "hello there"}"#)
        .await
        .json();
    assert_eq!(first["timings"]["cached"], false);
    // whitespace differences hit the same entry
    let second = post(&state, "/v1/route", r#"{"prompt": "  hello   there "}"#)
        .await
        .json();
    assert_eq!(second["timings"]["cached"], true);
    assert_eq!(second["route"], first["route"]);
    assert_eq!(second["neighbours"], first["neighbours"]);
    let stats = engine.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    let m = get(&state, "/metrics").await.text;
    assert!(m.contains("pointsman_embed_cache_hits_total 1"), "{m}");

    let off = fake_engine(
        &fake,
        dir.path(),
        EngineOptions {
            embed_cache_entries: 0,
            ..EngineOptions::default()
        },
    );
    off.route_async("hello there").await.unwrap();
    assert!(!off.route_async("hello there").await.unwrap().timings.cached);
    assert_eq!(off.cache_stats().hits, 0);
}

/// A request waiting in the queue for longer than the request timeout is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_503() {
    let mut fake = FakeEmbedder::new("fake");
    let dir = fake_index(&mut fake);
    let engine = fake_engine(&fake, dir.path(), EngineOptions::default());
    let state = AppState::with_engine(
        engine,
        ServerOptions {
            request_timeout_ms: 100,
            ..ServerOptions::default()
        },
    );
    fake.set_open(false);
    // the only session is held by a first request, on a runtime thread
    let s = state.clone();
    let held =
        tokio::spawn(async move { post(&s, "/v1/route", r#"{"prompt": "good morning"}"#).await });
    until("the session to take the first request", || {
        fake.waiting() == 1
    })
    .await;
    let r = post(&state, "/v1/route", r#"{"prompt": "hello there"}"#).await;
    fake.set_open(true);
    let msg = r.error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(msg.contains("100 ms"), "{msg}");
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::OK, "{}", held.text);
}

#[tokio::test]
async fn reload_swaps_in_a_rebuilt_index_and_refuses_a_broken_one() {
    use pointsman::server::ReloadSource;
    let mut fake = FakeEmbedder::new("fake");
    let dir = fake_index(&mut fake);
    let engine = fake_engine(&fake, dir.path(), EngineOptions::default());
    let state = AppState::with_engine(engine, ServerOptions::default())
        .with_admin_key("k")
        .with_reload(ReloadSource {
            index_dir: dir.path().to_path_buf(),
            routes: None,
        });
    let reload = |state: AppState| async move {
        let req = Request::post("/v1/admin/reload")
            .header(header::AUTHORIZATION, "Bearer k")
            .body(Body::empty())
            .unwrap();
        send(&state, req).await
    };
    assert_eq!(
        post(&state, "/v1/route", r#"{"prompt": "hello there"}"#)
            .await
            .json()["route"],
        "greet"
    );
    // rebuild the same directory with the route renamed
    let renamed = FAKE_ROUTES.replace("name: greet", "name: salute");
    let table =
        pointsman::config::parse_sources(&[("r.yaml".into(), renamed.into_bytes())]).unwrap();
    pointsman::indexer::build(
        &table,
        &mut fake,
        dir.path(),
        Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    // not swapped until asked
    assert_eq!(
        post(&state, "/v1/route", r#"{"prompt": "hello there"}"#)
            .await
            .json()["route"],
        "greet"
    );
    let r = reload(state.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["reloaded"], true);
    assert_eq!(
        post(&state, "/v1/route", r#"{"prompt": "good morning friend"}"#)
            .await
            .json()["route"],
        "salute"
    );
    // a broken CURRENT: refused, and the index in use keeps serving
    std::fs::write(dir.path().join("CURRENT"), "gen-does-not-exist\n").unwrap();
    let r = reload(state.clone()).await;
    let msg = r.error(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed");
    assert!(msg.contains("previous index keeps serving"), "{msg}");
    assert_eq!(
        post(&state, "/v1/route", r#"{"prompt": "good morning friend"}"#)
            .await
            .json()["route"],
        "salute"
    );
    let m = get(&state, "/metrics").await.text;
    assert!(
        m.contains("pointsman_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pointsman_reloads_total{result=\"failed\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_mounted_route() {
    let state = AppState::with_engine(example_engine(), ServerOptions::default());
    let r = get(&state, "/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "GET /",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "GET /v1/admin/models",
            "GET /v1/index",
            "GET /v1/models",
            "GET /v1/routes",
            "POST /v1/admin/models/{model}/down",
            "POST /v1/admin/models/{model}/up",
            "POST /v1/admin/reload",
            "POST /v1/chat/completions",
            "POST /v1/feedback",
            "POST /v1/messages",
            "POST /v1/messages/count_tokens",
            "POST /v1/responses",
            "POST /v1/route",
            "POST /v1/route/batch",
            "POST /v1/usage",
        ]
    );
    // every documented operation is mounted: none reaches the fallbacks
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let uri = path.replace("{model}", "gpt-4o");
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let r = send(&state, req).await;
        assert!(
            !r.text.contains("no such endpoint") && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{op}: {} {}",
            r.status,
            r.text
        );
    }
    // and nothing is mounted beside the documented router: every route goes through `routes!`
    // every source file of the server, its subfolders included
    let mut source = String::new();
    let mut dirs = vec![repo().join("src/server")];
    while let Some(dir) = dirs.pop() {
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    assert!(
        !source.contains(".route(\""),
        "mount endpoints with `.routes(routes!(handler))` in `endpoints()` so that they are documented"
    );
    // the main shapes are described, not left as free-form objects
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "RouteRequest",
        "RouteResponse",
        "Decision",
        "Choice",
        "ErrorBody",
    ] {
        assert!(
            schemas.contains_key(name),
            "{name} missing from {:?}",
            schemas.keys()
        );
    }
}

#[tokio::test]
async fn bodies_must_be_json_objects() {
    let state = AppState::with_engine(example_engine(), ServerOptions::default());
    // serde alone would read these as the structs' fields in order
    for (uri, body) in [
        ("/v1/route", r#"["Where is my order?"]"#),
        ("/v1/route/batch", r#"[["Where is my order?"]]"#),
        ("/v1/usage", r#"["gpt-4o", 1, 2]"#),
    ] {
        let r = post(&state, uri, body).await;
        let message = r.error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert!(message.contains("JSON object"), "{uri}: {message}");
    }
    // a `+json` media type with parameters is JSON too
    let req = Request::post("/v1/route")
        .header(
            header::CONTENT_TYPE,
            "application/vnd.api+json; charset=utf-8",
        )
        .body(Body::from(r#"{"prompt": "Where is my order?"}"#))
        .unwrap();
    assert_eq!(send(&state, req).await.status, StatusCode::OK);
}

/// Two route tables that share no route or model name: a decision that read both would name
/// one table's route with the other's model.
fn generation(prefix: &str) -> String {
    format!(
        "version: 1
defaults: {{top_k: 3}}
default_route: {{model: {prefix}-default}}
routes:
  - name: {prefix}-greet
    model: {prefix}-small
    utterances: [hello there, good morning friend]
  - name: {prefix}-bye
    model: {prefix}-large
    utterances: [goodbye for now, see you later]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_reads_one_index_generation_while_reloads_swap_tables() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut fake = FakeEmbedder::new("fake");
    let (a, b) = (
        index_of(&generation("a"), &mut fake),
        index_of(&generation("b"), &mut fake),
    );
    let engine = Arc::new(
        pointsman::engine::Engine::open(
            a.path(),
            vec![fake.clone(), fake.clone()],
            EngineOptions::default(),
        )
        .unwrap(),
    );
    let state = AppState::with_engine(Arc::clone(&engine), ServerOptions::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        let dirs = [b.path().to_path_buf(), a.path().to_path_buf()];
        std::thread::spawn(move || {
            let mut reloads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                engine.reload(&dirs[reloads % 2], |_| Ok(())).unwrap();
                reloads += 1;
            }
            reloads
        })
    };
    let prompts = [
        "hello there",
        "see you later",
        "good morning",
        "what is this",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..100 {
        let replies = futures_util::future::join_all((0..8).map(|i| {
            let body = json!({"prompt": prompts[(round + i) % prompts.len()]}).to_string();
            let state = state.clone();
            async move { post(&state, "/v1/route", &body).await }
        }))
        .await;
        for r in replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let v = r.json();
            // every name the decision shows: its route, the scored routes, the chosen model
            let mut names: Vec<&str> = v["routes"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| [s["route"].as_str().unwrap(), s["model"].as_str().unwrap()])
                .collect();
            names.push(v["model"].as_str().unwrap());
            names.push(v["selection"]["model"].as_str().unwrap());
            names.extend(v["route"].as_str());
            let generations: std::collections::BTreeSet<&str> =
                names.iter().map(|n| &n[..1]).collect();
            assert_eq!(generations.len(), 1, "a decision mixes two tables: {v}");
            seen.extend(generations.into_iter().map(str::to_string));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    assert!(
        reloads >= 10,
        "only {reloads} reloads ran during the requests"
    );
    assert_eq!(seen.len(), 2, "requests saw only generation {seen:?}");
}

#[tokio::test]
async fn every_response_is_counted_by_its_endpoint_template_and_status() {
    let (engine, _dir) = fake_engine_for(FAKE_ROUTES);
    let state = AppState::with_engine(engine, ServerOptions::default()).with_admin_key("adm");
    // errors of the usage and admin endpoints count too, under their route templates
    post(
        &state,
        "/v1/usage",
        r#"{"model": "nope", "input_tokens": 1, "output_tokens": 1}"#,
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let down = Request::post("/v1/admin/models/nope/down")
        .header(header::AUTHORIZATION, "Bearer adm")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, down).await.status, StatusCode::NOT_FOUND);
    get(&state, "/no/such/thing").await;
    let m = get(&state, "/metrics").await.text;
    for series in [
        r#"pointsman_requests_total{endpoint="/v1/usage",status="422"} 1"#,
        r#"pointsman_requests_total{endpoint="/v1/admin/models/{model}/down",status="404"} 1"#,
        r#"pointsman_requests_total{endpoint="unmatched",status="404"} 1"#,
    ] {
        assert!(m.contains(series), "{series} missing:\n{m}");
    }
}
