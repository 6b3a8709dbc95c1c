//! Validation of the raw files into a [`RouteTable`]: every problem at once, each with
//! `file:line:col` and its route.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::raw::RawFile;
use super::{
    Budget, CatalogModel, ConfigIssue, DEFAULT_EXPECTED_OUTPUT_TOKENS, DEFAULT_LEXICAL_WEIGHT,
    Defaults, Method, QualityKnob, ROUTE_FILE_VERSION, Route, RouteTable, RouteTests, Rule,
    normalise_utterance,
};
use serde_saphyr::Spanned;

pub(super) struct Place<'a> {
    pub(super) file: &'a Path,
    line: usize,
    column: usize,
}

impl Place<'_> {
    fn issue(&self, route: Option<&str>, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            file: self.file.to_path_buf(),
            line: self.line,
            column: self.column,
            route: route.map(str::to_string),
            message: message.into(),
        }
    }
}

pub(super) fn place<'a, T>(file: &'a Path, s: &Spanned<T>) -> Place<'a> {
    Place {
        file,
        line: s.referenced.line() as usize,
        column: s.referenced.column() as usize,
    }
}

/// Reports `what` declared again at `p` when `seen` says where it was declared first.
pub(super) fn declared_once(
    seen: &mut Option<(PathBuf, usize)>,
    p: &Place<'_>,
    what: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Some((other, line)) = seen {
        issues.push(p.issue(
            None,
            format!(
                "{what} is already set in {}:{line}; set it in one file only",
                other.display()
            ),
        ));
    }
    *seen = Some((p.file.to_path_buf(), p.line));
}

pub(super) fn check_threshold(
    p: &Place<'_>,
    route: Option<&str>,
    t: f32,
    issues: &mut Vec<ConfigIssue>,
) {
    if !(-1.0..=1.0).contains(&t) {
        issues.push(p.issue(
            route,
            format!("threshold {t} is outside [-1, 1]; similarities are cosines, so use a value such as 0.5"),
        ));
    }
}

/// The candidate list of a route or the default route: `model: x` or `models: [x, y]`.
pub(super) fn candidates(
    file: &Path,
    at: &Place<'_>,
    route: Option<&str>,
    model: &Option<Spanned<String>>,
    models: &Option<Spanned<Vec<Spanned<String>>>>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Vec<String>> {
    let list: Vec<&Spanned<String>> = match (model, models) {
        (Some(_), Some(m)) => {
            issues.push(place(file, m).issue(
                route,
                "set either `model` or `models` (an ordered list of candidates), not both",
            ));
            return None;
        }
        (None, None) => {
            issues.push(at.issue(
                route,
                "no `model`; name the target model (or `models: [...]` for candidates in order)",
            ));
            return None;
        }
        (Some(m), None) => vec![m],
        (None, Some(m)) if m.value.is_empty() => {
            issues.push(place(file, m).issue(route, "`models` is empty; list at least one model"));
            return None;
        }
        (None, Some(m)) => m.value.iter().collect(),
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for m in list {
        let name = m.value.trim();
        if name.is_empty() {
            issues.push(place(file, m).issue(route, "model is empty"));
        } else if out.iter().any(|o| o == name) {
            issues.push(place(file, m).issue(route, format!("model `{name}` is listed twice")));
        } else {
            out.push(name.to_string());
        }
    }
    (!out.is_empty()).then_some(out)
}

pub(super) fn validate(
    files: &[(PathBuf, RawFile)],
    issues: &mut Vec<ConfigIssue>,
) -> Option<RouteTable> {
    let mut defaults = Defaults::default();
    let mut defaults_seen: Option<(PathBuf, usize)> = None;
    let mut default_model: Option<Vec<String>> = None;
    let mut catalog: BTreeMap<String, CatalogModel> = BTreeMap::new();
    let mut budgets: Vec<Budget> = Vec::new();
    let mut rules: Vec<(Rule, PathBuf, usize)> = Vec::new();
    let mut catalog_seen: Option<(PathBuf, usize)> = None;
    // (model, file, line, route) of every candidate named, checked against the catalog at the end
    let mut used_models: Vec<(String, PathBuf, usize, Option<String>)> = Vec::new();
    let mut default_seen: Option<(PathBuf, usize)> = None;
    let mut routes = Vec::new();
    // name -> where first declared
    let mut names: HashMap<String, (PathBuf, usize)> = HashMap::new();
    // normalised utterance -> (route, file, line)
    let mut utterances: HashMap<String, (String, PathBuf, usize)> = HashMap::new();

    for (file, raw) in files {
        let file = file.as_path();
        if raw.version.value != ROUTE_FILE_VERSION {
            issues.push(place(file, &raw.version).issue(
                None,
                format!(
                    "unsupported version {}; this pointsman reads `version: {ROUTE_FILE_VERSION}`",
                    raw.version.value
                ),
            ));
        }
        if let Some(d) = &raw.defaults {
            let p = place(file, d);
            declared_once(&mut defaults_seen, &p, "`defaults`", issues);
            if let Some(t) = &d.value.threshold {
                check_threshold(&place(file, t), None, t.value, issues);
                defaults.threshold = Some(t.value);
            }
            if let Some(k) = &d.value.top_k {
                if k.value == 0 {
                    issues.push(
                        place(file, k).issue(None, "top_k is 0; it must be at least 1 (default 5)"),
                    );
                }
                defaults.top_k = k.value;
            }
            if let Some(a) = d.value.aggregation {
                defaults.aggregation = a;
            }
            if let Some(m) = d.value.method {
                defaults.method = m;
            }
            if let Some(w) = &d.value.lexical_weight {
                if !(0.0..=10.0).contains(&w.value) {
                    issues.push(place(file, w).issue(
                        None,
                        format!("lexical_weight {} is outside [0, 10] (default {DEFAULT_LEXICAL_WEIGHT}; 0 turns BM25 off)", w.value),
                    ));
                }
                defaults.lexical_weight = w.value;
            }
            if let Some(m) = &d.value.margin {
                if !(0.0..=1.0).contains(&m.value) {
                    issues.push(
                        place(file, m).issue(None, format!("margin {} is outside [0, 1]", m.value)),
                    );
                }
                defaults.margin = Some(m.value);
            }
            if let Some(m) = &d.value.min_similarity {
                if !(-1.0..=1.0).contains(&m.value) {
                    issues.push(place(file, m).issue(
                        None,
                        format!("min_similarity {} is outside [-1, 1]", m.value),
                    ));
                }
                defaults.min_similarity = Some(m.value);
            }
            if let Some(q) = &d.value.quality {
                let bad = match q.value {
                    QualityKnob::Tolerance(t) => (!(0.0..=1.0).contains(&t))
                        .then(|| format!("quality tolerance {t} is outside [0, 1]")),
                    QualityKnob::CostWeight(w) => (!(w.is_finite() && w >= 0.0))
                        .then(|| format!("quality cost_weight {w} must be a number of at least 0")),
                };
                if let Some(message) = bad {
                    issues.push(place(file, q).issue(None, message));
                }
                defaults.quality = Some(q.value);
            }
        }
        for r in &raw.rules {
            let p = place(file, r);
            let when = &r.value.when;
            if when.regex.is_none() && when.keywords.is_empty() && when.tier.is_none() {
                issues.push(p.issue(
                    None,
                    format!(
                        "rule `{}` has no condition; give `regex`, `keywords` or `tier`",
                        r.value.name
                    ),
                ));
            }
            if let Some(re) = &when.regex {
                if let Err(e) = regex::Regex::new(re) {
                    issues.push(
                        p.issue(None, format!("rule `{}`: invalid regex: {e}", r.value.name)),
                    );
                }
            }
            if when.keywords.iter().any(|k| k.trim().is_empty()) {
                issues.push(p.issue(
                    None,
                    format!("rule `{}` has an empty keyword", r.value.name),
                ));
            }
            rules.push((r.value.clone(), file.to_path_buf(), p.line));
        }
        for b in &raw.budgets {
            if !(b.value.limit_usd.is_finite() && b.value.limit_usd >= 0.0) {
                issues.push(place(file, b).issue(
                    None,
                    format!(
                        "budget limit_usd {} must be a non-negative number",
                        b.value.limit_usd
                    ),
                ));
            }
            budgets.push(b.value.clone());
        }
        if let Some(models) = &raw.models {
            let p = place(file, models);
            declared_once(&mut catalog_seen, &p, "the `models` catalog", issues);
            for (name, m) in &models.value {
                let mp = place(file, m);
                let what = |field: &str, v: f64| {
                    format!("model `{name}`: {field} {v} must be a finite, non-negative price")
                };
                for (field, v) in [
                    ("input_per_mtok", m.value.input_per_mtok),
                    ("output_per_mtok", m.value.output_per_mtok),
                ] {
                    if !(v.is_finite() && v >= 0.0) {
                        issues.push(mp.issue(None, what(field, v)));
                    }
                }
                if m.value.context_window == 0 {
                    issues.push(mp.issue(None, format!("model `{name}`: context_window is 0")));
                }
                catalog.insert(name.clone(), m.value.clone());
            }
        }
        if let Some(d) = &raw.default_route {
            let p = place(file, d);
            declared_once(&mut default_seen, &p, "`default_route`", issues);
            if let Some(c) = candidates(file, &p, None, &d.value.model, &d.value.models, issues) {
                used_models.extend(
                    c.iter()
                        .map(|m| (m.clone(), file.to_path_buf(), p.line, None)),
                );
                default_model = Some(c);
            }
        }
        for r in &raw.routes {
            let rp = place(file, r);
            let r = &r.value;
            let name = r.name.value.trim().to_string();
            let label = (!name.is_empty()).then_some(name.as_str());
            if name.is_empty() {
                issues.push(place(file, &r.name).issue(None, "route name is empty"));
            } else if let Some((other, line)) = names.get(&name) {
                issues.push(place(file, &r.name).issue(
                    label,
                    format!(
                        "duplicate route name; it is already declared at {}:{line}",
                        other.display()
                    ),
                ));
            } else {
                names.insert(
                    name.clone(),
                    (file.to_path_buf(), place(file, &r.name).line),
                );
            }
            let route_candidates =
                candidates(file, &rp, label, &r.model, &r.models, issues).unwrap_or_default();
            if let Some(t) = &r.expected_output_tokens {
                if t.value == 0 {
                    issues.push(
                        place(file, t)
                            .issue(label, "expected_output_tokens is 0; it must be at least 1"),
                    );
                }
            }
            if let Some(t) = &r.threshold {
                check_threshold(&place(file, t), label, t.value, issues);
            }
            let mut texts = Vec::new();
            match &r.utterances {
                None => issues.push(rp.issue(
                    label,
                    "route has no `utterances`; add a few example prompts",
                )),
                Some(list) if list.value.is_empty() => issues.push(
                    place(file, list)
                        .issue(label, "route has no utterances; add a few example prompts"),
                ),
                Some(list) => {
                    for u in &list.value {
                        let up = place(file, u);
                        let text = u.value.trim();
                        if text.is_empty() {
                            issues.push(up.issue(label, "empty utterance"));
                            continue;
                        }
                        let key = normalise_utterance(text);
                        match utterances.get(&key) {
                            Some((other_route, other_file, line)) if *other_route == name => {
                                issues.push(up.issue(
                                    label,
                                    format!(
                                        "utterance {text:?} is listed twice in this route (first at {}:{line})",
                                        other_file.display()
                                    ),
                                ));
                            }
                            Some((other_route, other_file, line)) => {
                                issues.push(up.issue(
                                    label,
                                    format!(
                                        "utterance {text:?} also belongs to route `{other_route}` ({}:{line}); an utterance can teach only one route",
                                        other_file.display()
                                    ),
                                ));
                            }
                            None => {
                                utterances.insert(key, (name.clone(), file.to_path_buf(), up.line));
                            }
                        }
                        texts.push(text.to_string());
                    }
                }
            }
            used_models.extend(route_candidates.iter().map(|m| {
                (
                    m.clone(),
                    file.to_path_buf(),
                    rp.line,
                    label.map(str::to_string),
                )
            }));
            let tests = match &r.tests {
                Some(t) => {
                    let mut all = t.value.should_match.iter().chain(&t.value.should_not_match);
                    if all.any(|p| p.trim().is_empty()) {
                        issues.push(place(file, t).issue(label, "empty test prompt"));
                    }
                    t.value.clone()
                }
                None => RouteTests::default(),
            };
            routes.push(Route {
                name,
                model: route_candidates.first().cloned().unwrap_or_default(),
                candidates: route_candidates,
                expected_output_tokens: r
                    .expected_output_tokens
                    .as_ref()
                    .map_or(DEFAULT_EXPECTED_OUTPUT_TOKENS, |t| t.value),
                threshold: r.threshold.as_ref().map(|t| t.value),
                description: r.description.clone(),
                utterances: texts,
                tests,
            });
        }
    }

    for (rule, file, line) in &rules {
        if !names.contains_key(&rule.route) {
            issues.push(ConfigIssue {
                file: file.clone(),
                line: *line,
                column: 0,
                route: None,
                message: format!(
                    "rule `{}` sends to route `{}`, which is not declared",
                    rule.name, rule.route
                ),
            });
        }
    }
    if !budgets.is_empty() && catalog.is_empty() {
        let file = files.first().map(|(f, _)| f.clone())?;
        issues.push(ConfigIssue {
            file,
            line: 1,
            column: 1,
            route: None,
            message: "`budgets` need a `models` catalog with prices to estimate what requests cost"
                .into(),
        });
    }
    if !catalog.is_empty() {
        for (model, file, line, route) in &used_models {
            if !catalog.contains_key(model) {
                issues.push(ConfigIssue {
                    file: file.clone(),
                    line: *line,
                    column: 0,
                    route: route.clone(),
                    message: format!(
                        "model `{model}` is not in the `models` catalog; add it there or fix the name"
                    ),
                });
            }
        }
    }
    let default_candidates = match default_model {
        Some(m) => m,
        None => {
            let file = files
                .first()
                .map(|(f, _)| f.clone())
                .unwrap_or_else(|| PathBuf::from("<none>"));
            issues.push(ConfigIssue {
                file,
                line: 1,
                column: 1,
                route: None,
                message: "no `default_route` is set; add `default_route: {model: ...}` so unmatched prompts have a target".into(),
            });
            return None;
        }
    };
    let first_file = files.first().map(|(f, _)| f.clone())?;
    // a table without intent routes is valid: every prompt goes to the default route, whose
    // candidates a quality predictor (`build --outcomes`) may choose among
    if routes.len() == 1 && defaults.method == Method::Classifier {
        issues.push(ConfigIssue {
            file: first_file,
            line: 1,
            column: 1,
            route: None,
            message: "the classifier needs at least two routes to tell apart; add a route or set `defaults.method: centroid`".into(),
        });
    }
    Some(RouteTable {
        defaults,
        default_model: default_candidates.first().cloned().unwrap_or_default(),
        default_candidates,
        catalog,
        budgets,
        rules: rules.into_iter().map(|(r, _, _)| r).collect(),
        routes,
    })
}
