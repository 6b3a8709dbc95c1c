//! The unmodified client SDKs users run (the `openai`, `anthropic` and `litellm` Python packages,
//! the Node `openai` package) against the real binary serving the example routes through
//! `examples/proxy.yaml` as shipped, but with every provider's `base_url` on the fake upstream
//! and every provider speaking OpenAI chat completions there. `scripts/test.sh` installs the
//! packages and sets `POINTSMAN_PYTHON` and `POINTSMAN_LITELLM_PYTHON`; without them these tests fail, they do not skip.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::proxy::UPSTREAM_KEY;
use crate::upstream::{Behaviour, COMPLETION_TOKENS, PROMPT_TOKENS, TOOL_ARGUMENTS, Upstream};

/// `examples/proxy.yaml` with each `base_url` on `upstream` and no `api:` line (so that every
/// provider speaks chat completions to it).
fn example_proxy_file(upstream: &Upstream) -> String {
    let shipped = std::fs::read_to_string(repo().join("examples/proxy.yaml")).unwrap();
    let mut out = String::new();
    let mut urls = 0;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("api:") {
            continue;
        }
        if let Some(indent) = trimmed
            .strip_prefix("base_url:")
            .map(|_| &line[..line.len() - trimmed.len()])
        {
            out.push_str(&format!("{indent}base_url: {}\n", upstream.base_url));
            urls += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(urls, 4, "examples/proxy.yaml has four providers");
    out
}

/// The real binary on the example index through the example proxy file; waits until ready.
async fn serve_examples(upstream: &Upstream, dir: &std::path::Path) -> (Serving, String) {
    let file = dir.join("proxy.yaml");
    std::fs::write(&file, example_proxy_file(upstream)).unwrap();
    let mut command = pointsman();
    for var in ["OPENAI_API_KEY", "GROQ_API_KEY", "ANTHROPIC_API_KEY"] {
        command.env(var, UPSTREAM_KEY);
    }
    let (child, base) = serve_with(
        command,
        example_index().dir.path(),
        &[
            "--proxy",
            file.to_str().unwrap(),
            "--api-key",
            "client-key,other-key",
        ],
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

/// Runs `program script base client-key` off the runtime; its JSON output.
async fn run(program: String, script: std::path::PathBuf, base: &str) -> Value {
    let base = base.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            // litellm would fetch its price list from GitHub when imported
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .arg(&script)
            .arg(&base)
            .arg("client-key")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn python() -> String {
    std::env::var("POINTSMAN_PYTHON").unwrap_or_else(|_| {
        panic!("POINTSMAN_PYTHON is not set: run scripts/test.sh, which installs the `openai` and `anthropic` packages and sets it")
    })
}

fn litellm_python() -> String {
    std::env::var("POINTSMAN_LITELLM_PYTHON").unwrap_or_else(|_| {
        panic!("POINTSMAN_LITELLM_PYTHON is not set: run scripts/test.sh, which installs the `litellm` package and sets it")
    })
}

/// The small model's answer, as the fake upstream words it (groq renames the model).
const SMALL: &str = "answer from llama-3.1-8b-instant";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_package_works_end_to_end() {
    let upstream = Upstream::start().await;
    upstream.script("gpt-4o", [Behaviour::CutAfter(3)]);
    let dir = tempfile::tempdir().unwrap();
    let (_child, base) = serve_examples(&upstream, dir.path()).await;
    let seen = run(
        python(),
        repo().join("tests/python/openai_client.py"),
        &base,
    )
    .await;
    let models: Vec<&str> = seen["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"auto") && models.contains(&"order_status") && models.contains(&"gpt-4o")
    );
    assert_eq!(seen["completion"]["route"], "order_status", "{seen}");
    assert_eq!(seen["completion"]["model"], "llama-3.1-8b-instruct");
    assert_eq!(seen["completion"]["content"], SMALL);
    assert_eq!(
        seen["completion"]["usage"],
        PROMPT_TOKENS + COMPLETION_TOKENS
    );
    assert_eq!(seen["follow_up_route"], "order_status");
    assert_eq!(seen["streamed"], "answer from llama-3.1-8b-instant");
    assert_eq!(seen["not_found"]["status"], 404);
    assert!(
        seen["cut_stream"].as_str().unwrap().contains("broke off"),
        "{seen}"
    );
    assert_eq!(seen["wrong_key"], 401);
    // the upstream saw the provider's key, never the client's
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_KEY}")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_package_and_openais_responses_api_work_end_to_end() {
    let upstream = Upstream::start().await;
    // o3-mini calls the weather tool, for each of the three requests that ask it
    upstream.script(
        "o3-mini",
        (0..3).map(|_| Behaviour::CallsTool("weather".into())),
    );
    let dir = tempfile::tempdir().unwrap();
    let (_child, base) = serve_examples(&upstream, dir.path()).await;
    let seen = run(
        python(),
        repo().join("tests/python/anthropic_client.py"),
        &base,
    )
    .await;
    // "Where is my order #12345?" goes to the small model through each API
    let create = &seen["messages_create"];
    assert_eq!(create["text"], SMALL, "{seen}");
    assert_eq!(create["model_header"], "llama-3.1-8b-instruct");
    assert_eq!(create["route_header"], "order_status");
    assert_eq!(create["stop_reason"], "end_turn");
    assert_eq!(
        create["usage"],
        serde_json::json!([PROMPT_TOKENS, COMPLETION_TOKENS])
    );
    let stream = &seen["messages_stream"];
    assert_eq!(stream["text"], SMALL);
    assert_eq!(stream["final_text"], SMALL);
    // one piece a word: relayed as they came
    assert_eq!(stream["pieces"], SMALL.split(' ').count());
    assert_eq!(stream["output_tokens"], COMPLETION_TOKENS);
    let events: Vec<&str> = seen["messages_raw_stream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    let expected: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap();
    assert_eq!(seen["messages_tool"]["stop_reason"], "tool_use");
    assert_eq!(seen["messages_tool"]["name"], "weather");
    assert_eq!(seen["messages_tool"]["input"], expected);
    assert_eq!(seen["messages_tool_stream"]["stop_reason"], "tool_use");
    assert_eq!(seen["messages_tool_stream"]["input"], expected);
    assert!(
        seen["messages_tool_result"]
            .as_str()
            .unwrap()
            .starts_with("answer from")
    );
    let result_turn = upstream
        .received()
        .into_iter()
        .find(|r| {
            r.body["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .unwrap();
    assert_eq!(
        result_turn.body["messages"][2],
        serde_json::json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
    );
    assert!(seen["count_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        seen["messages_not_found"],
        serde_json::json!({"status": 404, "type": "not_found_error"})
    );
    assert_eq!(seen["messages_wrong_key"], 401);
    assert_eq!(seen["responses_create"]["text"], SMALL);
    assert_eq!(seen["responses_create"]["status"], "completed");
    assert_eq!(
        seen["responses_create"]["model_header"],
        "llama-3.1-8b-instruct"
    );
    assert_eq!(
        seen["responses_create"]["usage"],
        PROMPT_TOKENS + COMPLETION_TOKENS
    );
    assert_eq!(seen["responses_stream"]["text"], SMALL);
    assert_eq!(seen["responses_stream"]["last"], "response.completed");
    assert_eq!(seen["responses_stream_helper"], SMALL);
    assert_eq!(seen["responses_tool"]["name"], "weather");
    assert_eq!(seen["responses_tool"]["arguments"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_openai_package_works_end_to_end() {
    let node_modules = repo().join("tests/node/node_modules/openai");
    assert!(
        node_modules.exists(),
        "{} is missing: run scripts/test.sh, which installs the Node `openai` package",
        node_modules.display()
    );
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, base) = serve_examples(&upstream, dir.path()).await;
    let seen = run("node".into(), repo().join("tests/node/client.mjs"), &base).await;
    assert_eq!(seen["chat"]["text"], SMALL, "{seen}");
    assert_eq!(seen["chat"]["model_header"], "llama-3.1-8b-instruct");
    assert_eq!(seen["chat_stream"], SMALL);
    assert_eq!(seen["responses"]["text"], SMALL);
    assert_eq!(seen["responses"]["model_header"], "llama-3.1-8b-instruct");
    assert_eq!(seen["responses_stream"]["text"], SMALL);
    assert_eq!(seen["responses_stream"]["last"], "response.completed");
    assert_eq!(seen["responses_stream_helper"], SMALL);
}

// litellm as its OpenAI provider and as its Anthropic provider, each a whole answer, a stream,
// an unknown model and a wrong key
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_litellm_package_works_end_to_end_through_both_its_providers() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, base) = serve_examples(&upstream, dir.path()).await;
    let seen = run(
        litellm_python(),
        repo().join("tests/python/litellm_client.py"),
        &base,
    )
    .await;
    for provider in ["openai", "anthropic"] {
        let p = &seen[provider];
        assert_eq!(p["content"], SMALL, "{provider}: {seen}");
        assert_eq!(
            p["usage"],
            serde_json::json!([PROMPT_TOKENS, COMPLETION_TOKENS]),
            "{provider}"
        );
        assert_eq!(p["route_header"], "order_status", "{provider}: {seen}");
        assert_eq!(p["model_header"], "llama-3.1-8b-instruct", "{provider}");
        assert_eq!(p["streamed"], SMALL, "{provider}");
        assert_eq!(p["not_found"], 404, "{provider}");
        assert_eq!(p["wrong_key"], 401, "{provider}");
    }
    // both reached the upstream through pointsman, with the provider's key
    let received = upstream.received();
    assert!(received.len() >= 4, "{}", received.len());
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_KEY}")))
    );
}
