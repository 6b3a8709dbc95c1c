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

/// The quality-aware evaluation: the router's cost-quality curve on graded outcomes, beside
/// every model alone, the best single model per budget, a random mix and the oracle.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeReport {
    /// Graded prompts read.
    pub examples: usize,
    /// The curve, its metrics (`apgr`, `cpt50`, `cpt80`, `matches_best_at_cost_share`) and the
    /// baselines.
    #[serde(flatten)]
    pub curve: crate::quality::CurveReport,
    /// What the route file's own knob does on these prompts, decided through the server's path.
    pub at_knob: AtKnob,
}

/// The decisions at the route file's knob.
#[derive(Debug, Clone, Serialize)]
pub struct AtKnob {
    /// The knob.
    pub knob: crate::config::QualityKnob,
    /// Mean true cost per request, US dollars.
    pub cost_usd: f64,
    /// Mean true quality.
    pub quality: f64,
    /// Requests per chosen model.
    pub chosen: BTreeMap<String, usize>,
}

/// Why an outcome evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeEvalError {
    /// The index has no quality predictor.
    #[error(
        "the index was built without outcomes, so it predicts no quality; rebuild it with `pointsman build ROUTES --outcomes TRAIN.jsonl`"
    )]
    NoPredictor,
    /// A decision failed.
    #[error(transparent)]
    Dispatch(#[from] crate::dispatch::DispatchError),
    /// The curve could not be computed.
    #[error(transparent)]
    Curve(#[from] crate::quality::CurveError),
}

/// Decides every graded prompt as the server would (through [`crate::dispatch`], dry-run
/// ledger), then sweeps the knob over the predictions the decisions carried and reports the
/// curve. `embedded[i]` is the embedding of `graded[i]`'s prompt.
pub async fn run_outcomes(
    snapshot: &std::sync::Arc<crate::index::Index>,
    graded: &[crate::quality::Graded],
    embedded: &[crate::embed::Embedded],
) -> Result<OutcomeReport, OutcomeEvalError> {
    use crate::dispatch::{self, Request, Spend};
    let table = snapshot.table();
    if snapshot.quality().is_none() {
        return Err(OutcomeEvalError::NoPredictor);
    }
    let health = crate::selection::Health::default();
    let who = crate::budget::Identity::default();
    let knob = table.defaults.quality.unwrap_or_else(|| {
        snapshot
            .manifest()
            .quality
            .as_ref()
            .map_or(crate::config::DEFAULT_QUALITY_KNOB, |m| m.default_knob)
    });
    // decide every prompt first; a prompt no candidate can take (the server answers it with an
    // error) is left out of the figures, as `run` leaves it out of the costs
    let mut decided = Vec::with_capacity(graded.len());
    for (g, v) in graded.iter().zip(embedded) {
        let req = Request::text(&g.prompt, &who);
        match dispatch::dispatch_embedded(&health, Spend::DryRun, snapshot, &req, v).await {
            Ok(d) => decided.push((g.clone(), d)),
            Err(crate::dispatch::DispatchError::NoCandidate { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    let graded: Vec<crate::quality::Graded> = decided.iter().map(|(g, _)| g.clone()).collect();
    // the models the decisions weighed, in the order the first decision listed them (its
    // route's order, by which the choice breaks ties), then any others a later one listed
    let mut models: Vec<String> = Vec::new();
    for (_, d) in &decided {
        for c in d.selection.quality.iter().flat_map(|q| &q.candidates) {
            if c.predicted_quality.is_some() && !models.contains(&c.model) {
                models.push(c.model.clone());
            }
        }
    }
    let m = models.len();
    let (mut predicted, mut decision_cost) = (
        vec![f32::NAN; graded.len() * m],
        vec![f64::NAN; graded.len() * m],
    );
    let mut chosen_models = Vec::with_capacity(graded.len());
    for (i, (_, d)) in decided.iter().enumerate() {
        if let Some(q) = &d.selection.quality {
            for c in &q.candidates {
                if let Some(j) = models.iter().position(|x| *x == c.model) {
                    predicted[i * m + j] = c.predicted_quality.unwrap_or(f32::NAN);
                    decision_cost[i * m + j] = c.estimated_cost_usd.unwrap_or(f64::NAN);
                }
            }
        }
        chosen_models.push(d.selection.model.clone());
    }
    // an answer without a recorded cost costs what the decision estimated, on average
    let fallback: Vec<f64> = (0..m)
        .map(|j| {
            let known: Vec<f64> = (0..graded.len())
                .map(|i| decision_cost[i * m + j])
                .filter(|c| c.is_finite())
                .collect();
            known.iter().sum::<f64>() / known.len().max(1) as f64
        })
        .collect();
    // a model that was not among a prompt's candidates (another route's) keeps no predicted
    // quality, so the sweep never chooses it there; its cost only keeps the row whole
    for i in 0..graded.len() {
        for j in 0..m {
            if !decision_cost[i * m + j].is_finite() {
                decision_cost[i * m + j] = fallback[j];
            }
        }
    }
    let (quality, cost) = crate::quality::curve::matrices(&graded, &models, &fallback);
    let set = crate::quality::EvalSet {
        models: &models,
        predicted: &predicted,
        quality: &quality,
        cost_usd: &cost,
        decision_cost_usd: &decision_cost,
    };
    let curve = crate::quality::evaluate(
        &set,
        crate::quality::knob_of(knob).kind(),
        &crate::quality::CurveOptions::default(),
    )?;
    let mut at = AtKnob {
        knob,
        cost_usd: 0.0,
        quality: 0.0,
        chosen: BTreeMap::new(),
    };
    // over the rows the curve uses: those that grade every model
    let mut rows = 0usize;
    for (i, model) in chosen_models.iter().enumerate() {
        if !(0..m).all(|j| quality[i * m + j].is_finite()) {
            continue;
        }
        *at.chosen.entry(model.clone()).or_default() += 1;
        if let Some(j) = models.iter().position(|x| x == model) {
            let (q, c) = (quality[i * m + j], cost[i * m + j]);
            if q.is_finite() && c.is_finite() {
                at.quality += f64::from(q);
                at.cost_usd += c;
                rows += 1;
            }
        }
    }
    at.quality /= rows.max(1) as f64;
    at.cost_usd /= rows.max(1) as f64;
    Ok(OutcomeReport {
        examples: embedded.len(),
        curve,
        at_knob: at,
    })
}

/// The outcome report as readable text.
pub fn render_outcomes(r: &OutcomeReport) -> String {
    use std::fmt::Write;
    let c = &r.curve;
    let b = &c.baselines;
    let share = |v: Option<f64>| v.map_or_else(|| "never".to_string(), |x| format!("{x:.3}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} graded prompts ({} used), knob swept: {:?}",
        r.examples, c.rows, c.knob
    );
    let _ = writeln!(
        s,
        "APGR {:.4}   CPT(50%) {}   CPT(80%) {}   best model's quality at cost share {}   savings at its quality {}",
        c.apgr,
        share(c.cpt50),
        share(c.cpt80),
        share(c.matches_best_at_cost_share),
        c.savings_at_equal_quality
            .map_or_else(|| "none".to_string(), |x| format!("{:.1}%", x * 100.0))
    );
    let _ = writeln!(
        s,
        "baselines: best single model per budget APGR {:.4}, random mix {:.4}; oracle quality {:.4} at ${:.6}",
        b.best_single_per_budget_apgr, b.random_mix_apgr, b.oracle.quality, b.oracle.cost_usd
    );
    let _ = writeln!(
        s,
        "\n  {:<40} {:>12} {:>9}",
        "always", "mean cost", "quality"
    );
    for p in &b.per_model {
        let _ = writeln!(
            s,
            "  {:<40} {:>12.6} {:>9.4}",
            p.model, p.cost_usd, p.quality
        );
    }
    let _ = writeln!(
        s,
        "\nat the route file's knob {:?}: mean cost ${:.6}, quality {:.4}",
        r.at_knob.knob, r.at_knob.cost_usd, r.at_knob.quality
    );
    s
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

fn ratio(a: usize, b: usize, empty: f64) -> f64 {
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

/// What `calibrate` optimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Objective {
    /// The mean of in-scope accuracy and out-of-scope recall (balanced accuracy): both kinds of
    /// mistake weigh the same, however rare out-of-scope lines are in the data.
    Accuracy,
    /// The most in-scope accuracy whose matches are right at least this often.
    TargetPrecision(f64),
    /// The most in-scope accuracy that lets at most this share of out-of-scope lines match.
    MaxOosAccept(f64),
}

impl Objective {
    /// The value to maximise, or `None` when the constraint is not met.
    fn value(&self, f: &Figures, precision: f64) -> Option<f64> {
        match *self {
            Objective::Accuracy => Some(match f.oos_recall {
                Some(oos) => (f.in_scope_accuracy + oos) / 2.0,
                None => f.in_scope_accuracy,
            }),
            Objective::TargetPrecision(p) => (precision >= p).then_some(f.in_scope_accuracy),
            Objective::MaxOosAccept(r) => {
                let accepted = 1.0 - f.oos_recall.unwrap_or(1.0);
                (accepted <= r).then_some(f.in_scope_accuracy)
            }
        }
    }
}

/// The fitted thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Global score threshold.
    pub threshold: Option<f32>,
    /// Global centroid-similarity gate.
    pub min_similarity: Option<f32>,
    /// Top-1 vs top-2 margin.
    pub margin: Option<f32>,
    /// Per-route thresholds that differ from the global one.
    pub per_route: BTreeMap<String, f32>,
    /// Routes that kept the global threshold for lack of validation lines.
    pub too_little_data: Vec<String>,
    /// Figures before (the table as built) and after, on the calibration data.
    pub before: Figures,
    /// See `before`.
    pub after: Figures,
}

/// Matched-decision precision: of the lines that matched a route, the share matched correctly.
fn match_precision(gold: &[Choice], chosen: &[Choice]) -> f64 {
    let matched = chosen.iter().filter(|c| c.is_some()).count();
    let right = gold
        .iter()
        .zip(chosen)
        .filter(|(g, c)| c.is_some() && g == c)
        .count();
    ratio(right, matched, 1.0)
}

fn quantiles(mut values: Vec<f32>, steps: usize) -> Vec<f32> {
    values.retain(|v| v.is_finite());
    values.sort_by(f32::total_cmp);
    if values.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<f32> = (0..=steps)
        .map(|i| values[(i * (values.len() - 1)) / steps])
        .collect();
    out.dedup();
    out
}

/// Fits thresholds on labelled data. `evidence[i]` holds every route's score for example `i`
/// (as [`crate::dispatch::scores`] computes them) and `fixed[i]` the route a static rule sends
/// it to whatever the thresholds ([`crate::dispatch::rule_route`]; empty when no line has one);
/// `min_support` is the number of lines a route needs for a threshold of its own.
pub fn calibrate(
    table: &RouteTable,
    examples: &[Example],
    evidence: &[Vec<crate::policy::Evidence>],
    fixed: &[Option<String>],
    objective: Objective,
    min_support: usize,
) -> Calibration {
    use crate::policy;
    let gold = gold(table, examples);
    let n = table.routes.len();
    // only the best few routes can win; keep the decision loop cheap
    let evidence: Vec<Vec<policy::Evidence>> = evidence
        .iter()
        .map(|ev| {
            let mut ev = ev.clone();
            ev.sort_by(|a, b| b.score.total_cmp(&a.score));
            ev.truncate(5);
            ev
        })
        .collect();
    let run = |t: &RouteTable| -> (Figures, f64) {
        let chosen: Vec<Choice> = evidence
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let position = |r: &str| t.routes.iter().position(|x| x.name == r);
                match fixed.get(i).and_then(|r| r.as_deref()) {
                    Some(rule_route) => position(rule_route),
                    None => policy::decide(t, ev).route().and_then(position),
                }
            })
            .collect();
        let precision = match_precision(&gold, &chosen);
        (figures(n, &gold, &chosen).0, precision)
    };
    let score = |t: &RouteTable| {
        let (f, p) = run(t);
        objective.value(&f, p).unwrap_or(f64::NEG_INFINITY)
    };
    let before = run(table).0;

    // global: threshold × min_similarity × margin on a grid of observed quantiles
    let tops: Vec<f32> = evidence
        .iter()
        .filter_map(|e| e.first())
        .map(|e| e.score)
        .collect();
    let sims: Vec<f32> = evidence
        .iter()
        .filter_map(|e| e.first())
        .map(|e| e.similarity)
        .collect();
    let mut thresholds: Vec<Option<f32>> = vec![None];
    thresholds.extend(quantiles(tops, 30).into_iter().map(Some));
    let mut gates: Vec<Option<f32>> = vec![None];
    gates.extend(quantiles(sims, 20).into_iter().map(Some));
    let margins = [None, Some(0.02), Some(0.05), Some(0.1)];
    let mut base = table.clone();
    base.routes.iter_mut().for_each(|r| r.threshold = None);
    let mut best = (f64::NEG_INFINITY, base.clone());
    for &threshold in &thresholds {
        for &min_similarity in &gates {
            for &margin in &margins {
                let mut t = base.clone();
                t.defaults.threshold = threshold;
                t.defaults.min_similarity = min_similarity;
                t.defaults.margin = margin;
                let s = score(&t);
                if s > best.0 {
                    best = (s, t);
                }
            }
        }
    }
    let (mut best_score, mut fitted) = best;

    // per route: one pass of coordinate ascent over the routes with enough lines
    let mut support = vec![0usize; n];
    for g in gold.iter().flatten() {
        support[*g] += 1;
    }
    let mut too_little_data = Vec::new();
    let mut per_route = BTreeMap::new();
    let global = fitted.defaults.threshold;
    for (r, &route_support) in support.iter().enumerate() {
        if route_support < min_support {
            too_little_data.push(table.routes[r].name.clone());
            continue;
        }
        let candidates: Vec<f32> = quantiles(
            evidence
                .iter()
                .filter_map(|ev| ev.iter().find(|e| e.route == r))
                .map(|e| e.score)
                .collect(),
            15,
        );
        for c in candidates {
            let mut t = fitted.clone();
            t.routes[r].threshold = Some(c);
            let s = score(&t);
            if s > best_score + 1e-9 {
                best_score = s;
                fitted = t;
            }
        }
        if let Some(t) = fitted.routes[r].threshold {
            if Some(t) != global {
                per_route.insert(table.routes[r].name.clone(), t);
            }
        }
    }
    let after = run(&fitted).0;
    Calibration {
        threshold: fitted.defaults.threshold,
        min_similarity: fitted.defaults.min_similarity,
        margin: fitted.defaults.margin,
        per_route,
        too_little_data,
        before,
        after,
    }
}

/// `table` with the calibration applied.
pub fn apply(table: &RouteTable, c: &Calibration) -> RouteTable {
    let mut t = table.clone();
    t.defaults.threshold = c.threshold;
    t.defaults.min_similarity = c.min_similarity;
    t.defaults.margin = c.margin;
    for r in &mut t.routes {
        r.threshold = c.per_route.get(&r.name).copied();
    }
    t
}

#[cfg(test)]
mod calibrate_tests {
    use super::*;
    use crate::config::{Defaults, Route};
    use crate::policy::Evidence;

    /// Routes `a` (0) and `b` (1).
    fn two_routes() -> RouteTable {
        RouteTable::new(
            Defaults::default(),
            "d",
            vec![Route::new("a", "m", &[]), Route::new("b", "m", &[])],
        )
    }

    /// Labelled lines of [`two_routes`], each `(gold route, route that scores best, its score)`;
    /// the other route scores the rest, at a low similarity.
    fn lines(
        spec: impl IntoIterator<Item = (Option<&'static str>, usize, f32)>,
    ) -> (Vec<Example>, Vec<Vec<Evidence>>) {
        spec.into_iter()
            .enumerate()
            .map(|(i, (route, winner, score))| {
                let example = Example {
                    text: i.to_string(),
                    route: route.map(str::to_string),
                };
                let evidence = vec![
                    Evidence {
                        route: winner,
                        score,
                        similarity: score,
                    },
                    Evidence {
                        route: 1 - winner,
                        score: 1.0 - score,
                        similarity: 0.1,
                    },
                ];
                (example, evidence)
            })
            .unzip()
    }

    #[test]
    fn fits_a_threshold_that_separates_out_of_scope_lines() {
        let table = two_routes();
        let (examples, evidence) = lines((0..40).map(|i| match i % 4 {
            0 => (Some("a"), 0, 0.9),
            1 => (Some("b"), 1, 0.8),
            _ => (None, 0, 0.4 + (i as f32) * 0.001),
        }));
        let c = calibrate(&table, &examples, &evidence, &[], Objective::Accuracy, 5);
        assert_eq!(c.before.oos_recall, Some(0.0));
        assert_eq!(c.after.in_scope_accuracy, 1.0);
        assert_eq!(c.after.oos_recall, Some(1.0));
        let t = c
            .threshold
            .unwrap_or(0.0)
            .max(c.min_similarity.unwrap_or(0.0));
        assert!(t > 0.44 && t <= 0.8, "{c:?}");
        // the calibrated table decides as reported
        let applied = apply(&table, &c);
        assert_eq!(applied.defaults.threshold, c.threshold);

        let strict = calibrate(
            &table,
            &examples,
            &evidence,
            &[],
            Objective::MaxOosAccept(0.0),
            5,
        );
        assert_eq!(strict.after.oos_recall, Some(1.0));
    }

    #[test]
    fn a_target_precision_trades_in_scope_accuracy_for_right_matches() {
        let table = two_routes();
        // route a: ten lines at 0.9, ten at 0.8; route b: ten at 0.9; twenty out-of-scope lines
        // that look like a at 0.85, so a's threshold cannot keep them out and take all of a
        let (examples, evidence) = lines((0..50).map(|i| match i {
            0..10 => (Some("a"), 0, 0.9),
            10..20 => (Some("a"), 0, 0.8),
            20..30 => (Some("b"), 1, 0.9),
            _ => (None, 0, 0.85),
        }));
        let fit = |p: f64| {
            calibrate(
                &table,
                &examples,
                &evidence,
                &[],
                Objective::TargetPrecision(p),
                5,
            )
        };
        // right at least 95% of the time: a keeps only its 0.9 lines
        let strict = fit(0.95);
        assert!(
            (strict.after.in_scope_accuracy - 20.0 / 30.0).abs() < 1e-9,
            "{strict:?}"
        );
        assert_eq!(strict.after.oos_recall, Some(1.0));
        // right 60% of the time is enough to take every in-scope line
        let loose = fit(0.5);
        assert_eq!(loose.after.in_scope_accuracy, 1.0, "{loose:?}");
    }
}
