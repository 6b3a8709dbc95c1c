//! The OpenAI-compatible proxy's configuration and its pure parts: which provider serves a
//! model, the multi-turn routing policy, and the cascade's answer check. The HTTP side (the
//! `/v1/chat/completions` handler, retries, streaming) lives in `server::proxy`.
//!
//! The proxy file is separate from the route files on purpose: provider URLs, timeouts and
//! keys change without re-embedding anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RouteTable;
use crate::wire::{Api, Effort};

/// Largest proxy file read.
const MAX_PROXY_FILE_BYTES: u64 = 1024 * 1024;

/// Problems with the proxy file.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    /// The file could not be read.
    #[error("cannot read the proxy file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file is not the YAML expected.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parses but does not fit the routes or the environment; every problem listed.
    #[error("{} problem(s) in the proxy file {}:\n{}", problems.len(), path.display(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, with what to do.
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyFile {
    version: u32,
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    retries: Retries,
    #[serde(default = "default_mark_down_s")]
    mark_down_s: u64,
    #[serde(default)]
    conversation: ConversationPolicy,
    #[serde(default)]
    cascade: BTreeMap<String, CascadeCheck>,
    #[serde(default)]
    reasoning_effort: BTreeMap<String, Effort>,
    #[serde(default)]
    sessions: SessionPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: String,
    #[serde(default)]
    api: Api,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default = "default_true")]
    stream_usage: bool,
    #[serde(default)]
    forward_headers: Vec<String>,
}

/// Headers a provider may not take from the client (besides every `content-*` header):
/// pointsman sets them, reads the answer as it asked for it, or they belong to one connection.
const UNFORWARDABLE_HEADERS: [&str; 12] = [
    "authorization",
    "proxy-authorization",
    "host",
    "accept-encoding",
    "cookie",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn default_true() -> bool {
    true
}

fn default_mark_down_s() -> u64 {
    30
}

/// How long the proxy waits, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// To open a connection to the upstream.
    pub connect_ms: u64,
    /// From sending the request to the upstream's response headers (for a non-streaming request
    /// the whole answer is generated before them).
    pub first_byte_ms: u64,
    /// Longest silence between two chunks of a streamed answer.
    pub idle_ms: u64,
    /// Whole request, retries and fallbacks included.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            first_byte_ms: 120_000,
            idle_ms: 60_000,
            total_ms: 300_000,
        }
    }
}

/// Retries of one model before falling back to the next candidate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Tries per model (1 = no retry). Connection errors, timeouts, 429 and 5xx are retried.
    pub attempts: u32,
    /// First backoff; it doubles per retry (an upstream `Retry-After` is honoured up to
    /// `max_backoff_ms`).
    pub backoff_ms: u64,
    /// Longest wait between two tries.
    pub max_backoff_ms: u64,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 2,
            backoff_ms: 200,
            max_backoff_ms: 5_000,
        }
    }
}

impl Retries {
    /// The wait before try `retry` (1 for the first retry), or the upstream's `Retry-After`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .backoff_ms
            .saturating_mul(1u64 << retry.saturating_sub(1).min(20));
        let wait = retry_after.unwrap_or(Duration::from_millis(doubled));
        wait.min(Duration::from_millis(self.max_backoff_ms))
    }
}

/// The multi-turn policy: what text a conversation is routed on.
///
/// The last user message is routed on its own and, when the conversation has earlier user
/// turns, so are the last `window` user turns joined. The conversation's route is the
/// window's; the last message moves the conversation to another route only when it matches
/// that route by itself with a score at least `switch_margin` above the route's threshold.
/// A short follow-up ("and what about Texas?") matches nothing clearly and stays on the
/// conversation's route. Stateless: two replicas decide the same conversation the same way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationPolicy {
    /// Recent user turns routed together (1 = the last message only).
    pub window: usize,
    /// How clearly the last message alone must match another route to switch to it.
    pub switch_margin: f32,
}

impl Default for ConversationPolicy {
    fn default() -> Self {
        ConversationPolicy {
            window: 3,
            switch_margin: 0.15,
        }
    }
}

/// Sticky sessions: a conversation with a session key stays on the model it was routed to, so
/// that the provider's prompt cache keeps hitting, unless a later turn is routed to a stronger
/// model (a higher catalog price), which it then moves up to. It never moves down mid-session.
///
/// The key is the `x-pointsman-session` header, else the API's own field: the session Claude
/// Code writes into Anthropic's `metadata.user_id`, OpenAI's `prompt_cache_key`. Only
/// `model: "auto"` requests stick.
/// Sessions are kept in Redis when `--redis-url` is given (shared by replicas), else in the
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionPolicy {
    /// How long a session is kept after its last turn, in seconds (0: no sticky sessions).
    pub ttl_s: u64,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy { ttl_s: 1_800 }
    }
}

/// The cascade's check of a cheap candidate's answer: failing it escalates to the route's next
/// candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeCheck {
    /// The answer must have some text (or tool calls).
    #[serde(default = "default_true")]
    pub non_empty: bool,
    /// The answer must have at least this many characters.
    #[serde(default)]
    pub min_chars: usize,
    /// When the request asked for JSON (`response_format` `json_object` or `json_schema`), the
    /// answer must parse as JSON.
    #[serde(default = "default_true")]
    pub json: bool,
}

impl CascadeCheck {
    /// Why `answer` fails the check, or `None` when it passes. `wants_json`: the request asked
    /// for a JSON answer; `tool_calls`: the answer called tools instead of writing text.
    pub fn failure(&self, answer: &str, tool_calls: bool, wants_json: bool) -> Option<String> {
        if tool_calls {
            return None;
        }
        let text = answer.trim();
        if self.non_empty && text.is_empty() {
            return Some("the answer is empty".into());
        }
        let chars = text.chars().count();
        if chars < self.min_chars {
            return Some(format!(
                "the answer has {chars} characters; the check asks for at least {}",
                self.min_chars
            ));
        }
        if self.json && wants_json {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                return Some(format!(
                    "the request asked for JSON and the answer is not: {e}"
                ));
            }
        }
        None
    }
}

/// An upstream and the API it speaks.
#[derive(Clone)]
pub struct Provider {
    /// Its name in the proxy file (and in the catalog's `provider:`).
    pub name: String,
    /// Base URL, e.g. `https://api.openai.com/v1`; the API's path is appended.
    pub base_url: String,
    /// The API it speaks.
    pub api: Api,
    /// The API key read from the environment at start (never logged).
    pub api_key: Option<String>,
    /// Catalog names mapped to the upstream's own model names.
    pub rename: BTreeMap<String, String>,
    /// Whether streamed requests ask the upstream for a final usage chunk (which the client
    /// does not see unless it asked for it too).
    pub stream_usage: bool,
    /// Client request headers passed on to this provider when present (e.g.
    /// `openai-organization`); no other client header reaches it.
    pub forward_headers: Vec<axum::http::HeaderName>,
    models: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api", &self.api)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("rename", &self.rename)
            .field("stream_usage", &self.stream_usage)
            .field("forward_headers", &self.forward_headers)
            .finish()
    }
}

impl Provider {
    /// The URL of its API's endpoint (`{base_url}/chat/completions`, `/messages` or
    /// `/responses`).
    pub fn url(&self) -> String {
        format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            self.api.path()
        )
    }

    /// The name the upstream knows `model` by.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.rename.get(model).map_or(model, String::as_str)
    }
}

/// The validated proxy file.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Upstreams by name.
    pub providers: BTreeMap<String, Provider>,
    /// Waits.
    pub timeouts: Timeouts,
    /// Retries per model.
    pub retries: Retries,
    /// How long a model that failed every try is marked down (0: never).
    pub mark_down_s: u64,
    /// The multi-turn policy.
    pub conversation: ConversationPolicy,
    /// Routes whose cheap candidate's answer is checked, by route name.
    pub cascade: BTreeMap<String, CascadeCheck>,
    /// The reasoning effort sent for a route's requests (unless the client sets one), by route
    /// name.
    pub reasoning_effort: BTreeMap<String, Effort>,
    /// Sticky sessions.
    pub sessions: SessionPolicy,
}

impl ProxyConfig {
    /// Reads and validates the proxy file at `path`; API keys are read from the environment
    /// through `env` (`std::env::var` in the binary). Whether it fits the routes is
    /// [`ProxyConfig::check`]'s to say, each time an index is opened.
    pub fn load(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProxyConfigError> {
        let io = |source| ProxyConfigError::Io {
            path: path.to_path_buf(),
            error: source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_PROXY_FILE_BYTES {
            return Err(ProxyConfigError::Invalid {
                path: path.to_path_buf(),
                problems: vec![format!(
                    "the file is {size} bytes; proxy files are limited to {MAX_PROXY_FILE_BYTES}"
                )],
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(path, &text, env)
    }

    /// Parses and validates `text` (labelled `path` in errors).
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProxyConfigError> {
        let raw: RawProxyFile = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((0, 0));
            ProxyConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.to_string().lines().next().unwrap_or_default().to_string(),
            }
        })?;
        let mut problems = Vec::new();
        if raw.version != 1 {
            problems.push(format!(
                "`version: {}` is not supported; this build reads `version: 1`",
                raw.version
            ));
        }
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            let url = p.base_url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "providers.{name}.base_url: `{url}` must start with http:// or https://"
                ));
            }
            let api_key = match &p.api_key_env {
                None => None,
                Some(var) => match env(var).filter(|v| !v.trim().is_empty()) {
                    Some(key) => Some(key.trim().to_string()),
                    None => {
                        problems.push(format!(
                            "providers.{name}.api_key_env: the environment variable `{var}` is not set; export it, or remove `api_key_env` for an upstream without keys"
                        ));
                        None
                    }
                },
            };
            let mut forward_headers = Vec::new();
            for header in &p.forward_headers {
                let lower = header.trim().to_ascii_lowercase();
                match axum::http::HeaderName::from_bytes(lower.as_bytes()) {
                    Ok(_)
                        if UNFORWARDABLE_HEADERS.contains(&lower.as_str())
                            || lower.starts_with("content-") =>
                    {
                        problems.push(format!(
                            "providers.{name}.forward_headers: `{header}` cannot be forwarded (pointsman sets it, reads the answer as it asked for it, or it belongs to one connection)"
                        ))
                    }
                    Ok(h) if forward_headers.contains(&h) => {}
                    Ok(h) => forward_headers.push(h),
                    Err(_) => problems.push(format!(
                        "providers.{name}.forward_headers: `{header}` is not a valid header name"
                    )),
                }
            }
            providers.insert(
                name.clone(),
                Provider {
                    name,
                    base_url: url.to_string(),
                    api: p.api,
                    api_key,
                    rename: p.rename,
                    stream_usage: p.stream_usage,
                    forward_headers,
                    models: p.models,
                },
            );
        }
        if providers.is_empty() {
            problems.push("`providers` is empty; name at least one upstream".into());
        }
        if raw.retries.attempts == 0 {
            problems.push("retries.attempts must be at least 1 (1 = no retry)".into());
        }
        if raw.conversation.window == 0 {
            problems.push("conversation.window must be at least 1".into());
        }
        let t = raw.timeouts;
        if [t.connect_ms, t.first_byte_ms, t.idle_ms, t.total_ms].contains(&0) {
            problems.push("timeouts must all be above 0 ms".into());
        }
        let config = ProxyConfig {
            providers,
            timeouts: raw.timeouts,
            retries: raw.retries,
            mark_down_s: raw.mark_down_s,
            conversation: raw.conversation,
            cascade: raw.cascade,
            reasoning_effort: raw.reasoning_effort,
            sessions: raw.sessions,
        };
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ProxyConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// What keeps this proxy file from serving `table`'s routes, one problem per line: models
    /// no provider serves, cascades of routes that do not exist, names that are ambiguous.
    pub fn check(&self, table: &RouteTable) -> Vec<String> {
        let mut problems = Vec::new();
        for route in self.cascade.keys() {
            if table.route(route).is_none() {
                problems.push(format!(
                    "cascade.{route}: no route named `{route}` in the route files"
                ));
            }
        }
        for route in self.reasoning_effort.keys() {
            if table.route(route).is_none() {
                problems.push(format!(
                    "reasoning_effort.{route}: no route named `{route}` in the route files"
                ));
            }
        }
        for route in &table.routes {
            if route.name == "auto" || self.provider_for(&route.name, table).is_some() {
                problems.push(format!(
                    "route `{}` has the name of a model (or `auto`), so `model: {}` would be ambiguous; rename the route",
                    route.name, route.name
                ));
            }
        }
        problems.extend(self.unreachable_models(table));
        let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
        for p in self.providers.values() {
            for m in &p.models {
                if let Some(first) = claimed.insert(m, &p.name) {
                    problems.push(format!(
                        "model `{m}` is listed under both providers `{first}` and `{}`; list it under one",
                        p.name
                    ));
                }
            }
        }
        problems
    }

    /// Every model a provider serves (by the catalog or by listing), with the provider's name.
    pub fn served_models<'a>(&'a self, table: &'a RouteTable) -> BTreeMap<&'a str, &'a str> {
        let mut served: BTreeMap<&str, &str> = table
            .catalog
            .keys()
            .filter_map(|m| Some((m.as_str(), self.provider_for(m, table)?.name.as_str())))
            .collect();
        for p in self.providers.values() {
            for m in &p.models {
                served.entry(m).or_insert(&p.name);
            }
        }
        served
    }

    /// The provider serving `model`: the one that lists it under `models`, else the catalog's
    /// `provider:` for it.
    pub fn provider_for(&self, model: &str, table: &RouteTable) -> Option<&Provider> {
        self.providers
            .values()
            .find(|p| p.models.iter().any(|m| m == model))
            .or_else(|| {
                let name = table.catalog.get(model)?.provider.as_deref()?;
                self.providers.get(name)
            })
    }

    /// One problem per model a route may choose that no provider serves.
    pub fn unreachable_models(&self, table: &RouteTable) -> Vec<String> {
        let mut models: Vec<&String> = table
            .routes
            .iter()
            .flat_map(|r| r.candidates.iter())
            .chain(table.default_candidates.iter())
            .collect();
        models.sort();
        models.dedup();
        models
            .into_iter()
            .filter(|m| self.provider_for(m, table).is_none())
            .map(|m| {
                let hint = match table.catalog.get(m.as_str()).and_then(|c| c.provider.as_deref()) {
                    Some(p) => format!("its catalog provider `{p}` is not under `providers`"),
                    None => "it has no `provider:` in the catalog".into(),
                };
                format!(
                    "model `{m}` can be chosen by the routes but no provider serves it ({hint}); add the provider, or list the model under a provider's `models`"
                )
            })
            .collect()
    }
}

/// The texts a conversation is routed on: its last user message and, when there are earlier
/// user turns, the last `window` user turns joined by newlines.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationText {
    /// The last user message.
    pub last: String,
    /// The recent user turns together, when there is more than one.
    pub window: Option<String>,
}

impl ConversationText {
    /// Builds the texts from the user turns, oldest first (empty turns ignored). `None` when
    /// there is no user text at all.
    pub fn new(user_turns: &[String], window: usize) -> Option<Self> {
        let turns: Vec<&str> = user_turns
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        let last = (*turns.last()?).to_string();
        let recent = &turns[turns.len().saturating_sub(window.max(1))..];
        Some(ConversationText {
            last,
            window: (recent.len() > 1).then(|| recent.join("\n")),
        })
    }
}

/// Which of the two decisions a conversation takes, by the multi-turn policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnChoice {
    /// The last message's own decision.
    Last,
    /// The window's decision: the conversation stays on its route.
    Window,
}

/// Whether the last message alone matches its route clearly enough to move the conversation:
/// its score at least `switch_margin` above the route's threshold. A route without a threshold
/// never counts as clearly matched (there is nothing to be clear of).
pub fn clear_match(policy: &ConversationPolicy, score: f32, threshold: Option<f32>) -> bool {
    threshold.is_some_and(|t| score >= t + policy.switch_margin)
}

/// Applies the policy: `last` is the last message's own route and whether it matched clearly
/// ([`clear_match`], or a static rule), `window_route` the route of the recent turns together.
pub fn choose_turn(last: Option<(&str, bool)>, window_route: Option<&str>) -> TurnChoice {
    match (last, window_route) {
        (_, None) => TurnChoice::Last,
        (None, Some(_)) => TurnChoice::Window,
        (Some((route, _)), Some(w)) if route == w => TurnChoice::Last,
        (Some((_, clear)), Some(_)) => {
            if clear {
                TurnChoice::Last
            } else {
                TurnChoice::Window
            }
        }
    }
}

#[cfg(test)]
mod tests;
