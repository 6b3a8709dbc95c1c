//! Sentence embeddings: the [`Embedder`] trait and its ONNX implementation.
//!
//! The ONNX embedder loads a *local* model directory (never downloads anything) through fastembed
//! on ONNX Runtime, whose shared library is loaded from an explicit path: ort panics when it cannot
//! find the library, so the path is checked here first and a missing file is a clear error.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::hex;

/// What to run to fetch the default model and ONNX Runtime.
pub const SETUP_HINT: &str = "run `scripts/setup.sh` to fetch the default model and ONNX Runtime, or point --model-dir / --ort-lib at your own";

/// The files a model directory must hold.
pub const MODEL_FILE: &str = "model.onnx";
/// Tokenizer files read from the model directory, in the order they are hashed.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
];

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PoolingKind {
    /// Mean over the attention mask (sentence-transformers' default; all-MiniLM-L6-v2).
    Mean,
    /// The first token's vector.
    Cls,
}

/// Everything that identifies an embedding model's output; recorded in every index manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Human-readable id (the model directory's name).
    pub id: String,
    /// sha256 of `model.onnx`.
    pub model_sha256: String,
    /// sha256 over the tokenizer files, in [`TOKENIZER_FILES`] order.
    pub tokenizer_sha256: String,
    /// Vector dimension.
    pub dimension: usize,
    /// Pooling applied to token vectors.
    pub pooling: PoolingKind,
    /// Whether vectors are L2-normalised (always true here: similarities are dot products).
    pub normalized: bool,
    /// Longest input in tokens; longer prompts are truncated to their first `max_tokens` tokens.
    pub max_tokens: usize,
}

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The L2-normalised sentence vector.
    pub vector: Vec<f32>,
    /// Tokens the model saw (after truncation, special tokens included).
    pub tokens: usize,
    /// Whether the text was cut to `max_tokens`.
    pub truncated: bool,
    /// Tokens in the whole text by this model's tokenizer, before truncation: an estimate of
    /// the prompt's size for context-window checks and cost estimates.
    pub prompt_tokens: usize,
}

/// Errors of the embedding layer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The ONNX Runtime shared library is not where it was said to be.
    #[error("ONNX Runtime library not found at {path}; {SETUP_HINT}")]
    RuntimeMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The library exists but could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad {
        /// The library path.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// A model file is missing.
    #[error("model file {path} is missing; {SETUP_HINT}")]
    ModelFileMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A model file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// ONNX Runtime or the tokenizer refused the model.
    #[error("cannot load the model in {dir}: {reason}")]
    ModelLoad {
        /// The model directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Inference failed.
    #[error("embedding failed: {0}")]
    Inference(String),
}

/// Turns texts into sentence vectors.
pub trait Embedder: Send {
    /// What this embedder produces.
    fn info(&self) -> &ModelInfo;
    /// Embeds a batch; one result per text, in order.
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError>;
}

/// Where the model and the runtime live, and how to run them.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Directory with `model.onnx` and the tokenizer files.
    pub model_dir: PathBuf,
    /// Path of `libonnxruntime.so.*`.
    pub ort_library: PathBuf,
    /// Pooling to apply to the model's `last_hidden_state`.
    pub pooling: PoolingKind,
    /// Longest input in tokens.
    pub max_tokens: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Let idle intra-op threads spin (lower latency on an idle machine, wasted CPU otherwise).
    pub spinning: bool,
}

/// Default token window: sentence-transformers uses 256 for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_TOKENS: usize = 256;

static ORT_INIT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Loads ONNX Runtime from `path` once per process; later calls must name the same library.
pub fn init_runtime(path: &Path) -> Result<(), EmbedError> {
    if !path.is_file() {
        return Err(EmbedError::RuntimeMissing {
            path: path.to_path_buf(),
        });
    }
    let loaded = ORT_INIT.get_or_init(|| match ort::init_from(path) {
        Ok(_builder) => Ok(path.to_path_buf()),
        Err(e) => Err(e.to_string()),
    });
    match loaded {
        Ok(first) if first == path => Ok(()),
        Ok(first) => Err(EmbedError::RuntimeLoad {
            path: path.to_path_buf(),
            reason: format!(
                "this process already loaded ONNX Runtime from {}; one library per process",
                first.display()
            ),
        }),
        Err(reason) => Err(EmbedError::RuntimeLoad {
            path: path.to_path_buf(),
            reason: reason.clone(),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    if !path.is_file() {
        return Err(EmbedError::ModelFileMissing {
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        error: source,
    })
}

/// The model files of a directory, read and hashed, without loading anything into ONNX Runtime.
#[derive(Clone)]
pub struct ModelFiles {
    onnx: Vec<u8>,
    tokenizer: TokenizerFiles,
    /// Identity of the files (dimension not yet known).
    pub id: String,
    /// sha256 of `model.onnx`.
    pub model_sha256: String,
    /// sha256 over the tokenizer files.
    pub tokenizer_sha256: String,
}

impl ModelFiles {
    /// Reads `model.onnx` and the tokenizer files from `dir`.
    pub fn read(dir: &Path) -> Result<Self, EmbedError> {
        let onnx = read(&dir.join(MODEL_FILE))?;
        let mut tok = Vec::with_capacity(TOKENIZER_FILES.len());
        let mut hasher = Sha256::new();
        for name in TOKENIZER_FILES {
            let bytes = read(&dir.join(name))?;
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            tok.push(bytes);
        }
        let mut tok = tok.into_iter();
        let mut next = || tok.next().expect("four tokenizer files");
        let tokenizer = TokenizerFiles {
            tokenizer_file: next(),
            tokenizer_config_file: next(),
            special_tokens_map_file: next(),
            config_file: next(),
        };
        let id = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(ModelFiles {
            model_sha256: hex(&Sha256::digest(&onnx)),
            tokenizer_sha256: hex(&hasher.finalize()),
            onnx,
            tokenizer,
            id,
        })
    }
}

/// An ONNX sentence-embedding model run by fastembed.
pub struct OnnxEmbedder {
    model: TextEmbedding,
    info: ModelInfo,
}

impl std::fmt::Debug for OnnxEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEmbedder")
            .field("info", &self.info)
            .finish()
    }
}

impl OnnxEmbedder {
    /// Loads the runtime and the model described by `spec`.
    pub fn load(spec: &ModelSpec) -> Result<Self, EmbedError> {
        let files = ModelFiles::read(&spec.model_dir)?;
        Self::from_files(spec, files)
    }

    /// Loads several sessions of the same model (one per worker), reading the files once.
    pub fn load_many(spec: &ModelSpec, count: usize) -> Result<Vec<Self>, EmbedError> {
        let files = ModelFiles::read(&spec.model_dir)?;
        (0..count.max(1))
            .map(|_| Self::from_files(spec, files.clone()))
            .collect()
    }

    fn from_files(spec: &ModelSpec, files: ModelFiles) -> Result<Self, EmbedError> {
        init_runtime(&spec.ort_library)?;
        let pooling = match spec.pooling {
            PoolingKind::Mean => Pooling::Mean,
            PoolingKind::Cls => Pooling::Cls,
        };
        let model =
            UserDefinedEmbeddingModel::new(files.onnx, files.tokenizer).with_pooling(pooling);
        let options = InitOptionsUserDefined::new()
            .with_max_length(spec.max_tokens)
            .with_intra_threads(spec.intra_threads.max(1))
            // Spinning intra-op threads fight the server's own threads on a small machine.
            .with_session_config(
                "session.intra_op.allow_spinning",
                if spec.spinning { "1" } else { "0" },
            );
        let mut model = TextEmbedding::try_new_from_user_defined(model, options).map_err(|e| {
            EmbedError::ModelLoad {
                dir: spec.model_dir.clone(),
                reason: format!("{e:#}"),
            }
        })?;
        let probe = model
            .embed(["dimension probe"], None)
            .map_err(|e| EmbedError::ModelLoad {
                dir: spec.model_dir.clone(),
                reason: format!("test inference failed: {e:#}"),
            })?;
        let dimension = probe.first().map(Vec::len).unwrap_or(0);
        if dimension == 0 {
            return Err(EmbedError::ModelLoad {
                dir: spec.model_dir.clone(),
                reason: "the model produced an empty vector".into(),
            });
        }
        Ok(OnnxEmbedder {
            model,
            info: ModelInfo {
                id: files.id,
                model_sha256: files.model_sha256,
                tokenizer_sha256: files.tokenizer_sha256,
                dimension,
                pooling: spec.pooling,
                normalized: true,
                max_tokens: spec.max_tokens,
            },
        })
    }
}

impl Embedder for OnnxEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .model
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Inference(format!("tokenizer: {e}")))?;
        let vectors = self
            .model
            .embed(texts, Some(texts.len()))
            .map_err(|e| EmbedError::Inference(format!("{e:#}")))?;
        Ok(vectors
            .into_iter()
            .zip(encodings)
            .map(|(mut vector, enc)| {
                crate::similarity::normalise(&mut vector);
                // the batch is padded to its longest text: count real tokens only
                let real = |e: &tokenizers::Encoding| {
                    e.get_attention_mask().iter().filter(|&&m| m == 1).count()
                };
                let tokens = real(&enc);
                // each overflow piece repeats the two special tokens
                let overflow: usize = enc
                    .get_overflowing()
                    .iter()
                    .map(|o| real(o).saturating_sub(2))
                    .sum();
                Embedded {
                    vector,
                    tokens,
                    truncated: !enc.get_overflowing().is_empty(),
                    prompt_tokens: tokens + overflow,
                }
            })
            .collect())
    }
}
