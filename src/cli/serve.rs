//! `serve`: flags, secrets kept out of logs, reloads on SIGHUP or a changed index, the server's start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;

use super::{ModelArgs, Outcome, default_workers, open_engine};
use crate::engine::EngineOptions;
use crate::server::{self, AppState, ServerOptions};

/// Longest a stopping server waits for the spend adjustments its requests left being written.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Index directory written by `pointsman build`.
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub index: PathBuf,
    /// Route files the index must have been built from; serving refuses a stale index.
    #[arg(long, env = "POINTSMAN_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "POINTSMAN_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Model sessions (worker threads) embedding prompts, fed by one queue [default: one per
    /// core, at most 4]. Measured on 2 cores with the default model, which embeds prompts one at
    /// a time: a single-thread session embeds one in 1.94 ms, a session of two threads in 2.83 ms
    /// (benches/route.rs, `session_settings`); two single-thread sessions answer 796 requests/s
    /// at concurrency 32 (bench-results/load.md).
    #[arg(long, env = "POINTSMAN_WORKERS")]
    pub workers: Option<usize>,
    /// Prompts that may wait for a worker; beyond it requests get 429.
    #[arg(long, env = "POINTSMAN_QUEUE_CAPACITY", default_value_t = EngineOptions::default().queue_capacity)]
    pub queue_capacity: usize,
    /// Most prompts embedded in one forward pass (a model that quantises activations at run
    /// time, like the default, embeds each prompt alone whatever this says).
    #[arg(long, env = "POINTSMAN_MAX_BATCH", default_value_t = EngineOptions::default().max_batch)]
    pub max_batch: usize,
    /// Most padded tokens in one forward pass.
    #[arg(long, env = "POINTSMAN_MAX_BATCH_TOKENS", default_value_t = EngineOptions::default().max_batch_tokens)]
    pub max_batch_tokens: usize,
    /// Count spend caps and rate limits in Redis (shared by replicas), e.g.
    /// `redis://127.0.0.1:6379/0`; without it they are counted in this process's memory.
    #[arg(long, env = "POINTSMAN_REDIS_URL")]
    pub redis_url: Option<Secret>,
    /// Prefix of pointsman's Redis keys.
    #[arg(long, env = "POINTSMAN_REDIS_PREFIX", default_value = "pointsman:")]
    pub redis_prefix: String,
    /// Reload the index when its `CURRENT` file changes (checked every second); SIGHUP and
    /// `POST /v1/admin/reload` reload it anyway.
    #[arg(long, env = "POINTSMAN_WATCH")]
    pub watch: bool,
    /// Key for the admin endpoints (`Authorization: Bearer <key>`); without it they are off.
    #[arg(long, env = "POINTSMAN_ADMIN_KEY")]
    pub admin_key: Option<Secret>,
    /// Write every decision as a JSON line to this file (off by default; prompts are hashed,
    /// not written).
    #[arg(long, env = "POINTSMAN_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log at this size.
    #[arg(long, env = "POINTSMAN_DECISION_LOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub decision_log_max_bytes: u64,
    /// Rotated decision-log files kept.
    #[arg(long, env = "POINTSMAN_DECISION_LOG_KEEP", default_value_t = 5)]
    pub decision_log_keep: usize,
    /// Turn on `POST /v1/feedback` and append each grade to this outcome log (JSON lines that
    /// `build --outcomes` reads). Off by default. It holds prompt text, since training needs it:
    /// the one file pointsman writes prompts to.
    #[arg(long, env = "POINTSMAN_OUTCOME_LOG")]
    pub outcome_log: Option<PathBuf>,
    /// Embeddings kept for repeated prompts; 0 turns the cache off.
    #[arg(long, env = "POINTSMAN_EMBED_CACHE_ENTRIES", default_value_t = EngineOptions::default().embed_cache_entries)]
    pub embed_cache_entries: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "POINTSMAN_BODY_LIMIT_BYTES", default_value_t = ServerOptions::default().body_limit_bytes)]
    pub body_limit_bytes: usize,
    /// Largest body of a proxied chat request in bytes (413 beyond).
    #[arg(long, env = "POINTSMAN_PROXY_BODY_LIMIT_BYTES", default_value_t = ServerOptions::default().proxy_body_limit_bytes)]
    pub proxy_body_limit_bytes: usize,
    /// Most prompts in one /v1/route/batch request.
    #[arg(long, env = "POINTSMAN_MAX_BATCH_PROMPTS", default_value_t = ServerOptions::default().max_batch_prompts)]
    pub max_batch_prompts: usize,
    /// Longest prompt in bytes on the route endpoints (422 beyond).
    #[arg(long, env = "POINTSMAN_MAX_PROMPT_BYTES", default_value_t = ServerOptions::default().max_prompt_bytes)]
    pub max_prompt_bytes: usize,
    /// Longest a route request may take, in milliseconds, before it is answered with 503.
    #[arg(long, env = "POINTSMAN_REQUEST_TIMEOUT_MS", default_value_t = ServerOptions::default().request_timeout_ms)]
    pub request_timeout_ms: u64,
    /// Seconds a client may take to send a request head: from its connection's accept, or
    /// from the first byte of a later request on a kept-alive connection. Beyond it the
    /// connection is closed.
    #[arg(long, env = "POINTSMAN_HEADER_READ_TIMEOUT_S", default_value_t = 10.0)]
    pub header_read_timeout_s: f64,
    /// Seconds a request body may stop arriving (silence between its bytes, not its whole
    /// length) before the request is answered 408 and its connection closed.
    #[arg(long, env = "POINTSMAN_BODY_READ_TIMEOUT_S", default_value_t = 15.0)]
    pub body_read_timeout_s: f64,
    /// Seconds a kept-alive connection may stay idle between requests before it is closed.
    /// Longer than a load balancer's own (nginx keeps upstream connections 60 s), so that the
    /// balancer, not pointsman, closes an idle connection first.
    #[arg(long, env = "POINTSMAN_IDLE_TIMEOUT_S", default_value_t = 75.0)]
    pub idle_timeout_s: f64,
    /// Most client connections open at once; beyond it a new connection is answered 503 and
    /// closed at once (`pointsman_connections_refused_total`) [default: the open-file limit,
    /// which `serve` raises to its hard limit, less 1,024 descriptors kept for the index,
    /// Redis and logs (a quarter of a smaller limit), at least 64; with `--proxy` each request
    /// also holds an upstream socket, so set about half the limit].
    #[arg(long, env = "POINTSMAN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Serve the OpenAI-compatible proxy (`/v1/chat/completions`, `/v1/models`) with the
    /// providers, timeouts and retries of this file (see examples/proxy.yaml).
    #[arg(long, env = "POINTSMAN_PROXY")]
    pub proxy: Option<PathBuf>,
    /// API keys the route, usage and proxy endpoints require (`Authorization: Bearer <key>`);
    /// comma-separated in the environment. Without any, those endpoints are open.
    #[arg(long = "api-key", env = "POINTSMAN_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<Secret>,
    /// Requests per second each caller may make (by API key, else tenant header), across
    /// replicas with `--redis-url`; 0 = no limit.
    #[arg(long, env = "POINTSMAN_RATE_LIMIT_PER_S", default_value_t = 0.0)]
    pub rate_limit_per_s: f64,
    /// Requests a caller may make at once above its rate.
    #[arg(long, env = "POINTSMAN_RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    let workers = args.workers.unwrap_or_else(default_workers);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    // one worker: connections are served on it and on a thread of their own for each further
    // core (`server::door`'s `Fronts`)
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_async(args, workers))
}

/// A secret flag value (a key, or a URL that may carry a password). Its `Debug` form shows a
/// URL with the password replaced by `***`, and anything else as `***`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.contains("://") {
            write!(f, "{:?}", redact_url(&self.0))
        } else {
            f.write_str("\"***\"")
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs; a string that does not
/// parse as a URL is hidden whole, since it may still hold a secret.
pub(super) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "***".to_string(),
    }
}

/// SIGHUP reloads the index; with `watch`, so does a change of its `CURRENT` file.
pub(super) fn spawn_reloaders(state: &AppState, index_dir: &Path, watch: bool) {
    #[cfg(unix)]
    {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the index");
                // the outcome is logged and counted by reload_index
                let _ = server::reload_index(&state).await;
            }
        });
    }
    if watch {
        let state = state.clone();
        let current = index_dir.join(crate::index::CURRENT_FILE);
        tokio::spawn(async move {
            let mut seen = tokio::fs::read_to_string(&current).await.ok();
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = tokio::fs::read_to_string(&current).await.ok();
                if now.is_some() && now != seen {
                    tracing::info!(file = %current.display(), "index changed: reloading");
                    let _ = server::reload_index(&state).await;
                    seen = now;
                }
            }
        });
    }
}

/// A timeout flag in seconds as a duration: positive, at most a day.
fn timeout_flag(flag: &str, seconds: f64) -> anyhow::Result<std::time::Duration> {
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        bail!("--{flag} must be a number of seconds above 0 and at most 86400, not {seconds}");
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

pub(super) async fn serve_async(args: ServeArgs, workers: usize) -> anyhow::Result<Outcome> {
    let default_cap = server::default_max_connections();
    let door = server::DoorOptions {
        header_timeout: timeout_flag("header-read-timeout-s", args.header_read_timeout_s)?,
        idle_timeout: timeout_flag("idle-timeout-s", args.idle_timeout_s)?,
        max_connections: args.max_connections.unwrap_or(default_cap),
        connection_threads: super::cores().saturating_sub(1),
    };
    if door.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let options = ServerOptions {
        body_timeout: timeout_flag("body-read-timeout-s", args.body_read_timeout_s)?,
        body_limit_bytes: args.body_limit_bytes,
        proxy_body_limit_bytes: args.proxy_body_limit_bytes,
        max_batch_prompts: args.max_batch_prompts,
        max_prompt_bytes: args.max_prompt_bytes,
        request_timeout_ms: args.request_timeout_ms,
    };
    let engine_options = EngineOptions {
        queue_capacity: args.queue_capacity,
        max_batch: args.max_batch.max(1),
        max_batch_tokens: args.max_batch_tokens,
        embed_cache_entries: args.embed_cache_entries,
    };
    let listener =
        server::listen(args.addr).with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let mut state = AppState::new(options);
    if let Some(Secret(key)) = &args.admin_key {
        state = state.with_admin_key(key);
    }
    let api_keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|Secret(k)| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if !api_keys.is_empty() {
        tracing::info!(
            keys = api_keys.len(),
            "API keys required on the route and proxy endpoints"
        );
        state = state.with_api_keys(api_keys);
    }
    if !(args.rate_limit_per_s.is_finite() && args.rate_limit_per_s >= 0.0) {
        bail!("--rate-limit-per-s must be a number of requests per second, 0 or more");
    }
    if args.rate_limit_per_s > 0.0 && args.rate_limit_per_s < 1.0 / 3600.0 {
        bail!(
            "--rate-limit-per-s must allow at least one request an hour (1/3600), or be 0 for no limit"
        );
    }
    if args.rate_limit_per_s > 0.0 {
        state = state.with_rate_limit(args.rate_limit_per_s, args.rate_limit_burst);
    }
    if let Some(path) = &args.proxy {
        let config = crate::proxy_config::ProxyConfig::load(path, &|var| std::env::var(var).ok())?;
        tracing::info!(file = %path.display(), providers = config.providers.len(), "OpenAI-compatible proxy on");
        state = state.with_proxy(config).map_err(anyhow::Error::msg)?;
    }
    state = state.with_reload(server::ReloadSource {
        index_dir: args.index.clone(),
        routes: args.routes.clone(),
    });
    spawn_reloaders(&state, &args.index, args.watch);
    if let Some(path) = &args.decision_log {
        let log = crate::decision_log::DecisionLog::open(crate::decision_log::LogOptions {
            path: path.clone(),
            max_bytes: args.decision_log_max_bytes,
            keep: args.decision_log_keep,
        })
        .with_context(|| format!("cannot open the decision log {}", path.display()))?;
        state = state.with_decision_log(log);
    }
    if let Some(path) = &args.outcome_log {
        // rotated like the decision log, but kept whole until 1 GiB: it is training data
        let log = crate::decision_log::DecisionLog::open(crate::decision_log::LogOptions {
            path: path.clone(),
            max_bytes: 1024 * 1024 * 1024,
            keep: args.decision_log_keep,
        })
        .with_context(|| format!("cannot open the outcome log {}", path.display()))?;
        tracing::info!(file = %path.display(), "outcome log on: POST /v1/feedback appends graded prompts (with their text) to it");
        state = state.with_outcome_log(log);
    }
    if let Some(Secret(url)) = &args.redis_url {
        let store = crate::budget::RedisStore::connect(url, &args.redis_prefix)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to Redis at {} (--redis-url)",
                    redact_url(url)
                )
            })?;
        state = state
            .with_shared_health(store.clone())
            .with_ledger(crate::budget::Ledger::with_redis(store));
        tracing::info!(redis = %redact_url(url), "counting spend and sharing health marks in Redis");
    }
    let app = server::app(state.clone());

    // The index opens while the server already answers /healthz (and 503 on /readyz); if it
    // cannot be opened, the server stops and the error is the command's.
    let failure: Arc<std::sync::Mutex<Option<anyhow::Error>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let loader_state = state.clone();
    let index_dir = args.index.clone();
    let (loader_failure, loader_stop) = (Arc::clone(&failure), Arc::clone(&stop));
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match open_engine(
            &args.index,
            args.routes.as_deref(),
            &args.model,
            workers,
            engine_options,
        )
        .and_then(|engine| {
            // the proxy file must serve every model these routes may choose
            let routes_fit = loader_state.check_proxy(engine.index().table());
            routes_fit.map(|()| engine).map_err(anyhow::Error::msg)
        }) {
            Ok(engine) => {
                let index = engine.index();
                tracing::info!(
                    vectors = index.len(),
                    routes = index.table().routes.len(),
                    hnsw = index.uses_graph(),
                    seconds = started.elapsed().as_secs_f64(),
                    "index open; ready"
                );
                loader_state.set_engine(Arc::new(engine));
            }
            Err(e) => {
                *loader_failure.lock().expect("failure lock") = Some(e);
                loader_stop.notify_one();
            }
        }
    });

    println!("pointsman listening on http://{addr}");
    tracing::info!(%addr, max_connections = door.max_connections, "listening");
    // on a worker thread: the one calling block_on would be woken for every accept by another
    let ledger = state.ledger();
    let serving = tokio::spawn(server::serve_connections(
        listener,
        app,
        door,
        state.metrics(),
        async move {
            tokio::select! {
                _ = server::shutdown_signal() => {},
                _ = stop.notified() => {},
            }
        },
        async move {
            ledger.written(SETTLE_WITHIN).await;
        },
    ));
    serving.await.context("the server stopped abnormally")?;
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e.context(format!("cannot serve the index in {}", index_dir.display())));
    }
    tracing::info!("stopped");
    Ok(Outcome::Success)
}
