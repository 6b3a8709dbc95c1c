//! The engine: opens an index, checks it against the embedding model, and answers `route(text)`.
//!
//! Each model session belongs to a worker thread, fed by one bounded queue. A worker takes its
//! share of the jobs waiting in the queue (up to a count and a token budget) and embeds them as
//! one batch, so concurrent requests share forward passes, unless its embedder runs texts one by
//! one ([`Embedder::batches`]); then it takes one job at a time. A full queue refuses at once
//! ([`RouteError::Overloaded`]) instead of queueing without bound, and jobs whose caller has gone
//! away are dropped before they cost a forward pass.
//!
//! When no job waits and a worker is idle, a single short prompt (up to [`HERE_MAX_TOKENS`]) does
//! not go through the queue: the caller borrows the idle worker's session and routes on its own
//! thread. That saves the two thread wake-ups of a hand-off (0.05-0.08 ms each on a small
//! virtual machine), which at low load were most of what a decision cost beyond the forward
//! pass. On an async runtime the forward pass holds that runtime thread for its length: a few
//! milliseconds, as only short prompts are routed so (others wait in the queue, where two
//! wake-ups are little beside their longer pass), and only while a session is idle.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use lru::LruCache;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::embed::{EmbedError, Embedded, Embedder, ModelInfo};
use crate::index::{Index, IndexError};
use crate::policy::Decision;

pub mod agreement;
mod decide;
mod queue;

pub use agreement::Agreement;
pub use decide::{REPORTED_ROUTES, decide, route_scores};
use queue::{Idle, Queue, Refused};

/// The longest prompt, in estimated tokens, routed on the caller's thread (a few milliseconds
/// of forward pass with the default model).
pub const HERE_MAX_TOKENS: usize = 128;

/// A model session as the queue keeps it.
type Session = Box<dyn Embedder>;

/// How the engine runs its workers.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Queued prompts beyond which new ones are refused with [`RouteError::Overloaded`].
    pub queue_capacity: usize,
    /// Most prompts embedded in one forward pass.
    pub max_batch: usize,
    /// Most padded tokens (longest prompt × prompts) in one forward pass.
    pub max_batch_tokens: usize,
    /// Embeddings kept for repeated prompts (keyed by the prompt with whitespace collapsed);
    /// 0 turns the cache off.
    pub embed_cache_entries: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            queue_capacity: 256,
            max_batch: 32,
            max_batch_tokens: 4096,
            embed_cache_entries: 4096,
        }
    }
}

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The queue is full; try again shortly.
    #[error("the router is overloaded ({capacity} prompts queued); retry shortly")]
    Overloaded {
        /// Queue capacity.
        capacity: usize,
    },
    /// The prompt is empty or only whitespace.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The engine is shutting down.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The index could not be opened or searched.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// A nearest utterance behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NeighbourOut {
    /// Its route.
    pub route: String,
    /// The utterance.
    pub utterance: String,
    /// Cosine similarity to the prompt.
    pub similarity: f32,
}

/// Where the time of one decision went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default, utoipa::ToSchema)]
pub struct Timings {
    /// Waiting in the queue for a worker (0 for a prompt routed on the caller's thread).
    #[serde(serialize_with = "to_the_microsecond")]
    pub queue_ms: f64,
    /// The forward pass (shared with the rest of the batch).
    #[serde(serialize_with = "to_the_microsecond")]
    pub embed_ms: f64,
    /// Nearest-neighbour search and decision.
    #[serde(serialize_with = "to_the_microsecond")]
    pub search_ms: f64,
    /// Submission to answer.
    #[serde(serialize_with = "to_the_microsecond")]
    pub total_ms: f64,
    /// How many prompts shared the forward pass (0 when the embedding came from the cache).
    pub batch_size: usize,
    /// Whether the embedding came from the cache.
    pub cached: bool,
}

/// Milliseconds written to the microsecond, as the timing headers are (`4.667`, not
/// `4.6670169999999995`): finer digits are the clock's noise.
fn to_the_microsecond<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms * 1000.0).round() / 1000.0)
}

/// One routed prompt: the decision and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Routed {
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// The nearest utterances, best first.
    pub neighbours: Vec<NeighbourOut>,
    /// Tokens the embedding model saw.
    pub tokens: usize,
    /// Whether the prompt was cut to the model's window (its first `max_tokens` tokens are used).
    pub truncated: bool,
    /// Tokens in the whole prompt, by the embedding model's tokenizer.
    pub prompt_tokens: usize,
    /// Where the time went.
    pub timings: Timings,
    /// The prompt's embedding, for the steps after the scores (the quality predictor).
    #[serde(skip)]
    pub vector: Vec<f32>,
}

struct Job {
    text: String,
    /// The index snapshot the caller took: the decision is made on it, whatever is live by then.
    index: Arc<Index>,
    submitted: Instant,
    reply: oneshot::Sender<Result<Routed, RouteError>>,
}

/// A bounded LRU of prompt embeddings with hit and miss counters.
struct EmbedCache {
    entries: Mutex<LruCache<u128, Arc<Embedded>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The cache key: a 128-bit hash of the prompt with whitespace runs collapsed (the tokenizer
/// splits on them anyway, so the embedding is the same). A hash, so that an entry costs the
/// same whatever the prompt's size.
fn cache_key(text: &str) -> u128 {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    xxhash_rust::xxh3::xxh3_128(collapsed.as_bytes())
}

impl EmbedCache {
    fn new(entries: usize) -> Option<Self> {
        NonZeroUsize::new(entries).map(|n| EmbedCache {
            entries: Mutex::new(LruCache::new(n)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn get(&self, text: &str) -> Option<Arc<Embedded>> {
        let found = self
            .entries
            .lock()
            .expect("cache lock")
            .get(&cache_key(text))
            .cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn put(&self, text: &str, embedded: Embedded) {
        self.entries
            .lock()
            .expect("cache lock")
            .put(cache_key(text), Arc::new(embedded));
    }
}

/// Embedding-cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Prompts answered from the cache.
    pub hits: u64,
    /// Prompts that needed a forward pass.
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
}

/// State shared by the engine's handle and its workers.
struct Shared {
    index: RwLock<Arc<Index>>,
    model: ModelInfo,
    cache: Option<EmbedCache>,
}

/// Opens indexes and routes prompts.
pub struct Engine {
    shared: Arc<Shared>,
    jobs: Arc<Queue<Job, Session>>,
    options: EngineOptions,
    workers: usize,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // the workers finish what is queued, then end
        self.jobs.close();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.shared.model.id)
            .field("workers", &self.workers)
            .finish()
    }
}

/// Refuses an index built with another model than `model`.
pub fn check_compatible(index: &Index, model: &ModelInfo) -> Result<(), IndexError> {
    let built = &index.manifest().model;
    let same = built.model_sha256 == model.model_sha256
        && built.tokenizer_sha256 == model.tokenizer_sha256
        && built.dimension == model.dimension
        && built.pooling == model.pooling
        && built.normalized == model.normalized
        && built.max_tokens == model.max_tokens;
    if same {
        return Ok(());
    }
    let detail = |m: &ModelInfo| {
        format!(
            "model sha256 {}…, tokenizer sha256 {}…, dimension {}, {:?} pooling, max {} tokens",
            m.model_sha256.chars().take(12).collect::<String>(),
            m.tokenizer_sha256.chars().take(12).collect::<String>(),
            m.dimension,
            m.pooling,
            m.max_tokens
        )
    };
    Err(IndexError::ModelMismatch {
        path: index.generation().to_path_buf(),
        built_id: built.id.clone(),
        built_detail: detail(built),
        loaded_id: model.id.clone(),
        loaded_detail: detail(model),
    })
}

impl Engine {
    /// Starts one worker per embedder over the index in `dir`, after checking that the index was
    /// built with the same model.
    pub fn open<E: Embedder + 'static>(
        dir: &Path,
        embedders: Vec<E>,
        options: EngineOptions,
    ) -> Result<Self, RouteError> {
        let index = Index::open(dir)?;
        Self::with_index(index, embedders, options)
    }

    /// Like [`Engine::open`], with an index already opened.
    pub fn with_index<E: Embedder + 'static>(
        index: Index,
        embedders: Vec<E>,
        options: EngineOptions,
    ) -> Result<Self, RouteError> {
        let model = embedders
            .first()
            .map(|e| e.info().clone())
            .ok_or_else(|| EmbedError::Inference("no embedder given".into()))?;
        check_compatible(&index, &model)?;
        let shared = Arc::new(Shared {
            index: RwLock::new(Arc::new(index)),
            model,
            cache: EmbedCache::new(options.embed_cache_entries),
        });
        let jobs = Arc::new(Queue::new(options.queue_capacity));
        let workers = embedders.len();
        for (i, embedder) in embedders.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let rx = Arc::clone(&jobs);
            jobs.join();
            let started = std::thread::Builder::new()
                .name(format!("pointsman-embed-{i}"))
                .spawn(move || worker(Box::new(embedder), shared, rx, options));
            if let Err(e) = started {
                // the workers already running end, and free their sessions
                jobs.close();
                return Err(EmbedError::Inference(format!("cannot start a worker: {e}")).into());
            }
        }
        // the workers only have to reach the queue: then the first prompt finds a session to lend
        jobs.wait_idle(workers, std::time::Duration::from_secs(5));
        Ok(Engine {
            shared,
            jobs,
            options,
            workers,
        })
    }

    /// Opens the index in `dir`, checks it against the model, warms it up (graph loaded, one
    /// search) and swaps it in. Requests already running finish on the index they started with;
    /// on any failure the current index keeps serving.
    /// `check` may refuse the new index (e.g. built from other route files) before the swap.
    pub fn reload(
        &self,
        dir: &Path,
        check: impl FnOnce(&Index) -> Result<(), IndexError>,
    ) -> Result<Arc<Index>, RouteError> {
        let index = Index::open(dir)?;
        check_compatible(&index, &self.shared.model)?;
        check(&index)?;
        index.wait_for_graph()?;
        let mut probe = vec![0.0f32; self.shared.model.dimension];
        probe[0] = 1.0;
        index.search(&probe, 1)?;
        let index = Arc::new(index);
        *self.shared.index.write().expect("index lock poisoned") = Arc::clone(&index);
        Ok(index)
    }

    /// Embeds a few of `index`'s utterances again with this engine's sessions (not through the
    /// cache, which would not be a new forward pass) and compares them with the stored vectors:
    /// whether this machine computes the vectors the index was built with (see
    /// [`agreement`]).
    pub fn agreement(&self, index: &Arc<Index>) -> Result<Agreement, RouteError> {
        agreement::check(index, |texts| {
            texts
                .iter()
                .map(|text| {
                    let routed = self
                        .submit(index, text)?
                        .blocking_recv()
                        .map_err(|_| RouteError::ShuttingDown)??;
                    Ok(routed.vector)
                })
                .collect()
        })
    }

    /// The live index.
    pub fn index(&self) -> Arc<Index> {
        Arc::clone(&self.shared.index.read().expect("index lock poisoned"))
    }

    /// The embedding model in use.
    pub fn model(&self) -> &ModelInfo {
        &self.shared.model
    }

    /// Prompts waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.jobs.len()
    }

    /// Queue capacity.
    pub fn queue_capacity(&self) -> usize {
        self.options.queue_capacity
    }

    /// Embedding-cache counters (all zero when the cache is off).
    pub fn cache_stats(&self) -> CacheStats {
        self.shared
            .cache
            .as_ref()
            .map(|c| CacheStats {
                hits: c.hits.load(Ordering::Relaxed),
                misses: c.misses.load(Ordering::Relaxed),
                entries: c.entries.lock().expect("cache lock").len(),
            })
            .unwrap_or_default()
    }

    /// The cached embedding of `text`, if the cache is on and holds it.
    fn cached(&self, text: &str) -> Option<Arc<Embedded>> {
        self.shared.cache.as_ref().and_then(|c| c.get(text))
    }

    /// Queues a prompt for a worker.
    fn submit(
        &self,
        index: &Arc<Index>,
        text: &str,
    ) -> Result<oneshot::Receiver<Result<Routed, RouteError>>, RouteError> {
        if text.trim().is_empty() {
            return Err(RouteError::EmptyPrompt);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            text: text.to_string(),
            index: Arc::clone(index),
            submitted: Instant::now(),
            reply,
        };
        match self.jobs.push(job) {
            Ok(()) => Ok(rx),
            Err(Refused::Full(_)) => Err(RouteError::Overloaded {
                capacity: self.options.queue_capacity,
            }),
            Err(Refused::Closed(_)) => Err(RouteError::ShuttingDown),
        }
    }

    /// Routes one prompt on this thread with an idle worker's session, if it is short, no job
    /// waits and a worker is idle (see the module's documentation); `None` otherwise (an empty
    /// prompt too: `submit` refuses it).
    fn route_here(&self, index: &Arc<Index>, text: &str) -> Option<Result<Routed, RouteError>> {
        if crate::embed::estimate_tokens(text) > HERE_MAX_TOKENS || text.trim().is_empty() {
            return None;
        }
        let mut lent = Lent {
            queue: &self.jobs,
            idle: Some(self.jobs.lend()?),
        };
        let session = &mut lent.idle.as_mut().expect("lent until dropped").1;
        let now = Instant::now();
        route_batch(session.as_mut(), &self.shared, &[(text, index, now)], now).pop()
    }

    /// Routes one prompt on the live index, blocking the calling thread (for benches and
    /// tests; requests go through [`crate::dispatch`], which takes one snapshot for all steps).
    pub fn route(&self, text: &str) -> Result<Routed, RouteError> {
        self.route_on(&self.index(), text)
    }

    /// Routes one prompt on `index`, blocking the calling thread.
    pub fn route_on(&self, index: &Arc<Index>, text: &str) -> Result<Routed, RouteError> {
        if let Some(e) = self.cached(text) {
            return decide_cached(index, text, &e);
        }
        if let Some(routed) = self.route_here(index, text) {
            return routed;
        }
        self.submit(index, text)?
            .blocking_recv()
            .map_err(|_| RouteError::ShuttingDown)?
    }

    /// Routes one prompt on the live index from async code (see [`Engine::route_async_on`]).
    pub async fn route_async(&self, text: &str) -> Result<Routed, RouteError> {
        self.route_async_on(&self.index(), text).await
    }

    /// Routes one prompt on `index` from async code: a short one on this thread while a session
    /// is idle (a few milliseconds at most), any other by a worker, awaited without blocking.
    pub async fn route_async_on(
        &self,
        index: &Arc<Index>,
        text: &str,
    ) -> Result<Routed, RouteError> {
        if let Some(e) = self.cached(text) {
            // a cache hit still searches and decides, here: a tenth of a forward pass
            return decide_cached(index, text, &e);
        }
        if let Some(routed) = self.route_here(index, text) {
            return routed;
        }
        self.submit(index, text)?
            .await
            .map_err(|_| RouteError::ShuttingDown)?
    }

    /// Routes several prompts on `index`; they are queued together, so they share forward
    /// passes. Fails as a whole if the queue cannot take them all.
    pub async fn route_many_on<S: AsRef<str>>(
        &self,
        index: &Arc<Index>,
        texts: &[S],
    ) -> Result<Vec<Routed>, RouteError> {
        if texts.iter().any(|t| t.as_ref().trim().is_empty()) {
            return Err(RouteError::EmptyPrompt);
        }
        let free = self.jobs.free();
        if texts.len() > free {
            return Err(RouteError::Overloaded {
                capacity: self.options.queue_capacity,
            });
        }
        // queue every prompt that needs a forward pass first, so that they share batches
        let pending = texts
            .iter()
            .map(|t| match self.cached(t.as_ref()) {
                Some(e) => Ok(Err(e)),
                None => self.submit(index, t.as_ref()).map(Ok),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(pending.len());
        for (p, text) in pending.into_iter().zip(texts) {
            out.push(match p {
                Ok(rx) => rx.await.map_err(|_| RouteError::ShuttingDown)??,
                Err(e) => decide_cached(index, text.as_ref(), &e)?,
            });
        }
        Ok(out)
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// [`decide`] for an embedding from the cache, with its timings.
fn decide_cached(index: &Index, text: &str, e: &Embedded) -> Result<Routed, RouteError> {
    let start = Instant::now();
    decide(index, text, e).map(|mut routed| {
        let elapsed = ms(start.elapsed());
        routed.timings = Timings {
            search_ms: elapsed,
            total_ms: elapsed,
            cached: true,
            ..Timings::default()
        };
        routed
    })
}

/// A rough token count for batching decisions, capped at the model's window.
fn estimate_tokens(text: &str, max_tokens: usize) -> usize {
    crate::embed::estimate_tokens(text).min(max_tokens)
}

/// Leaves the queue when its worker ends, by returning or by panicking.
struct Leave<'a>(&'a Queue<Job, Session>);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A session lent to a caller, given back when dropped (also when the caller panics).
struct Lent<'a> {
    queue: &'a Queue<Job, Session>,
    idle: Option<Idle<Session>>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(idle) = self.idle.take() {
            self.queue.give_back(idle);
        }
    }
}

/// Embeds the texts of `jobs` (text, index snapshot, when it was submitted) in one call from
/// `started`, and decides each on its own snapshot: one result per job, in order. Embeddings go
/// into the cache.
fn route_batch(
    embedder: &mut dyn Embedder,
    shared: &Shared,
    jobs: &[(&str, &Arc<Index>, Instant)],
    started: Instant,
) -> Vec<Result<Routed, RouteError>> {
    let texts: Vec<&str> = jobs.iter().map(|j| j.0).collect();
    // a panicking model fails these jobs, not the caller's connection nor the worker
    let embedded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| embedder.embed(&texts)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(EmbedError::Inference(format!(
                    "the embedding model panicked ({what}); this prompt was not routed"
                )))
            });
    let embed_ms = ms(started.elapsed());
    let size = jobs.len();
    let vectors = match embedded {
        Ok(vectors) => vectors,
        Err(e) => {
            let reason = e.to_string();
            return jobs
                .iter()
                .map(|_| Err(EmbedError::Inference(reason.clone()).into()))
                .collect();
        }
    };
    jobs.iter()
        .zip(vectors)
        .map(|(&(text, index, submitted), e)| {
            if let Some(cache) = &shared.cache {
                cache.put(text, e.clone());
            }
            let search_start = Instant::now();
            decide(index, text, &e).map(|mut routed| {
                routed.timings = Timings {
                    queue_ms: ms(started.duration_since(submitted)),
                    embed_ms,
                    search_ms: ms(search_start.elapsed()),
                    total_ms: ms(submitted.elapsed()),
                    batch_size: size,
                    cached: false,
                };
                routed
            })
        })
        .collect()
}

fn worker(
    mut session: Session,
    shared: Arc<Shared>,
    jobs: Arc<Queue<Job, Session>>,
    options: EngineOptions,
) {
    let max_tokens = shared.model.max_tokens;
    // an embedder that runs texts one by one answers each as soon as it is done
    let max_batch = if session.batches() {
        options.max_batch
    } else {
        1
    };
    let bell = queue::bell();
    let _leave = Leave(&jobs);
    loop {
        // With single-thread sessions a batch gains little per prompt over one prompt, while a
        // worker left idle wastes a whole core: take an equal share of what waits, leaving the
        // rest to the idle workers; and no more padded tokens than the budget.
        let share = |waiting: usize, idle: usize| max_batch.min(waiting.div_ceil(idle + 1)).max(1);
        let fits = |batch: &[Job], next: &Job| {
            let longest = batch
                .iter()
                .chain([next])
                .map(|j| estimate_tokens(&j.text, max_tokens))
                .max()
                .unwrap_or(0);
            longest * (batch.len() + 1) <= options.max_batch_tokens
        };
        // the session stays in the queue while the worker waits, and comes back with the jobs
        let Some((mut batch, back)) = jobs.take(&bell, session, share, fits) else {
            return;
        };
        session = back;
        // callers that went away (timed out, disconnected) cost nothing more
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let items: Vec<_> = batch
            .iter()
            .map(|j| (j.text.as_str(), &j.index, j.submitted))
            .collect();
        let results = route_batch(session.as_mut(), &shared, &items, started);
        drop(items);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}
