//! Shared fixtures: the real model, an index of the example routes built once, a fake embedder,
//! and the real binary (build, serve on a free port).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use pointsman::config::{self, RouteTable};
use pointsman::embed::{
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_DIR, DEFAULT_ORT_LIBRARY, ModelSpec, OnnxEmbedder,
    PoolingKind,
};
use pointsman::engine::{Engine, EngineOptions};
use pointsman::index::IndexParams;
use pointsman::indexer;

pub use pointsman::test_util::FakeEmbedder;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default))
}

/// The default model, where `scripts/setup.sh` puts it. Panics (never skips) when it is missing.
pub fn model_spec() -> ModelSpec {
    let spec = ModelSpec {
        model_dir: env_or("POINTSMAN_MODEL_DIR", DEFAULT_MODEL_DIR),
        ort_library: env_or("POINTSMAN_ORT_LIB", DEFAULT_ORT_LIBRARY),
        pooling: PoolingKind::Mean,
        max_tokens: DEFAULT_MAX_TOKENS,
        intra_threads: 1,
        spinning: false,
    };
    assert!(
        spec.model_dir.join("model.onnx").is_file() && spec.ort_library.is_file(),
        "the embedding model or ONNX Runtime is missing ({} / {}): run scripts/setup.sh",
        spec.model_dir.display(),
        spec.ort_library.display()
    );
    spec
}

pub fn example_routes() -> PathBuf {
    repo().join("routes")
}

pub struct Built {
    pub dir: tempfile::TempDir,
    pub table: RouteTable,
}

/// The example routes built once with the real model.
pub fn example_index() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let table = config::load(&example_routes()).expect("example routes are valid");
        let mut embedder = OnnxEmbedder::load(&model_spec()).expect("model loads");
        let dir = tempfile::tempdir().unwrap();
        indexer::build(
            &table,
            &mut embedder,
            dir.path(),
            IndexParams::default(),
            &mut |_, _| {},
        )
        .expect("example routes build");
        Built { dir, table }
    })
}

/// One engine over the example index, shared by the tests of this binary.
pub fn example_engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let built = example_index();
            let embedders = OnnxEmbedder::load_many(&model_spec(), 1).expect("model loads");
            Arc::new(
                Engine::open(built.dir.path(), embedders, EngineOptions::default())
                    .expect("engine opens"),
            )
        })
        .clone()
}

pub const FAKE_ROUTES: &str = "\
version: 1
defaults: {threshold: 0.9, top_k: 3}
default_route: {model: fallback-model}
routes:
  - name: greet
    model: small-model
    utterances: [hello there, good morning friend]
  - name: bye
    model: other-model
    utterances: [goodbye for now, see you later]
";

/// Waits (yielding to the runtime) until `done` holds; fails after 10 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after 10 s for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// An index of [`FAKE_ROUTES`] built with `embedder`.
pub fn fake_index(embedder: &mut FakeEmbedder) -> tempfile::TempDir {
    index_of(FAKE_ROUTES, embedder)
}

/// An index of the route file `routes` built with `embedder`.
pub fn index_of(routes: &str, embedder: &mut FakeEmbedder) -> tempfile::TempDir {
    let table = config::parse_sources(&[(PathBuf::from("routes.yaml"), routes.into())])
        .expect("test routes are valid");
    let dir = tempfile::tempdir().unwrap();
    indexer::build(
        &table,
        embedder,
        dir.path(),
        IndexParams::default(),
        &mut |_, _| {},
    )
    .unwrap();
    dir
}

pub fn fake_engine(embedder: &FakeEmbedder, dir: &Path, options: EngineOptions) -> Arc<Engine> {
    Arc::new(Engine::open(dir, vec![embedder.clone()], options).unwrap())
}

/// An engine over the route file `routes` with a fresh [`FakeEmbedder`]; keep the directory.
pub fn fake_engine_for(routes: &str) -> (Arc<Engine>, tempfile::TempDir) {
    let mut fake = FakeEmbedder::new("fake");
    let dir = index_of(routes, &mut fake);
    (
        fake_engine(&fake, dir.path(), EngineOptions::default()),
        dir,
    )
}

/// The real binary, pointed at the model.
pub fn pointsman() -> Command {
    let spec = model_spec();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pointsman"));
    cmd.env("POINTSMAN_MODEL_DIR", &spec.model_dir)
        .env("POINTSMAN_ORT_LIB", &spec.ort_library)
        .env("POINTSMAN_LOG", "warn");
    cmd
}

/// Starts `pointsman serve` on a free port; returns the process and its base URL.
pub fn serve(index: &Path, extra: &[&str]) -> (Serving, String) {
    serve_with(pointsman(), index, extra)
}

/// A running `pointsman serve`, killed when dropped if it is still running, so that a failing
/// test leaves no server behind.
pub struct Serving(std::process::Child);

impl std::ops::Deref for Serving {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// [`serve`] with a command of the caller's (e.g. with more environment).
pub fn serve_with(mut command: Command, index: &Path, extra: &[&str]) -> (Serving, String) {
    let mut child = command
        .args(["serve", "--addr", "127.0.0.1:0", "--index"])
        .arg(index)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("pointsman listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Serving(child), base)
}

/// Runs a command that must succeed and prints JSON; returns the JSON.
pub fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends `signal` (`"TERM"`, `"HUP"`) to `child`, as an operator would with `kill`.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {} failed", child.id());
}

/// `pointsman build ROUTES --out OUT`, which must succeed.
pub fn build(routes: &Path, out: &Path) {
    let status = pointsman()
        .arg("build")
        .arg(routes)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}
