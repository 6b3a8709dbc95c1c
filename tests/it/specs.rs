//! Specifications pinned as snapshots (insta): the JSON of a route decision and of an eval
//! report on the example routes, as a user sees them. Floats are rounded to four significant
//! digits and timings redacted, so that a snapshot changes only when what a user reads changes. After a
//! deliberate change, review with `cargo insta review` (or rerun with `INSTA_UPDATE=always`
//! and read the diff) and commit the `.snap` files.

use serde_json::Value;

use crate::common::*;

/// `v` with every float rounded to four significant digits and the `timings` redacted.
fn readable(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap();
            if x == 0.0 {
                return serde_json::json!(0.0);
            }
            let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
            serde_json::json!((x * scale).round() / scale)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(readable).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = if k == "timings" {
                        Value::String("[timings]".into())
                    } else {
                        readable(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn a_route_decision() {
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(example_index().dir.path())
            .arg("Where is my order #12345?"),
    );
    insta::assert_json_snapshot!("route_decision", readable(v));
}

#[test]
fn a_rule_decision() {
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(example_index().dir.path())
            .arg("What does this print?\n```\nprint(1 + 1)\n```"),
    );
    insta::assert_json_snapshot!("rule_decision", readable(v));
}

#[test]
fn an_eval_report() {
    let v = json_of(
        pointsman()
            .args(["eval", "--json", "--index"])
            .arg(example_index().dir.path())
            .arg("--data")
            .arg(repo().join("examples/customer-support.jsonl")),
    );
    insta::assert_json_snapshot!("eval_report", readable(v));
}
