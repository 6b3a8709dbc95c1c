//! Routing on the real embedding model.

use pointsman::config;
use pointsman::embed::{Embedder, OnnxEmbedder, REFERENCE_MODEL_DIR, Sessions};
use pointsman::engine::{Engine, EngineOptions};
use pointsman::index::{Index, IndexError};
use pointsman::policy::{FallbackReason, Outcome};

use crate::common::*;

const SMALL_MODEL: &str = "llama-3.1-8b-instruct";
const PREMIUM_MODEL: &str = "claude-3.5-sonnet";

#[test]
fn seed_order_status_goes_to_the_small_model() {
    let routed = example_engine().route("Where is my order #12345?").unwrap();
    assert_eq!(routed.decision.route(), Some("order_status"));
    assert_eq!(routed.decision.model, SMALL_MODEL);
    assert!(!routed.truncated);
}

#[test]
fn seed_complex_refund_goes_to_the_premium_model() {
    let routed = example_engine()
        .route(
            "My package arrived damaged, but my warranty expired yesterday, and I paid using \
             three different gift cards. How do I get a refund?",
        )
        .unwrap();
    assert_eq!(routed.decision.route(), Some("complex_support"));
    assert_eq!(routed.decision.model, PREMIUM_MODEL);
}

#[test]
fn seed_unrelated_prompt_falls_back_to_the_default() {
    let engine = example_engine();
    let built = example_index();
    for prompt in [
        "What is the best season to plant tomatoes in my garden?",
        "Can you recommend a good fantasy novel?",
    ] {
        let routed = engine.route(prompt).unwrap();
        assert_eq!(
            routed.decision.outcome,
            Outcome::Fallback {
                reason: FallbackReason::BelowThreshold
            },
            "{prompt}: {:?}",
            routed.decision.routes
        );
        assert_eq!(routed.decision.model, built.table.default_model);
        // the scores behind the fallback are still reported
        assert!(!routed.decision.routes.is_empty());
        assert!(routed.decision.routes.iter().all(|r| !r.passed));
    }
}

#[test]
fn assistant_routes_match_their_tasks() {
    let engine = example_engine();
    for (prompt, route) in [
        (
            "Can you write a Java method that checks whether a string is a palindrome?",
            "code",
        ),
        ("How do you say thank you in Korean?", "translation"),
        ("Solve the equation 2x - 5 = 11", "math"),
    ] {
        let routed = engine.route(prompt).unwrap();
        assert_eq!(routed.decision.route(), Some(route), "{prompt}");
    }
}

#[test]
fn a_prompt_equal_to_an_utterance_scores_one() {
    let routed = example_engine().route("Track order 98765").unwrap();
    assert_eq!(routed.decision.route(), Some("order_status"));
    assert!((routed.neighbours[0].similarity - 1.0).abs() < 1e-4);
    assert_eq!(routed.neighbours[0].utterance, "Track order 98765");
}

#[test]
fn long_prompts_are_truncated_and_say_so() {
    let long = "Where is my order? ".repeat(200);
    let routed = example_engine().route(&long).unwrap();
    assert!(routed.truncated);
    assert_eq!(routed.tokens, 256);
    let short = example_engine().route("Where is my order?").unwrap();
    assert!(!short.truncated);
    assert_eq!(short.tokens, 7);
}

#[test]
fn every_example_route_file_validates_and_the_set_builds() {
    let files = config::route_files(&example_routes()).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    let table = config::load(&example_routes()).unwrap();
    assert!(table.routes.len() >= 5);
    // built once for all tests; open it again from disk
    let index = Index::open(example_index().dir.path()).unwrap();
    assert_eq!(index.len(), table.utterance_count());
    assert_eq!(index.table(), &table);
    assert_eq!(index.manifest().route_table_sha256, table.canonical_hash());
}

#[test]
fn one_tokenisation_gives_fastembeds_vectors_bit_for_bit_and_the_whole_prompts_token_count() {
    let mut embedder = OnnxEmbedder::load(&model_spec()).unwrap();
    let long = "Where is my order? ".repeat(200);
    let texts = [
        "Where is my order #12345?",
        "My package arrived damaged, but my warranty expired yesterday.",
        "¿Dónde está mi pedido? 注文はどこですか",
        long.as_str(),
    ];
    for text in texts {
        let ours = embedder.embed(&[text]).unwrap().remove(0);
        let theirs = embedder.fastembed_vectors(&[text]).unwrap().remove(0);
        assert_eq!(ours.vector, theirs, "{text}");
        // the whole prompt's tokens, by the tokenizer without a window
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(model_spec().model_dir.join("tokenizer.json"))
                .unwrap();
        tokenizer.with_truncation(None).unwrap();
        tokenizer.with_padding(None);
        let whole = tokenizer.encode(text, true).unwrap().len();
        assert_eq!(ours.prompt_tokens, whole, "{text}");
        assert_eq!(ours.truncated, whole > 256, "{text}");
        assert_eq!(ours.tokens, whole.min(256), "{text}");
    }
}

#[test]
fn batch_embedding_matches_single_embedding() {
    let mut embedder = OnnxEmbedder::load(&model_spec()).unwrap();
    let texts = [
        "Where is my order?",
        "a much longer sentence about refunds and warranties",
    ];
    let batch = embedder.embed(&texts).unwrap();
    for (text, b) in texts.iter().zip(&batch) {
        let single = &embedder.embed(&[text]).unwrap()[0];
        let sim = pointsman::similarity::similarity(&single.vector, &b.vector);
        assert!(sim > 0.9999, "{text}: {sim}");
        assert_eq!(single.tokens, b.tokens);
    }
    let norm: f32 = batch[0].vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert_eq!(embedder.info().dimension, 384);
    // the default model quantises activations per call: it must not share forward passes
    assert!(!embedder.batches());
}

#[test]
fn sessions_share_a_batch_and_give_the_vectors_of_one_session() {
    let texts: Vec<String> = (0..9)
        .map(|i| {
            format!(
                "Where is parcel {i} of my order? {}",
                "It is late. ".repeat(i)
            )
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut one = OnnxEmbedder::load(&model_spec()).unwrap();
    let mut three = Sessions::load(&model_spec(), 3).unwrap();
    assert!(!three.batches());
    let a = one.embed(&texts).unwrap();
    let b = three.embed(&texts).unwrap();
    assert_eq!(
        a, b,
        "the same vectors, in the same order, whichever session made them"
    );
}

#[test]
fn the_reference_model_batches_by_length_and_matches_single_embeddings() {
    let mut spec = model_spec();
    // where setup puts it: beside the default model
    let name = std::path::Path::new(REFERENCE_MODEL_DIR)
        .file_name()
        .unwrap();
    spec.model_dir = spec.model_dir.with_file_name(name);
    let split = OnnxEmbedder::load(&spec).expect("reference model (run scripts/setup.sh)");
    assert!(split.batches());
    let mut padded = OnnxEmbedder::load(&spec).unwrap().with_sub_batching(false);
    let mut split = split;
    // short questions and one long complaint: split into passes by length
    let mut texts: Vec<String> = (0..12)
        .map(|i| format!("Where is my order #{i}?"))
        .collect();
    texts.push("My package arrived damaged, my warranty expired yesterday and I paid with three gift cards: how do I get a refund? ".repeat(3));
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let a = split.embed(&texts).unwrap();
    let b = padded.embed(&texts).unwrap();
    for ((text, x), y) in texts.iter().zip(&a).zip(&b) {
        let alone = &split.embed(&[text]).unwrap()[0];
        for other in [y, alone] {
            let sim = pointsman::similarity::similarity(&x.vector, &other.vector);
            assert!(sim > 0.9999, "{text}: {sim}");
        }
        assert_eq!((x.tokens, x.prompt_tokens), (y.tokens, y.prompt_tokens));
    }
}

/// The check that warns when an index's vectors come from another kind of CPU finds this
/// machine's build and serve in agreement, to float rounding.
#[test]
fn this_machine_embeds_the_example_utterances_as_its_build_did() {
    let engine = example_engine();
    let index = engine.index();
    let agreement = engine.agreement(&index).unwrap();
    assert_eq!(agreement.checked, pointsman::engine::agreement::SAMPLE);
    assert!(agreement.lowest_cosine > 0.99999, "{agreement:?}");
    assert_eq!(agreement.warning(&index), None);
}

#[test]
fn an_index_built_with_another_model_is_refused() {
    let mut fake = FakeEmbedder::new("other-model");
    let dir = fake_index(&mut fake);
    let real = OnnxEmbedder::load_many(&model_spec(), 1).unwrap();
    let err = Engine::open(dir.path(), real, EngineOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            pointsman::engine::RouteError::Index(IndexError::ModelMismatch { .. })
        ),
        "{text}"
    );
    assert!(
        text.contains("other-model") && text.contains("rebuild it with `pointsman build`"),
        "{text}"
    );

    // and the other way round: the real index refused by the fake model
    let err = Engine::open(
        example_index().dir.path(),
        vec![FakeEmbedder::new("fake")],
        EngineOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("was built with model `all-MiniLM-L6-v2-q8`"),
        "{err}"
    );
}

#[test]
fn a_missing_runtime_library_is_an_error_not_a_panic() {
    let mut spec = model_spec();
    spec.ort_library = "/nonexistent/libonnxruntime.so".into();
    let err = OnnxEmbedder::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && err.contains("scripts/setup.sh"),
        "{err}"
    );
    let mut spec = model_spec();
    spec.model_dir = "/nonexistent/model".into();
    let err = OnnxEmbedder::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/model/model.onnx") && err.contains("scripts/setup.sh"),
        "{err}"
    );
}
