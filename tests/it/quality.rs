//! Quality-aware routing end to end on the fake embedder: outcomes in, a predictor in the index,
//! decisions that pick the cheap model where it answers well and the premium one where it does
//! not, an eval curve, and feedback closing the loop.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use pointsman::index::IndexParams;
use pointsman::indexer::{self, Outcomes};
use pointsman::server::{AppState, ServerOptions, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;

/// No intent routes: the default route's candidates are the choice set.
const ROUTES: &str = "\
version: 1
defaults: {quality: {tolerance: 0.2}}
models:
  premium: {input_per_mtok: 10.0, output_per_mtok: 30.0, context_window: 100000}
  small: {input_per_mtok: 0.1, output_per_mtok: 0.1, context_window: 100000}
default_route: {models: [premium, small]}
routes: []
";

/// Prompts about weather the small model answers well; prompts about proofs it does not.
fn graded_lines(n: usize) -> String {
    let easy = [
        "what is the weather today",
        "is it raining outside now",
        "weather forecast for tomorrow please",
    ];
    let hard = [
        "prove the theorem about primes",
        "prove this lemma on groups formally",
        "give a formal proof of the bound",
    ];
    (0..n)
        .map(|i| {
            let (prompt, small) = if i % 2 == 0 {
                (format!("{} {i}", easy[i % 3]), 1.0)
            } else {
                (format!("{} {i}", hard[i % 3]), 0.0)
            };
            json!({"prompt": prompt, "quality": {"premium": 1.0, "small": small},
                   "cost_usd": {"premium": 0.01, "small": 0.0001}})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn built() -> (tempfile::TempDir, tempfile::TempDir, FakeEmbedder) {
    let work = tempfile::tempdir().unwrap();
    let train = write(work.path(), "train.jsonl", &graded_lines(120));
    let table =
        pointsman::config::parse_sources(&[(PathBuf::from("routes.yaml"), ROUTES.into())]).unwrap();
    let mut fake = FakeEmbedder::new("fake");
    let out = tempfile::tempdir().unwrap();
    let outcomes = Outcomes::read(&[train]).unwrap();
    let report = indexer::build_with(
        &table,
        &mut fake,
        out.path(),
        IndexParams::default(),
        Some(&outcomes),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.quality.is_some());
    (work, out, fake)
}

async fn route(state: &AppState, prompt: &str) -> Value {
    let req = Request::post("/v1/route")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"prompt": prompt, "explain": true}).to_string(),
        ))
        .unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn the_cheap_model_gets_what_it_answers_well_and_the_premium_one_the_rest() {
    let (_work, index, fake) = built();
    let engine = fake_engine(&fake, index.path(), Default::default());
    let manifest = engine.index().manifest().clone();
    let q = manifest
        .quality
        .as_ref()
        .expect("the manifest names the predictor");
    assert_eq!(q.outcomes.len(), 1);
    assert_eq!(q.outcomes[0].sha256.len(), 64);
    assert_eq!(q.models, ["premium", "small"]);
    let state = AppState::with_engine(engine, ServerOptions::default());

    let easy = route(&state, "is it raining outside now").await;
    assert_eq!(easy["model"], "small", "{easy}");
    let hard = route(&state, "give a formal proof of the bound").await;
    assert_eq!(hard["model"], "premium", "{hard}");
    // the decision explains itself: each candidate's prediction and cost, the knob, and the
    // graded examples behind the prediction
    let quality = &hard["selection"]["quality"];
    assert!(
        (quality["knob"]["tolerance"].as_f64().unwrap() - 0.2).abs() < 1e-6,
        "{hard}"
    );
    let candidates = quality["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    assert_eq!(candidates[0]["model"], "premium");
    let small_quality = candidates[1]["predicted_quality"].as_f64().unwrap();
    assert!(small_quality < 0.5, "{hard}");
    assert!(candidates[1]["estimated_cost_usd"].as_f64().unwrap() > 0.0);
    let nearest = quality["nearest_graded"].as_array().unwrap();
    assert!(
        !nearest.is_empty() && nearest[0]["prompt"].as_str().unwrap().contains("proof"),
        "{hard}"
    );
}

#[tokio::test]
async fn eval_sweeps_the_knob_and_beats_always_premium_on_cost() {
    let (work, index, mut fake) = built();
    let test = write(work.path(), "test.jsonl", &graded_lines(40));
    let graded = pointsman::quality::outcomes::read(&test).unwrap();
    let snapshot = std::sync::Arc::new(pointsman::index::Index::open(index.path()).unwrap());
    let texts: Vec<&str> = graded.iter().map(|g| g.prompt.as_str()).collect();
    let embedded = indexer::embed_batched(&mut fake, &texts, &mut |_, _| {}).unwrap();
    let r = pointsman::eval::run_outcomes(&snapshot, &graded, &embedded)
        .await
        .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "apgr",
        "cpt50",
        "cpt80",
        "matches_best_at_cost_share",
        "curve",
        "baselines",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    // the small model is right on half the prompts and the predictor can tell which: the
    // oracle's curve here has APGR 0.75 (half the prompts need the premium model), a random mix
    // of the two 0.5
    assert!(r.curve.apgr > 0.7, "{v}");
    assert!(
        (r.curve.baselines.random_mix_apgr - 0.5).abs() < 1e-6,
        "{v}"
    );
    let share = r
        .curve
        .matches_best_at_cost_share
        .expect("reaches the premium model's quality");
    assert!(share <= 0.75, "{v}");
    // at the route file's knob, the decisions through the server's path keep the quality and
    // save on cost
    assert!(r.at_knob.quality > 0.95, "{v}");
    assert!(r.at_knob.cost_usd < 0.0085, "{v}");
    assert!(
        r.at_knob.chosen.get("small").copied().unwrap_or(0) > 5,
        "{v}"
    );
}

#[test]
fn outcomes_grading_a_model_outside_the_catalog_are_refused_by_name() {
    let work = tempfile::tempdir().unwrap();
    let lines = graded_lines(20).replace("\"small\"", "\"mystery-model\"");
    let train = write(work.path(), "train.jsonl", &lines);
    let table =
        pointsman::config::parse_sources(&[(PathBuf::from("routes.yaml"), ROUTES.into())]).unwrap();
    let err = indexer::build_with(
        &table,
        &mut FakeEmbedder::new("fake"),
        &work.path().join("index"),
        IndexParams::default(),
        Some(&Outcomes::read(&[train]).unwrap()),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("mystery-model") && err.contains("catalog"),
        "{err}"
    );
}

#[test]
fn bad_outcome_lines_are_reported_with_their_place() {
    let work = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n{{\"prompt\": \"x\", \"quality\": {{\"small\": 1.5}}}}\nnot json\n",
        graded_lines(2)
    );
    let path = write(work.path(), "bad.jsonl", &text);
    let err = Outcomes::read(std::slice::from_ref(&path))
        .unwrap_err()
        .to_string();
    let shown = path.display().to_string();
    assert!(
        err.contains(&format!("{shown}:3: quality of `small` is 1.5")),
        "{err}"
    );
    assert!(err.contains(&format!("{shown}:4: invalid JSON")), "{err}");
}

#[tokio::test]
async fn feedback_appends_an_outcome_line_the_next_build_reads() {
    let (work, index, fake) = built();
    let engine = fake_engine(&fake, index.path(), Default::default());
    let log_path = work.path().join("outcomes.jsonl");
    let log = pointsman::decision_log::DecisionLog::open(pointsman::decision_log::LogOptions {
        path: log_path.clone(),
        max_bytes: 1 << 20,
        keep: 1,
    })
    .unwrap();
    let (state, res) = decided_with_outcome_log(engine, log, "req-42").await;
    assert_eq!(res.status(), StatusCode::OK);
    let decided: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let model = decided["model"].as_str().unwrap().to_string();
    let send = |body: Value| {
        let state = state.clone();
        async move {
            let req = Request::post("/v1/feedback")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            app(state).oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(
        send(json!({"request_id": "req-42", "quality": 0.0})).await,
        StatusCode::OK
    );
    assert_eq!(
        send(json!({"request_id": "nope", "quality": 1.0})).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(json!({"request_id": "req-42", "quality": 2.0})).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        send(json!({"request_id": "req-42", "quality": 1.0, "model": "ghost"})).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    drop(state); // the log's writer drains when the last reference goes
    let graded = pointsman::quality::outcomes::read(&log_path).unwrap();
    assert_eq!(graded.len(), 1);
    assert_eq!(graded[0].prompt, "is it raining outside");
    assert_eq!(graded[0].quality[&model], 0.0);
    assert_eq!(graded[0].id.as_deref(), Some("req-42"));
}

/// A server over `engine` that appends graded outcomes to `log`, and its decision of one prompt
/// sent as `request_id` (the id a grade names).
async fn decided_with_outcome_log(
    engine: std::sync::Arc<pointsman::engine::Engine>,
    log: pointsman::decision_log::DecisionLog,
    request_id: &str,
) -> (AppState, axum::response::Response) {
    let state = AppState::with_engine(engine, ServerOptions::default()).with_outcome_log(log);
    let req = Request::post("/v1/route")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id)
        .body(Body::from(r#"{"prompt": "is it raining outside"}"#))
        .unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    (state, res)
}

// the log's writer held up by a pipe nobody reads: once its queue is full a grade is refused
// with 429, not answered `recorded` and dropped
#[tokio::test]
async fn feedback_the_outcome_log_cannot_take_is_refused_with_429() {
    let (work, index, fake) = built();
    let engine = fake_engine(&fake, index.path(), Default::default());
    let log_path = work.path().join("outcomes.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&log_path)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let path = log_path.clone();
        std::thread::spawn(move || std::fs::File::open(path).unwrap())
    };
    let log = pointsman::decision_log::DecisionLog::open(pointsman::decision_log::LogOptions {
        path: log_path.clone(),
        max_bytes: u64::MAX,
        keep: 1,
    })
    .unwrap();
    let mut reader = reader.join().unwrap();
    let (state, res) = decided_with_outcome_log(engine, log, "req-7").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut refused = None;
    for sent in 0..20_000 {
        let req = Request::post("/v1/feedback")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"request_id": "req-7", "quality": 1.0}"#))
            .unwrap();
        let res = app(state.clone()).oneshot(req).await.unwrap();
        if res.status() != StatusCode::OK {
            refused = Some((sent, res));
            break;
        }
    }
    let (sent, res) = refused.expect("the outcome log never refused a line");
    assert!(sent >= 4096, "refused after {sent}");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not recorded"),
        "{body}"
    );
    // the reader drains the pipe, so that the writer can finish
    let drain = std::thread::spawn(move || {
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
    });
    drop(state);
    drain.join().unwrap();
}

#[tokio::test]
async fn feedback_is_refused_while_the_outcome_log_is_off() {
    let (engine, _dir) = fake_engine_for(FAKE_ROUTES);
    let state = AppState::with_engine(engine, ServerOptions::default());
    let req = Request::post("/v1/feedback")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"request_id": "x", "quality": 1.0}"#))
        .unwrap();
    let res = app(state).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// The real binary and model: `build --outcomes`, `eval --outcomes --json --plot`, and
/// `calibrate --outcomes` to a target, whose route file builds and evaluates at that target.
#[test]
fn the_cli_builds_evaluates_and_calibrates_on_outcomes() {
    let work = tempfile::tempdir().unwrap();
    let routes = write(work.path(), "routes.yaml", ROUTES);
    let train = write(work.path(), "train.jsonl", &graded_lines(120));
    let test = write(work.path(), "test.jsonl", &graded_lines(40));
    let index = work.path().join("index");
    let out = pointsman()
        .arg("build")
        .arg(&routes)
        .arg("--outcomes")
        .arg(&train)
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the build reports the methods it compared and the one it chose
    assert!(
        stdout.contains("quality predictor: 120 graded prompts, 2 models"),
        "{stdout}"
    );
    assert!(stdout.contains("chosen: "), "{stdout}");

    let plot = work.path().join("curve.svg");
    let r = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(&index)
            .arg("--outcomes")
            .arg(&test)
            .arg("--plot")
            .arg(&plot),
    );
    assert!(r["apgr"].as_f64().unwrap() > 0.7, "{r}");
    assert!(r["curve"].as_array().unwrap().len() > 10, "{r}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("mean quality"),
        "{svg:.200}"
    );

    let tuned = work.path().join("tuned.yaml");
    let c = json_of(
        pointsman()
            .args(["calibrate", "--json", "--index"])
            .arg(&index)
            .arg("--outcomes")
            .arg(&train)
            .args(["--target-quality", "0.95", "--out"])
            .arg(&tuned),
    );
    assert!(c["fitted"]["quality"].as_f64().unwrap() >= 0.95, "{c}");
    assert!(c["knob"]["tolerance"].is_number(), "{c}");
    // the written file is a route file that builds and keeps the target on held-out prompts
    let rebuilt = work.path().join("tuned-index");
    let status = pointsman()
        .arg("build")
        .arg(&tuned)
        .arg("--outcomes")
        .arg(&train)
        .arg("--out")
        .arg(&rebuilt)
        .status()
        .unwrap();
    assert!(status.success());
    let r = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(&rebuilt)
            .arg("--outcomes")
            .arg(&test),
    );
    assert!(r["at_knob"]["quality"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(
        r["at_knob"]["cost_usd"].as_f64().unwrap() < 0.0095,
        "the tuned knob still sends some prompts to the small model: {r}"
    );
}
