//! `route` and `explain`: one decision, as the API's JSON or as a readable table.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::{ModelArgs, Outcome, open_engine};
use crate::config;
use crate::engine::EngineOptions;
use crate::server::{self, AppState, ServerOptions};

/// A bar of `width` cells for `value` in [0, 1], with `|` where `mark` falls.
pub(super) fn bar(value: f32, mark: Option<f32>, width: usize) -> String {
    let filled = (value.clamp(0.0, 1.0) * width as f32).round() as usize;
    let mark = mark.map(|m| ((m.clamp(0.0, 1.0) * width as f32).round() as usize).min(width - 1));
    (0..width)
        .map(|i| match (Some(i) == mark, i < filled) {
            (true, _) => '|',
            (false, true) => '█',
            (false, false) => '·',
        })
        .collect()
}

/// The decision as a readable table.
pub(super) fn explain_text(r: &server::RouteResponse) -> String {
    use std::fmt::Write;
    let d = &r.routed.decision;
    let mut s = String::new();
    let outcome = serde_json::to_value(&d.outcome).unwrap_or_default();
    let _ = writeln!(
        s,
        "{} → {} → model {}",
        outcome["outcome"].as_str().unwrap_or(""),
        d.route().map_or_else(
            || format!("no route ({})", outcome["reason"].as_str().unwrap_or("")),
            |r| format!("route {r}")
        ),
        d.model
    );
    let _ = writeln!(
        s,
        "\n{:<24} {:<30} {:>6} {:>9} {:>10}",
        "route", "score (| = threshold)", "score", "threshold", "similarity"
    );
    for rs in &d.routes {
        let _ = writeln!(
            s,
            "{:<24} {} {:>6.3} {:>9} {:>10.3}{}",
            rs.route,
            bar(rs.score, rs.threshold, 30),
            rs.score,
            rs.threshold.map_or("-".into(), |t| format!("{t:.3}")),
            rs.similarity,
            if rs.passed { "  passes" } else { "" }
        );
    }
    let sel = &r.selection;
    let _ = writeln!(s, "\ncandidates:");
    for sk in &sel.skipped {
        let reason = serde_json::to_value(&sk.reason).unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<28} skipped: {}",
            sk.model,
            reason["reason"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "  {:<28} chosen{}{}",
        sel.model,
        sel.estimated_cost_usd
            .map_or(String::new(), |c| format!(", estimated ${c:.6}")),
        if sel.from_default {
            " (default route)"
        } else {
            ""
        }
    );
    if let Some(q) = &sel.quality {
        let knob = match q.knob {
            config::QualityKnob::Tolerance(t) => {
                format!("the cheapest within {t} of the best predicted quality")
            }
            config::QualityKnob::CostWeight(w) => {
                format!("the most predicted quality − {w} × cost")
            }
        };
        let _ = writeln!(s, "\npredicted quality ({knob}):");
        for c in &q.candidates {
            let _ = writeln!(
                s,
                "  {:<28} {} {:>6} {:>12}{}",
                c.model,
                bar(c.predicted_quality.unwrap_or(0.0), None, 30),
                c.predicted_quality
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.3}")),
                c.estimated_cost_usd
                    .map_or_else(|| "-".to_string(), |v| format!("${v:.6}")),
                if c.model == sel.model { "  chosen" } else { "" }
            );
        }
        if !q.nearest_graded.is_empty() {
            let _ = writeln!(s, "\nnearest graded prompts:");
            for n in &q.nearest_graded {
                let grades: Vec<String> =
                    n.quality.iter().map(|(m, v)| format!("{m} {v}")).collect();
                let _ = writeln!(
                    s,
                    "  {:.3}  {:?}  {}",
                    n.similarity,
                    n.prompt.chars().take(60).collect::<String>(),
                    grades.join(", ")
                );
            }
        }
    }
    let _ = writeln!(s, "\nnearest utterances:");
    for n in &r.routed.neighbours {
        let _ = writeln!(
            s,
            "  {:.3}  {:<24} {:?}",
            n.similarity, n.route, n.utterance
        );
    }
    let t = &r.routed.timings;
    let _ = writeln!(
        s,
        "\n{} tokens{}; embedding {:.2} ms, search {:.2} ms",
        r.routed.tokens,
        if r.routed.truncated {
            " (truncated)"
        } else {
            ""
        },
        t.embed_ms,
        t.search_ms
    );
    s
}

/// How `route` and `explain` show a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    /// The API's JSON (`route`).
    Json,
    /// The API's JSON with the full explanation (`explain --json`).
    ExplainedJson,
    /// A readable table with the full explanation (`explain`).
    Table,
}

pub(super) fn route(
    index: &Path,
    prompt: &str,
    model: &ModelArgs,
    shown: Shown,
) -> anyhow::Result<Outcome> {
    let engine = open_engine(index, None, model, 1, EngineOptions::default())?;
    let state = AppState::with_engine(Arc::new(engine), ServerOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // the same decision as `POST /v1/route` with no identity and no capabilities asked for
    let who = crate::budget::Identity::default();
    let request = crate::dispatch::Request {
        explain: shown != Shown::Json,
        ..crate::dispatch::Request::text(prompt, &who)
    };
    let response = runtime
        .block_on(server::route_request(&state, &request))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if shown == Shown::Table {
        print!("{}", explain_text(&response));
    } else {
        println!("{}", serde_json::to_string_pretty(&response)?);
    }
    Ok(Outcome::Success)
}
