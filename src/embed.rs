//! Sentence embeddings: the [`Embedder`] trait and its ONNX implementation.
//!
//! The ONNX embedder loads a *local* model directory (never downloads anything) through fastembed
//! on ONNX Runtime, whose shared library is loaded from an explicit path: ort panics when it cannot
//! find the library, so the path is checked here first and a missing file is a clear error.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fastembed::{
    InitOptionsUserDefined, OutputKey, Pooling, TextEmbedding, TokenizerFiles,
    UserDefinedEmbeddingModel,
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
    /// Embeds a batch; one result per text, in order. A text's vector must not depend on the
    /// other texts of the batch (beyond float rounding).
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError>;
    /// Whether several texts share a forward pass. When not, [`Embedder::embed`] runs them one
    /// by one, and a queue gains nothing by handing over more than one at a time.
    fn batches(&self) -> bool {
        true
    }
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

/// This CPU, as far as the default model's vectors depend on it: its name and its int8
/// instruction family. ONNX Runtime picks its integer kernels by the family, and its float
/// approximations (reciprocal square roots, exponentials) can differ between vendors even on
/// one family, so the same model file gives other vectors on another kind of CPU. An index's
/// manifest records where it was built, and a warning names both (see `engine::agreement`).
pub fn cpu_kind() -> String {
    let family = int8_family();
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|name| !name.is_empty())
        });
    match name {
        Some(name) => format!("{family} ({name})"),
        None => family,
    }
}

fn int8_family() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let family = if std::arch::is_x86_feature_detected!("avx512vnni") {
            "AVX-512 VNNI"
        } else if std::arch::is_x86_feature_detected!("avxvnni") {
            "AVX-VNNI"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            "AVX2 without VNNI"
        } else {
            "no AVX2"
        };
        format!("x86_64 with {family}")
    }
    #[cfg(target_arch = "aarch64")]
    {
        let family = if std::arch::is_aarch64_feature_detected!("i8mm") {
            "i8mm"
        } else if std::arch::is_aarch64_feature_detected!("dotprod") {
            "dotprod without i8mm"
        } else {
            "neither dotprod nor i8mm"
        };
        format!("aarch64 with {family}")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Where `scripts/setup.sh` puts the default model, all-MiniLM-L6-v2 with its MatMuls quantised
/// to int8 (relative to the working directory).
pub const DEFAULT_MODEL_DIR: &str = ".cache/pointsman/models/all-MiniLM-L6-v2-q8";
/// Where `scripts/setup.sh` puts the reference model, the same weights computed in fp32: 2.4
/// times the CPU per prompt for the same routing accuracy (README, "Models").
pub const REFERENCE_MODEL_DIR: &str = ".cache/pointsman/models/all-MiniLM-L6-v2";
/// Where `scripts/setup.sh` puts ONNX Runtime's shared library.
pub const DEFAULT_ORT_LIBRARY: &str = ".cache/pointsman/onnxruntime/libonnxruntime.so.1.31.1";

/// Default token window: sentence-transformers uses 256 for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_TOKENS: usize = 256;

static ORT_INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// The ONNX Runtime environment every session of this process is made in (after
/// [`init_runtime`]).
pub fn runtime() -> Option<ort::environment::Environment> {
    match ORT_INIT.get() {
        Some(Ok((_, env))) => Some(env.clone()),
        _ => None,
    }
}

/// Loads ONNX Runtime from `path` once per process; later calls must name the same library.
pub fn init_runtime(path: &Path) -> Result<(), EmbedError> {
    if !path.is_file() {
        return Err(EmbedError::RuntimeMissing {
            path: path.to_path_buf(),
        });
    }
    let loaded = ORT_INIT.get_or_init(|| {
        let env = ort::init_from(path)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        Ok((path.to_path_buf(), env))
    });
    match loaded {
        Ok((first, _)) if first == path => Ok(()),
        Ok((first, _)) => Err(EmbedError::RuntimeLoad {
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
    /// The model's tokenizer without window or padding, to count a long prompt's tokens.
    counter: tokenizers::Tokenizer,
    /// Where the tokenizer cuts: `max_tokens`, or the model's own limit if that is smaller.
    window: usize,
    pooling: Pooling,
    info: ModelInfo,
    /// Whether a batch is split by prompt length ([`padding_groups`]).
    sub_batching: bool,
    /// Whether texts share forward passes: not when the model quantises activations at run time.
    batches: bool,
}

/// Whether a model quantises its activations at run time (ONNX Runtime's `DynamicQuantizeLinear`
/// and `DynamicQuantizeMatMul` operators, whose names the ONNX file holds verbatim). Such a model
/// computes one scale over the whole input tensor, so a prompt's vector would depend on what else
/// is in its batch: measured with the default model, random batches of 16 CLINC150 prompts moved
/// vectors to a cosine of 0.947 with the same prompts embedded alone (0.991 on average), more
/// than quantisation itself does (0.973 at worst against the fp32 model). Such models embed each
/// text alone.
pub fn quantises_activations(onnx: &[u8]) -> bool {
    const OP: &[u8] = b"DynamicQuantize";
    onnx.windows(OP.len()).any(|w| w == OP)
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
        Self::many_from_files(spec, &ModelFiles::read(&spec.model_dir)?, count)
    }

    fn many_from_files(
        spec: &ModelSpec,
        files: &ModelFiles,
        count: usize,
    ) -> Result<Vec<Self>, EmbedError> {
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
        let batches = !quantises_activations(&files.onnx);
        // The tokenizer's batch encoder would hand batches to rayon's pool: threads that compete
        // with the sessions for the cores, which are already the unit of parallelism here
        // (`serve`'s workers, and the offline commands' `Sessions`). Process-wide, as the
        // tokenizers crate keeps it.
        tokenizers::utils::parallelism::set_parallelism(false);
        let model = UserDefinedEmbeddingModel::new(files.onnx, files.tokenizer)
            .with_pooling(pooling.clone());
        let mut options = InitOptionsUserDefined::new();
        if let Some(env) = runtime() {
            options = options.with_environment(env);
        }
        let options = options
            .with_max_length(spec.max_tokens)
            .with_intra_threads(spec.intra_threads.max(1))
            // Spinning intra-op threads fight the server's own threads on a small machine.
            .with_session_config(
                "session.intra_op.allow_spinning",
                if spec.spinning { "1" } else { "0" },
            )
            // ONNX Runtime 1.31's fused SkipLayerNormalization CPU kernel is slower than the
            // Add and LayerNormalization it replaces (1.18 ms against 0.32 ms on a [32, 19, 384]
            // tensor, one thread). Without the fusion (benches/route.rs, `session_settings`, one
            // thread, the two builds benched one after the other): the default model embeds one
            // prompt in 1.94 ms instead of 2.44, the reference model a batch of 32 in 108 ms
            // instead of 132.
            .with_session_config(
                "optimization.disable_specified_optimizers",
                "SkipLayerNormFusion",
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
        let window = model
            .tokenizer
            .get_truncation()
            .map_or(spec.max_tokens, |t| t.max_length);
        let mut counter = model.tokenizer.clone();
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| EmbedError::ModelLoad {
                dir: spec.model_dir.clone(),
                reason: format!("tokenizer: {e}"),
            })?;
        Ok(OnnxEmbedder {
            model,
            counter,
            window,
            pooling,
            sub_batching: true,
            batches,
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

/// Sessions of one model that share the work of a batch, each on its own thread: for the offline
/// commands (build, eval, calibrate), which would otherwise use one core with a model that embeds
/// texts one by one.
#[derive(Debug)]
pub struct Sessions {
    sessions: Vec<OnnxEmbedder>,
}

impl Sessions {
    /// Most sessions: each holds its own copy of the weights, and a build hands out batches of
    /// a few dozen texts.
    pub const MAX: usize = 8;

    /// Loads the model for `cores` cores: a model that batches gets one session of `spec`'s
    /// threads, one that embeds texts one by one a single-thread session per core (at most
    /// [`Sessions::MAX`]). The files are read once.
    pub fn load(spec: &ModelSpec, cores: usize) -> Result<Self, EmbedError> {
        let files = ModelFiles::read(&spec.model_dir)?;
        let sessions = if quantises_activations(&files.onnx) && cores > 1 {
            let single = ModelSpec {
                intra_threads: 1,
                ..spec.clone()
            };
            OnnxEmbedder::many_from_files(&single, &files, cores.min(Self::MAX))?
        } else {
            vec![OnnxEmbedder::from_files(spec, files)?]
        };
        Ok(Sessions { sessions })
    }
}

impl Embedder for Sessions {
    fn info(&self) -> &ModelInfo {
        self.sessions[0].info()
    }

    fn batches(&self) -> bool {
        self.sessions[0].batches()
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError> {
        if self.sessions.len() == 1 || texts.len() < 2 {
            return self.sessions[0].embed(texts);
        }
        let chunk = texts.len().div_ceil(self.sessions.len());
        std::thread::scope(|scope| {
            let parts: Vec<_> = self
                .sessions
                .iter_mut()
                .zip(texts.chunks(chunk))
                .map(|(session, part)| scope.spawn(move || session.embed(part)))
                .collect();
            let mut out = Vec::with_capacity(texts.len());
            for part in parts {
                out.extend(part.join().expect("an embedding thread panicked")?);
            }
            Ok(out)
        })
    }
}

/// What one forward pass costs beyond its tokens, in tokens: a call over `n` prompts padded to
/// `t` tokens costs about `PASS_OVERHEAD_TOKENS + n × t` token-times. Measured with the reference
/// (fp32) model on one thread (`session_settings`; the default model does not batch): one
/// 18-token prompt 4.71 ms, 3.66 ms a prompt in a batch of 32 prompts of about 17 tokens split by
/// length (~0.2 ms a token), so ~1 ms (~5 tokens) a call; rounded up, as fewer calls also mean
/// fewer hand-offs.
pub const PASS_OVERHEAD_TOKENS: usize = 8;

/// Splits prompts sorted by length (shortest first) into consecutive groups, each embedded in
/// one forward pass padded to its longest prompt, so that the passes cost least in all:
/// `Σ (overhead + prompts × longest)`. A batch of short questions and one long complaint then
/// pads the questions to their own length, not to the complaint's. Exact (dynamic programming
/// over the split points); a batch is at most a few hundred prompts.
pub fn padding_groups(sorted: &[usize], overhead: usize) -> Vec<std::ops::Range<usize>> {
    let n = sorted.len();
    // best[j]: least cost of the first j prompts; cut[j]: where the last group of them starts
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let (cost, start) = (0..j)
            .map(|i| (best[i] + overhead + (j - i) * sorted[j - 1], i))
            .min()
            .expect("j ≥ 1");
        best[j] = cost;
        cut[j] = start;
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(cut[end]..end);
        end = cut[end];
    }
    groups.reverse();
    groups
}

impl OnnxEmbedder {
    /// With `false`, every batch is one forward pass padded to its longest prompt (the cost
    /// [`padding_groups`] saves; for measuring it).
    pub fn with_sub_batching(mut self, on: bool) -> Self {
        self.sub_batching = on;
        self
    }

    /// One forward pass over `texts`: each text's vector (pooled and L2-normalised exactly as
    /// fastembed's `embed` does, bit for bit) and its real token count, read off the attention
    /// mask of the pass's own tokenisation, so that a text is tokenised once.
    fn forward(&mut self, texts: &[&str]) -> Result<Vec<(Vec<f32>, usize)>, EmbedError> {
        let fail = |e: fastembed::Error| EmbedError::Inference(format!("{e:#}"));
        let output = self
            .model
            .transform(texts, Some(texts.len()))
            .map_err(fail)?;
        let mut out = Vec::with_capacity(texts.len());
        for batch in output.into_raw() {
            let pooled = batch
                .select_and_pool_output(&OUTPUT_PRECEDENCE, Some(self.pooling.clone()))
                .map_err(fail)?;
            let tokens = batch
                .attention_mask_array
                .rows()
                .into_iter()
                .map(|row| row.iter().filter(|&&m| m == 1).count());
            for (row, tokens) in pooled.rows().into_iter().zip(tokens) {
                // fastembed's own normalisation, then ours (as before this pass was inlined)
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                let mut vector: Vec<f32> = row.iter().map(|x| x / (norm + 1e-12)).collect();
                crate::similarity::normalise(&mut vector);
                out.push((vector, tokens));
            }
        }
        if out.len() != texts.len() {
            return Err(EmbedError::Inference(format!(
                "the model returned {} vectors for {} texts",
                out.len(),
                texts.len()
            )));
        }
        Ok(out)
    }

    /// fastembed's own `embed` of `texts`, normalised as [`Embedder::embed`] normalises: the
    /// vectors `embed` must give bit for bit (for the tests that check it).
    #[doc(hidden)]
    pub fn fastembed_vectors(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = self
            .model
            .embed(texts, Some(texts.len()))
            .map_err(|e| EmbedError::Inference(format!("{e:#}")))?;
        vectors
            .iter_mut()
            .for_each(|v| crate::similarity::normalise(v));
        Ok(vectors)
    }

    /// Whole-prompt token count of a text that filled the window, and whether it was cut: it is
    /// tokenised again without a window (only such texts pay a second tokenisation).
    fn prompt_tokens(&self, text: &str, window: usize) -> Result<(usize, bool), EmbedError> {
        let whole = self
            .counter
            .encode(text, true)
            .map_err(|e| EmbedError::Inference(format!("tokenizer: {e}")))?
            .len();
        Ok((whole.max(window), whole > window))
    }
}

/// Where fastembed's `embed` looks for the token vectors (its own precedence, which it does not
/// export).
const OUTPUT_PRECEDENCE: &[OutputKey] = &[
    OutputKey::OnlyOne,
    OutputKey::ByName("text_embeds"),
    OutputKey::ByName("last_hidden_state"),
    OutputKey::ByName("sentence_embedding"),
];

impl Embedder for OnnxEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn batches(&self) -> bool {
        self.batches
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedded>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut passes: Vec<(Vec<f32>, usize)> = vec![(Vec::new(), 0); texts.len()];
        if !self.batches {
            for (v, text) in passes.iter_mut().zip(texts) {
                *v = self.forward(&[text])?.remove(0);
            }
        } else if self.sub_batching && texts.len() > 1 {
            // the lengths that choose the groups are estimates: the tokeniser runs once, inside
            // each pass
            let lengths: Vec<usize> = texts.iter().map(|t| estimate_tokens(t)).collect();
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| lengths[i]);
            let sorted: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
            for group in padding_groups(&sorted, PASS_OVERHEAD_TOKENS) {
                let members = &order[group];
                let group_texts: Vec<&str> = members.iter().map(|&i| texts[i]).collect();
                for (&i, v) in members.iter().zip(self.forward(&group_texts)?) {
                    passes[i] = v;
                }
            }
        } else {
            passes = self.forward(texts)?;
        }
        let window = self.window;
        passes
            .into_iter()
            .zip(texts)
            .map(|((vector, tokens), text)| {
                let (prompt_tokens, truncated) = if tokens >= window {
                    self.prompt_tokens(text, tokens)?
                } else {
                    (tokens, false)
                };
                Ok(Embedded {
                    vector,
                    tokens,
                    truncated,
                    prompt_tokens,
                })
            })
            .collect()
    }
}

/// A text's length in tokens, roughly (about four bytes a token for English text), for grouping
/// a batch by length before it is tokenised.
pub(crate) fn estimate_tokens(text: &str) -> usize {
    text.len() / 4 + 2
}

#[cfg(test)]
mod tests {
    use super::{cpu_kind, padding_groups, quantises_activations};

    #[test]
    fn the_cpu_kind_names_the_architecture() {
        let kind = cpu_kind();
        assert!(kind.starts_with(std::env::consts::ARCH), "{kind}");
    }

    #[test]
    fn models_that_quantise_activations_are_told_by_their_operators() {
        assert!(quantises_activations(
            b"\x0a\x05nodes\x22\x15DynamicQuantizeMatMul"
        ));
        assert!(quantises_activations(b"..DynamicQuantizeLinear.."));
        assert!(!quantises_activations(
            b"..MatMul..QuantizeLinear..Dynamic.."
        ));
        assert!(!quantises_activations(b""));
    }

    /// The cost `padding_groups` minimises.
    fn cost(sorted: &[usize], groups: &[std::ops::Range<usize>], overhead: usize) -> usize {
        groups
            .iter()
            .map(|g| overhead + g.len() * sorted[g.end - 1])
            .sum()
    }

    #[test]
    fn padding_groups_cover_every_prompt_once_in_order() {
        let sorted = [12, 13, 14, 16, 17, 19, 22, 24, 24, 60];
        let groups = padding_groups(&sorted, 8);
        assert_eq!(groups.first().unwrap().start, 0);
        assert_eq!(groups.last().unwrap().end, sorted.len());
        for pair in groups.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(groups.iter().all(|g| !g.is_empty()));
    }

    #[test]
    fn padding_groups_find_the_cheapest_split() {
        // every split of a small batch, tried by brute force
        let sorted = [5, 6, 6, 9, 14, 15, 15, 40];
        let n = sorted.len();
        for overhead in [0, 3, 8, 30, 500] {
            let best = (0u32..1 << (n - 1))
                .map(|cuts| {
                    let mut groups = Vec::new();
                    let mut start = 0;
                    for i in 1..n {
                        if cuts & (1 << (i - 1)) != 0 {
                            groups.push(start..i);
                            start = i;
                        }
                    }
                    groups.push(start..n);
                    cost(&sorted, &groups, overhead)
                })
                .min()
                .unwrap();
            let groups = padding_groups(&sorted, overhead);
            assert_eq!(
                cost(&sorted, &groups, overhead),
                best,
                "overhead {overhead}"
            );
        }
    }

    #[test]
    fn padding_groups_keep_similar_prompts_together_and_cut_off_outliers() {
        // 31 questions of 16–19 tokens and one 200-token complaint: padding the questions to 200
        // would cost ten times their own length
        let mut sorted = vec![16; 10];
        sorted.extend([17; 10]);
        sorted.extend([19; 11]);
        sorted.push(200);
        let groups = padding_groups(&sorted, 8);
        assert_eq!(groups.last().unwrap().clone(), 31..32);
        // a uniform batch is one pass; a huge overhead makes any batch one pass
        assert_eq!(padding_groups(&[17; 32], 8), vec![0..32]);
        assert_eq!(padding_groups(&sorted, 100_000), vec![0..32]);
        assert!(padding_groups(&[], 8).is_empty());
    }
}
