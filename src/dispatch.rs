//! One request, end to end, from one index snapshot to a finished decision.
//!
//! Every entry point decides here and nowhere else: the HTTP route and batch APIs, the proxy,
//! the CLI's `route` and `explain`, `eval`, `calibrate` and the build-time route tests. What
//! `eval` measures is therefore what `serve` does. The steps, in this order:
//!
//! 1. **explicit route**: the request names a route (it must exist) and bypasses the scores;
//! 2. **static rules**: the route file's first matching rule bypasses the scores;
//! 3. **route scores**: embed the prompt, search, score every route ([`crate::engine`]);
//! 4. **policy**: thresholds, margin, fallback ([`crate::policy`]); for a conversation, the
//!    multi-turn policy picks the last turn's decision or the recent window's;
//! 5. **candidates**: the route's candidates, then the default route's, filtered by health,
//!    context window and capabilities ([`crate::selection`]);
//! 6. **spend reservation**: the first eligible candidate whose estimate fits every cap that
//!    applies is reserved ([`crate::budget`]); [`Spend::DryRun`] reserves nothing (eval).
//!
//! A request takes one snapshot of the live index ([`crate::engine::Engine::index`]) and every
//! step reads that snapshot, so a hot reload in the middle of a request cannot mix two route
//! tables. The result, [`Decided`], is finished: nothing edits it afterwards.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::budget::{CapKey, Identity, Ledger, caps_for};
use crate::config::{
    DEFAULT_EXPECTED_OUTPUT_TOKENS, DEFAULT_QUALITY_KNOB, Method, Route, RouteTable,
};
use crate::embed::Embedded;
use crate::engine::{Engine, RouteError, Routed};
use crate::index::Index;
use crate::policy::{Evidence, Outcome};
use crate::proxy_config::{ConversationPolicy, ConversationText, TurnChoice};
use crate::selection::{
    self, Choice, Eligible, Health, Needs, NoCandidate, QualityCandidate, QualityChoice,
};

/// What the request routes on.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// One prompt.
    Text(&'a str),
    /// A conversation: its last user turn and the recent window, decided by `policy`.
    Conversation {
        /// The texts.
        turns: &'a ConversationText,
        /// The multi-turn policy.
        policy: &'a ConversationPolicy,
    },
}

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What to route on.
    pub prompt: Prompt<'a>,
    /// A route the request names, bypassing rules and scores.
    pub route: Option<&'a str>,
    /// Who asks (budgets, rule tiers).
    pub who: &'a Identity,
    /// Capabilities the model must have.
    pub capabilities: &'a [String],
    /// Bytes of the whole request's text when it is more than the routed text (a
    /// conversation); what lies beyond the routed text counts four bytes a token against the
    /// context window and the cost estimate. 0 for a single prompt.
    pub whole_text_bytes: usize,
    /// Whether the decision should carry its full explanation (the graded examples nearest to
    /// the prompt): `explain` on the CLI, `"explain": true` in a route request.
    pub explain: bool,
    /// The model the request's sticky session is on: it is kept unless this turn's own choice
    /// is stronger (see [`SessionStep`]).
    pub session: Option<&'a str>,
    /// When the request counts against the spend caps: the one moment whose day and month
    /// windows everything it reserves, gives back and settles is counted in, even when that
    /// happens after midnight.
    pub at: SystemTime,
}

impl<'a> Request<'a> {
    /// A single prompt from an anonymous caller, with no route named and nothing asked for.
    pub fn text(text: &'a str, who: &'a Identity) -> Self {
        Request {
            prompt: Prompt::Text(text),
            route: None,
            who,
            capabilities: &[],
            whole_text_bytes: 0,
            explain: false,
            session: None,
            at: SystemTime::now(),
        }
    }
}

/// How spend is counted.
#[derive(Debug, Clone, Copy)]
pub enum Spend<'a> {
    /// Reserve each decision's estimate against the caps in this ledger.
    Reserve(&'a Ledger),
    /// Reserve nothing and apply no cap: evaluation and tests never spend a budget.
    DryRun,
}

/// What a decision needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Embeds and scores.
    pub engine: &'a Engine,
    /// Models marked down.
    pub health: &'a Health,
    /// Where spend is reserved.
    pub spend: Spend<'a>,
    /// Longest the embedding may take (queue included).
    pub embed_timeout: Option<Duration>,
}

/// A finished decision: the route and what it rests on, the model chosen, and the fallbacks.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = RouteResponse)]
pub struct Decided {
    /// The decision; its `model` is the chosen candidate.
    #[serde(flatten)]
    pub routed: Routed,
    /// How the model was chosen among the candidates.
    pub selection: Choice,
    /// Eligible candidates after the chosen one, in the order to try them (their estimates
    /// not reserved).
    #[serde(skip)]
    pub fallbacks: Vec<Eligible>,
    /// The text the decision routed on (a conversation's last turn or its window).
    #[serde(skip)]
    pub text: String,
    /// The index snapshot the decision was made on; later steps of the request read it too.
    #[serde(skip)]
    pub snapshot: Arc<Index>,
    /// What the request's sticky session did (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionStep>,
}

/// What a sticky session did to a decision. A session stays on its model unless the turn's own
/// choice is a stronger model (a higher catalog price, input plus output per million tokens),
/// which it moves up to; it never moves down to a cheaper one while its model can serve.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum SessionStep {
    /// The session's model was kept.
    Held,
    /// The turn needed a stronger model than the session's.
    MovedUp {
        /// The session's model before.
        from: String,
    },
    /// The session's model cannot serve this turn (marked down, context window, capabilities,
    /// a spend cap): the turn's own choice stands.
    Lost {
        /// The session's model.
        from: String,
    },
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The request named a route the table does not have.
    #[error("`route`: no route named `{0}`")]
    UnknownRoute(String),
    /// Embedding or search failed, or the engine refused the prompt.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The embedding did not finish within the timeout.
    #[error("the embedding did not finish within {0:?}")]
    Timeout(Duration),
    /// No candidate could take the request; the decision up to that point is kept for the log.
    #[error("no candidate model can take this request")]
    NoCandidate {
        /// Every candidate tried, with its reason.
        refusal: NoCandidate,
        /// The decision before the candidates.
        routed: Box<Routed>,
        /// The text it routed on.
        text: String,
    },
}

/// Steps 1 and 2 on a scored decision: an explicit route, else the first matching rule,
/// takes precedence over the policy's outcome.
fn precedence(
    snapshot: &Index,
    text: &str,
    route: Option<&str>,
    tier: Option<&str>,
    r: &mut Routed,
) {
    if let Some(route) = route {
        r.decision.outcome = Outcome::Override {
            route: route.to_string(),
        };
    } else if let Some(rule) = snapshot.rules().first_match(text, tier) {
        r.decision.outcome = Outcome::Rule {
            route: rule.route.clone(),
            rule: rule.name.clone(),
        };
    }
}

/// Steps 1–4 for a prompt already embedded (eval, calibrate, the build-time route tests):
/// pure and synchronous.
pub fn decide_embedded(
    snapshot: &Index,
    text: &str,
    embedded: &Embedded,
    route: Option<&str>,
    tier: Option<&str>,
) -> Result<Routed, DispatchError> {
    check_route(snapshot.table(), route)?;
    let mut routed = crate::engine::decide(snapshot, text, embedded)?;
    precedence(snapshot, text, route, tier, &mut routed);
    Ok(routed)
}

/// The route the first matching static rule sends `text` to (step 2 alone), for callers that
/// re-run the policy on stored scores (calibration).
pub fn rule_route<'t>(snapshot: &'t Index, text: &str, tier: Option<&str>) -> Option<&'t str> {
    snapshot
        .rules()
        .first_match(text, tier)
        .map(|r| r.route.as_str())
}

/// Every route's score for an embedded prompt (step 3), as the policy sees them.
pub fn scores(
    snapshot: &Index,
    text: &str,
    embedded: &Embedded,
) -> Result<Vec<Evidence>, DispatchError> {
    // only the `neighbours` method scores routes by their neighbours
    let hits = match snapshot.table().defaults.method {
        Method::Neighbours => snapshot
            .search(&embedded.vector, snapshot.table().defaults.top_k)
            .map_err(RouteError::from)?,
        Method::Classifier | Method::Centroid => Vec::new(),
    };
    Ok(crate::engine::route_scores(
        snapshot,
        text,
        &embedded.vector,
        &hits,
    ))
}

fn check_route(table: &RouteTable, route: Option<&str>) -> Result<(), DispatchError> {
    match route {
        Some(r) if table.route(r).is_none() => Err(DispatchError::UnknownRoute(r.to_string())),
        _ => Ok(()),
    }
}

async fn timed<T>(
    timeout: Option<Duration>,
    f: impl std::future::Future<Output = Result<T, RouteError>>,
) -> Result<T, DispatchError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .map_err(|_| DispatchError::Timeout(t))?
            .map_err(DispatchError::from),
        None => f.await.map_err(DispatchError::from),
    }
}

/// Decides one request on the live index: takes the snapshot, then every step.
pub async fn dispatch(cx: &Context<'_>, req: &Request<'_>) -> Result<Decided, DispatchError> {
    dispatch_on(cx, cx.engine.index(), req).await
}

/// Decides one request on `snapshot`.
pub async fn dispatch_on(
    cx: &Context<'_>,
    snapshot: Arc<Index>,
    req: &Request<'_>,
) -> Result<Decided, DispatchError> {
    check_route(snapshot.table(), req.route)?;
    let tier = req.who.tier.as_deref();
    let (routed, text) = match req.prompt {
        Prompt::Text(text) => {
            let mut r = timed(cx.embed_timeout, cx.engine.route_async_on(&snapshot, text)).await?;
            precedence(&snapshot, text, req.route, tier, &mut r);
            (r, text.to_string())
        }
        Prompt::Conversation { turns, policy } => {
            conversation(cx, &snapshot, turns, policy, req.route, tier).await?
        }
    };
    select(cx.health, cx.spend, snapshot, routed, text, req).await
}

/// Step 4 for a conversation: the last turn alone and, with earlier turns, the recent window
/// (one batch), then the multi-turn policy. Returns the decision and the text it routed on.
async fn conversation(
    cx: &Context<'_>,
    snapshot: &Arc<Index>,
    turns: &ConversationText,
    policy: &ConversationPolicy,
    route: Option<&str>,
    tier: Option<&str>,
) -> Result<(Routed, String), DispatchError> {
    let Some(window) = turns.window.as_ref().filter(|_| route.is_none()) else {
        let mut r = timed(
            cx.embed_timeout,
            cx.engine.route_async_on(snapshot, &turns.last),
        )
        .await?;
        precedence(snapshot, &turns.last, route, tier, &mut r);
        return Ok((r, turns.last.clone()));
    };
    let texts = [turns.last.as_str(), window.as_str()];
    let mut both = timed(cx.embed_timeout, cx.engine.route_many_on(snapshot, &texts)).await?;
    for (r, text) in both.iter_mut().zip(texts) {
        precedence(snapshot, text, None, tier, r);
    }
    let window_routed = both.pop().expect("two decisions");
    let last_routed = both.pop().expect("two decisions");
    let last = match &last_routed.decision.outcome {
        Outcome::Matched { route, score } => {
            let threshold = last_routed
                .decision
                .routes
                .iter()
                .find(|s| s.route == *route)
                .and_then(|s| s.threshold);
            Some((
                route.as_str(),
                crate::proxy_config::clear_match(policy, *score, threshold),
            ))
        }
        // a rule on the last message is as clear as a match can be
        Outcome::Rule { route, .. } => Some((route.as_str(), true)),
        _ => None,
    };
    Ok(
        match crate::proxy_config::choose_turn(last, window_routed.decision.route()) {
            TurnChoice::Last => (last_routed, turns.last.clone()),
            TurnChoice::Window => (window_routed, window.clone()),
        },
    )
}

/// Decides a prompt already embedded, on `snapshot`, through the candidates (eval, which
/// embeds in bulk without an engine).
pub async fn dispatch_embedded(
    health: &Health,
    spend: Spend<'_>,
    snapshot: &Arc<Index>,
    req: &Request<'_>,
    embedded: &Embedded,
) -> Result<Decided, DispatchError> {
    // an embedded prompt is one text: a conversation's last turn
    let text = match req.prompt {
        Prompt::Text(text) => text,
        Prompt::Conversation { turns, .. } => &turns.last,
    };
    let routed = decide_embedded(snapshot, text, embedded, req.route, req.who.tier.as_deref())?;
    select(
        health,
        spend,
        Arc::clone(snapshot),
        routed,
        text.to_string(),
        req,
    )
    .await
}

/// Decides several prompts from one caller on one snapshot; they share forward passes. Fails
/// as a whole, giving back what the earlier prompts reserved. Everything is counted in the
/// windows of the moment `at` (see [`Request::at`]).
pub async fn dispatch_many(
    cx: &Context<'_>,
    texts: &[String],
    who: &Identity,
    capabilities: &[String],
    at: SystemTime,
) -> Result<Vec<Decided>, DispatchError> {
    let snapshot = cx.engine.index();
    let routed = timed(cx.embed_timeout, cx.engine.route_many_on(&snapshot, texts)).await?;
    let mut out: Vec<Decided> = Vec::with_capacity(routed.len());
    for (mut r, text) in routed.into_iter().zip(texts) {
        precedence(&snapshot, text, None, who.tier.as_deref(), &mut r);
        let req = Request {
            prompt: Prompt::Text(text),
            route: None,
            who,
            capabilities,
            whole_text_bytes: 0,
            explain: false,
            session: None,
            at,
        };
        match select(
            cx.health,
            cx.spend,
            Arc::clone(&snapshot),
            r,
            text.clone(),
            &req,
        )
        .await
        {
            Ok(d) => out.push(d),
            Err(e) => {
                if let Spend::Reserve(ledger) = cx.spend {
                    let caps = caps_for(&snapshot.table().budgets, who, at);
                    for reserved in &out {
                        if let (Some(cost), Some(_)) = (
                            reserved.selection.estimated_cost_usd,
                            &reserved.selection.counted,
                        ) {
                            ledger.adjust(&caps, -cost).await;
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// What a decision's request needs from a model.
fn needs<'a>(route: Option<&Route>, prompt_tokens: u64, capabilities: &'a [String]) -> Needs<'a> {
    Needs {
        prompt_tokens,
        output_tokens: u64::from(
            route.map_or(DEFAULT_EXPECTED_OUTPUT_TOKENS, |r| r.expected_output_tokens),
        ),
        capabilities,
    }
}

/// Steps 5 and 6: the model among the route's candidates (then the default route's), ordered
/// by predicted quality and cost when the index has a quality predictor, its reservation, and
/// the fallbacks after it.
async fn select(
    health: &Health,
    spend: Spend<'_>,
    snapshot: Arc<Index>,
    mut routed: Routed,
    text: String,
    req: &Request<'_>,
) -> Result<Decided, DispatchError> {
    routed.prompt_tokens += req.whole_text_bytes.saturating_sub(text.len()).div_ceil(4);
    let table = snapshot.table();
    let route = routed.decision.route().and_then(|r| table.route(r));
    let needs = needs(route, routed.prompt_tokens as u64, req.capabilities);
    let mut lists = selection::candidate_lists(table, route);
    let quality = snapshot.quality().map(|q| {
        let knob = table.defaults.quality.unwrap_or_else(|| {
            snapshot
                .manifest()
                .quality
                .as_ref()
                .map_or(DEFAULT_QUALITY_KNOB, |m| m.default_knob)
        });
        let chars = text.chars().count().max(req.whole_text_bytes);
        by_quality(
            q,
            table,
            knob,
            &mut lists,
            &routed.vector,
            &text,
            chars,
            &needs,
        )
    });
    // the graded examples behind the prediction: an exact scan of every one, off the runtime
    let quality = match quality {
        Some(mut q) if req.explain => {
            let (snapshot, vector) = (Arc::clone(&snapshot), routed.vector.clone());
            q.nearest_graded = tokio::task::spawn_blocking(move || {
                snapshot
                    .quality()
                    .map(|i| i.nearest(&vector, NEAREST_GRADED))
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            Some(q)
        }
        other => other,
    };
    let session = req
        .session
        .map(|model| stick(table, &mut lists, model, &needs, health));
    let (ledger, caps): (Option<&Ledger>, Vec<CapKey>) = match spend {
        Spend::Reserve(ledger) => (Some(ledger), caps_for(&table.budgets, req.who, req.at)),
        Spend::DryRun => (None, Vec::new()),
    };
    // with no cap to check, the ledger is never asked: a dry run needs one only to type-check
    let dry;
    let ledger = match ledger {
        Some(l) => l,
        None => {
            dry = Ledger::in_memory();
            &dry
        }
    };
    let choice = selection::choose(table, &lists, &needs, health, ledger, &caps).await;
    let mut choice = match choice {
        Ok(c) => c,
        Err(refusal) => {
            return Err(DispatchError::NoCandidate {
                refusal,
                routed: Box::new(routed),
                text,
            });
        }
    };
    choice.quality = quality;
    // held, but a spend cap passed the session's model over
    // ...or, moving up, a spend cap passed the stronger model over for a weaker one
    let strength = |m: &str| selection::strength(&table.catalog, m);
    let session = session.map(|step| match (step, req.session) {
        (SessionStep::Held, Some(from)) if choice.model != from => SessionStep::Lost {
            from: from.to_string(),
        },
        (SessionStep::MovedUp { from }, _) if strength(&choice.model) < strength(&from) => {
            SessionStep::Lost { from }
        }
        (step, _) => step,
    });
    let fallbacks = fallbacks(table, &lists, &choice, &needs, health);
    routed.decision.model = choice.model.clone();
    Ok(Decided {
        routed,
        selection: choice,
        fallbacks,
        text,
        snapshot,
        session,
    })
}

/// The sticky-session step: puts the session's `model` first in `lists` unless the first
/// model the turn could have on its own is stronger, or the session's model cannot serve it.
fn stick(
    table: &RouteTable,
    lists: &mut Vec<(Vec<String>, bool)>,
    model: &str,
    needs: &Needs<'_>,
    health: &Health,
) -> SessionStep {
    let is_down = |m: &str| health.is_down(m);
    let usable = |list: &[String]| selection::filter(list, &table.catalog, &is_down, needs).0;
    if usable(&[model.to_string()]).is_empty() {
        return SessionStep::Lost {
            from: model.to_string(),
        };
    }
    let own = lists
        .iter()
        .find_map(|(list, _)| usable(list).into_iter().next())
        .map(|e| e.model);
    let strength = |m: &str| selection::strength(&table.catalog, m);
    match own {
        Some(own) if own != model && strength(&own) > strength(model) => SessionStep::MovedUp {
            from: model.to_string(),
        },
        _ => {
            lists.insert(0, (vec![model.to_string()], false));
            SessionStep::Held
        }
    }
}

/// The quality step: predicts each candidate's quality for the prompt, estimates its cost for a
/// request of `chars` characters (the whole conversation's, for the proxy), and orders every
/// candidate list by the route file's knob (the first eligible one is chosen, the
/// rest are the fallbacks in that order). Returns what it saw, for the decision's explanation.
#[allow(clippy::too_many_arguments)] // the quality step's inputs, each from another layer
fn by_quality(
    quality: &crate::quality::QualityIndex,
    table: &RouteTable,
    knob: crate::config::QualityKnob,
    lists: &mut [(Vec<String>, bool)],
    vector: &[f32],
    text: &str,
    chars: usize,
    needs: &Needs<'_>,
) -> QualityChoice {
    let predictor = &quality.predictor;
    let predicted = predictor.predict_prompt(vector, text);
    let of = |model: &str| {
        let q = predictor
            .models()
            .iter()
            .position(|m| m == model)
            .map(|i| predicted[i]);
        // the cost the outcomes showed for prompts of this length, else the catalog's estimate
        let cost = predictor.estimate_cost_usd(model, chars).or_else(|| {
            table
                .catalog
                .get(model)
                .map(|m| m.cost_usd(needs.prompt_tokens, needs.output_tokens))
        });
        (q, cost)
    };
    let mut shown = Vec::new();
    for (i, (list, _)) in lists.iter_mut().enumerate() {
        let numbers: Vec<(Option<f32>, Option<f64>)> = list.iter().map(|m| of(m)).collect();
        let scored: Vec<crate::quality::Scored> = numbers
            .iter()
            .map(|&(q, c)| crate::quality::Scored {
                quality: q.unwrap_or(f32::NAN),
                cost_usd: c.unwrap_or(f64::NAN),
            })
            .collect();
        let order = crate::quality::rank(&scored, crate::quality::knob_of(knob));
        let ranked: Vec<String> = order.iter().map(|&j| list[j].clone()).collect();
        if i == 0 {
            shown = order
                .iter()
                .map(|&j| QualityCandidate {
                    model: list[j].clone(),
                    predicted_quality: numbers[j].0,
                    estimated_cost_usd: numbers[j].1,
                })
                .collect();
        }
        *list = ranked;
    }
    QualityChoice {
        knob,
        candidates: shown,
        nearest_graded: Vec::new(),
    }
}

/// Graded examples shown in an explanation.
const NEAREST_GRADED: usize = 5;

/// The eligible candidates after `choice`: the rest of the list it was chosen from, then every
/// later list (see [`selection::candidate_lists`]), each model once.
fn fallbacks(
    table: &RouteTable,
    lists: &[(Vec<String>, bool)],
    choice: &Choice,
    needs: &Needs<'_>,
    health: &Health,
) -> Vec<Eligible> {
    let from = lists
        .iter()
        .position(|(list, _)| list.contains(&choice.model))
        .unwrap_or(0);
    let mut out: Vec<Eligible> = Vec::new();
    for (i, (list, _)) in lists.iter().enumerate().skip(from) {
        let after = if i == from {
            list.iter()
                .position(|m| *m == choice.model)
                .map_or(0, |p| p + 1)
        } else {
            0
        };
        let (eligible, _) = selection::filter(
            &list[after..],
            &table.catalog,
            &|m| health.is_down(m),
            needs,
        );
        for e in eligible {
            if e.model != choice.model && !out.iter().any(|c| c.model == e.model) {
                out.push(e);
            }
        }
    }
    out
}
