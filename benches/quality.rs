//! The quality step of a decision, with a predictor trained on 10,000 graded examples of 11
//! models: predicting every candidate's quality for one prompt embedding and ranking them by the
//! knob (what `dispatch` adds to a decision), trained with the options `build --outcomes`
//! uses, beside one exact scan of the same 10,000 vectors
//! for scale. Training time is printed once. Seeded clustered 384-d vectors; each model's
//! quality depends on the cluster, as real outcomes depend on the task.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

// the shared helpers are for every bench; this one uses the vectors only
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use common::{DIM, Rng, clustered};
use criterion::{Criterion, criterion_group, criterion_main};
use pointsman::quality::{Graded, Knob, KnobKind, Scored, rank, train};

const EXAMPLES: usize = 10_000;
const MODELS: usize = 11;
const CLUSTERS: usize = 60;

fn graded(vectors: &[f32]) -> (Vec<Graded>, Vec<String>) {
    let models: Vec<String> = (0..MODELS).map(|m| format!("model-{m}")).collect();
    let mut rng = Rng(3);
    let graded = (0..vectors.len() / DIM)
        .map(|i| {
            let cluster = i % CLUSTERS;
            let quality: BTreeMap<String, f32> = models
                .iter()
                .enumerate()
                .map(|(m, name)| {
                    // bigger models are better, and each is good at its own clusters
                    let p = 0.3 + 0.05 * m as f32 + if (cluster + m) % 4 == 0 { 0.3 } else { 0.0 };
                    (name.clone(), f32::from(rng.next() * 0.5 + 0.5 < p))
                })
                .collect();
            let cost_usd = models
                .iter()
                .enumerate()
                .map(|(m, name)| (name.clone(), 1e-5 * (1 << m) as f64))
                .collect();
            Graded {
                prompt: format!("prompt {i}"),
                quality,
                cost_usd,
                id: None,
            }
        })
        .collect();
    (graded, models)
}

fn bench(c: &mut Criterion) {
    let vectors = clustered(EXAMPLES, CLUSTERS, 1);
    let (graded, models) = graded(&vectors);
    let started = Instant::now();
    // the options `build --outcomes` trains with
    let options =
        pointsman::indexer::train_options(KnobKind::CostWeight, BTreeMap::new(), EXAMPLES);
    let (predictor, report) = train(&vectors, DIM, &graded, &models, &options).expect("trains");
    eprintln!(
        "trained on {EXAMPLES} graded examples × {MODELS} models in {:.1} s; chose {}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&report.chosen).unwrap_or_default()
    );
    let queries = clustered(200, CLUSTERS, 7);
    let costs: Vec<f64> = (0..MODELS).map(|m| 1e-5 * (1 << m) as f64).collect();
    let mut qi = 0;
    let mut next = || {
        qi = (qi + 1) % (queries.len() / DIM);
        &queries[qi * DIM..(qi + 1) * DIM]
    };
    let mut g = c.benchmark_group("quality_step");
    g.bench_function("predict_and_rank_11_models", |b| {
        b.iter(|| {
            let q = predictor.predict(next());
            let scored: Vec<Scored> = q
                .iter()
                .zip(&costs)
                .map(|(&quality, &cost_usd)| Scored { quality, cost_usd })
                .collect();
            black_box(rank(&scored, Knob::CostWeight(10.0)))
        })
    });
    g.bench_function("exact_scan_10000_for_scale", |b| {
        b.iter(|| black_box(pointsman::index::exact_search(&vectors, DIM, next(), 5)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
