//! Cost-aware choice among candidates, through the API: candidate order, health, context
//! windows, capabilities, budget downgrades and exhaustion, usage reports.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;

/// Costs are exact binary fractions: premium $0.25, mid $0.125, cheap $0.0625 per `greet`
/// request (100 expected output tokens; input is free).
const COST_ROUTES: &str = "\
version: 1
defaults: {method: neighbours, threshold: 0.9, top_k: 3}
models:
  premium: {input_per_mtok: 0, output_per_mtok: 2500, context_window: 100000, capabilities: [vision]}
  mid: {input_per_mtok: 0, output_per_mtok: 1250, context_window: 100000, capabilities: [vision]}
  cheap: {input_per_mtok: 0, output_per_mtok: 625, context_window: 100000}
  tiny: {input_per_mtok: 0, output_per_mtok: 1, context_window: 105}
budgets:
  - {scope: tenant, period: day, limit_usd: 0.875}
rules:
  - {name: free-mornings, route: bye, when: {keywords: [morning], tier: free}}
default_route: {models: [cheap]}
routes:
  - name: greet
    models: [premium, mid, cheap]
    expected_output_tokens: 100
    utterances: [hello there, good morning friend]
  - name: bye
    models: [tiny, cheap]
    expected_output_tokens: 100
    utterances: [goodbye for now, see you later]
";

const ADMIN_KEY: &str = "test-admin-key";

fn state() -> (AppState, tempfile::TempDir) {
    let (state, dir) = state_without_admin();
    (state.with_admin_key(ADMIN_KEY), dir)
}

fn state_without_admin() -> (AppState, tempfile::TempDir) {
    let (engine, dir) = fake_engine_for(COST_ROUTES);
    (AppState::with_engine(engine, ServerOptions::default()), dir)
}

async fn call(state: &AppState, uri: &str, tenant: &str, body: Value) -> (StatusCode, Value) {
    let mut req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-pointsman-tenant", tenant);
    if uri.starts_with("/v1/admin/") {
        req = req.header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"));
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, v)
}

async fn route(state: &AppState, tenant: &str, body: Value) -> (StatusCode, Value) {
    call(state, "/v1/route", tenant, body).await
}

fn skipped(v: &Value) -> Vec<(String, String)> {
    v["selection"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["model"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn first_candidate_wins_with_its_estimated_cost() {
    let (state, _dir) = state();
    let (status, v) = route(&state, "t", json!({"prompt": "hello there"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["route"], "greet");
    assert_eq!(v["model"], "premium");
    assert_eq!(v["selection"]["estimated_cost_usd"], 0.25);
    assert_eq!(v["selection"]["premium_cost_usd"], 0.25);
    assert_eq!(v["selection"]["from_default"], false);
    assert_eq!(v["selection"]["counted"]["store"], "memory");
    assert!(skipped(&v).is_empty());
}

#[tokio::test]
async fn budget_downgrades_then_refuses_with_402() {
    let (state, _dir) = state();
    let mut models = Vec::new();
    for _ in 0..4 {
        let (status, v) = route(&state, "acme", json!({"prompt": "hello there"})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        models.push(v["model"].as_str().unwrap().to_string());
        if models.len() == 4 {
            assert_eq!(
                skipped(&v),
                [("premium".to_string(), "over_budget".to_string())]
            );
            let s = &v["selection"]["skipped"][0];
            assert_eq!(s["budget"], "tenant:acme per day");
            assert_eq!(s["spent_usd"], 0.75);
            assert_eq!(s["limit_usd"], 0.875);
        }
    }
    // 3 × 0.25 = 0.75; premium would make 1.0 > 0.875, mid makes exactly 0.875
    assert_eq!(models, ["premium", "premium", "premium", "mid"]);
    let (status, v) = route(&state, "acme", json!({"prompt": "hello there"})).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{v}");
    assert_eq!(v["type"], "budget_exhausted");
    assert!(v["error"].as_str().unwrap().contains("over_budget"), "{v}");
    // other tenants have their own cap
    let (status, v) = route(&state, "globex", json!({"prompt": "hello there"})).await;
    assert_eq!(
        (status, v["model"].as_str()),
        (StatusCode::OK, Some("premium"))
    );
    // no tenant: no cap applies
    let (status, v) = route(&state, "", json!({"prompt": "hello there"})).await;
    assert_eq!(
        (status, v["model"].as_str()),
        (StatusCode::OK, Some("premium"))
    );
    assert!(v["selection"].get("counted").is_none(), "{v}");
}

#[tokio::test]
async fn a_key_budget_caps_one_api_key_named_by_its_hash() {
    use sha2::Digest;
    let hash = |key: &str| pointsman::config::hex(&sha2::Sha256::digest(key))[..16].to_string();
    // one premium request ($0.25) fits under the key's $0.4 a day, a second only as mid ($0.125)
    let routes = COST_ROUTES.replace(
        "  - {scope: tenant, period: day, limit_usd: 0.875}",
        &format!(
            "  - {{scope: key, id: {}, period: day, limit_usd: 0.4}}",
            hash("secret-one")
        ),
    );
    let (engine, _dir) = fake_engine_for(&routes);
    let state = AppState::with_engine(engine, ServerOptions::default());
    let ask = |key: &'static str| {
        let req = Request::post("/v1/route")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::from(r#"{"prompt": "hello there"}"#))
            .unwrap();
        let state = state.clone();
        async move {
            let res = app(state).oneshot(req).await.unwrap();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    assert_eq!(ask("secret-one").await["model"], "premium");
    let v = ask("secret-one").await;
    assert_eq!(v["model"], "mid", "{v}");
    let budget = v["selection"]["skipped"][0]["budget"].as_str().unwrap();
    assert_eq!(budget, format!("key:{} per day", hash("secret-one")));
    // a third request fits nowhere: 402, each model named once (cheap is also the default's)
    let v = ask("secret-one").await;
    assert_eq!(v["type"], "budget_exhausted", "{v}");
    let error = v["error"].as_str().unwrap();
    assert_eq!(error.matches("\"model\":\"cheap\"").count(), 1, "{error}");
    // another key is not under that cap
    for _ in 0..2 {
        assert_eq!(ask("secret-two").await["model"], "premium");
    }
}

#[tokio::test]
async fn usage_reports_adjust_the_budget() {
    let (state, _dir) = state();
    let (_, v) = route(&state, "acme", json!({"prompt": "hello there"})).await;
    assert_eq!(v["model"], "premium");
    // the answer was long: 300 output tokens instead of 100 → $0.75 instead of $0.25
    let (status, u) = call(
        &state,
        "/v1/usage",
        "acme",
        json!({"model": "premium", "input_tokens": 10, "output_tokens": 300, "estimated_cost_usd": 0.25}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["cost_usd"], 0.75);
    assert_eq!(u["adjusted_by_usd"], 0.5);
    // 0.75 spent: the next request cannot afford premium
    let (_, v) = route(&state, "acme", json!({"prompt": "hello there"})).await;
    assert_eq!(v["model"], "mid");
    // an overestimate is not refunded: no caller can lower its own counters
    let (_, u) = call(
        &state,
        "/v1/usage",
        "acme",
        json!({"model": "premium", "input_tokens": 0, "output_tokens": 0, "estimated_cost_usd": 1e9}),
    )
    .await;
    assert_eq!(u["adjusted_by_usd"], 0.0);
    let (status, u) = call(
        &state,
        "/v1/usage",
        "acme",
        json!({"model": "nope", "input_tokens": 1, "output_tokens": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{u}");
    let m = app(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8(m.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("pointsman_estimated_spend_usd_total{model=\"premium\"} 0.25"),
        "{text}"
    );
    assert!(
        text.contains("pointsman_estimated_spend_usd_total{model=\"mid\"} 0.125"),
        "{text}"
    );
    // saved against always-premium: 0.25 - 0.125
    assert!(
        text.contains("pointsman_estimated_savings_usd_total 0.125"),
        "{text}"
    );
    assert!(
        text.contains("pointsman_reported_spend_usd_total{model=\"premium\"} 0.75"),
        "{text}"
    );
}

#[tokio::test]
async fn down_models_are_skipped_until_up_or_expired() {
    let (state, _dir) = state();
    let (status, v) = call(
        &state,
        "/v1/admin/models/premium/down",
        "",
        json!({"ttl_s": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, v) = route(&state, "t", json!({"prompt": "hello there"})).await;
    assert_eq!(v["model"], "mid");
    assert_eq!(skipped(&v), [("premium".to_string(), "down".to_string())]);
    let listed = app(state.clone())
        .oneshot(
            Request::get("/v1/admin/models")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let listed: Value =
        serde_json::from_slice(&listed.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(listed["down"][0]["model"], "premium");
    let (_, up) = call(&state, "/v1/admin/models/premium/up", "", Value::Null).await;
    assert_eq!(up["was_down"], true);
    let (_, v) = route(&state, "t", json!({"prompt": "hello there"})).await;
    assert_eq!(v["model"], "premium");
    // every candidate of the route down: the default route takes it
    state
        .health()
        .mark_down("premium", std::time::Duration::from_secs(60))
        .await;
    state
        .health()
        .mark_down("mid", std::time::Duration::from_secs(60))
        .await;
    state
        .health()
        .mark_down("cheap", std::time::Duration::from_secs(60))
        .await;
    let (status, v) = route(&state, "t", json!({"prompt": "hello there"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["type"], "no_candidate");
    // an expired mark counts as up
    state
        .health()
        .mark_down("premium", std::time::Duration::from_millis(1))
        .await;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (_, v) = route(&state, "t", json!({"prompt": "hello there"})).await;
    assert_eq!(v["model"], "premium");
    let (status, _) = call(
        &state,
        "/v1/admin/models/premium/down",
        "",
        json!({"ttl_s": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, v) = call(&state, "/v1/admin/models/typo/down", "", json!({})).await;
    assert_eq!(
        (status, v["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_key() {
    let (state, _dir) = state();
    let send = |auth: Option<&'static str>, state: AppState| async move {
        let mut req = Request::post("/v1/admin/models/premium/down");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        app(state)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    assert_eq!(send(None, state.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(Some("Bearer wrong"), state.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    // no body: the default time-to-live
    assert_eq!(
        send(Some("Bearer test-admin-key"), state.clone()).await,
        StatusCode::OK
    );
    assert!(state.health().is_down("premium"));
    // without a configured key the endpoints are off
    let (open_state, _dir2) = state_without_admin();
    assert_eq!(
        send(Some("Bearer test-admin-key"), open_state).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_default_route_takes_over_when_the_routes_candidates_cannot() {
    let (state, _dir) = state();
    state
        .health()
        .mark_down("tiny", std::time::Duration::from_secs(60))
        .await;
    state
        .health()
        .mark_down("cheap", std::time::Duration::from_secs(60))
        .await;
    // bye's candidates are tiny and cheap; the default route's only candidate is cheap too
    let (status, _) = route(&state, "t", json!({"prompt": "see you later"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    state.health().mark_up("cheap").await;
    let (_, v) = route(&state, "t", json!({"prompt": "see you later"})).await;
    assert_eq!(v["route"], "bye");
    assert_eq!(v["model"], "cheap");
    assert_eq!(v["selection"]["from_default"], false);
}

#[tokio::test]
async fn context_window_and_capabilities_filter_candidates() {
    let (state, _dir) = state();
    // 3 words + 2 special tokens + 100 expected = 105 tokens: fits tiny's window exactly
    let (_, v) = route(&state, "t", json!({"prompt": "see you later"})).await;
    assert_eq!(v["model"], "tiny");
    // the same words twice: the same route, but 8 tokens + 100 > 105
    let (_, v) = route(
        &state,
        "t",
        json!({"prompt": "see you later see you later"}),
    )
    .await;
    assert_eq!(v["route"], "bye", "{v}");
    assert_eq!(v["model"], "cheap");
    let s = &v["selection"]["skipped"][0];
    assert_eq!(
        (s["model"].as_str(), s["reason"].as_str()),
        (Some("tiny"), Some("context_window"))
    );
    assert_eq!(
        (s["needed"].as_u64(), s["window"].as_u64()),
        (Some(108), Some(105))
    );

    let (_, v) = route(
        &state,
        "t",
        json!({"prompt": "hello there", "capabilities": ["vision"]}),
    )
    .await;
    assert_eq!(v["model"], "premium");
    let (status, v) = route(
        &state,
        "t",
        json!({"prompt": "see you later", "capabilities": ["vision"]}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("missing_capability"),
        "{v}"
    );
}

#[tokio::test]
async fn an_explicit_route_overrides_the_scores() {
    let (state, _dir) = state();
    let (_, v) = route(
        &state,
        "t",
        json!({"prompt": "hello there", "route": "bye"}),
    )
    .await;
    assert_eq!(v["outcome"], "override");
    assert_eq!(v["route"], "bye");
    assert_eq!(v["model"], "tiny");
    let (status, v) = route(
        &state,
        "t",
        json!({"prompt": "hello there", "route": "nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

#[tokio::test]
async fn static_rules_come_before_the_scores() {
    let (state, _dir) = state();
    let req = |tier: &'static str| {
        Request::post("/v1/route")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-pointsman-tier", tier)
            .body(Body::from(r#"{"prompt": "good morning friend"}"#))
            .unwrap()
    };
    let res = app(state.clone()).oneshot(req("free")).await.unwrap();
    let v: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["outcome"], "rule", "{v}");
    assert_eq!(v["rule"], "free-mornings");
    assert_eq!(v["route"], "bye");
    assert_eq!(v["model"], "tiny");
    let res = app(state.clone()).oneshot(req("pro")).await.unwrap();
    let v: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["outcome"], "matched");
    assert_eq!(v["route"], "greet");
}

#[tokio::test]
async fn the_decision_log_explains_every_decision_without_the_prompt() {
    use pointsman::decision_log::{DecisionLog, LogOptions};
    let (state, _dir) = state();
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("decisions.jsonl");
    let state = state.with_decision_log(
        DecisionLog::open(LogOptions {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        })
        .unwrap(),
    );
    route(&state, "acme", json!({"prompt": "hello there"})).await;
    state
        .health()
        .mark_down("tiny", std::time::Duration::from_secs(60))
        .await;
    state
        .health()
        .mark_down("cheap", std::time::Duration::from_secs(60))
        .await;
    let (status, _) = route(&state, "acme", json!({"prompt": "see you later"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // the last holder of the log waits for its writer
    drop(state);
    let lines = std::fs::read_to_string(&path).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(!lines.contains("there hello") && !lines.contains("later you see"));
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["route"], "greet");
    assert_eq!(first["model"], "premium");
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["selection"]["estimated_cost_usd"], 0.25);
    assert_eq!(first["prompt_sha256"].as_str().unwrap().len(), 16);
    assert!(first["routes"].is_array() && first["ts_ms"].is_u64());
    let second: Value = serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["error"]["type"], "no_candidate");
    assert_eq!(second["route"], "bye");
}

/// A batch that fails gives back what its earlier prompts reserved to the windows they were
/// reserved in: a batch begun a second before midnight and refunded after it leaves neither
/// day's counter wrong.
#[tokio::test]
async fn a_failed_batch_gives_back_its_reservations_in_the_day_they_were_made() {
    use pointsman::budget::{Identity, Ledger, caps_for};
    use pointsman::dispatch::{Context, DispatchError, Spend, dispatch_many};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let (engine, _dir) = fake_engine_for(COST_ROUTES);
    let (health, ledger) = (pointsman::health::Health::default(), Ledger::in_memory());
    let cx = Context {
        engine: &engine,
        health: &health,
        spend: Spend::Reserve(&ledger),
        embed_timeout: None,
    };
    let who = Identity {
        tenant: Some("t".into()),
        ..Identity::default()
    };
    // 2026-01-01T23:59:59Z
    let before_midnight = UNIX_EPOCH + Duration::from_secs(1_767_311_999);
    // premium thrice (0.75), then mid (0.875, the cap), then nothing fits
    let texts = vec!["hello there".to_string(); 5];
    let failed = dispatch_many(&cx, &texts, &who, &[], before_midnight).await;
    assert!(
        matches!(failed, Err(DispatchError::NoCandidate { .. })),
        "{failed:?}"
    );
    let snapshot = engine.index();
    let budgets = &snapshot.table().budgets;
    let (that_day, today) = (
        caps_for(budgets, &who, before_midnight),
        caps_for(budgets, &who, SystemTime::now()),
    );
    assert_ne!(that_day[0].counter, today[0].counter);
    // the whole cap is free again on the day of the batch...
    assert!(ledger.reserve(&that_day, 0.875).await.0.is_ok());
    // ...and today's counter was not pushed below zero
    assert!(ledger.reserve(&today, 0.875).await.0.is_ok());
    assert!(ledger.reserve(&today, 0.0625).await.0.is_err());
    // a batch that succeeds is charged to its own day, not to today
    let ledger = Ledger::in_memory();
    let cx = Context {
        spend: Spend::Reserve(&ledger),
        ..cx
    };
    let done = dispatch_many(&cx, &texts[..1], &who, &[], before_midnight).await;
    assert_eq!(done.unwrap()[0].selection.model, "premium");
    assert!(
        ledger.reserve(&that_day, 0.75).await.0.is_err(),
        "0.25 + 0.75"
    );
    assert!(ledger.reserve(&today, 0.875).await.0.is_ok());
}
