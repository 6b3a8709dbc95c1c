//! Evaluation: labelled prompts in, a serialisable report out.
//!
//! A labelled line is `{"text": "...", "route": "name"}`, or `"route": null` for a prompt that
//! belongs to no route and should fall back (JSON lines), or `text,route` with an empty route
//! (CSV with a header). The report gives the router's figures beside two baselines computed on
//! the same embeddings: plain nearest-neighbour top-1 (never falls back) and "always the default".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RouteTable;

mod calibrate;
mod outcomes;

pub use calibrate::{Calibration, Objective, apply, calibrate};
pub use outcomes::{AtKnob, OutcomeEvalError, OutcomeReport, render_outcomes, run_outcomes};

/// One labelled prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The prompt.
    pub text: String,
    /// The route it belongs to; `None` when it should fall back.
    pub route: Option<String>,
}

/// Errors reading labelled data.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A line is not a labelled example.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no examples.
    #[error("{0} holds no labelled examples")]
    Empty(PathBuf),
}

/// Reads labelled examples from JSON lines, or CSV when the file name ends in `.csv`.
/// Labels naming no route of `table` are errors (a typo would silently count as a miss).
pub fn read_examples(path: &Path, table: &RouteTable) -> Result<Vec<Example>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    let line_err = |line: usize, message: String| EvalError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    let csv = path.extension().and_then(|e| e.to_str()) == Some("csv");
    let mut examples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || (csv && i == 0) {
            continue;
        }
        let example = if csv {
            parse_csv_line(raw).map_err(|m| line_err(line, m))?
        } else {
            serde_json::from_str::<Example>(raw)
                .map_err(|e| line_err(line, format!("not a labelled example ({e}); expected {{\"text\": \"...\", \"route\": \"name\" or null}}")))?
        };
        if example.text.trim().is_empty() {
            return Err(line_err(line, "empty text".into()));
        }
        if let Some(route) = &example.route {
            if table.route(route).is_none() {
                return Err(line_err(
                    line,
                    format!(
                        "route `{route}` is not in the index's route table; use null for prompts that should fall back"
                    ),
                ));
            }
        }
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(EvalError::Empty(path.to_path_buf()));
    }
    Ok(examples)
}

/// Parses `text,route` where `text` may be double-quoted (with `""` for a quote).
fn parse_csv_line(raw: &str) -> Result<Example, String> {
    let (text, rest) = if let Some(stripped) = raw.strip_prefix('"') {
        let mut text = String::new();
        let mut chars = stripped.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    text.push('"');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                text.push(c);
            }
        }
        let end = end.ok_or("unterminated quoted text")?;
        (text, &stripped[end..])
    } else {
        let comma = raw.rfind(',').ok_or("expected `text,route`")?;
        (raw[..comma].to_string(), &raw[comma..])
    };
    let route = rest
        .strip_prefix(',')
        .ok_or("expected a comma after the text")?
        .trim();
    Ok(Example {
        text,
        route: (!route.is_empty()).then(|| route.to_string()),
    })
}

/// What a router chose for one example: a route index, or `None` for a fallback.
pub type Choice = Option<usize>;

/// Precision, recall and F1 of one route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteFigures {
    /// Route name.
    pub route: String,
    /// Of the prompts sent to this route, the share that belonged there.
    pub precision: f64,
    /// Of the prompts that belong to this route, the share sent there.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Prompts that belong to this route.
    pub support: usize,
}

/// A pair of routes the router mixes up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// The right answer (`null` for out-of-scope).
    pub gold: Option<String>,
    /// What was chosen (`null` for a fallback).
    pub chosen: Option<String>,
    /// How often.
    pub count: usize,
}

/// The figures of one router (or baseline) over a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// In-scope lines whose route was chosen correctly.
    pub in_scope_accuracy: f64,
    /// Out-of-scope lines that fell back (`None`, shown as n/a, when the set has none).
    pub oos_recall: Option<f64>,
    /// Fallbacks that were out-of-scope lines (1 when nothing fell back).
    pub oos_precision: f64,
    /// All lines, a fallback counting as correct for an out-of-scope line.
    pub overall_accuracy: f64,
    /// Mean F1 over the routes with support.
    pub macro_f1: f64,
}

impl Figures {
    /// Out-of-scope recall to three places, or n/a.
    pub fn oos_recall_shown(&self) -> String {
        self.oos_recall
            .map_or_else(|| "n/a".to_string(), |r| format!("{r:.3}"))
    }
}

/// The full report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Lines evaluated.
    pub examples: usize,
    /// In-scope lines.
    pub in_scope: usize,
    /// Out-of-scope lines.
    pub out_of_scope: usize,
    /// The router's figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Per-route figures, by route name.
    pub per_route: Vec<RouteFigures>,
    /// The most frequent mistakes, most frequent first.
    pub confused: Vec<Confusion>,
    /// Baselines on the same embeddings.
    pub baselines: Baselines,
    /// What the labelled set would cost under the routes, beside always-premium and
    /// always-cheapest (present when the route files have a model catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostFigures>,
}

/// Estimated cost of a labelled set, in US dollars.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostFigures {
    /// Each prompt sent to the first candidate of its decided route (no health marks, no caps).
    pub routed_usd: f64,
    /// Every prompt sent to the catalog's most expensive model.
    pub always_premium_usd: f64,
    /// Every prompt sent to the catalog's cheapest model.
    pub always_cheapest_usd: f64,
    /// Share of the always-premium cost that routing saves.
    pub saved_vs_premium: f64,
}

/// Estimated cost of a labelled set as routed (`routed_usd[i]`, the chosen candidate's
/// estimate for prompt `i`, which has `prompt_tokens[i]` tokens and went to route `chosen[i]`),
/// against the catalog's most expensive and cheapest models. `None` without a catalog.
pub fn cost_figures(
    table: &RouteTable,
    chosen: &[Choice],
    routed_usd: &[f64],
    prompt_tokens: &[u64],
) -> Option<CostFigures> {
    use crate::config::DEFAULT_EXPECTED_OUTPUT_TOKENS;
    if table.catalog.is_empty() {
        return None;
    }
    let (mut premium, mut cheapest) = (0.0, 0.0);
    for (c, &tokens) in chosen.iter().zip(prompt_tokens) {
        let route = c.map(|r| &table.routes[r]);
        let output =
            u64::from(route.map_or(DEFAULT_EXPECTED_OUTPUT_TOKENS, |r| r.expected_output_tokens));
        let costs = table.catalog.values().map(|m| m.cost_usd(tokens, output));
        premium += costs.clone().fold(0.0, f64::max);
        cheapest += costs.fold(f64::INFINITY, f64::min);
    }
    let routed: f64 = routed_usd.iter().sum();
    Some(CostFigures {
        routed_usd: routed,
        always_premium_usd: premium,
        always_cheapest_usd: cheapest,
        saved_vs_premium: if premium > 0.0 {
            1.0 - routed / premium
        } else {
            0.0
        },
    })
}

/// Decides every labelled prompt as the server would ([`crate::dispatch`]: rules, scores,
/// policy, candidates), with no health marks and a dry-run ledger (evaluation spends no
/// budget), and reports the figures. `embedded[i]` is the embedding of `examples[i]`.
pub async fn run(
    snapshot: &std::sync::Arc<crate::index::Index>,
    examples: &[Example],
    embedded: &[crate::embed::Embedded],
) -> Result<Report, crate::dispatch::DispatchError> {
    use crate::dispatch::{self, DispatchError, Request, Spend};
    let table = snapshot.table();
    let health = crate::selection::Health::default();
    let who = crate::budget::Identity::default();
    let position = |name: &str| table.routes.iter().position(|r| r.name == name);
    let mut chosen = Vec::with_capacity(examples.len());
    let mut nearest = Vec::with_capacity(examples.len());
    let mut routed_usd = Vec::with_capacity(examples.len());
    let mut tokens = Vec::with_capacity(examples.len());
    for (e, v) in examples.iter().zip(embedded) {
        let req = Request::text(&e.text, &who);
        let decided = dispatch::dispatch_embedded(&health, Spend::DryRun, snapshot, &req, v).await;
        // a request no candidate can take is answered with an error: it costs nothing
        let (routed, cost) = match decided {
            Ok(d) => (d.routed, d.selection.estimated_cost_usd.unwrap_or(0.0)),
            Err(DispatchError::NoCandidate { routed, .. }) => (*routed, 0.0),
            Err(other) => return Err(other),
        };
        chosen.push(routed.decision.route().and_then(position));
        nearest.push(routed.neighbours.first().and_then(|n| position(&n.route)));
        routed_usd.push(cost);
        tokens.push(v.prompt_tokens as u64);
    }
    let mut report = report(table, examples, &chosen, &nearest);
    report.cost = cost_figures(table, &chosen, &routed_usd, &tokens);
    Ok(report)
}

/// Baseline figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baselines {
    /// The route of the single nearest utterance, never falling back.
    pub nearest_neighbour: Figures,
    /// Every prompt to the default model.
    pub always_default: Figures,
}

/// Gold labels resolved to route indexes.
pub fn gold(table: &RouteTable, examples: &[Example]) -> Vec<Choice> {
    examples
        .iter()
        .map(|e| {
            e.route
                .as_ref()
                .and_then(|r| table.routes.iter().position(|x| &x.name == r))
        })
        .collect()
}

pub(super) fn ratio(a: usize, b: usize, empty: f64) -> f64 {
    if b == 0 { empty } else { a as f64 / b as f64 }
}

/// Figures of `chosen` against `gold`, plus per-route figures.
pub fn figures(
    routes: usize,
    gold: &[Choice],
    chosen: &[Choice],
) -> (Figures, Vec<(f64, f64, f64, usize)>) {
    let mut tp = vec![0usize; routes];
    let mut predicted = vec![0usize; routes];
    let mut support = vec![0usize; routes];
    let (mut in_scope, mut in_ok, mut oos, mut oos_ok, mut fallbacks) = (0, 0, 0, 0, 0);
    for (g, c) in gold.iter().zip(chosen) {
        match g {
            Some(r) => {
                in_scope += 1;
                support[*r] += 1;
                if c == g {
                    in_ok += 1;
                    tp[*r] += 1;
                }
            }
            None => {
                oos += 1;
                if c.is_none() {
                    oos_ok += 1;
                }
            }
        }
        match c {
            Some(r) => predicted[*r] += 1,
            None => fallbacks += 1,
        }
    }
    let per_route: Vec<(f64, f64, f64, usize)> = (0..routes)
        .map(|r| {
            let p = ratio(tp[r], predicted[r], 0.0);
            let rc = ratio(tp[r], support[r], 0.0);
            let f1 = if p + rc == 0.0 {
                0.0
            } else {
                2.0 * p * rc / (p + rc)
            };
            (p, rc, f1, support[r])
        })
        .collect();
    let with_support: Vec<f64> = per_route.iter().filter(|x| x.3 > 0).map(|x| x.2).collect();
    let figures = Figures {
        in_scope_accuracy: ratio(in_ok, in_scope, 0.0),
        oos_recall: (oos > 0).then(|| ratio(oos_ok, oos, 0.0)),
        oos_precision: ratio(oos_ok, fallbacks, 1.0),
        overall_accuracy: ratio(in_ok + oos_ok, gold.len(), 0.0),
        macro_f1: with_support.iter().sum::<f64>() / with_support.len().max(1) as f64,
    };
    (figures, per_route)
}

/// Builds the report from the router's choices and the nearest-neighbour baseline's.
pub fn report(
    table: &RouteTable,
    examples: &[Example],
    chosen: &[Choice],
    nearest: &[Choice],
) -> Report {
    let gold = gold(table, examples);
    let n = table.routes.len();
    let (figures, per_route) = figures(n, &gold, chosen);
    let name = |c: &Choice| c.map(|r| table.routes[r].name.clone());
    let mut pairs: BTreeMap<(Choice, Choice), usize> = BTreeMap::new();
    for (g, c) in gold.iter().zip(chosen) {
        if g != c {
            *pairs.entry((*g, *c)).or_default() += 1;
        }
    }
    let mut confused: Vec<Confusion> = pairs
        .into_iter()
        .map(|((g, c), count)| Confusion {
            gold: name(&g),
            chosen: name(&c),
            count,
        })
        .collect();
    confused.sort_by_key(|c| std::cmp::Reverse(c.count));
    confused.truncate(10);
    let in_scope = gold.iter().filter(|g| g.is_some()).count();
    Report {
        examples: examples.len(),
        in_scope,
        out_of_scope: examples.len() - in_scope,
        figures,
        per_route: per_route
            .into_iter()
            .enumerate()
            .map(|(i, (precision, recall, f1, support))| RouteFigures {
                route: table.routes[i].name.clone(),
                precision,
                recall,
                f1,
                support,
            })
            .collect(),
        confused,
        baselines: Baselines {
            nearest_neighbour: figures_only(n, &gold, nearest),
            always_default: figures_only(n, &gold, &vec![None; gold.len()]),
        },
        cost: None,
    }
}

fn figures_only(routes: usize, gold: &[Choice], chosen: &[Choice]) -> Figures {
    figures(routes, gold, chosen).0
}

/// The report as readable text.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let row = |s: &mut String, name: &str, f: &Figures| {
        let _ = writeln!(
            s,
            "  {name:<20} {:>9.3} {:>10} {:>13.3} {:>8.3} {:>8.3}",
            f.in_scope_accuracy,
            f.oos_recall_shown(),
            f.oos_precision,
            f.overall_accuracy,
            f.macro_f1
        );
    };
    let _ = writeln!(
        s,
        "{} examples ({} in scope, {} out of scope)\n",
        report.examples, report.in_scope, report.out_of_scope
    );
    let _ = writeln!(
        s,
        "  {:<20} {:>9} {:>10} {:>13} {:>8} {:>8}",
        "", "in-scope", "oos recall", "oos precision", "overall", "macro F1"
    );
    row(&mut s, "pointsman", &report.figures);
    row(
        &mut s,
        "nearest neighbour",
        &report.baselines.nearest_neighbour,
    );
    row(&mut s, "always default", &report.baselines.always_default);
    if let Some(c) = &report.cost {
        let _ = writeln!(
            s,
            "\nestimated cost: ${:.4} routed, ${:.4} always premium, ${:.4} always cheapest ({:.1}% saved against premium)",
            c.routed_usd,
            c.always_premium_usd,
            c.always_cheapest_usd,
            c.saved_vs_premium * 100.0
        );
    }
    if !report.confused.is_empty() {
        let _ = writeln!(s, "\nmost confused (gold → chosen):");
        for c in &report.confused {
            let _ = writeln!(
                s,
                "  {:>5}  {} → {}",
                c.count,
                c.gold.as_deref().unwrap_or("(out of scope)"),
                c.chosen.as_deref().unwrap_or("(fallback)")
            );
        }
    }
    let mut worst: Vec<&RouteFigures> = report.per_route.iter().filter(|r| r.support > 0).collect();
    worst.sort_by(|a, b| a.f1.total_cmp(&b.f1));
    if !worst.is_empty() {
        let _ = writeln!(s, "\nweakest routes (precision / recall / F1 / support):");
        for r in worst.iter().take(5) {
            let _ = writeln!(
                s,
                "  {:<28} {:.3} / {:.3} / {:.3} / {}",
                r.route, r.precision, r.recall, r.f1, r.support
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Defaults, Route};

    fn table() -> RouteTable {
        RouteTable::new(
            Defaults::default(),
            "d",
            vec![Route::new("a", "m", &[]), Route::new("b", "m", &[])],
        )
    }

    fn ex(text: &str, route: Option<&str>) -> Example {
        Example {
            text: text.into(),
            route: route.map(str::to_string),
        }
    }

    #[test]
    fn figures_by_hand() {
        let t = table();
        let examples = [
            ex("1", Some("a")),
            ex("2", Some("a")),
            ex("3", Some("b")),
            ex("4", None),
            ex("5", None),
        ];
        // a→a, a→b, b→b, oos→fallback, oos→a
        let chosen = [Some(0), Some(1), Some(1), None, Some(0)];
        let r = report(
            &t,
            &examples,
            &chosen,
            &[Some(0), Some(0), Some(1), Some(1), Some(0)],
        );
        assert!((r.figures.in_scope_accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert!((r.figures.oos_recall.unwrap() - 0.5).abs() < 1e-9);
        assert!((r.figures.oos_precision - 1.0).abs() < 1e-9);
        assert!((r.figures.overall_accuracy - 3.0 / 5.0).abs() < 1e-9);
        // a: p = 1/2, r = 1/2; b: p = 1/2, r = 1
        let fa = 0.5;
        let fb = 2.0 * 0.5 * 1.0 / 1.5;
        assert!((r.figures.macro_f1 - (fa + fb) / 2.0).abs() < 1e-9);
        assert_eq!(r.per_route[1].support, 1);
        assert_eq!(r.confused.len(), 2);
        assert!((r.baselines.nearest_neighbour.in_scope_accuracy - 1.0).abs() < 1e-9);
        assert_eq!(r.baselines.nearest_neighbour.oos_recall, Some(0.0));
        assert_eq!(r.baselines.always_default.oos_recall, Some(1.0));
        assert_eq!(r.baselines.always_default.in_scope_accuracy, 0.0);
        let text = render(&r);
        assert!(text.contains("(out of scope) → a"), "{text}");
    }

    #[test]
    fn a_set_without_out_of_scope_lines_has_no_oos_recall() {
        let t = table();
        let examples = [ex("1", Some("a")), ex("2", Some("b"))];
        let r = report(&t, &examples, &[Some(0), None], &[Some(0), Some(1)]);
        assert_eq!(r.figures.oos_recall, None);
        assert_eq!(r.baselines.always_default.oos_recall, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json.get("oos_recall"),
            Some(&serde_json::Value::Null),
            "{json}"
        );
        let text = render(&r);
        let pointsman = text.lines().find(|l| l.contains("pointsman")).unwrap();
        assert!(pointsman.contains("n/a"), "{text}");
        // balanced accuracy is the in-scope accuracy alone
        assert_eq!(Objective::Accuracy.value(&r.figures, 1.0), Some(0.5));
    }

    #[test]
    fn reads_jsonl_and_csv_and_rejects_unknown_routes() {
        let t = table();
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("x.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"hi\", \"route\": \"a\"}\n\n{\"text\": \"yo\", \"route\": null}\n",
        )
        .unwrap();
        let e = read_examples(&jsonl, &t).unwrap();
        assert_eq!(e, vec![ex("hi", Some("a")), ex("yo", None)]);
        let csv = dir.path().join("x.csv");
        std::fs::write(
            &csv,
            "text,route\nhello,b\n\"a, \"\"quoted\"\" one\",\nplain,\n",
        )
        .unwrap();
        let e = read_examples(&csv, &t).unwrap();
        assert_eq!(
            e,
            vec![
                ex("hello", Some("b")),
                ex("a, \"quoted\" one", None),
                ex("plain", None)
            ]
        );
        std::fs::write(
            &jsonl,
            "{\"text\": \"hi\", \"route\": \"a\"}\n{\"text\": \"x\", \"route\": \"zzz\"}\n",
        )
        .unwrap();
        let err = read_examples(&jsonl, &t).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:2") && err.contains("zzz"), "{err}");
        std::fs::write(&jsonl, "{\"txt\": \"hi\"}\n").unwrap();
        let err = read_examples(&jsonl, &t).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:1"), "{err}");
    }
}
