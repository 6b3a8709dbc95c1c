//! The command line: clap definitions and the commands behind them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::embed::{
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_DIR, DEFAULT_ORT_LIBRARY, ModelSpec, OnnxEmbedder,
    PoolingKind, Sessions,
};
use crate::engine::{Engine, EngineOptions};
use crate::index::{Index, IndexError};
use crate::indexer;
use crate::server::{self};

mod build;
mod eval;
mod route;
mod serve;

pub use build::{BuildArgs, STARTER_ROUTES};
use build::{build, check, init};
pub use eval::{CalibrateArgs, EvalArgs, ObjectiveArg};
use eval::{calibrate, eval};
use route::{Shown, route};
use serve::serve;
pub use serve::{Secret, ServeArgs};
#[cfg(test)]
use {route::bar, serve::redact_url};

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
pub(super) fn default_workers() -> usize {
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
pub(super) fn tracer_provider(
    endpoint: &str,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
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

pub(super) fn open_engine(
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
    let engine = Engine::with_index(index, embedders, options)?;
    let index = engine.index();
    engine.agreement(&index)?.warn_unless_held(&index);
    Ok(engine)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub(super) fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
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
pub(super) fn embed_all(
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
