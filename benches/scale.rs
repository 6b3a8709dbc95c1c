//! Decisions on route tables of the sizes users have, beside their floor. `benches/scale.sh`
//! builds the tables, starts the server and runs each part; by hand:
//!
//! ```text
//! cargo bench --bench scale -- search INDEX PROMPTS [N]
//!     the reported neighbours (recall@k against the exact scan, and cost, by probe budget) and
//!     the decision's own cost beyond the forward pass, on N prompts
//! cargo bench --bench scale -- latency URL PROMPTS [N]
//!     HTTP p50 at concurrency 1 against the server at URL, interleaved prompt by prompt with two
//!     bare embeddings of the same prompt: ONNX Runtime's own defaults, and `serve`'s settings
//! cargo bench --bench scale -- throughput URL PROMPTS [SECONDS]
//!     requests/s at concurrency 32 against the bare model with one single-thread session per
//!     core, alternated twice
//! ```
//!
//! PROMPTS is a JSON-lines file with a `text` field (CLINC150's `test.jsonl` from
//! `examples/clinc150/convert.py`); every prompt is sent once, so none hits the embedding cache.
//! The bare embedding is tokenizer + ONNX Runtime session + mean pooling, written here on `ort`
//! and `tokenizers` directly, on the same model file and one thread. Needs the model: run
//! `scripts/setup.sh` first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::Tensor;
use pointsman::config::Method;
use pointsman::embed::{
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_DIR, DEFAULT_ORT_LIBRARY, Embedder, ModelSpec, OnnxEmbedder,
    PoolingKind, init_runtime,
};
use pointsman::engine;
use pointsman::index::{Index, exact_search};
use pointsman::similarity;

fn model_dir() -> PathBuf {
    std::env::var_os("POINTSMAN_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR))
}

fn ort_library() -> PathBuf {
    std::env::var_os("POINTSMAN_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_ORT_LIBRARY))
}

fn spec() -> ModelSpec {
    ModelSpec {
        model_dir: model_dir(),
        ort_library: ort_library(),
        pooling: PoolingKind::Mean,
        max_tokens: DEFAULT_MAX_TOKENS,
        intra_threads: 1,
        spinning: false,
    }
}

/// A bare embedding: the model's tokenizer, one ONNX Runtime session of one thread, mean pooling.
struct Bare {
    session: Session,
    tokenizer: tokenizers::Tokenizer,
}

impl Bare {
    /// `tuned`: with `serve`'s session settings (no spinning, SkipLayerNormalization fusion off);
    /// otherwise ONNX Runtime's defaults.
    fn load(tuned: bool) -> Self {
        init_runtime(&ort_library()).expect("ONNX Runtime (run scripts/setup.sh)");
        let dir = model_dir();
        let env = pointsman::embed::runtime().expect("ONNX Runtime loaded");
        let mut builder = Session::builder(&env)
            .unwrap()
            .with_intra_threads(1)
            .unwrap();
        if tuned {
            builder = builder
                .with_config_entry("session.intra_op.allow_spinning", "0")
                .unwrap()
                .with_config_entry(
                    "optimization.disable_specified_optimizers",
                    "SkipLayerNormFusion",
                )
                .unwrap();
        }
        let session = builder
            .commit_from_file(dir.join("model.onnx"))
            .expect("model (run scripts/setup.sh)");
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: DEFAULT_MAX_TOKENS,
                ..Default::default()
            }))
            .unwrap();
        Bare { session, tokenizer }
    }

    fn embed(&mut self, text: &str) -> Vec<f32> {
        let enc = self.tokenizer.encode(text, true).unwrap();
        let n = enc.get_ids().len();
        let ids: Vec<i64> = enc.get_ids().iter().map(|&x| x as i64).collect();
        let mask: Vec<i64> = enc.get_attention_mask().iter().map(|&x| x as i64).collect();
        let types: Vec<i64> = enc.get_type_ids().iter().map(|&x| x as i64).collect();
        let shape = [1usize, n];
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => Tensor::from_array((shape, ids)).unwrap(),
                "attention_mask" => Tensor::from_array((shape, mask)).unwrap(),
                "token_type_ids" => Tensor::from_array((shape, types)).unwrap(),
            ])
            .unwrap();
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().unwrap();
        let dim = shape[2] as usize;
        let mut v = vec![0.0f32; dim];
        for row in data.chunks_exact(dim) {
            v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        similarity::normalise(&mut v);
        v
    }
}

/// Distinct prompts from a JSON-lines file's `text` fields.
fn prompts(path: &Path, n: usize) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut seen = std::collections::HashSet::new();
    BufReader::new(file)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            v["text"].as_str().expect("a `text` field").to_string()
        })
        .filter(|t| seen.insert(t.clone()))
        .take(n)
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Recall and cost of the reported neighbours by probe budget, and the decision's own cost.
fn search(index_dir: &Path, prompts_file: &Path, n: usize) {
    let index = Index::open(index_dir).unwrap();
    index.wait_for_graph().unwrap();
    let mut embedder = OnnxEmbedder::load(&spec()).expect("model (run scripts/setup.sh)");
    let texts = prompts(prompts_file, n);
    let embedded: Vec<_> = texts
        .iter()
        .map(|t| embedder.embed(&[t.as_str()]).unwrap().remove(0))
        .collect();
    let k = index.table().defaults.top_k;
    let dim = embedder.info().dimension;
    let all: Vec<f32> = (0..index.len() as u32)
        .flat_map(|id| index.vector(id).to_vec())
        .collect();
    let mut exact_us = Vec::new();
    let exact: Vec<_> = embedded
        .iter()
        .map(|e| {
            let t = Instant::now();
            let hits = exact_search(&all, dim, &e.vector, k);
            exact_us.push(micros(t.elapsed()));
            hits
        })
        .collect();
    println!(
        "index {} ({} utterances, {} routes), {} prompts, top {k}",
        index_dir.display(),
        index.len(),
        index.table().routes.len(),
        texts.len()
    );
    // a forward pass reads megabytes between two decisions: the probe's bytes come from memory
    let flush = vec![1u8; 16 << 20];
    let evict =
        || std::hint::black_box(flush.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>());
    println!("| neighbours by | recall@{k} | p50 µs | p50 µs, caches flushed |");
    println!("|---|---:|---:|---:|");
    println!("| exact scan | 1.000 | {:.1} | |", median(exact_us));
    for budget in [256, 512, 768, 1024, 2048, 4096] {
        let (mut found, mut us) = (0usize, Vec::new());
        for (e, truth) in embedded.iter().zip(&exact) {
            let t = Instant::now();
            let hits = index.neighbours_within(&e.vector, k, budget).unwrap();
            us.push(micros(t.elapsed()));
            found += hits
                .iter()
                .filter(|h| truth.iter().any(|x| x.id == h.id))
                .count();
        }
        let recall = found as f64 / (k * embedded.len()) as f64;
        let mut cold = Vec::new();
        for e in &embedded {
            evict();
            let t = Instant::now();
            std::hint::black_box(index.neighbours_within(&e.vector, k, budget).unwrap());
            cold.push(micros(t.elapsed()));
        }
        let mark = if budget == pointsman::index::PROBE_VECTORS {
            " (default)"
        } else {
            ""
        };
        println!(
            "| probe {budget}{mark} | {recall:.3} | {:.1} | {:.1} |",
            median(us),
            median(cold)
        );
    }
    // the whole decision after the forward pass, as a worker runs it
    let mut us = Vec::new();
    for (t, e) in texts.iter().zip(&embedded) {
        let start = Instant::now();
        std::hint::black_box(engine::decide(&index, t, e).unwrap());
        us.push(micros(start.elapsed()));
    }
    let method = match index.table().defaults.method {
        Method::Classifier => "classifier",
        Method::Centroid => "centroid",
        Method::Neighbours => "neighbours",
    };
    println!(
        "\ndecision after the forward pass ({method}): p50 {:.1} µs",
        median(us)
    );
}

/// One keep-alive HTTP/1.1 connection that posts route requests.
struct Client {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Client {
    fn connect(url: &str) -> Self {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&host).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
            host,
        }
    }

    /// Posts one prompt; the status code.
    fn route(&mut self, prompt: &str) -> u16 {
        self.route_body(prompt).0
    }

    /// Posts one prompt; the status code and the body.
    fn route_body(&mut self, prompt: &str) -> (u16, Vec<u8>) {
        let body = serde_json::json!({ "prompt": prompt }).to_string();
        let request = format!(
            "POST /v1/route HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.exchange(&request)
    }

    /// `GET /healthz`: a request that does no work.
    fn health(&mut self) -> u16 {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.exchange(&request).0
    }

    fn exchange(&mut self, request: &str) -> (u16, Vec<u8>) {
        self.stream.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// HTTP p50 at concurrency 1, interleaved with the two bare embeddings of the same prompt.
fn latency(url: &str, prompts_file: &Path, n: usize) {
    let mut defaults = Bare::load(false);
    let mut tuned = Bare::load(true);
    let mut ours = OnnxEmbedder::load(&spec()).unwrap();
    let mut client = Client::connect(url);
    let texts = prompts(prompts_file, n + 20);
    let (warm, texts) = texts.split_at(20);
    for t in warm {
        defaults.embed(t);
        tuned.embed(t);
        assert_eq!(client.route(t), 200);
    }
    let (mut a, mut b, mut h) = (Vec::new(), Vec::new(), Vec::new());
    let (mut server_embed, mut server_total, mut ping) = (Vec::new(), Vec::new(), Vec::new());
    let (mut server_queue, mut server_search) = (Vec::new(), Vec::new());
    let mut worst_cosine = 1.0f32;
    for (i, t) in texts.iter().enumerate() {
        // rotate the order, so that none of the four always follows another
        for step in 0..4 {
            match (i + step) % 4 {
                3 => {
                    let s = Instant::now();
                    assert_eq!(client.health(), 200);
                    ping.push(micros(s.elapsed()));
                }
                0 => {
                    let s = Instant::now();
                    std::hint::black_box(defaults.embed(t));
                    a.push(micros(s.elapsed()));
                }
                1 => {
                    let s = Instant::now();
                    let v = tuned.embed(t);
                    b.push(micros(s.elapsed()));
                    if i % 20 == 0 {
                        // the floor embeds as `serve` does (up to rounding)
                        let mine = ours.embed(&[t.as_str()]).unwrap().remove(0).vector;
                        worst_cosine = worst_cosine.min(similarity::similarity(&v, &mine));
                    }
                }
                _ => {
                    let s = Instant::now();
                    let (status, body) = client.route_body(t);
                    h.push(micros(s.elapsed()));
                    assert_eq!(status, 200);
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    server_embed.push(body["timings"]["embed_ms"].as_f64().unwrap());
                    server_total.push(body["timings"]["total_ms"].as_f64().unwrap());
                    server_queue.push(body["timings"]["queue_ms"].as_f64().unwrap());
                    server_search.push(body["timings"]["search_ms"].as_f64().unwrap());
                }
            }
        }
    }
    // serve's embedder alone, in this thread, against the same floor
    let (mut mine, mut floor) = (Vec::new(), Vec::new());
    for t in texts.iter().take(200) {
        let s = Instant::now();
        std::hint::black_box(ours.embed(&[t.as_str()]).unwrap());
        mine.push(micros(s.elapsed()));
        let s = Instant::now();
        std::hint::black_box(tuned.embed(t));
        floor.push(micros(s.elapsed()));
    }
    println!(
        "in this thread, interleaved: serve's embedder {:.3} ms, bare with its settings {:.3} ms",
        median(mine) / 1e3,
        median(floor) / 1e3
    );
    assert!(
        worst_cosine > 0.999,
        "the bare embedding differs from serve's: cosine {worst_cosine}"
    );
    // per request: the round trip less the engine's own submission-to-answer
    let outside: Vec<f64> = h
        .iter()
        .zip(&server_total)
        .map(|(h, total)| h / 1e3 - total)
        .collect();
    let (a, b, h) = (median(a) / 1e3, median(b) / 1e3, median(h) / 1e3);
    println!("{} prompts, each once, interleaved (p50 ms):", texts.len());
    println!("| HTTP p50 | bare, ORT defaults | ratio | bare, serve's settings | ratio |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {h:.3} | {a:.3} | {:.3}× | {b:.3} | {:.3}× |",
        h / a,
        h / b
    );
    println!("(worst cosine of the bare embedding to serve's: {worst_cosine:.6})");
    println!(
        "server's own timings, p50: queue {:.3} ms, forward pass {:.3} ms, decision {:.3} ms, \
         submission to answer {:.3} ms, the rest of the round trip {:.3} ms; `GET /healthz` (no \
         work) {:.3} ms",
        median(server_queue),
        median(server_embed),
        median(server_search),
        median(server_total),
        median(outside),
        median(ping) / 1e3
    );
}

/// Runs `work` on `threads` threads for `seconds`; completed calls per second and their results.
fn run_for<T: Send + 'static>(
    threads: usize,
    seconds: f64,
    make: impl Fn(usize) -> Box<dyn FnMut(u64) -> T + Send> + Sync,
) -> (f64, Vec<T>) {
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for i in 0..threads {
        let mut work = make(i);
        let (stop, counter, barrier) = (stop.clone(), counter.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || {
            let mut out = Vec::new();
            barrier.wait();
            while !stop.load(Ordering::Relaxed) {
                out.push(work(counter.fetch_add(1, Ordering::Relaxed)));
            }
            out
        }));
    }
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<T> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    (
        results.len() as f64 / start.elapsed().as_secs_f64(),
        results,
    )
}

/// Embeddings/s of bare sessions, one single-thread session per core, each text new.
fn bare_throughput(
    texts: &Arc<Vec<String>>,
    cores: usize,
    seconds: f64,
    tuned: bool,
    offset: u64,
) -> f64 {
    let sessions: Vec<std::sync::Mutex<Option<Bare>>> = (0..cores)
        .map(|_| std::sync::Mutex::new(Some(Bare::load(tuned))))
        .collect();
    run_for(cores, seconds, |i| {
        let mut session = sessions[i].lock().unwrap().take().unwrap();
        let t = texts.clone();
        // a suffix per call: every text is new to the session, as in the server run
        Box::new(move |c| {
            let text = format!("{} {}", t[c as usize % t.len()], offset + c);
            std::hint::black_box(session.embed(&text));
        })
    })
    .0
}

/// Requests/s at concurrency 32 against the bare model on every core (with ONNX Runtime's
/// defaults and with `serve`'s settings), alternated twice.
fn throughput(url: &str, prompts_file: &Path, seconds: f64) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let texts = Arc::new(prompts(prompts_file, 100_000));
    println!("concurrency 32 against {cores} single-thread bare sessions, {seconds} s a run:");
    println!(
        "| run | server requests/s | 200 | 429 | other | bare, ORT defaults | ratio | bare, serve's settings | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in 1..=2u64 {
        let offset = run * 10_000_000;
        let defaults = bare_throughput(&texts, cores, seconds, false, offset);
        let t = texts.clone();
        let (rps, statuses) = run_for(32, seconds, |_| {
            let mut client = Client::connect(url);
            let t = t.clone();
            Box::new(move |c| {
                let text = format!("{} {}", t[c as usize % t.len()], offset + 1_000_000 + c);
                client.route(&text)
            })
        });
        let tuned = bare_throughput(&texts, cores, seconds, true, offset + 2_000_000);
        let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
        let other = statuses.len() - count(200) - count(429);
        println!(
            "| {run} | {rps:.1} | {} | {} | {other} | {defaults:.1} | {:.3}× | {tuned:.1} | {:.3}× |",
            count(200),
            count(429),
            rps / defaults,
            rps / tuned
        );
    }
}

fn main() {
    // cargo passes `--bench`; everything else is ours
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = "usage: cargo bench --bench scale -- search INDEX PROMPTS [N] | latency URL PROMPTS [N] | throughput URL PROMPTS [SECONDS]";
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(0), arg(1), arg(2)) {
        (Some("search"), Some(index), Some(p)) => search(
            Path::new(index),
            Path::new(p),
            arg(3).map_or(1000, |n| n.parse().expect(usage)),
        ),
        (Some("latency"), Some(url), Some(p)) => latency(
            url,
            Path::new(p),
            arg(3).map_or(1000, |n| n.parse().expect(usage)),
        ),
        (Some("throughput"), Some(url), Some(p)) => throughput(
            url,
            Path::new(p),
            arg(3).map_or(15.0, |n| n.parse().expect(usage)),
        ),
        // `cargo bench` with no arguments runs every bench: this one needs its inputs
        (None, ..) => {
            eprintln!("scale: nothing to do without arguments ({usage}); benches/scale.sh runs it")
        }
        _ => panic!("{usage}"),
    }
}
