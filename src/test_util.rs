//! Test helpers shared by the integration tests, the benches and the fuzz targets (feature
//! `test-util`, never on in a release build): a stand-in embedding model that hashes words into
//! a small vector, deterministic and fast, and can be paused to hold a worker busy.

use std::sync::{Arc, Condvar, Mutex};

use crate::embed::{EmbedError, Embedded, Embedder, ModelInfo};

/// Words hashed into a 16-dimensional vector: the fake model's arithmetic.
pub mod word_hash {
    use crate::embed::{Embedded, ModelInfo, PoolingKind};

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
        crate::similarity::normalise(&mut v);
        Embedded {
            vector: v,
            tokens: words.len().min(8) + 2,
            truncated: words.len() > 6,
            prompt_tokens: words.len() + 2,
        }
    }
}

/// A prompt containing this makes [`FakeEmbedder`] panic, as a model's code might.
pub const FAKE_PANICS_ON: &str = "make the embedder panic";

/// An embedder for tests of the machinery around the model: it hashes words into a small
/// vector, can be paused to hold its worker busy, and panics on [`FAKE_PANICS_ON`].
#[derive(Clone)]
pub struct FakeEmbedder {
    info: ModelInfo,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

/// Whether `embed` may go on, and how many calls wait for it.
#[derive(Debug)]
struct Gate {
    open: bool,
    waiting: usize,
}

impl FakeEmbedder {
    pub fn new(id: &str) -> Self {
        FakeEmbedder {
            info: word_hash::info(id),
            gate: Arc::new((
                Mutex::new(Gate {
                    open: true,
                    waiting: 0,
                }),
                Condvar::new(),
            )),
        }
    }

    /// While closed, `embed` blocks.
    pub fn set_open(&self, open: bool) {
        let (lock, cv) = &*self.gate;
        lock.lock().unwrap().open = open;
        cv.notify_all();
    }

    /// Calls of `embed` (from any clone) blocked at the closed gate now.
    pub fn waiting(&self) -> usize {
        self.gate.0.lock().unwrap().waiting
    }
}

impl Embedder for FakeEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError> {
        let (lock, cv) = &*self.gate;
        let mut gate = lock.lock().unwrap();
        gate.waiting += 1;
        while !gate.open {
            gate = cv.wait(gate).unwrap();
        }
        gate.waiting -= 1;
        drop(gate);
        assert!(
            !texts.iter().any(|t| t.contains(FAKE_PANICS_ON)),
            "the fake embedder panics on request"
        );
        Ok(texts.iter().map(|t| word_hash::embed(t)).collect())
    }
}
