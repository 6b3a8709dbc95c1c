//! Graded outcomes: which model answered each prompt well, and what it cost.
//!
//! The format is JSONL, one graded prompt a line (see `shared/datasets/OUTCOMES.md`):
//!
//! ```json
//! {"prompt": "...", "quality": {"model-a": 1.0, "model-b": 0.0}, "cost_usd": {"model-a": 0.0041}, "id": "..."}
//! ```
//!
//! * `quality` maps model names to a grade in [0, 1]; a line may grade only some models.
//! * `cost_usd` (optional, and optional per model) is what each answer really cost.
//! * `id` (optional) names the source item.
//!
//! Pairwise preferences are accepted too and converted to grades:
//! `{"prompt": "...", "winner": "a", "loser": "b"}` grades `a` 1.0 and `b` 0.0, and
//! `{"prompt": "...", "tie": ["a", "b"]}` grades each listed model 0.5.
//!
//! Blank lines are skipped. Unknown fields are rejected. Every problem in a file is collected and
//! reported together as `path:line: problem`, so one run shows everything to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// How many line problems an [`OutcomeError::BadLines`] message lists before "and N more".
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// One graded prompt: each graded model's quality in [0, 1] and, where known, its cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graded {
    /// The prompt text (never empty).
    pub prompt: String,
    /// Quality in [0, 1] of each graded model's answer (never empty).
    pub quality: BTreeMap<String, f32>,
    /// What each model's answer cost in US dollars, for the models where it is known.
    pub cost_usd: BTreeMap<String, f64>,
    /// The source item's id, when the line names one.
    pub id: Option<String>,
}

/// One bad line of an outcome file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// The problems of a file, printed one `path:line: problem` a line, capped at
/// [`MAX_LISTED_PROBLEMS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemList {
    /// The file the problems are in.
    pub path: PathBuf,
    /// Every problem found, in line order.
    pub problems: Vec<LineProblem>,
}

impl fmt::Display for ProblemList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.problems.iter().take(MAX_LISTED_PROBLEMS) {
            writeln!(f, "  {}:{}: {}", self.path.display(), p.line, p.problem)?;
        }
        if self.problems.len() > MAX_LISTED_PROBLEMS {
            writeln!(
                f,
                "  ... and {} more",
                self.problems.len() - MAX_LISTED_PROBLEMS
            )?;
        }
        Ok(())
    }
}

/// Why an outcome file could not be read.
#[derive(Debug, Error)]
pub enum OutcomeError {
    /// The file could not be opened or read.
    #[error("cannot read outcome file {}: {source}; check that the path is right and readable", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Some lines are malformed; every problem of the file is listed.
    #[error(
        "{}: {} bad line(s) in outcome file; fix them (format: {{\"prompt\": \"...\", \"quality\": {{\"model\": 1.0}}}} one a line, see OUTCOMES.md):\n{list}",
        list.path.display(),
        list.problems.len()
    )]
    BadLines {
        /// Every problem found.
        list: ProblemList,
    },
    /// The file holds no graded prompt at all.
    #[error(
        "{}:1: outcome file has no graded prompt (it is empty or only blank lines); add lines like {{\"prompt\": \"...\", \"quality\": {{\"model\": 1.0}}}}",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl OutcomeError {
    /// The individual line problems, empty for errors that are not about lines.
    pub fn problems(&self) -> &[LineProblem] {
        match self {
            OutcomeError::BadLines { list } => &list.problems,
            _ => &[],
        }
    }
}

/// Reads and validates an outcome file (see the module docs for the format).
pub fn read(path: &Path) -> Result<Vec<Graded>, OutcomeError> {
    let text = std::fs::read_to_string(path).map_err(|source| OutcomeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses outcome JSONL from `text`; `path_for_messages` only names the source in errors.
pub fn parse(path_for_messages: &Path, text: &str) -> Result<Vec<Graded>, OutcomeError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw) {
            Ok(g) => out.push(g),
            Err(list) => problems.extend(
                list.into_iter()
                    .map(|problem| LineProblem { line, problem }),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(OutcomeError::BadLines {
            list: ProblemList {
                path: path_for_messages.to_path_buf(),
                problems,
            },
        });
    }
    if out.is_empty() {
        return Err(OutcomeError::Empty {
            path: path_for_messages.to_path_buf(),
        });
    }
    Ok(out)
}

/// Every model graded anywhere in `graded`, sorted.
pub fn models(graded: &[Graded]) -> BTreeSet<String> {
    graded
        .iter()
        .flat_map(|g| g.quality.keys().cloned())
        .collect()
}

const FIELDS: [&str; 7] = [
    "prompt", "quality", "cost_usd", "id", "winner", "loser", "tie",
];

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates one non-blank line, returning every problem found in it.
fn parse_line(raw: &str) -> Result<Graded, Vec<String>> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        vec![format!(
            "invalid JSON at column {}: {}",
            e.column(),
            strip_position(&e.to_string())
        )]
    })?;
    let Value::Object(obj) = value else {
        return Err(vec![format!(
            "expected a JSON object, found {}",
            describe(&value)
        )]);
    };
    let mut errs = Vec::new();
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errs.push(format!(
                "unknown field `{key}` (expected {})",
                FIELDS.map(|f| format!("`{f}`")).join(", ")
            ));
        }
    }

    let prompt = match obj.get("prompt") {
        None => {
            errs.push("missing field `prompt`".to_string());
            String::new()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errs.push("empty `prompt`".to_string());
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            errs.push(format!("`prompt` must be a string, found {}", describe(v)));
            String::new()
        }
    };

    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(v) => {
            errs.push(format!(
                "`id` must be a string or a number, found {}",
                describe(v)
            ));
            None
        }
    };

    let quality = grades(&obj, &mut errs);
    let cost_usd = costs(&obj, &mut errs);

    if errs.is_empty() {
        Ok(Graded {
            prompt,
            quality,
            cost_usd,
            id,
        })
    } else {
        Err(errs)
    }
}

/// serde_json appends " at line L column C"; the caller reports the position itself.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn model_name(v: &Value, field: &str, errs: &mut Vec<String>) -> Option<String> {
    match v {
        Value::String(s) if s.trim().is_empty() => {
            errs.push(format!("`{field}` names an empty model"));
            None
        }
        Value::String(s) => Some(s.clone()),
        v => {
            errs.push(format!(
                "`{field}` must be a model name (string), found {}",
                describe(v)
            ));
            None
        }
    }
}

/// Reads the grades of a line in whichever of the three forms it uses.
fn grades(obj: &Map<String, Value>, errs: &mut Vec<String>) -> BTreeMap<String, f32> {
    let has_quality = obj.contains_key("quality");
    let has_pair = obj.contains_key("winner") || obj.contains_key("loser");
    let has_tie = obj.contains_key("tie");
    let forms = usize::from(has_quality) + usize::from(has_pair) + usize::from(has_tie);
    let mut out = BTreeMap::new();
    if forms == 0 {
        errs.push(
            "no grades: give `quality` (model -> grade in [0, 1]), or `winner` and `loser`, or `tie`"
                .to_string(),
        );
        return out;
    }
    if forms > 1 {
        errs.push("give only one of `quality`, `winner`/`loser` and `tie` on a line".to_string());
        return out;
    }
    if has_quality {
        match &obj["quality"] {
            Value::Object(map) => {
                if map.is_empty() {
                    errs.push("no grades: `quality` is empty".to_string());
                }
                for (model, v) in map {
                    if model.trim().is_empty() {
                        errs.push("`quality` has an empty model name".to_string());
                        continue;
                    }
                    match v.as_f64() {
                        Some(q) if (0.0..=1.0).contains(&q) => {
                            out.insert(model.clone(), q as f32);
                        }
                        Some(q) => {
                            errs.push(format!("quality of `{model}` is {q}, outside [0, 1]"))
                        }
                        None => errs.push(format!(
                            "quality of `{model}` must be a number in [0, 1], found {}",
                            describe(v)
                        )),
                    }
                }
            }
            v => errs.push(format!(
                "`quality` must be an object mapping model names to grades in [0, 1], found {}",
                describe(v)
            )),
        }
    } else if has_pair {
        let winner = match obj.get("winner") {
            Some(v) => model_name(v, "winner", errs),
            None => {
                errs.push("`loser` given without `winner`".to_string());
                None
            }
        };
        let loser = match obj.get("loser") {
            Some(v) => model_name(v, "loser", errs),
            None => {
                errs.push("`winner` given without `loser`".to_string());
                None
            }
        };
        if let (Some(w), Some(l)) = (winner, loser) {
            if w == l {
                errs.push(format!(
                    "`winner` and `loser` are the same model `{w}`; use `tie` or drop the line"
                ));
            } else {
                out.insert(w, 1.0);
                out.insert(l, 0.0);
            }
        }
    } else {
        match &obj["tie"] {
            Value::Array(items) => {
                let names: Vec<String> = items
                    .iter()
                    .filter_map(|v| model_name(v, "tie", errs))
                    .collect();
                let distinct: BTreeSet<&String> = names.iter().collect();
                if distinct.len() != names.len() {
                    errs.push("`tie` lists a model twice".to_string());
                } else if names.len() < 2 && names.len() == items.len() {
                    errs.push(format!(
                        "`tie` must list at least two models, found {}",
                        names.len()
                    ));
                } else {
                    for n in names {
                        out.insert(n, 0.5);
                    }
                }
            }
            v => errs.push(format!(
                "`tie` must be an array of model names, found {}",
                describe(v)
            )),
        }
    }
    out
}

fn costs(obj: &Map<String, Value>, errs: &mut Vec<String>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    match obj.get("cost_usd") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (model, v) in map {
                match v {
                    Value::Null => {}
                    v => match v.as_f64() {
                        Some(c) if c.is_finite() && c >= 0.0 => {
                            out.insert(model.clone(), c);
                        }
                        Some(c) => errs.push(format!(
                            "cost_usd of `{model}` is {c}; it must be a non-negative number of dollars"
                        )),
                        None => errs.push(format!(
                            "cost_usd of `{model}` must be a number of dollars, found {}",
                            describe(v)
                        )),
                    },
                }
            }
        }
        Some(v) => errs.push(format!(
            "`cost_usd` must be an object mapping model names to dollars, found {}",
            describe(v)
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Graded>, OutcomeError> {
        parse(Path::new("t.jsonl"), text)
    }

    #[test]
    fn parses_the_three_forms_and_skips_blank_lines() {
        let text = r#"{"prompt": "a", "quality": {"m1": 1.0, "m2": 0}, "cost_usd": {"m1": 0.004}, "id": "x"}

{"prompt": "b", "winner": "m1", "loser": "m2"}
   
{"prompt": "c", "tie": ["m1", "m2"], "cost_usd": {"m2": 0.1, "m1": null}}
"#;
        let g = p(text).unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].quality["m2"], 0.0);
        assert_eq!(g[0].cost_usd["m1"], 0.004);
        assert_eq!(g[0].id.as_deref(), Some("x"));
        assert_eq!(g[1].quality["m1"], 1.0);
        assert_eq!(g[1].quality["m2"], 0.0);
        assert_eq!(g[2].quality["m1"], 0.5);
        assert_eq!(g[2].quality["m2"], 0.5);
        assert_eq!(g[2].cost_usd.len(), 1);
        assert_eq!(
            models(&g).into_iter().collect::<Vec<_>>(),
            vec!["m1".to_string(), "m2".to_string()]
        );
    }

    #[test]
    fn collects_every_problem_with_its_line() {
        let text = r#"{"prompt": "a", "quality": {"m1": 1.5}}
{"prompt": "", "quality": {"m1": 1}}
not json
{"prompt": "b", "quality": {"m1": "yes"}, "extra": 1}
{"prompt": "c", "winner": "m1", "loser": "m1"}
{"prompt": "d"}
{"prompt": "e", "quality": {}}
{"prompt": "f", "quality": {"m1": 1}, "cost_usd": {"m1": -1}}
{"prompt": "g", "tie": ["m1"]}
[1, 2]
{"prompt": "h", "quality": {"m": 1}}
"#;
        let err = p(text).unwrap_err();
        let probs = err.problems();
        let lines: Vec<usize> = probs.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10]);
        let msg = err.to_string();
        assert!(
            msg.contains("t.jsonl:1: quality of `m1` is 1.5, outside [0, 1]"),
            "{msg}"
        );
        assert!(msg.contains("t.jsonl:2: empty `prompt`"), "{msg}");
        assert!(msg.contains("t.jsonl:3: invalid JSON at column 2"), "{msg}");
        assert!(msg.contains("t.jsonl:4: unknown field `extra`"), "{msg}");
        assert!(
            msg.contains("t.jsonl:4: quality of `m1` must be a number"),
            "{msg}"
        );
        assert!(
            msg.contains("t.jsonl:5: `winner` and `loser` are the same"),
            "{msg}"
        );
        assert!(msg.contains("t.jsonl:6: no grades"), "{msg}");
        assert!(msg.contains("t.jsonl:7: no grades"), "{msg}");
        assert!(msg.contains("t.jsonl:8: cost_usd of `m1` is -1"), "{msg}");
        assert!(
            msg.contains("t.jsonl:9: `tie` must list at least two"),
            "{msg}"
        );
        assert!(msg.contains("t.jsonl:10: expected a JSON object"), "{msg}");
        assert!(msg.starts_with("t.jsonl: 11 bad line(s)"), "{msg}");
    }

    #[test]
    fn caps_the_listed_problems() {
        let text = "x\n".repeat(25);
        let msg = p(&text).unwrap_err().to_string();
        assert_eq!(msg.matches("invalid JSON").count(), MAX_LISTED_PROBLEMS);
        assert!(msg.contains("... and 5 more"), "{msg}");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(matches!(p("\n  \n"), Err(OutcomeError::Empty { .. })));
    }

    #[test]
    fn mixed_forms_are_rejected() {
        let err =
            p(r#"{"prompt": "a", "quality": {"m": 1}, "winner": "m", "loser": "n"}"#).unwrap_err();
        assert!(err.to_string().contains("only one of"));
    }

    #[test]
    fn read_reports_missing_file() {
        let err = read(Path::new("/nonexistent/x.jsonl")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"));
    }
}
