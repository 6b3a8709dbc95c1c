//! Route files: the raw serde mirror of the YAML, and the validated [`RouteTable`] built from it.
//!
//! Parsing reports syntax and type errors with their location; validation then reports *every*
//! semantic problem at once (duplicate names, empty utterances, thresholds out of range, ...),
//! each with `file:line:col` and the route it belongs to.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

mod raw;
mod validate;
mod yaml;

use raw::RawFile;
use validate::validate;
pub use yaml::to_yaml;

/// The only route-file format version this build understands.
pub const ROUTE_FILE_VERSION: u32 = 1;

/// Route files larger than this are refused before parsing: a route table is hand-written text.
pub const MAX_ROUTE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How the similarities of a route's neighbours among the top-k combine into the route's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The best similarity among the route's neighbours.
    #[default]
    Max,
    /// The mean similarity of the route's neighbours.
    Mean,
    /// The route's share of the top-k similarity mass: the sum of its neighbours' similarities
    /// divided by `top_k`, so the score stays in [-1, 1] and thresholds keep their meaning.
    Sum,
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aggregation::Max => "max",
            Aggregation::Mean => "mean",
            Aggregation::Sum => "sum",
        })
    }
}

/// How a prompt's route scores are computed (see the `scoring` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The `top_k` nearest utterances vote, combined by `aggregation`; scores are cosines.
    Neighbours,
    /// Cosine similarity to each route's mean utterance vector.
    Centroid,
    /// A logistic-regression classifier trained at build time, plus BM25 weighted by
    /// `lexical_weight`; scores are probabilities.
    #[default]
    Classifier,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Neighbours => "neighbours",
            Method::Centroid => "centroid",
            Method::Classifier => "classifier",
        })
    }
}

/// Defaults applied to every route unless the route overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    /// How route scores are computed.
    pub method: Method,
    /// Minimum route score for a match; `None` means the best-scoring route always matches.
    pub threshold: Option<f32>,
    /// How many nearest utterances are looked at (and reported) for one decision.
    pub top_k: usize,
    /// How neighbour similarities are combined into a route score (`neighbours` method).
    pub aggregation: Aggregation,
    /// Weight of the BM25 lexical score added to the classifier's logits (`classifier` method).
    pub lexical_weight: f32,
    /// Fall back when the best and second-best route scores are closer than this.
    pub margin: Option<f32>,
    /// A route matches only when the prompt's cosine similarity to the route's centroid (mean
    /// utterance vector) reaches this: an absolute "is it near at all" gate beside the score.
    pub min_similarity: Option<f32>,
    /// How a quality predictor (an index built with `--outcomes`) chooses among a route's
    /// candidates; `None` uses the knob the build chose (a cost weight, see
    /// `quality::default_knob`). Ignored without a predictor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityKnob>,
}

/// The cost/quality knob of quality-aware routing: one number whose meaning a user can state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum QualityKnob {
    /// The cheapest candidate whose predicted quality is within this much (in [0, 1]) of the
    /// best candidate's: 0 always takes the best predicted, 1 always the cheapest.
    Tolerance(f32),
    /// The candidate with the most `predicted quality − cost_weight × estimated cost in USD`:
    /// how much quality one dollar per request is worth.
    CostWeight(f64),
}

/// The knob when neither the route file nor the outcomes' costs give one: the cheapest
/// candidate predicted within 0.05 (five points of accuracy) of the best.
pub const DEFAULT_QUALITY_KNOB: QualityKnob = QualityKnob::Tolerance(0.05);

/// Default `lexical_weight`, chosen on CLINC150 validation data.
pub const DEFAULT_LEXICAL_WEIGHT: f32 = 0.1;

/// Default `top_k` when the route file does not set one.
pub const DEFAULT_TOP_K: usize = 5;

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            method: Method::default(),
            threshold: None,
            top_k: DEFAULT_TOP_K,
            aggregation: Aggregation::Max,
            lexical_weight: DEFAULT_LEXICAL_WEIGHT,
            margin: None,
            min_similarity: None,
            quality: None,
        }
    }
}

/// What a cap is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Per API key.
    Key,
    /// Per tenant (`x-pointsman-tenant`).
    Tenant,
    /// Per tier (`x-pointsman-tier`).
    Tier,
}

/// A cap's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// One spend cap, as declared in the route file (counted by [`crate::budget`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// What it is counted per.
    pub scope: Scope,
    /// The one key, tenant or tier it applies to; omitted, it applies to each one separately.
    #[serde(default)]
    pub id: Option<String>,
    /// The window.
    pub period: Period,
    /// The cap in US dollars.
    pub limit_usd: f64,
}

/// What one model costs and can do: an entry of the route file's `models` catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    /// Who serves it (`openai`, `anthropic`, `vllm`, ...).
    #[serde(default)]
    pub provider: Option<String>,
    /// US dollars per million input tokens.
    pub input_per_mtok: f64,
    /// US dollars per million output tokens.
    pub output_per_mtok: f64,
    /// Longest prompt plus answer, in tokens.
    pub context_window: u32,
    /// Typical latency to the first token, in milliseconds (informational).
    #[serde(default)]
    pub latency_ms: Option<u32>,
    /// Capability tags (`vision`, `tools`, `long_context`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl CatalogModel {
    /// Estimated cost in US dollars of `input` prompt tokens and `output` answer tokens.
    pub fn cost_usd(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok) / 1e6
    }
}

/// A static rule, checked before semantic matching: when every condition given holds, the
/// prompt goes to `route`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name, reported in decisions.
    pub name: String,
    /// The route to send matching prompts to.
    pub route: String,
    /// The conditions (all must hold; at least one must be given).
    pub when: RuleWhen,
}

/// Conditions of a [`Rule`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleWhen {
    /// A regular expression the prompt must match (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Phrases of which the prompt must contain at least one (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// The request's tier (`x-pointsman-tier`) must be this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// Answer tokens assumed per request when a route does not say (`expected_output_tokens`).
pub const DEFAULT_EXPECTED_OUTPUT_TOKENS: u32 = 256;

/// One validated route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Unique route name.
    pub name: String,
    /// Target model for prompts that match this route: the first of `candidates`.
    pub model: String,
    /// Candidate models in order of preference (`model` first); the first that is healthy,
    /// fits the prompt, has the capabilities asked for and fits the budget is chosen.
    pub candidates: Vec<String>,
    /// Answer tokens expected per request, for cost estimates and context-window checks.
    pub expected_output_tokens: u32,
    /// Per-route threshold; overrides `defaults.threshold` when set.
    pub threshold: Option<f32>,
    /// Free text for people reading the table.
    pub description: Option<String>,
    /// Example utterances, as written (trimmed).
    pub utterances: Vec<String>,
    /// Prompts `build` checks against the new index before publishing it.
    #[serde(default, skip_serializing_if = "RouteTests::is_empty")]
    pub tests: RouteTests,
}

/// A route's test prompts: `match` must route here, `no_match` must not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteTests {
    /// Prompts that must be routed to this route.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub should_match: Vec<String>,
    /// Prompts that must not be routed to this route.
    #[serde(default, rename = "no_match", skip_serializing_if = "Vec::is_empty")]
    pub should_not_match: Vec<String>,
}

impl RouteTests {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.should_match.is_empty() && self.should_not_match.is_empty()
    }
}

impl Route {
    /// A route with one target model, no threshold and no tests.
    pub fn new(name: &str, model: &str, utterances: &[&str]) -> Self {
        Route {
            name: name.to_string(),
            model: model.to_string(),
            candidates: vec![model.to_string()],
            expected_output_tokens: DEFAULT_EXPECTED_OUTPUT_TOKENS,
            threshold: None,
            description: None,
            utterances: utterances.iter().map(|u| u.to_string()).collect(),
            tests: RouteTests::default(),
        }
    }

    /// The threshold in force for this route.
    pub fn effective_threshold(&self, defaults: &Defaults) -> Option<f32> {
        self.threshold.or(defaults.threshold)
    }
}

/// A validated route table: what `build` embeds and what the index carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Policy defaults.
    pub defaults: Defaults,
    /// The model that receives prompts no route matched.
    pub default_model: String,
    /// Candidates for unmatched prompts (`default_model` first).
    pub default_candidates: Vec<String>,
    /// The model catalog; empty when the route files declare none.
    pub catalog: BTreeMap<String, CatalogModel>,
    /// Spend caps.
    pub budgets: Vec<Budget>,
    /// Static rules, checked in order before semantic matching.
    pub rules: Vec<Rule>,
    /// Routes in file order (files of a directory in name order).
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// A table with default settings, no catalog, budgets or rules.
    pub fn new(defaults: Defaults, default_model: &str, routes: Vec<Route>) -> Self {
        RouteTable {
            defaults,
            default_model: default_model.to_string(),
            default_candidates: vec![default_model.to_string()],
            catalog: BTreeMap::new(),
            budgets: Vec::new(),
            rules: Vec::new(),
            routes,
        }
    }

    /// A stable hash of the canonical table (its JSON form): the index records it, so a served
    /// index can be checked against the route files it claims to come from.
    pub fn canonical_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a route table always serialises");
        hex(&Sha256::digest(&json))
    }

    /// Total number of utterances across routes.
    pub fn utterance_count(&self) -> usize {
        self.routes.iter().map(|r| r.utterances.len()).sum()
    }

    /// Finds a route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// One problem found in a route file, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The route the problem belongs to, when it belongs to one.
    pub route: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(route) = &self.route {
            write!(f, "route `{route}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a route table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The path holds no route files.
    #[error("no route files (*.yaml, *.yml) found in {0}")]
    NoFiles(PathBuf),
    /// One or more problems, every one reported.
    #[error("{} problem(s) in the route files:\n{}", issues.len(), render_issues(issues))]
    Invalid {
        /// All problems found, in file order.
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Loads one route file, or every `*.yaml`/`*.yml` file of a directory (in name order) as one
/// table. `defaults` and `default_route` may each be set in only one of the files.
pub fn load(path: &Path) -> Result<RouteTable, ConfigError> {
    let files = route_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let meta = std::fs::metadata(&file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            error: source,
        })?;
        if meta.len() > MAX_ROUTE_FILE_BYTES {
            return Err(ConfigError::Invalid {
                issues: vec![ConfigIssue {
                    file,
                    line: 0,
                    column: 0,
                    route: None,
                    message: format!(
                        "file is {} bytes; route files are limited to {MAX_ROUTE_FILE_BYTES} bytes",
                        meta.len()
                    ),
                }],
            });
        }
        let bytes = std::fs::read(&file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            error: source,
        })?;
        sources.push((file, bytes));
    }
    parse_sources(&sources)
}

/// The route files a path stands for: the file itself, or a directory's YAML files sorted by name.
pub fn route_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        error: source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let is_yaml = matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        );
        if is_yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::NoFiles(path.to_path_buf()));
    }
    Ok(files)
}

/// Parses and validates route files given as `(path, contents)`; the paths only label errors.
pub fn parse_sources(sources: &[(PathBuf, Vec<u8>)]) -> Result<RouteTable, ConfigError> {
    let mut issues = Vec::new();
    let mut parsed = Vec::new();
    for (file, bytes) in sources {
        match std::str::from_utf8(bytes) {
            Err(e) => issues.push(ConfigIssue {
                file: file.clone(),
                line: line_of_offset(bytes, e.valid_up_to()),
                column: 0,
                route: None,
                message: format!(
                    "not valid UTF-8 (at byte {}); save the file as UTF-8",
                    e.valid_up_to()
                ),
            }),
            Ok(text) => match serde_saphyr::from_str::<RawFile>(text) {
                Ok(raw) => parsed.push((file.clone(), raw)),
                Err(e) => {
                    let (line, column) = e
                        .location()
                        .map(|l| (l.line() as usize, l.column() as usize))
                        .unwrap_or((0, 0));
                    issues.push(ConfigIssue {
                        file: file.clone(),
                        line,
                        column,
                        route: None,
                        message: first_line(&e.to_string()),
                    });
                }
            },
        }
    }
    if !issues.is_empty() {
        // a file that does not parse may hold the missing defaults or routes: report only the
        // parse errors rather than guess
        return Err(ConfigError::Invalid { issues });
    }
    let table = validate(&parsed, &mut issues);
    match table {
        Some(table) if issues.is_empty() => Ok(table),
        _ => Err(ConfigError::Invalid { issues }),
    }
}

/// The parser's message without its own `error: line L column C:` prefix (the place is
/// reported once, as `file:line:col`).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let without_place = line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(place, _)| place.contains(" column "))
        .map(|(_, message)| message);
    without_place.unwrap_or(line).to_string()
}

fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count()
}

/// Normalises an utterance for duplicate detection: case-folded, whitespace collapsed.
pub fn normalise_utterance(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests;
