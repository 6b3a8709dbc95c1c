use super::*;

fn table() -> RouteTable {
    crate::config::parse_sources(&[(
        PathBuf::from("routes.yaml"),
        br#"
version: 1
defaults: {method: centroid}
models:
  small: {provider: local, input_per_mtok: 0.1, output_per_mtok: 0.2, context_window: 8000}
  big: {provider: cloud, input_per_mtok: 1.0, output_per_mtok: 2.0, context_window: 8000}
default_route: {models: [big]}
routes:
  - name: faq
    models: [small, big]
    utterances: [hello there]
"#
        .to_vec(),
    )])
    .unwrap()
}

fn parse(text: &str) -> Result<ProxyConfig, ProxyConfigError> {
    let env = |v: &str| (v == "CLOUD_KEY").then(|| "sk-test".to_string());
    ProxyConfig::parse(Path::new("proxy.yaml"), text, &env)
}

#[test]
fn providers_resolve_by_catalog_or_by_listing() {
    let config = parse(
            "version: 1\nproviders:\n  local: {base_url: 'http://127.0.0.1:1/v1'}\n  cloud: {base_url: 'https://api.example.com/v1/', api_key_env: CLOUD_KEY, rename: {big: big-2025}}\n",
        )
        .unwrap();
    let t = table();
    let cloud = config.provider_for("big", &t).unwrap();
    assert_eq!(cloud.name, "cloud");
    assert_eq!(cloud.api_key.as_deref(), Some("sk-test"));
    assert_eq!(cloud.upstream_model("big"), "big-2025");
    assert_eq!(cloud.url(), "https://api.example.com/v1/chat/completions");
    assert_eq!(config.provider_for("small", &t).unwrap().name, "local");
    assert!(!format!("{cloud:?}").contains("sk-test"));
    // a provider names its API; chat completions unless it says otherwise
    assert_eq!(cloud.api, Api::ChatCompletions);
    let native = parse(
            "version: 1\nproviders:\n  a: {base_url: 'https://api.anthropic.com/v1', api: anthropic_messages}\n  r: {base_url: 'https://api.openai.com/v1/', api: openai_responses}\n",
        )
        .unwrap();
    assert_eq!(
        native.providers["a"].url(),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        native.providers["r"].url(),
        "https://api.openai.com/v1/responses"
    );
    let err = parse("version: 1\nproviders:\n  a: {base_url: 'https://x', api: grpc}\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grpc") && err.contains("anthropic_messages"),
        "{err}"
    );
}

#[test]
fn the_shipped_proxy_file_fits_the_example_routes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = crate::config::load(&root.join("routes")).unwrap();
    let config = ProxyConfig::load(&root.join("examples/proxy.yaml"), &|_| Some("key".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.check(&table), Vec::<String>::new());
    assert_eq!(config.providers.len(), 4);
    // without the keys in the environment it says which variable to set
    let err = ProxyConfig::load(&root.join("examples/proxy.yaml"), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`OPENAI_API_KEY` is not set"), "{err}");
}

#[test]
fn every_problem_is_reported_with_what_to_do() {
    let err = parse(
            "version: 1\nproviders:\n  cloud: {base_url: 'ftp://x', api_key_env: MISSING}\nretries: {attempts: 0}\n",
        )
        .unwrap_err()
        .to_string();
    for needle in [
        "ftp://x",
        "`MISSING` is not set",
        "attempts must be at least 1",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn a_proxy_file_that_does_not_fit_the_routes_says_why() {
    let config = parse(
            "version: 1\nproviders:\n  cloud: {base_url: 'https://x', models: [faq, big]}\n  other: {base_url: 'https://y', models: [big]}\ncascade:\n  nope: {min_chars: 3}\nreasoning_effort: {gone: high}\n",
        )
        .unwrap();
    let problems = config.check(&table()).join("\n");
    for needle in [
        "cascade.nope: no route named `nope`",
        "reasoning_effort.gone: no route named `gone`",
        "route `faq` has the name of a model",
        "model `small` can be chosen by the routes but no provider serves it (its catalog provider `local` is not under `providers`)",
        "model `big` is listed under both providers `cloud` and `other`",
    ] {
        assert!(problems.contains(needle), "{needle:?} not in {problems}");
    }
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let err =
        parse("version: 1\nproviders:\n  local: {base_url: 'http://h', tiemout: 3}\n").unwrap_err();
    match err {
        ProxyConfigError::Parse { line, message, .. } => {
            assert_eq!(line, 3);
            assert!(message.contains("tiemout"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn forwarded_headers_are_checked() {
    let config = parse(
            "version: 1\nproviders:\n  local: {base_url: 'http://h', forward_headers: [OpenAI-Organization, openai-organization]}\n",
        )
        .unwrap();
    assert_eq!(
        config.providers["local"].forward_headers,
        ["openai-organization"]
    );
    let err = parse(
            "version: 1\nproviders:\n  local: {base_url: 'http://h', forward_headers: [Authorization, 'bad name', Content-Encoding, Accept-Encoding]}\n",
        )
        .unwrap_err()
        .to_string();
    for refused in ["Content-Encoding", "Accept-Encoding"] {
        assert!(
            err.contains(&format!("`{refused}` cannot be forwarded")),
            "{err}"
        );
    }
    assert!(err.contains("`Authorization` cannot be forwarded"), "{err}");
    assert!(
        err.contains("`bad name` is not a valid header name"),
        "{err}"
    );
}

#[test]
fn the_window_holds_recent_user_turns() {
    let turns: Vec<String> = ["a", " ", "b", "c", "d"].map(String::from).to_vec();
    let t = ConversationText::new(&turns, 3).unwrap();
    assert_eq!(t.last, "d");
    assert_eq!(t.window.as_deref(), Some("b\nc\nd"));
    let one = ConversationText::new(&["only".to_string()], 3).unwrap();
    assert_eq!(one.window, None);
    assert_eq!(ConversationText::new(&[" ".to_string()], 3), None);
    assert_eq!(ConversationText::new(&turns, 1).unwrap().window, None);
}

#[test]
fn a_follow_up_keeps_the_route_unless_it_clearly_matches_another() {
    let p = ConversationPolicy {
        window: 3,
        switch_margin: 0.2,
    };
    assert!(clear_match(&p, 0.75, Some(0.5)));
    assert!(!clear_match(&p, 0.6, Some(0.5)));
    // no threshold: nothing to be clear of
    assert!(!clear_match(&p, 0.99, None));
    // a follow-up that matches nothing stays
    assert_eq!(choose_turn(None, Some("weather")), TurnChoice::Window);
    // a weak match elsewhere stays, a clear one switches
    assert_eq!(
        choose_turn(Some(("billing", false)), Some("weather")),
        TurnChoice::Window
    );
    assert_eq!(
        choose_turn(Some(("billing", true)), Some("weather")),
        TurnChoice::Last
    );
    // no conversation route: the last message decides
    assert_eq!(choose_turn(None, None), TurnChoice::Last);
}

#[test]
fn the_cascade_check_catches_empty_short_and_broken_json_answers() {
    let check = CascadeCheck {
        non_empty: true,
        min_chars: 5,
        json: true,
    };
    assert!(check.failure("  ", false, false).unwrap().contains("empty"));
    assert!(
        check
            .failure("abc", false, false)
            .unwrap()
            .contains("3 characters")
    );
    assert_eq!(check.failure("a long answer", false, false), None);
    assert!(
        check
            .failure("{not json", false, true)
            .unwrap()
            .contains("JSON")
    );
    assert_eq!(check.failure("{\"a\": 1}", false, true), None);
    assert_eq!(check.failure("", true, true), None);
}

#[test]
fn backoff_doubles_and_honours_retry_after_within_the_cap() {
    let r = Retries {
        attempts: 3,
        backoff_ms: 100,
        max_backoff_ms: 1_000,
    };
    assert_eq!(r.backoff(1, None), Duration::from_millis(100));
    assert_eq!(r.backoff(2, None), Duration::from_millis(200));
    assert_eq!(r.backoff(9, None), Duration::from_millis(1_000));
    assert_eq!(
        r.backoff(1, Some(Duration::from_secs(30))),
        Duration::from_millis(1_000)
    );
}
