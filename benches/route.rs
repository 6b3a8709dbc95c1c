//! The cost of one decision beside its floor, measured side by side in one run:
//! - `embed_bare`: one forward pass of the model over the prompt (the physical floor);
//! - `engine_route`: `Engine::route` on the same prompt (queue, embed, search, decide);
//! - `http_route`: `POST /v1/route` over loopback to an in-process server;
//! - `policy_decide`: the decision alone, from precomputed neighbours;
//! - `at_scale/*`: the same on the CLINC150-sized (15,000 utterances) and 100,000-utterance
//!   tables, beside the bare embedding, when `benches/scale.sh DATASETS_DIR` has built them into
//!   `.cache/pointsman/bench-tables` (said, and left out, until then); `decide_*` is the
//!   decision after the forward pass alone.
//!
//! Needs the model: run `scripts/setup.sh` first (the bench fails loudly without it).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pointsman::config;
use pointsman::embed::{
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_DIR, DEFAULT_ORT_LIBRARY, Embedder, ModelSpec, OnnxEmbedder,
    PoolingKind, REFERENCE_MODEL_DIR,
};
use pointsman::engine::{self, Engine, EngineOptions};
use pointsman::index::IndexParams;
use pointsman::indexer;
use pointsman::policy::{self, Evidence};
use pointsman::server::{AppState, ServerOptions, app};

const PROMPT: &str = "Where is my order #12345? It was supposed to arrive last Tuesday.";

fn spec() -> ModelSpec {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(default))
    };
    ModelSpec {
        model_dir: path("POINTSMAN_MODEL_DIR", DEFAULT_MODEL_DIR),
        ort_library: path("POINTSMAN_ORT_LIB", DEFAULT_ORT_LIBRARY),
        pooling: PoolingKind::Mean,
        max_tokens: DEFAULT_MAX_TOKENS,
        // as each of `pointsman serve`'s workers runs by default
        intra_threads: 1,
        spinning: false,
    }
}

fn bench(c: &mut Criterion) {
    let spec = spec();
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routes");
    let table = config::load(&routes).expect("example routes");
    let dir = tempfile::tempdir().unwrap();
    let mut bare = OnnxEmbedder::load(&spec).expect("model (run scripts/setup.sh)");
    indexer::build(
        &table,
        &mut bare,
        dir.path(),
        IndexParams::default(),
        &mut |_, _| {},
    )
    .unwrap();
    // the embedding cache is off: every iteration pays a forward pass, as a new prompt does
    let uncached = EngineOptions {
        embed_cache_entries: 0,
        ..EngineOptions::default()
    };
    let engine = Arc::new(
        Engine::open(
            dir.path(),
            OnnxEmbedder::load_many(&spec, 1).unwrap(),
            uncached,
        )
        .unwrap(),
    );
    let cached = Engine::open(
        dir.path(),
        OnnxEmbedder::load_many(&spec, 1).unwrap(),
        EngineOptions::default(),
    )
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1/route", listener.local_addr().unwrap());
    let state = AppState::with_engine(engine.clone(), ServerOptions::default());
    rt.spawn(async move { axum::serve(listener, app(state)).await });
    let client = reqwest::Client::new();
    let body = serde_json::json!({ "prompt": PROMPT });

    let mut g = c.benchmark_group("decision_vs_floor");
    g.bench_function("embed_bare", |b| {
        b.iter(|| black_box(bare.embed(&[black_box(PROMPT)]).unwrap()))
    });
    g.bench_function("engine_route", |b| {
        b.iter(|| black_box(engine.route(black_box(PROMPT)).unwrap()))
    });
    g.bench_function("engine_route_cached", |b| {
        b.iter(|| black_box(cached.route(black_box(PROMPT)).unwrap()))
    });
    g.bench_function("http_route", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert!(r.status().is_success());
                black_box(r.bytes().await.unwrap())
            })
        })
    });
    g.finish();

    // one score per route, as the classifier gives
    let evidence: Vec<Evidence> = (0..table.routes.len())
        .map(|route| Evidence {
            route,
            score: 0.9 - route as f32 * 0.05,
            similarity: 0.5,
        })
        .collect();
    c.bench_function("policy_decide", |b| {
        b.iter(|| black_box(policy::decide(&table, black_box(&evidence))))
    });

    let tables = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/pointsman/bench-tables");
    let mut g = c.benchmark_group("at_scale");
    g.bench_function("embed_bare", |b| {
        b.iter(|| black_box(bare.embed(&[black_box(PROMPT)]).unwrap()))
    });
    for size in ["15000", "100000"] {
        let dir = tables.join(size).join("index");
        if !dir.join("CURRENT").is_file() {
            eprintln!(
                "at_scale/{size}: no table at {} (benches/scale.sh DATASETS_DIR builds it); left out",
                dir.display()
            );
            continue;
        }
        let engine = Engine::open(&dir, OnnxEmbedder::load_many(&spec, 1).unwrap(), uncached)
            .expect("a bench table (rebuild it with benches/scale.sh)");
        let index = engine.index();
        index.wait_for_graph().unwrap();
        let embedded = bare.embed(&[PROMPT]).unwrap().remove(0);
        g.bench_function(format!("engine_route_{size}"), |b| {
            b.iter(|| black_box(engine.route(black_box(PROMPT)).unwrap()))
        });
        g.bench_function(format!("decide_{size}"), |b| {
            b.iter(|| black_box(engine::decide(&index, PROMPT, black_box(&embedded)).unwrap()))
        });
    }
    g.finish();
}

/// The model and ONNX Runtime session settings, side by side: one prompt and a batch of 32
/// (prompts of the load test's kinds, so of several lengths), for the reference model (fp32
/// compute) and the default (int8 MatMuls, which embeds a batch's prompts one by one), by
/// intra-op threads, spinning and whether a batch is split by length (`padded` = one pass padded
/// to the longest prompt). The figures chose the defaults: the int8 model, one thread per
/// session, no spinning.
fn session_settings(c: &mut Criterion) {
    let kinds = [
        "Where is my order #{}? It should have arrived by now.",
        "My package {} arrived damaged and the warranty expired, how do I get a refund?",
        "Write a Python function that returns the {}th Fibonacci number",
        "How do I reset my password? I tried {} times",
    ];
    let prompts: Vec<String> = (0..32)
        .map(|i| kinds[i % kinds.len()].replace("{}", &(i * 7919).to_string()))
        .collect();
    let batch: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("session_settings");
    let variants = [
        ("reference", 1, false, true),
        ("reference", 1, false, false),
        ("reference", 2, false, true),
        ("q8", 1, false, true),
        ("q8", 2, false, true),
        ("q8", 1, true, true),
    ];
    for (model, threads, spinning, split) in variants {
        let mut s = spec();
        if model == "reference" {
            // where setup puts it: beside the default model
            let name = std::path::Path::new(REFERENCE_MODEL_DIR)
                .file_name()
                .unwrap();
            s.model_dir = s.model_dir.with_file_name(name);
        }
        s.intra_threads = threads;
        s.spinning = spinning;
        let mut e = OnnxEmbedder::load(&s)
            .expect("model (run scripts/setup.sh)")
            .with_sub_batching(split);
        let padded = if split { "" } else { "_padded" };
        let name = format!(
            "{model}_threads{threads}_spin{}{padded}",
            u8::from(spinning)
        );
        g.throughput(criterion::Throughput::Elements(1));
        g.bench_function(format!("{name}/one"), |b| {
            b.iter(|| black_box(e.embed(&[black_box(PROMPT)]).unwrap()))
        });
        g.throughput(criterion::Throughput::Elements(32));
        g.bench_function(format!("{name}/batch32"), |b| {
            b.iter(|| black_box(e.embed(black_box(&batch)).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(200);
    targets = bench
}

criterion_group! {
    name = settings;
    config = Criterion::default().sample_size(20);
    targets = session_settings
}
criterion_main!(benches, settings);
