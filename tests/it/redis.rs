//! Spend and rate limits counted in a real Redis (Debian's `redis-server`, started here on a
//! free loopback port): shared by replicas, kept across a replica restart, atomic under
//! concurrency, and degraded to the in-memory counters when Redis goes away.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use pointsman::budget::{Budget, Counted, Identity, Ledger, Period, RedisStore, Scope, caps_for};

struct RedisServer {
    child: Child,
    port: u16,
    url: String,
}

impl RedisServer {
    /// Starts `redis-server` without persistence; panics (never skips) if it is not installed.
    /// A free port may be taken by another test before redis binds it: then it tries another.
    fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(server) = Self::start_on(port) {
                return server;
            }
        }
        panic!("redis-server exited on start five times (ports taken?)");
    }

    /// Starts `redis-server` on `port`; `None` if it exits instead (the port is taken).
    fn start_on(port: u16) -> Option<Self> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/test.sh, which installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                return None; // it could not listen there
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RedisServer {
                    child,
                    port,
                    url: format!("redis://127.0.0.1:{port}/"),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("redis-server did not start in 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn caps(tenant: &str) -> Vec<pointsman::budget::CapKey> {
    let budgets = [Budget {
        scope: Scope::Tenant,
        id: None,
        period: Period::Day,
        limit_usd: 1.0,
    }];
    let who = Identity {
        tenant: Some(tenant.into()),
        ..Identity::default()
    };
    caps_for(&budgets, &who, SystemTime::now())
}

/// A replica's Redis store. Its timeout is long: on a loaded machine the production 500 ms
/// could send a reservation to the in-memory fallback and fail a test for the wrong reason
/// (the fallback itself is tested with the production timeout below).
async fn store(url: &str) -> RedisStore {
    RedisStore::connect_with_timeout(url, "test:", Duration::from_secs(10))
        .await
        .unwrap()
}

/// A replica's ledger, over [`store`].
async fn replica(url: &str) -> Ledger {
    Ledger::with_redis(store(url).await)
}

#[tokio::test]
async fn replicas_share_spend_and_a_restart_loses_none() {
    let redis = RedisServer::start();
    let caps = caps("acme");
    let a = replica(&redis.url).await;
    let b = replica(&redis.url).await;
    let (r, counted) = a.reserve(&caps, 0.5).await;
    assert_eq!((r.is_ok(), counted), (true, Counted::Redis));
    // replica b sees a's spend
    let (r, _) = b.reserve(&caps, 0.6).await;
    let refusal = r.unwrap_err();
    assert!((refusal.spent_usd - 0.5).abs() < 1e-9, "{refusal:?}");
    // replica a restarts: nothing counted is lost
    drop(a);
    let a = replica(&redis.url).await;
    let (r, _) = a.reserve(&caps, 0.5).await;
    assert!(r.is_ok());
    let (r, _) = b.reserve(&caps, 0.01).await;
    assert!((r.unwrap_err().spent_usd - 1.0).abs() < 1e-9);
    // usage adjustments are shared too
    a.adjust(&caps, -0.25).await;
    let (r, _) = b.reserve(&caps, 0.25).await;
    assert!(r.is_ok());
}

#[tokio::test]
async fn concurrent_replicas_never_exceed_a_cap() {
    let redis = RedisServer::start();
    let caps = caps("busy");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let ledger = std::sync::Arc::new(replica(&redis.url).await);
        for _ in 0..25 {
            let (ledger, caps) = (ledger.clone(), caps.clone());
            tasks.push(tokio::spawn(async move {
                let mut granted = 0;
                for _ in 0..2 {
                    let (result, counted) = ledger.reserve(&caps, 0.03).await;
                    assert_eq!(counted, Counted::Redis);
                    if result.is_ok() {
                        granted += 1;
                    }
                }
                granted
            }));
        }
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap();
    }
    // 200 attempts of $0.03 against $1: exactly 33 fit
    assert_eq!(granted, 33);
    let probe = replica(&redis.url).await;
    let spent = probe.reserve(&caps, 1.0).await.0.unwrap_err().spent_usd;
    assert!(spent <= 1.0 + 1e-9 && spent > 1.0 - 0.03, "{spent}");
}

#[tokio::test]
async fn a_redis_that_goes_away_degrades_to_memory_and_says_so() {
    let mut redis = RedisServer::start();
    let caps = caps("acme");
    let store = RedisStore::connect(&redis.url, "test:").await.unwrap();
    let ledger = Ledger::with_redis(store);
    assert_eq!(ledger.reserve(&caps, 0.25).await.1, Counted::Redis);
    redis.stop();
    let started = Instant::now();
    let (r, counted) = ledger.reserve(&caps, 0.25).await;
    assert!(r.is_ok(), "the decision still comes back");
    assert!(matches!(counted, Counted::Degraded { .. }), "{counted:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let json = serde_json::to_value(&counted).unwrap();
    assert_eq!(json["store"], "degraded");
    assert!(json["reason"].as_str().unwrap().contains("redis"), "{json}");
    // then Redis rests: the next requests count in memory without asking it
    let (_, counted) = ledger.reserve(&caps, 0.25).await;
    let Counted::Degraded { reason } = counted else {
        panic!("{counted:?}")
    };
    assert!(reason.contains("not answering"), "{reason}");
    // and once it is back, after the rest, counting returns there
    let _back = RedisServer::start_on(redis.port).expect("the port is free again");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.reserve(&caps, 0.01).await.1 != Counted::Redis {
        assert!(Instant::now() < deadline, "Redis was not used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rate_limits_are_shared_by_replicas_and_keep_no_caller_in_clear() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis.url).await, store(&redis.url).await);
    // a burst of two, then one request each 100 s, whichever replica is asked
    let caller = "key:sk-client-secret";
    assert_eq!(a.take_token(caller, 0.01, 2.0).await.unwrap(), Ok(()));
    assert_eq!(b.take_token(caller, 0.01, 2.0).await.unwrap(), Ok(()));
    let wait = a.take_token(caller, 0.01, 2.0).await.unwrap().unwrap_err();
    assert!(
        wait > Duration::from_secs(95) && wait <= Duration::from_secs(100),
        "{wait:?}"
    );
    // another caller has its own bucket
    assert_eq!(
        b.take_token("tenant:acme", 0.01, 2.0).await.unwrap(),
        Ok(())
    );
    // the buckets are named by a hash of the caller, which may be an API key
    let mut conn = ::redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("test:rate:") && !k.contains("secret") && !k.contains("acme")),
        "{keys:?}"
    );
    // a bucket left alone expires once it would be full again
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 301_000, "{ttl}");
}

#[tokio::test]
async fn replicas_answer_429_once_the_callers_shared_bucket_is_empty() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use pointsman::server::{AppState, ServerOptions, app};
    use tower::ServiceExt;

    let mut redis = RedisServer::start();
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let (engine, dir) = crate::common::fake_engine_for(crate::common::FAKE_ROUTES);
        dirs.push(dir);
        replicas.push(
            AppState::with_engine(engine, ServerOptions::default())
                .with_ledger(replica(&redis.url).await)
                .with_rate_limit(0.01, 2),
        );
    }
    let route = |state: &AppState, tenant: &str| {
        let req = Request::post("/v1/route")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-pointsman-tenant", tenant)
            .body(Body::from(r#"{"prompt": "hello there"}"#))
            .unwrap();
        app(state.clone()).oneshot(req)
    };
    for state in &replicas {
        assert_eq!(route(state, "acme").await.unwrap().status(), StatusCode::OK);
    }
    for state in &replicas {
        let res = route(state, "acme").await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((96..=100).contains(&retry), "{retry}");
    }
    assert_eq!(
        route(&replicas[0], "other").await.unwrap().status(),
        StatusCode::OK
    );
    // without Redis each replica limits on its own, from a full bucket
    redis.stop();
    let statuses = [
        route(&replicas[0], "acme").await.unwrap().status(),
        route(&replicas[0], "acme").await.unwrap().status(),
        route(&replicas[0], "acme").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

const HEALTH_ROUTES: &str = "\
version: 1
defaults: {method: neighbours, threshold: 0.9, top_k: 3}
models:
  premium: {input_per_mtok: 1, output_per_mtok: 2, context_window: 100000}
  cheap: {input_per_mtok: 0.1, output_per_mtok: 0.2, context_window: 100000}
default_route: {models: [cheap]}
routes:
  - name: greet
    models: [premium, cheap]
    utterances: [hello there, good morning friend]
";

/// A replica over the shared `engine`, with health marks shared through `store`.
fn health_replica(
    engine: &std::sync::Arc<pointsman::engine::Engine>,
    store: RedisStore,
) -> pointsman::server::AppState {
    pointsman::server::AppState::with_engine(
        std::sync::Arc::clone(engine),
        pointsman::server::ServerOptions::default(),
    )
    .with_admin_key("adm")
    .with_shared_health(store)
}

async fn post_json(
    state: &pointsman::server::AppState,
    uri: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let req = axum::http::Request::post(uri)
        .header("content-type", "application/json")
        .header("authorization", "Bearer adm")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = pointsman::server::app(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn decided_model(state: &pointsman::server::AppState) -> String {
    let (status, v) = post_json(state, "/v1/route", r#"{"prompt": "hello there"}"#).await;
    assert_eq!(status, 200, "{v}");
    v["model"].as_str().unwrap().to_string()
}

/// Waits until `state` decides `model` for the greeting; how long that took.
async fn until_decided(state: &pointsman::server::AppState, model: &str) -> Duration {
    let started = Instant::now();
    while decided_model(state).await != model {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still not {model} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_marked_down_on_one_replica_is_skipped_by_the_others() {
    let redis = RedisServer::start();
    let (engine, _dir) = crate::common::fake_engine_for(HEALTH_ROUTES);
    let a = health_replica(&engine, store(&redis.url).await);
    let b = health_replica(&engine, store(&redis.url).await);
    assert_eq!(decided_model(&b).await, "premium");
    let (status, v) = post_json(&a, "/v1/admin/models/premium/down", r#"{"ttl_s": 2}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["shared"], true, "{v}");
    // the replica that marked it skips it at once, the other within a second
    assert_eq!(decided_model(&a).await, "cheap");
    let seen = until_decided(&b, "cheap").await;
    assert!(
        seen < Duration::from_secs(1),
        "seen by the other after {seen:?}"
    );
    // the mark expires by itself, for both
    let back = until_decided(&b, "premium").await;
    assert!(back < Duration::from_secs(3), "expired after {back:?}");
    // each replica times the expiry from its own last read: they agree within a read or so
    let a_back = until_decided(&a, "premium").await;
    assert!(
        a_back < Duration::from_millis(500),
        "expired for the other {a_back:?} later"
    );
    // marked up on one: up on the other too
    post_json(&b, "/v1/admin/models/premium/down", r#"{"ttl_s": 600}"#).await;
    until_decided(&a, "cheap").await;
    let (_, v) = post_json(&a, "/v1/admin/models/premium/up", "").await;
    assert_eq!(v["was_down"], true, "{v}");
    let up = until_decided(&b, "premium").await;
    assert!(up < Duration::from_secs(1), "marked up seen after {up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_made_while_redis_is_away_are_kept_here_and_shared_once_it_is_back() {
    let mut redis = RedisServer::start();
    let (engine, _dir) = crate::common::fake_engine_for(HEALTH_ROUTES);
    // the production timeout: an outage must not hold the admin call for long
    let a = health_replica(
        &engine,
        RedisStore::connect(&redis.url, "test:").await.unwrap(),
    );
    let b = health_replica(&engine, store(&redis.url).await);
    redis.stop();
    let (status, v) = post_json(&a, "/v1/admin/models/premium/down", r#"{"ttl_s": 600}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["shared"], false, "{v}");
    // this replica keeps its mark meanwhile
    assert_eq!(decided_model(&a).await, "cheap");
    assert_eq!(decided_model(&b).await, "premium");
    let _back = RedisServer::start_on(redis.port).expect("the port is free again");
    // after the store's rest, the mark is written and the other replica reads it
    let seen = until_decided(&b, "cheap").await;
    assert!(seen < Duration::from_secs(10), "shared after {seen:?}");
    assert_eq!(decided_model(&a).await, "cheap");
}

// Redis restarts empty here (no persistence): what a counted during the outage reaches it
// once it is back, and b, which never saw it, is held to the cap
#[tokio::test]
async fn spend_counted_while_redis_is_away_reaches_redis_once_it_is_back() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let caps = caps("acme");
    let a = Ledger::with_redis(RedisStore::connect(&redis.url, "test:").await.unwrap());
    let b = replica(&redis.url).await;
    redis.stop();
    let (r, counted) = a.reserve(&caps, 0.7).await;
    assert!(r.is_ok() && matches!(counted, Counted::Degraded { .. }));
    a.adjust(&caps, -0.1).await;
    let _redis = RedisServer::start_on(port).expect("redis-server again on its port");
    // (every reservation until then would be counted in memory, and written later, too)
    let deadline = Instant::now() + Duration::from_secs(10);
    for replica in [&a, &b] {
        while replica.adjust(&caps, 0.0).await != Counted::Redis {
            assert!(
                Instant::now() < deadline,
                "a replica never reached Redis again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // a's next reservation writes the 0.6 first
    let (r, counted) = a.reserve(&caps, 0.1).await;
    assert!(r.is_ok() && counted == Counted::Redis, "{r:?} {counted:?}");
    let (r, counted) = b.reserve(&caps, 0.4).await;
    assert_eq!(counted, Counted::Redis);
    let refusal = r.expect_err("0.6 + 0.1 + 0.4 is over the cap");
    assert!((refusal.spent_usd - 0.7).abs() < 1e-9, "{refusal:?}");
}

#[tokio::test]
async fn a_cap_reached_across_replicas_stays_reached_while_redis_is_away() {
    let mut redis = RedisServer::start();
    let caps = caps("acme");
    let a = Ledger::with_redis(RedisStore::connect(&redis.url, "test:").await.unwrap());
    let b = replica(&redis.url).await;
    // a spends 0.6 and b 0.3 of the 1.0 cap: each saw the shared total of its last reservation
    assert!(a.reserve(&caps, 0.6).await.0.is_ok());
    assert!(b.reserve(&caps, 0.3).await.0.is_ok());
    redis.stop();
    // a last saw 0.6: it may still spend up to the cap, not a whole cap more
    let (r, counted) = a.reserve(&caps, 0.3).await;
    assert!(r.is_ok() && matches!(counted, Counted::Degraded { .. }));
    let (r, _) = a.reserve(&caps, 0.2).await;
    let refusal = r.expect_err("0.6 + 0.3 + 0.2 is over the cap");
    assert!((refusal.spent_usd - 0.9).abs() < 1e-9, "{refusal:?}");
    // b last saw 0.9: the 0.2 it asks for is refused in memory too
    assert!(b.reserve(&caps, 0.2).await.0.is_err());
}

#[tokio::test]
async fn a_sticky_session_moved_up_on_one_replica_stays_up_on_the_others() {
    use axum::body::Body;
    use axum::http::{Request, header};
    use pointsman::server::{AppState, ServerOptions};

    let redis = RedisServer::start();
    let upstream = crate::upstream::Upstream::start().await;
    let providers: String = ["openai", "groq", "anthropic", "vllm"]
        .iter()
        .map(|p| format!("  {p}: {{base_url: {}}}\n", upstream.base_url))
        .collect();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let config = crate::proxy::parse_proxy(&format!("version: 1\nproviders:\n{providers}"));
        replicas.push(
            AppState::with_engine(crate::common::example_engine(), ServerOptions::default())
                .with_proxy(config)
                .unwrap()
                .with_ledger(replica(&redis.url).await),
        );
    }
    let turn = |text: &str| {
        let body =
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
        Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-pointsman-session", "conversation-42")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let model = |headers: &axum::http::HeaderMap| {
        headers["x-pointsman-model"].to_str().unwrap().to_string()
    };
    let order = "Where is my order #12345?";
    let (_, headers, _) = crate::proxy::send(&replicas[0], turn(order)).await;
    assert_eq!(model(&headers), "llama-3.1-8b-instruct");
    let hard = "My package arrived damaged, my warranty expired yesterday and I paid with three gift cards: how do I get a refund?";
    let (_, headers, _) = crate::proxy::send(&replicas[0], turn(hard)).await;
    assert_eq!(model(&headers), "claude-3.5-sonnet");
    // the other replica keeps the conversation up there
    let (_, headers, _) = crate::proxy::send(&replicas[1], turn(order)).await;
    assert_eq!(model(&headers), "claude-3.5-sonnet");
    assert_eq!(headers["x-pointsman-session"], "held");
    // Redis holds a hash of the session key, not the key
    let keys = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "test:session:*",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8(keys.stdout).unwrap();
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(!keys.contains("conversation-42"), "{keys}");
}

/// A server that stops waits for the spend adjustments its requests left being written (here
/// held up by a Redis paused for 1 s), and writes to Redis what it counted in memory while
/// Redis was away before it goes, so that the other replicas count both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_writes_its_pending_spend_to_redis_first() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut redis = RedisServer::start();
    let port = redis.port;
    let caps = caps("acme");
    let a = Arc::new(Ledger::with_redis(store(&redis.url).await));
    let b = replica(&redis.url).await;
    let mut pauser = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (started, done) = (Instant::now(), Arc::new(AtomicBool::new(false)));
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("ALL")
        .query_async::<()>(&mut pauser)
        .await
        .unwrap();
    let then = Arc::clone(&done);
    a.adjust_in_background(caps.clone(), 0.25, move || {
        then.store(true, Ordering::SeqCst)
    });
    assert!(a.written(Duration::from_secs(5)).await);
    assert!(done.load(Ordering::SeqCst));
    // (the pause began after `started`: it ends about 1 s after it)
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "written before Redis answered"
    );
    let (r, counted) = b.reserve(&caps, 0.8).await;
    assert_eq!(counted, Counted::Redis);
    let refusal = r.expect_err("0.25 + 0.8 is over the cap");
    assert!((refusal.spent_usd - 0.25).abs() < 1e-9, "{refusal:?}");

    // spend counted in memory while Redis is away (the production timeout, so it gives up fast)
    let c = Ledger::with_redis(RedisStore::connect(&redis.url, "test:").await.unwrap());
    redis.stop();
    let (r, counted) = c.reserve(&caps, 0.5).await;
    assert!(r.is_ok() && matches!(counted, Counted::Degraded { .. }));
    // another tenant's counter, written in the same transaction
    let other = self::caps("beta");
    assert!(c.reserve(&other, 0.75).await.0.is_ok());
    // a replica that stops while Redis is still away says so
    assert!(!c.written(Duration::from_secs(1)).await);
    // Redis restarts empty (no persistence); this time it is back when the replica stops
    let _redis = RedisServer::start_on(port).expect("redis-server again on its port");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.written(Duration::from_secs(1)).await {
        assert!(Instant::now() < deadline, "the spend never reached Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    // b's connection broke with the restart
    while b.adjust(&caps, 0.0).await != Counted::Redis {
        assert!(Instant::now() < deadline, "b never reached Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, counted) = b.reserve(&caps, 0.6).await;
    assert_eq!(counted, Counted::Redis);
    let refusal = r.expect_err("0.5 + 0.6 is over the cap");
    assert!((refusal.spent_usd - 0.5).abs() < 1e-9, "{refusal:?}");
    let refusal = b.reserve(&other, 0.3).await.0.expect_err("0.75 + 0.3");
    assert!((refusal.spent_usd - 0.75).abs() < 1e-9, "{refusal:?}");
}
