//! Specifications pinned as snapshots (insta): the JSON of a route decision and of an eval
//! report on the example routes, as a user sees them. Floats are rounded to four significant
//! digits and timings redacted, so that a snapshot changes only when what a user reads changes. After a
//! deliberate change, review with `cargo insta review` (or rerun with `INSTA_UPDATE=always`
//! and read the diff) and commit the `.snap` files.
//!
//! A decision's similarities and scores are not pinned: the default model computes in int8, and
//! ONNX Runtime's int8 kernels give other vectors on a CPU without VNNI (AVX2's multiply-add
//! saturates) than on one with it: "Where is my order?" is 0.7788 from the prompt on one and
//! 0.8152 on the other, and the fourth and fifth neighbours swap. A decision's snapshot pins its
//! fields, the outcome, route, model and selection, the first neighbour and the first listed
//! route; the entries after the first keep their fields and their number, not their values.

use serde_json::Value;

use crate::common::*;

/// `v` with every float replaced by `float(key, x)`, `key` the field it stands in (an array's
/// entries stand in their array's field), and the `timings` redacted.
fn map_floats(v: Value, key: &str, float: &impl Fn(&str, f64) -> Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => float(key, n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| map_floats(v, key, float)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = if k == "timings" {
                        Value::String("[timings]".into())
                    } else {
                        map_floats(v, &k, float)
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// `x` rounded to four significant digits.
fn four_digits(x: f64) -> Value {
    if x == 0.0 {
        return serde_json::json!(0.0);
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    serde_json::json!((x * scale).round() / scale)
}

/// `v` with every float rounded to four significant digits and the `timings` redacted.
fn readable(v: Value) -> Value {
    map_floats(v, "", &|_, x| four_digits(x))
}

/// A decision with the timings and every float but the thresholds (configuration) redacted,
/// and the `neighbours` and `routes` entries after the first reduced to their fields: what does
/// not hang on the CPU's int8 kernels.
fn decision(v: Value) -> Value {
    let mut v = map_floats(v, "", &|key, x| {
        if key == "threshold" {
            four_digits(x)
        } else {
            Value::String("[float]".into())
        }
    });
    for list in ["neighbours", "routes"] {
        if let Some(Value::Array(entries)) = v.get_mut(list) {
            for e in entries.iter_mut().skip(1) {
                *e = match e.take() {
                    Value::Object(o) => Value::Object(
                        o.into_iter()
                            .map(|(k, _)| (k, Value::String("[value]".into())))
                            .collect(),
                    ),
                    _ => Value::String("[value]".into()),
                };
            }
        }
    }
    v
}

#[test]
fn a_route_decision() {
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(example_index().dir.path())
            .arg("Where is my order #12345?"),
    );
    insta::assert_json_snapshot!("route_decision", decision(v));
}

#[test]
fn a_rule_decision() {
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(example_index().dir.path())
            .arg("What does this print?\n```\nprint(1 + 1)\n```"),
    );
    insta::assert_json_snapshot!("rule_decision", decision(v));
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
