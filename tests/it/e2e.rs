//! The real binary: build, serve on port 0, query over loopback, shut down with SIGTERM.

use std::time::{Duration, Instant};

use crate::common::*;

/// A copy of the example route files with `edit` applied to each file's text.
fn edited_example_routes(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let routes = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(example_routes()).unwrap() {
        let f = f.unwrap().path();
        let text = edit(std::fs::read_to_string(&f).unwrap());
        std::fs::write(routes.path().join(f.file_name().unwrap()), text).unwrap();
    }
    routes
}

/// `build --if-changed`, as `scripts/serve-example.sh` runs it before every start.
#[test]
fn build_if_changed_keeps_a_current_index_and_rebuilds_a_changed_or_damaged_one() {
    let root = tempfile::tempdir().unwrap();
    let index = root.path().join("index");
    let build_if_changed = |routes: &std::path::Path| {
        let out = pointsman()
            .arg("build")
            .arg(routes)
            .arg("--out")
            .arg(&index)
            .arg("--if-changed")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let live = || std::fs::read_to_string(index.join(pointsman::index::CURRENT_FILE)).unwrap();
    let built = |stdout: String| assert!(stdout.starts_with("built "), "{stdout}");

    built(build_if_changed(&example_routes()));
    let first = live();
    // nothing changed: nothing is built
    let stdout = build_if_changed(&example_routes());
    assert!(stdout.contains("is up to date"), "{stdout}");
    assert_eq!(live(), first);
    // a byte flipped in the live vectors: rebuilt, not kept
    let vectors = index.join(first.trim()).join("vectors.f32");
    let mut bytes = std::fs::read(&vectors).unwrap();
    bytes[0] ^= 0x40;
    std::fs::write(&vectors, bytes).unwrap();
    built(build_if_changed(&example_routes()));
    let second = live();
    assert_ne!(second, first);
    // the routes changed: rebuilt
    let renamed = edited_example_routes(|t| t.replace("name: order_status", "name: orders"));
    built(build_if_changed(renamed.path()));
    assert_ne!(live(), second);
}

#[test]
fn build_serve_query_and_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    build(&example_routes(), dir.path());
    let (mut child, base) = serve(
        dir.path(),
        &["--routes", example_routes().to_str().unwrap()],
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client
            .post(format!("{base}/v1/route"))
            .json(&serde_json::json!({"prompt": "Where is my order #12345?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["route"], "order_status");
    });

    signal(&child, "TERM");
    let code = child.wait().unwrap();
    assert!(code.success(), "serve exited with {code:?} after SIGTERM");
}

#[test]
fn route_command_prints_the_api_json() {
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(example_index().dir.path())
            .arg("How do I reset my password?"),
    );
    assert_eq!(v["route"], "account_basics");
    assert!(v["neighbours"].is_array() && v["timings"].is_object());
}

#[test]
fn check_command_exit_codes() {
    let ok = pointsman()
        .arg("check")
        .arg(example_routes())
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\ndefault_route: {model: m}\nroutes:\n  - name: a\n    model: m\n    utterances: []\n").unwrap();
    let out = pointsman().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:6:17: route `a`: route has no utterances"),
        "{err}"
    );
    let out = pointsman()
        .arg("check")
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn serve_refuses_stale_corrupted_or_foreign_indexes() {
    let dir = tempfile::tempdir().unwrap();
    build(&example_routes(), dir.path());

    // routes changed since the build
    let routes =
        edited_example_routes(|text| text.replace("Track order 98765", "Track order 55555"));
    let out = pointsman()
        .args(["serve", "--addr", "127.0.0.1:0", "--index"])
        .arg(dir.path())
        .arg("--routes")
        .arg(routes.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("built from other routes") && err.contains("pointsman build"),
        "{err}"
    );

    // a different token window is a different model identity
    let out = pointsman()
        .args(["route", "--max-tokens", "128", "--index"])
        .arg(dir.path())
        .arg("hello")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rebuild it with `pointsman build`"));

    // a damaged vectors file
    let generation = pointsman::index::current_generation(dir.path()).unwrap();
    let vectors = generation.join("vectors.f32");
    let mut bytes = std::fs::read(&vectors).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&vectors, bytes).unwrap();
    let out = pointsman()
        .args(["route", "--index"])
        .arg(dir.path())
        .arg("hello")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupted") && err.contains("vectors.f32"),
        "{err}"
    );
}

/// An index's vectors as another kind of CPU computed them (the default model's int8 kernels
/// differ with and without VNNI) are found by embedding some of its utterances again: `route`
/// and `eval` still run, with a warning that says so and what to do, and `build --if-changed`
/// rebuilds the index instead of keeping it. Here the other CPU is played by shifting the first
/// stored vector, the checksum made to match.
#[test]
fn an_index_this_machine_embeds_otherwise_warns_and_is_rebuilt_if_changed() {
    let dir = tempfile::tempdir().unwrap();
    build(&example_routes(), dir.path());
    let warned = |args: &[&str]| {
        let out = pointsman()
            .args(args)
            .arg("--index")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err.contains("embeds its utterances differently")
            .then_some(err)
    };
    let data = repo().join("examples/customer-support.jsonl");
    let data = data.to_str().unwrap();
    assert_eq!(warned(&["route", "Where is my order?"]), None);

    let generation = pointsman::index::current_generation(dir.path()).unwrap();
    let manifest_path = generation.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let dim = manifest["model"]["dimension"].as_u64().unwrap() as usize;
    let path = generation.join("vectors.f32");
    let mut v: Vec<f32> = std::fs::read(&path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for i in 0..dim {
        v[i] += 0.3 * v[dim + i];
    }
    let norm = v[..dim].iter().map(|x| x * x).sum::<f32>().sqrt();
    v[..dim].iter_mut().for_each(|x| *x /= norm);
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        manifest["built_on"]
            .as_str()
            .unwrap()
            .starts_with(std::env::consts::ARCH)
    );
    manifest["files"]["vectors.f32"]["xxh3"] =
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    for args in [
        &["route", "Where is my order?"][..],
        &["eval", "--data", data][..],
    ] {
        let err = warned(args).unwrap_or_else(|| panic!("no warning from {args:?}"));
        assert!(
            err.contains("lowest cosine 0.9")
                && err.contains(&format!("built on {}", pointsman::embed::cpu_kind()))
                && err.contains("Rebuild the index on this kind of machine"),
            "{err}"
        );
    }

    // `build --if-changed` does not keep it: the same routes and model, other vectors
    let rebuild = || {
        let out = pointsman()
            .arg("build")
            .arg(example_routes())
            .arg("--out")
            .arg(dir.path())
            .arg("--if-changed")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let said = rebuild();
    assert!(
        said.contains("embeds its utterances differently") && said.contains("rebuilding"),
        "{said}"
    );
    assert_ne!(
        pointsman::index::current_generation(dir.path()).unwrap(),
        generation
    );
    assert_eq!(warned(&["route", "Where is my order?"]), None);
    let said = rebuild();
    assert!(said.contains("is up to date"), "{said}");
}

#[test]
fn eval_and_calibrate_on_the_example_labelled_set() {
    let data = repo().join("examples/customer-support.jsonl");
    let index = example_index().dir.path();
    let r = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(index)
            .arg("--data")
            .arg(&data),
    );
    for key in [
        "in_scope_accuracy",
        "oos_recall",
        "oos_precision",
        "overall_accuracy",
        "macro_f1",
    ] {
        assert!(r[key].is_number(), "{key} missing: {r}");
        assert!(r["baselines"]["nearest_neighbour"][key].is_number());
        assert!(r["baselines"]["always_default"][key].is_number());
    }
    assert_eq!(r["examples"], 18);
    assert!(r["in_scope_accuracy"].as_f64().unwrap() >= 0.75, "{r}");
    assert!(r["oos_recall"].as_f64().unwrap() >= 0.6, "{r}");
    assert!(r["per_route"].as_array().unwrap().len() >= 5);
    let cost = &r["cost"];
    let (routed, premium, cheapest) = (
        cost["routed_usd"].as_f64().unwrap(),
        cost["always_premium_usd"].as_f64().unwrap(),
        cost["always_cheapest_usd"].as_f64().unwrap(),
    );
    assert!(
        cheapest > 0.0 && cheapest <= routed && routed < premium,
        "{cost}"
    );

    let below = pointsman()
        .args(["eval", "--min-accuracy", "0.999", "--index"])
        .arg(index)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(below.status.code(), Some(1));

    let dir = tempfile::tempdir().unwrap();
    let calibrated = dir.path().join("calibrated.yaml");
    let c = json_of(
        pointsman()
            .args(["calibrate", "--json", "--min-support", "3", "--index"])
            .arg(index)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&calibrated),
    );
    let objective = |f: &serde_json::Value| {
        (f["in_scope_accuracy"].as_f64().unwrap() + f["oos_recall"].as_f64().unwrap()) / 2.0
    };
    assert!(objective(&c["after"]) >= objective(&c["before"]), "{c}");
    assert!(!c["too_little_data"].as_array().unwrap().is_empty());
    // the written file is a valid route file that builds and evaluates as reported
    build(&calibrated, &dir.path().join("index"));
    let r = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(dir.path().join("index"))
            .arg("--data")
            .arg(&data),
    );
    assert!(
        (objective(&r) - objective(&c["after"])).abs() < 1e-9,
        "{r}\n{c}"
    );
}

#[test]
fn failing_route_tests_stop_a_build_and_keep_the_live_index() {
    let dir = tempfile::tempdir().unwrap();
    build(&example_routes(), dir.path());
    let before = pointsman::index::current_generation(dir.path()).unwrap();
    // a test that cannot pass: a gardening question must go to order_status
    let routes = edited_example_routes(|text| {
        text.replace(
            r#"match: ["Where is my order #12345?", "has my parcel shipped yet"]"#,
            r#"match: ["Where is my order #12345?", "How deep should I plant tulip bulbs?"]"#,
        )
    });
    let out = pointsman()
        .arg("build")
        .arg(routes.path())
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 route test(s) failed")
            && err.contains("tulip")
            && err.contains("order_status"),
        "{err}"
    );
    assert_eq!(
        pointsman::index::current_generation(dir.path()).unwrap(),
        before
    );
    // no staging directory is left behind
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn sighup_reloads_a_rebuilt_index_without_stopping() {
    reloads_a_rebuilt_index(Reload::Sighup);
}

#[test]
fn serve_watch_reloads_a_rebuilt_index_by_itself() {
    reloads_a_rebuilt_index(Reload::Watch);
}

/// What tells `serve` that the index was rebuilt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reload {
    Sighup,
    /// `serve --watch`: nothing, it notices the new `CURRENT`.
    Watch,
}

fn reloads_a_rebuilt_index(reload: Reload) {
    let dir = tempfile::tempdir().unwrap();
    build(&example_routes(), dir.path());
    let args: &[&str] = match reload {
        Reload::Sighup => &[],
        Reload::Watch => &["--watch"],
    };
    let (mut child, base) = serve(dir.path(), args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let routes_now = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let r = reqwest::get(format!("{base}/v1/routes")).await.unwrap();
            if r.status() != 200 {
                return Vec::new();
            }
            let v: serde_json::Value = r.json().await.unwrap();
            v["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !routes_now(&rt).contains(&"order_status".to_string()) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // rebuild with one route renamed
    let routes = edited_example_routes(|text| text.replace("name: order_status", "name: orders"));
    build(routes.path(), dir.path());
    if reload == Reload::Sighup {
        // not swapped until asked
        assert!(routes_now(&rt).contains(&"order_status".to_string()));
        signal(&child, "HUP");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !routes_now(&rt).contains(&"orders".to_string()) {
        assert!(Instant::now() < deadline, "{reload:?} did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// `--otlp-endpoint`: the request's span reaches an OTLP/HTTP collector (a fake one on
/// loopback), carrying the route chosen and the caller's trace id from `traceparent`.
#[test]
fn traces_reach_an_otlp_collector_with_the_callers_trace_id() {
    type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let posts: Posts = Default::default();
    let collector = rt.block_on(async {
        let posts = posts.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    posts.lock().unwrap().push((ct, body.to_vec()));
                    ""
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    });
    let (mut child, base) = serve(example_index().dir.path(), &["--otlp-endpoint", &collector]);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(Instant::now() < deadline, "not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client
            .post(format!("{base}/v1/route"))
            .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
            .json(&serde_json::json!({"prompt": "Where is my order #12345?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    // spans are exported in batches; stopping the server flushes them
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let posts = posts.lock().unwrap();
    assert!(!posts.is_empty(), "nothing reached the collector");
    let body: Vec<u8> = posts.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(posts.iter().all(|(ct, _)| ct == "application/x-protobuf"));
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"POST /v1/route"), "no request span");
    assert!(
        contains(b"order_status"),
        "the span does not carry the route"
    );
    let id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(contains(&id), "the span is not in the caller's trace");
}

/// Prompts with a fenced code block, which the example routes' static rule sends to `code`
/// whatever their words say.
const FENCED: [&str; 5] = [
    "Please summarise what this does:\n```\nprint('hello')\n```",
    "Translate the comments into French:\n```python\n# compute the total\n```",
    "```sql\nSELECT * FROM orders\n``` where is my order?",
    "Is this a refund policy?\n```\nrefund = total * 0.5\n```",
    "```\nx = 3 * 7\n```\nwhat is the result?",
];

#[test]
fn eval_route_and_the_http_api_decide_alike_on_a_table_with_rules() {
    let index = example_index().dir.path();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rules.jsonl");
    let lines: Vec<String> = FENCED
        .iter()
        .map(|p| serde_json::json!({"text": p, "route": "code"}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let r = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(index)
            .arg("--data")
            .arg(&data),
    );
    assert_eq!(r["in_scope_accuracy"], 1.0, "{r}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = pointsman::server::AppState::with_engine(
        example_engine(),
        pointsman::server::ServerOptions::default(),
    );
    for prompt in FENCED {
        let cli = json_of(
            pointsman()
                .args(["route", "--index"])
                .arg(index)
                .arg(prompt),
        );
        let http: serde_json::Value = rt.block_on(async {
            use tower::ServiceExt;
            let req = axum::http::Request::post("/v1/route")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    serde_json::json!({"prompt": prompt}).to_string(),
                ))
                .unwrap();
            let res = pointsman::server::app(state.clone())
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let bytes = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice(&bytes).unwrap()
        });
        for v in [&cli, &http] {
            assert_eq!(v["outcome"], "rule", "{prompt:?}: {v}");
            assert_eq!(v["route"], "code", "{prompt:?}: {v}");
        }
        assert_eq!(cli["model"], http["model"], "{prompt:?}");
        assert_eq!(cli["selection"], http["selection"], "{prompt:?}");
    }
}
