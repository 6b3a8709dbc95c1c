//! The decision for one embedded prompt: the reported neighbours, every route's score by the
//! table's method, and the policy's choice among them. No threads and no queue: the engine's
//! workers, the caller's thread, `eval` and the benches all decide through [`decide`].

use crate::config::Method;
use crate::embed::Embedded;
use crate::index::{Hit, Index};
use crate::policy::{self, Evidence, Vote};
use crate::{scoring, similarity};

use super::{NeighbourOut, RouteError, Routed, Timings};

/// Most routes listed in a decision (all of them still count).
pub const REPORTED_ROUTES: usize = 10;

/// Every route's score for one prompt, by the table's method, with its similarity to the
/// route's centroid.
pub fn route_scores(index: &Index, text: &str, vector: &[f32], hits: &[Hit]) -> Vec<Evidence> {
    let mut evidence = scores_alone(index, text, vector, hits);
    for e in &mut evidence {
        e.similarity = centroid_similarity(index, vector, e.route);
    }
    evidence
}

/// The prompt's cosine similarity to a route's centroid.
fn centroid_similarity(index: &Index, vector: &[f32], route: usize) -> f32 {
    let dim = vector.len();
    similarity::similarity(vector, &index.centroids()[route * dim..(route + 1) * dim])
}

/// Every route's score, leaving `similarity` at zero (but for the `centroid` method, whose
/// scores are the similarities).
fn scores_alone(index: &Index, text: &str, vector: &[f32], hits: &[Hit]) -> Vec<Evidence> {
    let table = index.table();
    let dim = vector.len();
    match table.defaults.method {
        Method::Neighbours => {
            let votes: Vec<Vote> = hits
                .iter()
                .map(|h| Vote {
                    route: index.utterance(h.id).route as usize,
                    similarity: h.similarity,
                })
                .collect();
            policy::neighbour_scores(table, &votes)
        }
        Method::Centroid => index
            .centroids()
            .chunks_exact(dim)
            .map(|c| similarity::similarity(vector, c))
            .enumerate()
            .map(|(route, s)| Evidence {
                route,
                score: s,
                similarity: s,
            })
            .collect(),
        Method::Classifier => {
            let Some(classifier) = index.classifier() else {
                return Vec::new();
            };
            let lexical = index.lexical().scores(text);
            scoring::hybrid_probabilities(
                classifier.logits(vector),
                &lexical,
                table.defaults.lexical_weight,
            )
            .into_iter()
            .enumerate()
            .map(|(route, score)| Evidence {
                route,
                score,
                similarity: 0.0,
            })
            .collect()
        }
    }
}

/// Search and decision for one embedded prompt (timings left at zero).
pub fn decide(index: &Index, text: &str, embedded: &Embedded) -> Result<Routed, RouteError> {
    let table = index.table();
    // neighbours decide only by the `neighbours` method; the others report them, found by the
    // bounded search
    let hits = match table.defaults.method {
        Method::Neighbours => index.search(&embedded.vector, table.defaults.top_k)?,
        Method::Classifier | Method::Centroid => {
            index.neighbours(&embedded.vector, table.defaults.top_k)?
        }
    };
    // `min_similarity` needs every route's similarity; otherwise only the listed routes' are
    // reported, and computed
    let decision = if table.defaults.min_similarity.is_some() {
        let evidence = route_scores(index, text, &embedded.vector, &hits);
        policy::decide_listing(table, &evidence, REPORTED_ROUTES)
    } else {
        let evidence = scores_alone(index, text, &embedded.vector, &hits);
        policy::decide_listing_with(table, &evidence, REPORTED_ROUTES, |e| {
            match table.defaults.method {
                Method::Centroid => e.similarity,
                Method::Classifier | Method::Neighbours => {
                    centroid_similarity(index, &embedded.vector, e.route)
                }
            }
        })
    };
    let neighbours = hits
        .iter()
        .map(|h| {
            let u = index.utterance(h.id);
            NeighbourOut {
                route: table.routes[u.route as usize].name.clone(),
                utterance: u.text.clone(),
                similarity: h.similarity,
            }
        })
        .collect();
    Ok(Routed {
        decision,
        neighbours,
        tokens: embedded.tokens,
        truncated: embedded.truncated,
        prompt_tokens: embedded.prompt_tokens,
        timings: Timings::default(),
        vector: embedded.vector.clone(),
    })
}
