//! The route-file tests: parsing, validation with places, loading directories, writing back.

use super::*;

fn parse(yaml: &str) -> Result<RouteTable, ConfigError> {
    parse_sources(&[(PathBuf::from("r.yaml"), yaml.as_bytes().to_vec())])
}

fn issues(yaml: &str) -> Vec<ConfigIssue> {
    match parse(yaml) {
        Err(ConfigError::Invalid { issues }) => issues,
        other => panic!("expected invalid, got {other:?}"),
    }
}

const GOOD: &str = "\
version: 1
defaults:
  threshold: 0.4
  top_k: 3
  aggregation: mean
default_route:
  model: general
routes:
  - name: orders
    model: small
    utterances:
      - where is my order
      - track my package
  - name: refunds
    model: premium
    threshold: 0.6
    utterances:
      - I want a refund
";

#[test]
fn parses_a_good_file() {
    let t = parse(GOOD).unwrap();
    assert_eq!(t.default_model, "general");
    assert_eq!(t.defaults.top_k, 3);
    assert_eq!(t.defaults.aggregation, Aggregation::Mean);
    assert_eq!(t.routes.len(), 2);
    assert_eq!(t.routes[1].effective_threshold(&t.defaults), Some(0.6));
    assert_eq!(t.routes[0].effective_threshold(&t.defaults), Some(0.4));
    assert_eq!(t.utterance_count(), 3);
}

#[test]
fn to_yaml_roundtrips() {
    let mut t = parse(GOOD).unwrap();
    t.defaults.min_similarity = Some(0.25);
    t.defaults.margin = Some(0.05);
    t.routes[0].description = Some("a: tricky # text".into());
    t.routes[0]
        .utterances
        .push("Where is my order #12345?".into());
    t.routes[1].tests = RouteTests {
        should_match: vec!["refund please".into()],
        should_not_match: vec!["track it".into()],
    };
    let yaml = to_yaml(&t);
    let back = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, t);
}

#[test]
fn canonical_hash_changes_with_content() {
    let a = parse(GOOD).unwrap();
    let b = parse(&GOOD.replace("I want a refund", "refund me")).unwrap();
    assert_eq!(a.canonical_hash(), parse(GOOD).unwrap().canonical_hash());
    assert_ne!(a.canonical_hash(), b.canonical_hash());
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let is = issues(&GOOD.replace("    threshold: 0.6\n", "    treshold: 0.6\n"));
    assert_eq!(is.len(), 1);
    assert_eq!(is[0].line, 16, "{:?}", is[0]);
    assert!(is[0].message.contains("treshold"), "{}", is[0].message);
}

#[test]
fn syntax_error_carries_line() {
    let is = issues("version: 1\nroutes:\n  - name: [unclosed\n");
    assert_eq!(is.len(), 1);
    assert!(is[0].line >= 3, "{:?}", is[0]);
}

#[test]
fn parser_messages_do_not_repeat_the_place() {
    let is = issues("version: 1\nextra: 1\n");
    assert_eq!((is[0].line, is[0].column), (2, 1));
    assert!(
        is[0].message.starts_with("unknown field `extra`"),
        "{}",
        is[0].message
    );
}

#[test]
fn wrong_type_carries_line() {
    let is = issues(&GOOD.replace("top_k: 3", "top_k: lots"));
    assert_eq!(is[0].line, 4, "{:?}", is[0]);
}

#[test]
fn unknown_aggregation_is_rejected() {
    let is = issues(&GOOD.replace("aggregation: mean", "aggregation: median"));
    assert!(is[0].message.contains("median"), "{}", is[0].message);
    assert_eq!(is[0].line, 5);
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let yaml = "\
version: 1
defaults:
  threshold: 1.5
  top_k: 0
default_route:
  model: general
routes:
  - name: orders
    model: small
    utterances:
      - where is my order
      - '  '
  - name: orders
    model: small
    threshold: -2
    utterances:
      - Where is  my ORDER
  - name: empty
    model: small
    utterances: []
  - name: missing
    model: ''
";
    let is = issues(yaml);
    let find = |needle: &str| {
        is.iter()
            .find(|i| i.message.contains(needle))
            .unwrap_or_else(|| panic!("no issue containing {needle:?} in {is:#?}"))
    };
    let t = find("threshold 1.5");
    assert_eq!((t.line, t.column, t.route.as_deref()), (3, 14, None));
    let k = find("top_k is 0");
    assert_eq!((k.line, k.column), (4, 10));
    let e = find("empty utterance");
    assert_eq!((e.line, e.route.as_deref()), (12, Some("orders")));
    let d = find("duplicate route name");
    assert_eq!(
        (d.line, d.column, d.route.as_deref()),
        (13, 11, Some("orders"))
    );
    assert!(d.message.contains("r.yaml:8"), "{}", d.message);
    let neg = find("threshold -2");
    assert_eq!((neg.line, neg.route.as_deref()), (15, Some("orders")));
    let dup = find("listed twice");
    assert_eq!(dup.line, 17);
    let none = find("route has no utterances");
    assert_eq!((none.line, none.route.as_deref()), (20, Some("empty")));
    let no_key = find("route has no `utterances`");
    assert_eq!(
        (no_key.line, no_key.route.as_deref()),
        (21, Some("missing"))
    );
    let m = find("model is empty");
    assert_eq!((m.line, m.route.as_deref()), (22, Some("missing")));
    assert_eq!(is.len(), 9, "{is:#?}");
}

#[test]
fn catalog_problems_are_placed() {
    let yaml = "\
version: 1
models:
  small: {input_per_mtok: .nan, output_per_mtok: -1, context_window: 0}
budgets:
  - {scope: tenant, period: day, limit_usd: -5}
default_route:
  model: small
routes:
  - name: orders
    models: [small, smal]
    utterances: [where is my order]
  - name: greet
    model: small
    utterances: [hello]
";
    let is = issues(yaml);
    let find = |needle: &str| {
        is.iter()
            .find(|i| i.message.contains(needle))
            .unwrap_or_else(|| panic!("no issue containing {needle:?} in {is:#?}"))
    };
    assert_eq!(find("input_per_mtok NaN").line, 3);
    assert_eq!(find("output_per_mtok -1").line, 3);
    assert_eq!(find("context_window is 0").line, 3);
    assert_eq!(find("limit_usd -5").line, 5);
    let typo = find("model `smal` is not in the `models` catalog");
    assert_eq!((typo.line, typo.route.as_deref()), (9, Some("orders")));
    assert_eq!(is.len(), 5, "{is:#?}");

    let no_catalog = issues(
        "version: 1\nbudgets: [{scope: tenant, period: day, limit_usd: 5}]\ndefault_route: {model: m}\nroutes: [{name: r, model: m, utterances: [hi]}]\n",
    );
    assert!(
        no_catalog[0]
            .message
            .contains("`budgets` need a `models` catalog"),
        "{no_catalog:#?}"
    );
}

#[test]
fn utterance_under_two_routes_is_reported_with_both_places() {
    let is = issues(&GOOD.replace("I want a refund", "Track my   package"));
    assert_eq!(is.len(), 1, "{is:#?}");
    assert_eq!(is[0].line, 18);
    assert_eq!(is[0].route.as_deref(), Some("refunds"));
    assert!(
        is[0].message.contains("route `orders`") && is[0].message.contains("r.yaml:13"),
        "{}",
        is[0].message
    );
}

#[test]
fn missing_default_route_and_wrong_version() {
    let is = issues("version: 2\nroutes:\n  - name: a\n    model: m\n    utterances: [hi]\n");
    assert!(
        is.iter()
            .any(|i| i.message.contains("unsupported version 2") && i.line == 1)
    );
    assert!(is.iter().any(|i| i.message.contains("no `default_route`")));
}

#[test]
fn missing_version_is_an_error() {
    let is = issues("default_route: {model: m}\nroutes: []\n");
    assert!(is[0].message.contains("version"), "{:?}", is[0]);
}

#[test]
fn invalid_utf8_is_reported() {
    let err = parse_sources(&[(
        PathBuf::from("bad.yaml"),
        b"version: 1\n\xff\xfe\n".to_vec(),
    )])
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.yaml:2:0") && text.contains("UTF-8"),
        "{text}"
    );
}

#[test]
fn defaults_set_twice_across_files() {
    let a = (PathBuf::from("a.yaml"), GOOD.as_bytes().to_vec());
    let b = (
            PathBuf::from("b.yaml"),
            b"version: 1\ndefault_route: {model: x}\nroutes:\n  - {name: other, model: m, utterances: [hello there]}\n".to_vec(),
        );
    let Err(ConfigError::Invalid { issues }) = parse_sources(&[a.clone(), b]) else {
        panic!("expected invalid")
    };
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(
        issues[0].message.contains("already set in a.yaml:7"),
        "{}",
        issues[0].message
    );
    assert_eq!(issues[0].file, PathBuf::from("b.yaml"));
}

#[test]
fn display_has_file_line_col_and_route() {
    let is = issues(&GOOD.replace("threshold: 0.6", "threshold: 7"));
    assert_eq!(
        is[0].to_string(),
        "r.yaml:16:16: route `refunds`: threshold 7 is outside [-1, 1]; similarities are cosines, so use a value such as 0.5"
    );
}

#[test]
fn a_table_without_routes_and_a_quality_knob_parse() {
    let yaml = "version: 1
defaults: {quality: {cost_weight: 250}}
models:
  big: {input_per_mtok: 10.0, output_per_mtok: 30.0, context_window: 128000}
  small: {input_per_mtok: 0.2, output_per_mtok: 0.2, context_window: 32000}
default_route: {models: [big, small]}
routes: []
";
    let t = parse(yaml).unwrap();
    assert!(t.routes.is_empty());
    assert_eq!(t.defaults.quality, Some(QualityKnob::CostWeight(250.0)));
    // and it survives a round trip through `to_yaml`, as calibrate writes it
    assert_eq!(parse(&to_yaml(&t)).unwrap(), t);
    let bad = issues(&yaml.replace("{cost_weight: 250}", "{tolerance: 1.5}"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!((bad[0].line, bad[0].column), (2, 21), "{}", bad[0]);
    assert!(bad[0].message.contains("outside [0, 1]"), "{}", bad[0]);
    let unknown = parse(&yaml.replace("{cost_weight: 250}", "{tolerence: 0.1}"));
    assert!(unknown.is_err());
}
