//! A stand-in for the embedding model, for tests of the machinery around it: words hashed into
//! a small vector, deterministic and fast. Declared by `#[path]` at the root of the test crate
//! (`tests/it/main.rs`) and of the request-body fuzz target, whose harness the test crate also
//! compiles: both fake embedders use it as `crate::word_hash`.

use pointsman::embed::{Embedded, ModelInfo, PoolingKind};

/// The identity of a fake model named `id`.
pub fn info(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        model_sha256: format!("{id}-model"),
        tokenizer_sha256: format!("{id}-tokenizer"),
        dimension: 16,
        pooling: PoolingKind::Mean,
        normalized: true,
        max_tokens: 8,
    }
}

/// One text's vector: each word adds one to a hashed coordinate, then the vector is normalised.
pub fn embed(text: &str) -> Embedded {
    let mut v = vec![0.0f32; 16];
    let words: Vec<&str> = text.split_whitespace().collect();
    for w in &words {
        let h = w
            .to_lowercase()
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        v[(h % 16) as usize] += 1.0;
    }
    pointsman::similarity::normalise(&mut v);
    Embedded {
        vector: v,
        tokens: words.len().min(8) + 2,
        truncated: words.len() > 6,
        prompt_tokens: words.len() + 2,
    }
}
