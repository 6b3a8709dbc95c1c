//! The command line: clap definitions and the commands behind them.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::embed::{
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_DIR, DEFAULT_ORT_LIBRARY, ModelFiles, ModelSpec,
    OnnxEmbedder, PoolingKind, Sessions,
};
use crate::engine::{Engine, EngineOptions};
use crate::index::{Index, IndexError, IndexParams};
use crate::indexer;
use crate::server::{self, AppState, ServerOptions};

/// pointsman: a semantic LLM router. Declare routes in YAML, build an index offline, and ask
/// which model each prompt should go to.
#[derive(Debug, Parser)]
#[command(name = "pointsman", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "POINTSMAN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Export traces (one span per HTTP request, with the route and model chosen, and one per
    /// upstream try of the proxy) by OTLP over HTTP to this collector, e.g.
    /// `http://127.0.0.1:4318`; off without it. A `traceparent` header joins the caller's trace.
    #[arg(long, global = true, env = "POINTSMAN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// pointsman's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate route files without loading a model; reports every problem at once.
    Check {
        /// A route file, or a directory whose *.yaml files form one route table.
        routes: PathBuf,
    },
    /// Embed every utterance and write the index artifact (offline).
    Build(BuildArgs),
    /// Serve the HTTP API over a built index.
    Serve(Box<ServeArgs>),
    /// Evaluate the router on labelled prompts; exit 1 below --min-accuracy.
    Eval(EvalArgs),
    /// Fit thresholds on labelled prompts (with out-of-scope lines) and write them into a new
    /// route file for review.
    Calibrate(CalibrateArgs),
    /// Write a commented starter route file.
    Init {
        /// Where to write it.
        #[arg(default_value = "routes.yaml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Route one prompt and explain the decision as a table (scores as bars); JSON with --json.
    Explain {
        /// Index directory written by `pointsman build`.
        #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
        index: PathBuf,
        /// The prompt to explain.
        prompt: String,
        /// Print the JSON of `POST /v1/route` instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) for pointsman.
    Man,
    /// Print the OpenAPI document of the HTTP API (also served at `/openapi.json`).
    Openapi,
    /// Route one prompt and print the decision as JSON (the same JSON as `POST /v1/route`).
    Route {
        /// Index directory written by `pointsman build`.
        #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
        index: PathBuf,
        /// The prompt to route.
        prompt: String,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// Where the embedding model and ONNX Runtime are.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Directory holding model.onnx, tokenizer.json, tokenizer_config.json,
    /// special_tokens_map.json and config.json.
    #[arg(long, env = "POINTSMAN_MODEL_DIR", default_value = DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,
    /// Path of the ONNX Runtime shared library (libonnxruntime.so.1.x).
    #[arg(long, env = "POINTSMAN_ORT_LIB", default_value = DEFAULT_ORT_LIBRARY)]
    pub ort_lib: PathBuf,
    /// Pooling of the model's token vectors (recorded in the index).
    #[arg(long, value_enum, default_value_t = PoolingKind::Mean, env = "POINTSMAN_POOLING")]
    pub pooling: PoolingKind,
    /// Token window; longer prompts are cut to their first N tokens (recorded in the index).
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS, env = "POINTSMAN_MAX_TOKENS")]
    pub max_tokens: usize,
    /// ONNX Runtime intra-op threads per model session [default: `serve` gives each worker an
    /// equal share of the cores (one thread each with the default workers on up to 4 cores);
    /// the offline commands use every core].
    /// Measured on 2 cores with the default model (benches/route.rs, `session_settings`): one
    /// thread embeds one prompt in 1.94 ms, two threads in 2.83 ms (their hand-offs cost more
    /// than they share), so `serve` runs a single-thread session per core by default.
    #[arg(long, env = "POINTSMAN_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Let idle ONNX Runtime threads spin-wait. With one thread a session it changes nothing
    /// (1.93 against 1.94 ms a prompt); with more, idle cores burn CPU that the HTTP layer and
    /// other processes need.
    #[arg(long, env = "POINTSMAN_SPINNING")]
    pub spinning: bool,
}

/// Cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// `serve`'s model sessions by default: one per core, at most four (each session holds its own
/// copy of the weights, ~70 MB of resident memory with the default model).
fn default_workers() -> usize {
    cores().min(4)
}

impl ModelArgs {
    /// The model for an offline command, on every core (an explicit `--intra-threads` asks for
    /// one session of that many threads).
    fn offline_sessions(&self) -> anyhow::Result<Sessions> {
        let sessions = if self.intra_threads.is_some() {
            1
        } else {
            cores()
        };
        Sessions::load(&self.spec(1), sessions).context("cannot load the embedding model")
    }

    /// The model as one of `sessions` sessions sharing the machine: without `--intra-threads`,
    /// each gets an equal share of the cores.
    fn spec(&self, sessions: usize) -> ModelSpec {
        ModelSpec {
            model_dir: self.model_dir.clone(),
            ort_library: self.ort_lib.clone(),
            pooling: self.pooling,
            max_tokens: self.max_tokens,
            intra_threads: self
                .intra_threads
                .unwrap_or_else(|| (cores() / sessions.max(1)).max(1)),
            spinning: self.spinning,
        }
    }
}

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A route file, or a directory whose *.yaml files form one route table.
    pub routes: PathBuf,
    /// Index directory to write (the previous index in it stays live if the build fails).
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub out: PathBuf,
    /// From this many utterances on, build an HNSW graph instead of relying on an exact scan.
    #[arg(long, default_value_t = IndexParams::default().hnsw_min_vectors)]
    pub hnsw_min_vectors: usize,
    /// Skip the build when the current index already comes from these routes, this model and
    /// these parameters, and opens whole (a damaged or older-format index is rebuilt).
    #[arg(long)]
    pub if_changed: bool,
    /// Graded outcomes (JSON lines: a prompt and each model's quality in [0, 1]) to train a
    /// quality predictor on; every graded model must be in the catalog. Repeatable.
    #[arg(long, num_args = 1..)]
    pub outcomes: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Arguments of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Index directory written by `pointsman build`.
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub index: PathBuf,
    /// Labelled prompts: JSON lines `{"text": ..., "route": name or null}`, or a `.csv` file
    /// with a `text,route` header (empty route = should fall back).
    #[arg(
        long,
        required_unless_present = "outcomes",
        conflicts_with = "outcomes"
    )]
    pub data: Option<PathBuf>,
    /// Graded outcomes (as for `build --outcomes`; a test split the predictor was not trained
    /// on): report the cost-quality curve, APGR, CPT and the baselines instead.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// With `--outcomes`: also draw the cost-quality curve as an SVG file.
    #[arg(long, requires = "outcomes")]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when in-scope accuracy is below this.
    #[arg(long, conflicts_with = "outcomes")]
    pub min_accuracy: Option<f64>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Arguments of `calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Index directory written by `pointsman build`.
    #[arg(long, env = "POINTSMAN_INDEX", default_value = "index")]
    pub index: PathBuf,
    /// Labelled prompts, as for `eval`; include out-of-scope lines (route null).
    #[arg(
        long,
        required_unless_present = "outcomes",
        conflicts_with = "outcomes"
    )]
    pub data: Option<PathBuf>,
    /// Graded outcomes of a validation split: set the quality knob (`defaults.quality`) for a
    /// target given by `--target-cost`, `--target-quality` or `--max-premium-share`.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// With `--outcomes`: the most quality at a mean cost per request of at most this (USD).
    #[arg(long, requires = "outcomes", conflicts_with_all = ["target_quality", "max_premium_share"])]
    pub target_cost: Option<f64>,
    /// With `--outcomes`: the least cost at a mean quality of at least this.
    #[arg(long, requires = "outcomes", conflicts_with = "max_premium_share")]
    pub target_quality: Option<f64>,
    /// With `--outcomes`: the most quality sending at most this share of requests to the most
    /// expensive candidate.
    #[arg(long, requires = "outcomes")]
    pub max_premium_share: Option<f64>,
    /// What to optimise: `accuracy` is the mean of in-scope accuracy and out-of-scope recall.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Accuracy, conflicts_with_all = ["target_precision", "max_oos_accept"])]
    pub objective: ObjectiveArg,
    /// Instead: the most in-scope accuracy whose matches are right at least this often.
    #[arg(long, conflicts_with = "max_oos_accept")]
    pub target_precision: Option<f64>,
    /// Instead: the most in-scope accuracy letting at most this share of out-of-scope lines match.
    #[arg(long)]
    pub max_oos_accept: Option<f64>,
    /// Labelled lines a route needs for a threshold of its own (others keep the global one).
    #[arg(long, default_value_t = 10)]
    pub min_support: usize,
    /// Write the route table with the fitted thresholds to this file (then `pointsman build` it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `calibrate --objective`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ObjectiveArg {
    /// Mean of in-scope accuracy and out-of-scope recall.
    Accuracy,
}

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

/// How a command ended, for the exit code.
pub enum Outcome {
    /// Everything went well (exit 0).
    Success,
    /// A check ran and failed (exit 1).
    CheckFailed,
}

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct Telemetry(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush traces to the OTLP collector: {e}");
            }
        }
    }
}

/// Sets up logging on stderr (filtered by `POINTSMAN_LOG`) and, with an OTLP endpoint, trace
/// export. Keep the returned guard alive until the program ends.
pub fn init_logging(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("POINTSMAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn,hnsw_rs=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = otlp_endpoint.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("pointsman"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("pointsman", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .init();
    Ok(Telemetry(provider))
}

/// An OTLP/HTTP (protobuf) exporter to `endpoint` behind a batching tracer provider.
fn tracer_provider(endpoint: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let base = endpoint.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!(
            "--otlp-endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:4318 (got `{base}`)"
        );
    }
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .context("cannot set up the OTLP trace exporter")?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("pointsman")
                .build(),
        )
        .build())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Check { routes } => check(&routes),
        Command::Build(args) => build(args),
        Command::Serve(args) => serve(*args),
        Command::Eval(args) => eval(args),
        Command::Calibrate(args) => calibrate(args),
        Command::Route {
            index,
            prompt,
            model,
        } => route(&index, &prompt, &model, Shown::Json),
        Command::Explain {
            index,
            prompt,
            json,
            model,
        } => route(
            &index,
            &prompt,
            &model,
            if json {
                Shown::ExplainedJson
            } else {
                Shown::Table
            },
        ),
        Command::Init { path, force } => init(&path, force),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pointsman",
                &mut std::io::stdout(),
            );
            Ok(Outcome::Success)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(Outcome::Success)
        }
        Command::Openapi => {
            let doc = server::openapi()
                .to_pretty_json()
                .context("cannot render the OpenAPI document")?;
            println!("{doc}");
            Ok(Outcome::Success)
        }
    }
}

fn check(routes: &Path) -> anyhow::Result<Outcome> {
    match config::load(routes) {
        Ok(table) => {
            println!(
                "{}: ok ({} routes, {} utterances, default model `{}`)",
                routes.display(),
                table.routes.len(),
                table.utterance_count(),
                table.default_model
            );
            Ok(Outcome::Success)
        }
        Err(config::ConfigError::Invalid { issues }) => {
            for issue in &issues {
                eprintln!("{issue}");
            }
            eprintln!("{}: {} problem(s)", routes.display(), issues.len());
            Ok(Outcome::CheckFailed)
        }
        Err(e) => Err(e.into()),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<Outcome> {
    let table = config::load(&args.routes)?;
    let params = IndexParams {
        hnsw_min_vectors: args.hnsw_min_vectors,
        ..IndexParams::default()
    };
    let outcomes = if args.outcomes.is_empty() {
        None
    } else {
        Some(indexer::Outcomes::read(&args.outcomes)?)
    };
    if args.if_changed && index_is_current(&args, &table, &params, outcomes.as_ref()) {
        println!(
            "{} is up to date with {}",
            args.out.display(),
            args.routes.display()
        );
        return Ok(Outcome::Success);
    }
    let mut embedder = args.model.offline_sessions()?;
    let bar = progress_bar(table.utterance_count(), "embedding utterances");
    let built = indexer::build_with(
        &table,
        &mut embedder,
        &args.out,
        params,
        outcomes.as_ref(),
        &mut |done, _| bar.set_position(done as u64),
    );
    let report = match built {
        Err(indexer::BuildError::Index(e @ IndexError::RouteTests(_))) => {
            bar.finish_and_clear();
            eprintln!("{e}");
            return Ok(Outcome::CheckFailed);
        }
        other => other.with_context(|| format!("building the index in {}", args.out.display()))?,
    };
    bar.finish_and_clear();
    println!(
        "built {} ({} routes, {} utterances, {} search{}) in {:.2}s ({:.2}s embedding)",
        report.generation.display(),
        report.routes,
        report.utterances,
        if report.hnsw { "HNSW" } else { "exact" },
        if report.truncated > 0 {
            format!(", {} utterances truncated", report.truncated)
        } else {
            String::new()
        },
        report.total_seconds,
        report.embed_seconds
    );
    if let Some(q) = &report.quality {
        print!("{}", crate::quality::render_training(q));
        println!(
            "quality predictor trained on {} graded prompts in {:.2}s",
            outcomes.as_ref().map_or(0, |o| o.graded.len()),
            report.quality_seconds
        );
    }
    Ok(Outcome::Success)
}

/// Whether the current index in `args.out` was built from `table` with the model files and
/// parameters given (reads the model's files to hash them, without loading the model), and
/// opens whole: every file verified against its manifest, in this build's format. A damaged or
/// older index is rebuilt rather than kept.
fn index_is_current(
    args: &BuildArgs,
    table: &config::RouteTable,
    params: &IndexParams,
    outcomes: Option<&indexer::Outcomes>,
) -> bool {
    let (Ok(m), Ok(files)) = (
        crate::index::read_manifest(&args.out),
        ModelFiles::read(&args.model.model_dir),
    ) else {
        return false;
    };
    let built_from_these = m.route_table_sha256 == table.canonical_hash()
        && m.model.model_sha256 == files.model_sha256
        && m.model.tokenizer_sha256 == files.tokenizer_sha256
        && m.model.pooling == args.model.pooling
        && m.model.max_tokens == args.model.max_tokens
        && m.params == *params;
    // the same outcome files, byte for byte, or none on either side
    let sums = |files: &[crate::quality::OutcomeFile]| -> Vec<String> {
        files.iter().map(|f| f.sha256.clone()).collect()
    };
    let same_outcomes = sums(m.quality.as_ref().map_or(&[], |q| &q.outcomes))
        == sums(outcomes.map_or(&[], |o| &o.files));
    built_from_these
        && same_outcomes
        && crate::index::Index::open(&args.out)
            .and_then(|index| index.wait_for_graph())
            .inspect_err(
                |e| tracing::warn!(error = %e, "the current index does not open; rebuilding it"),
            )
            .is_ok()
}

fn open_engine(
    index_dir: &Path,
    routes: Option<&Path>,
    model: &ModelArgs,
    workers: usize,
    options: EngineOptions,
) -> anyhow::Result<Engine> {
    let index = Index::open(index_dir)?;
    if let Some(routes) = routes {
        let table = config::load(routes)?;
        let current = table.canonical_hash();
        let built = &index.manifest().route_table_sha256;
        if &current != built {
            return Err(IndexError::RoutesMismatch {
                path: index.generation().to_path_buf(),
                routes: routes.to_path_buf(),
                built: built[..12].to_string(),
                current: current[..12].to_string(),
            }
            .into());
        }
    }
    let embedders = OnnxEmbedder::load_many(&model.spec(workers), workers)
        .context("cannot load the embedding model")?;
    Ok(Engine::with_index(index, embedders, options)?)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Embeds texts in batches, with a progress bar.
fn embed_all(
    embedder: &mut Sessions,
    texts: &[&str],
) -> anyhow::Result<Vec<crate::embed::Embedded>> {
    let bar = progress_bar(texts.len(), "embedding");
    let out = indexer::embed_batched(embedder, texts, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// An index, labelled examples for it, and their embeddings.
fn labelled(
    index_dir: &Path,
    data: &Path,
    model: &ModelArgs,
) -> anyhow::Result<(
    Index,
    Vec<crate::eval::Example>,
    Vec<crate::embed::Embedded>,
)> {
    let index = Index::open(index_dir)?;
    // the same search structure for every example, so that runs are reproducible
    index.wait_for_graph()?;
    let mut embedder = model.offline_sessions()?;
    crate::engine::check_compatible(&index, crate::embed::Embedder::info(&embedder))?;
    let examples = crate::eval::read_examples(data, index.table())?;
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let vectors = embed_all(&mut embedder, &texts)?;
    Ok((index, examples, vectors))
}

fn calibrate(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    use crate::eval::{self, Objective};
    if let Some(outcomes) = &args.outcomes {
        return calibrate_outcomes(&args, outcomes);
    }
    let data = args
        .data
        .as_deref()
        .expect("clap requires --data or --outcomes");
    let (index, examples, vectors) = labelled(&args.index, data, &args.model)?;
    let objective = match (args.target_precision, args.max_oos_accept, args.objective) {
        (Some(p), _, _) => Objective::TargetPrecision(p),
        (_, Some(r), _) => Objective::MaxOosAccept(r),
        (None, None, ObjectiveArg::Accuracy) => Objective::Accuracy,
    };
    // the scores of every line, and the lines a static rule decides whatever the thresholds
    let mut evidence = Vec::with_capacity(vectors.len());
    let mut fixed = Vec::with_capacity(vectors.len());
    for (v, e) in vectors.iter().zip(&examples) {
        evidence.push(crate::dispatch::scores(&index, &e.text, v)?);
        fixed.push(crate::dispatch::rule_route(&index, &e.text, None).map(str::to_string));
    }
    let table = index.table();
    if examples.iter().all(|e| e.route.is_some()) {
        anyhow::bail!(
            "{} has no out-of-scope lines (`\"route\": null`); calibration needs them to fit thresholds",
            data.display()
        );
    }
    let cal = eval::calibrate(
        table,
        &examples,
        &evidence,
        &fixed,
        objective,
        args.min_support,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
    } else {
        let fmt = |v: Option<f32>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
        println!(
            "fitted for {objective:?} on {} lines: threshold {}, min_similarity {}, margin {}, {} per-route thresholds",
            examples.len(),
            fmt(cal.threshold),
            fmt(cal.min_similarity),
            fmt(cal.margin),
            cal.per_route.len()
        );
        if !cal.too_little_data.is_empty() {
            let shown = cal
                .too_little_data
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>();
            let more = cal.too_little_data.len().saturating_sub(shown.len());
            println!(
                "{} routes have fewer than {} lines and keep the global threshold: {}{}",
                cal.too_little_data.len(),
                args.min_support,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        for (name, f) in [("before", &cal.before), ("after", &cal.after)] {
            println!(
                "  {name:<7} in-scope {:.3}  oos recall {}  oos precision {:.3}  overall {:.3}  macro F1 {:.3}",
                f.in_scope_accuracy,
                f.oos_recall_shown(),
                f.oos_precision,
                f.overall_accuracy,
                f.macro_f1
            );
        }
    }
    if let Some(out) = &args.out {
        let yaml = format!(
            "# Calibrated by `pointsman calibrate` on {} ({objective:?}); rebuild with `pointsman build`.\n{}",
            data.display(),
            crate::config::to_yaml(&eval::apply(table, &cal))
        );
        std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(Outcome::Success)
}

fn eval(args: EvalArgs) -> anyhow::Result<Outcome> {
    if let Some(outcomes) = &args.outcomes {
        return eval_outcomes(&args, outcomes);
    }
    let data = args
        .data
        .as_deref()
        .expect("clap requires --data or --outcomes");
    let (index, examples, vectors) = labelled(&args.index, data, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run(&Arc::new(index), &examples, &vectors))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::eval::render(&report));
    }
    match args.min_accuracy {
        Some(min) if report.figures.in_scope_accuracy < min => {
            eprintln!(
                "in-scope accuracy {:.4} is below --min-accuracy {min}",
                report.figures.in_scope_accuracy
            );
            Ok(Outcome::CheckFailed)
        }
        _ => Ok(Outcome::Success),
    }
}

/// An index with a quality predictor, graded outcomes, and the embeddings of their prompts.
fn graded(
    index_dir: &Path,
    outcomes: &Path,
    model: &ModelArgs,
) -> anyhow::Result<(
    Arc<Index>,
    Vec<crate::quality::Graded>,
    Vec<crate::embed::Embedded>,
)> {
    let index = Index::open(index_dir)?;
    index.wait_for_graph()?;
    if index.quality().is_none() {
        return Err(crate::eval::OutcomeEvalError::NoPredictor.into());
    }
    let mut embedder = model.offline_sessions()?;
    crate::engine::check_compatible(&index, crate::embed::Embedder::info(&embedder))?;
    let graded = crate::quality::outcomes::read(outcomes)?;
    let texts: Vec<&str> = graded.iter().map(|g| g.prompt.as_str()).collect();
    let vectors = embed_all(&mut embedder, &texts)?;
    Ok((Arc::new(index), graded, vectors))
}

fn eval_outcomes(args: &EvalArgs, outcomes: &Path) -> anyhow::Result<Outcome> {
    let (index, graded, vectors) = graded(&args.index, outcomes, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run_outcomes(&index, &graded, &vectors))?;
    if let Some(plot) = &args.plot {
        let name = outcomes.file_name().map_or_else(
            || outcomes.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let title = format!("{name}: {} graded prompts", report.curve.rows);
        std::fs::write(plot, crate::quality::plot::svg(&report.curve, &title))
            .with_context(|| format!("cannot write {}", plot.display()))?;
        eprintln!("wrote {}", plot.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::eval::render_outcomes(&report));
    }
    Ok(Outcome::Success)
}

fn calibrate_outcomes(args: &CalibrateArgs, outcomes: &Path) -> anyhow::Result<Outcome> {
    use crate::quality::Target;
    let target = match (
        args.target_cost,
        args.target_quality,
        args.max_premium_share,
    ) {
        (Some(c), _, _) => Target::MaxMeanCost(c),
        (_, Some(q), _) => Target::MinMeanQuality(q),
        (_, _, Some(s)) => Target::MaxPremiumShare(s),
        _ => {
            bail!("give the target: --target-cost USD, --target-quality Q or --max-premium-share S")
        }
    };
    let (index, graded, vectors) = graded(&args.index, outcomes, &args.model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(crate::eval::run_outcomes(&index, &graded, &vectors))?;
    let Some(fit) = crate::quality::calibrate(&report.curve.curve, target) else {
        bail!(
            "no setting of the knob meets {target:?} on {}: the cheapest setting costs ${:.6} a request at quality {:.4}, the best ${:.6} at {:.4}",
            outcomes.display(),
            report.curve.baselines.cheapest.cost_usd,
            report.curve.baselines.cheapest.quality,
            report.curve.baselines.best_single.cost_usd,
            report.curve.baselines.best_single.quality
        );
    };
    let knob = match report.curve.knob {
        // a tolerance of 1 or more already means "always the cheapest"
        crate::quality::KnobKind::Tolerance => {
            config::QualityKnob::Tolerance((fit.knob as f32).clamp(0.0, 1.0))
        }
        crate::quality::KnobKind::CostWeight => config::QualityKnob::CostWeight(fit.knob),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "target": target, "knob": knob, "fitted": fit,
            }))?
        );
    } else {
        println!(
            "fitted for {target:?} on {} graded prompts: {knob:?}, mean cost ${:.6}, quality {:.4}, {:.1}% to the premium model",
            graded.len(),
            fit.cost_usd,
            fit.quality,
            fit.premium_share * 100.0
        );
    }
    if let Some(out) = &args.out {
        let mut table = index.table().clone();
        table.defaults.quality = Some(knob);
        let yaml = format!(
            "# Calibrated by `pointsman calibrate` on {} ({target:?}); rebuild with `pointsman build --outcomes`.\n{}",
            outcomes.display(),
            crate::config::to_yaml(&table)
        );
        std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(Outcome::Success)
}

/// The starter route file written by `init`.
pub const STARTER_ROUTES: &str = include_str!("starter.yaml");

fn init(path: &Path, force: bool) -> anyhow::Result<Outcome> {
    if path.exists() && !force {
        bail!(
            "{} already exists; choose another path or pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(path, STARTER_ROUTES)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {}; next: `pointsman check {0}`, then `pointsman build {0} --out index/`",
        path.display()
    );
    Ok(Outcome::Success)
}

/// A bar of `width` cells for `value` in [0, 1], with `|` where `mark` falls.
fn bar(value: f32, mark: Option<f32>, width: usize) -> String {
    let filled = (value.clamp(0.0, 1.0) * width as f32).round() as usize;
    let mark = mark.map(|m| ((m.clamp(0.0, 1.0) * width as f32).round() as usize).min(width - 1));
    (0..width)
        .map(|i| match (Some(i) == mark, i < filled) {
            (true, _) => '|',
            (false, true) => '█',
            (false, false) => '·',
        })
        .collect()
}

/// The decision as a readable table.
fn explain_text(r: &server::RouteResponse) -> String {
    use std::fmt::Write;
    let d = &r.routed.decision;
    let mut s = String::new();
    let outcome = serde_json::to_value(&d.outcome).unwrap_or_default();
    let _ = writeln!(
        s,
        "{} → {} → model {}",
        outcome["outcome"].as_str().unwrap_or(""),
        d.route().map_or_else(
            || format!("no route ({})", outcome["reason"].as_str().unwrap_or("")),
            |r| format!("route {r}")
        ),
        d.model
    );
    let _ = writeln!(
        s,
        "\n{:<24} {:<30} {:>6} {:>9} {:>10}",
        "route", "score (| = threshold)", "score", "threshold", "similarity"
    );
    for rs in &d.routes {
        let _ = writeln!(
            s,
            "{:<24} {} {:>6.3} {:>9} {:>10.3}{}",
            rs.route,
            bar(rs.score, rs.threshold, 30),
            rs.score,
            rs.threshold.map_or("-".into(), |t| format!("{t:.3}")),
            rs.similarity,
            if rs.passed { "  passes" } else { "" }
        );
    }
    let sel = &r.selection;
    let _ = writeln!(s, "\ncandidates:");
    for sk in &sel.skipped {
        let reason = serde_json::to_value(&sk.reason).unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<28} skipped: {}",
            sk.model,
            reason["reason"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "  {:<28} chosen{}{}",
        sel.model,
        sel.estimated_cost_usd
            .map_or(String::new(), |c| format!(", estimated ${c:.6}")),
        if sel.from_default {
            " (default route)"
        } else {
            ""
        }
    );
    if let Some(q) = &sel.quality {
        let knob = match q.knob {
            config::QualityKnob::Tolerance(t) => {
                format!("the cheapest within {t} of the best predicted quality")
            }
            config::QualityKnob::CostWeight(w) => {
                format!("the most predicted quality − {w} × cost")
            }
        };
        let _ = writeln!(s, "\npredicted quality ({knob}):");
        for c in &q.candidates {
            let _ = writeln!(
                s,
                "  {:<28} {} {:>6} {:>12}{}",
                c.model,
                bar(c.predicted_quality.unwrap_or(0.0), None, 30),
                c.predicted_quality
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.3}")),
                c.estimated_cost_usd
                    .map_or_else(|| "-".to_string(), |v| format!("${v:.6}")),
                if c.model == sel.model { "  chosen" } else { "" }
            );
        }
        if !q.nearest_graded.is_empty() {
            let _ = writeln!(s, "\nnearest graded prompts:");
            for n in &q.nearest_graded {
                let grades: Vec<String> =
                    n.quality.iter().map(|(m, v)| format!("{m} {v}")).collect();
                let _ = writeln!(
                    s,
                    "  {:.3}  {:?}  {}",
                    n.similarity,
                    n.prompt.chars().take(60).collect::<String>(),
                    grades.join(", ")
                );
            }
        }
    }
    let _ = writeln!(s, "\nnearest utterances:");
    for n in &r.routed.neighbours {
        let _ = writeln!(
            s,
            "  {:.3}  {:<24} {:?}",
            n.similarity, n.route, n.utterance
        );
    }
    let t = &r.routed.timings;
    let _ = writeln!(
        s,
        "\n{} tokens{}; embedding {:.2} ms, search {:.2} ms",
        r.routed.tokens,
        if r.routed.truncated {
            " (truncated)"
        } else {
            ""
        },
        t.embed_ms,
        t.search_ms
    );
    s
}

/// How `route` and `explain` show a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The API's JSON (`route`).
    Json,
    /// The API's JSON with the full explanation (`explain --json`).
    ExplainedJson,
    /// A readable table with the full explanation (`explain`).
    Table,
}

fn route(index: &Path, prompt: &str, model: &ModelArgs, shown: Shown) -> anyhow::Result<Outcome> {
    let engine = open_engine(index, None, model, 1, EngineOptions::default())?;
    let state = AppState::with_engine(Arc::new(engine), ServerOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // the same decision as `POST /v1/route` with no identity and no capabilities asked for
    let who = crate::budget::Identity::default();
    let request = crate::dispatch::Request {
        explain: shown != Shown::Json,
        ..crate::dispatch::Request::text(prompt, &who)
    };
    let response = runtime
        .block_on(server::route_request(&state, &request))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if shown == Shown::Table {
        print!("{}", explain_text(&response));
    } else {
        println!("{}", serde_json::to_string_pretty(&response)?);
    }
    Ok(Outcome::Success)
}

fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    let workers = args.workers.unwrap_or_else(default_workers);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
fn redact_url(raw: &str) -> String {
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
fn spawn_reloaders(state: &AppState, index_dir: &Path, watch: bool) {
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

async fn serve_async(args: ServeArgs, workers: usize) -> anyhow::Result<Outcome> {
    let options = ServerOptions {
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
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
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
        state = state.with_ledger(crate::budget::Ledger::with_redis(store));
        tracing::info!(redis = %redact_url(url), "counting spend in Redis");
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
    tracing::info!(%addr, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = server::shutdown_signal() => {},
                _ = stop.notified() => {},
            }
        })
        .await
        .context("server error")?;
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e.context(format!("cannot serve the index in {}", index_dir.display())));
    }
    tracing::info!("stopped");
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_route_file_is_valid() {
        let table =
            config::parse_sources(&[(PathBuf::from("starter.yaml"), STARTER_ROUTES.into())])
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.routes.len(), 2);
        assert!(!table.catalog.is_empty());
    }

    #[test]
    fn bars_mark_the_threshold() {
        assert_eq!(bar(0.5, Some(0.8), 10), "█████···|·");
        assert_eq!(bar(1.0, None, 4), "████");
        assert_eq!(bar(0.0, Some(0.0), 4), "|···");
    }

    #[test]
    fn completions_and_man_page_render() {
        use clap::CommandFactory;
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "pointsman",
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().contains("calibrate"));
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        assert!(String::from_utf8(man).unwrap().contains(".TH pointsman"));
    }

    #[test]
    fn redis_passwords_never_reach_messages() {
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@host/0"),
            "redis://user:***@host/0"
        );
        assert_eq!(redact_url("redis://host:6379/0"), "redis://host:6379/0");
    }

    #[test]
    fn serve_args_debug_shows_no_key_or_password() {
        let cli = Cli::parse_from([
            "pointsman",
            "serve",
            "--redis-url",
            "redis://:s3cret@host:6379/0",
            "--admin-key",
            "adm1n-s3cret",
            "--api-key",
            "k3y-one,k3y-two",
        ]);
        let shown = format!("{cli:?}");
        for secret in ["adm1n", "s3cret", "k3y-one", "k3y-two"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        // two keys from one comma-separated value, as POINTSMAN_API_KEYS gives them
        assert_eq!(args.api_keys.len(), 2);
    }
}
