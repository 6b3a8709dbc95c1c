//! Faults, with the real binary and model: the index directory deleted or replaced by garbage
//! while serving, the disk filling up during a build, SIGTERM with requests in flight.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const ADMIN_KEY: &str = "faults-admin-key";
const ORDER_PROMPT: &str = "Where is my order #12345?";

/// One HTTP/1.1 exchange on a new connection: the status and the body. A connection refused,
/// reset or closed without a whole answer is an error, as the client saw it.
fn http(base: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    HeldRequest::send(base, method, path, body)?.finish()
}

/// An HTTP/1.1 request sent but for the last byte of its body (a request without a body goes
/// whole): the server has it in hand and cannot answer until [`HeldRequest::finish`] sends that
/// byte.
struct HeldRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldRequest {
    fn send(base: &str, method: &str, path: &str, body: &str) -> std::io::Result<HeldRequest> {
        let host = base.strip_prefix("http://").expect("an http:// base URL");
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let held = usize::from(!body.is_empty());
        let (now, rest) = request.as_bytes().split_at(request.len() - held);
        stream.write_all(now)?;
        Ok(HeldRequest {
            stream,
            rest: rest.to_vec(),
        })
    }

    /// Sends the rest and reads the answer: the status and the body.
    fn finish(mut self) -> std::io::Result<(u16, String)> {
        let stream = &mut self.stream;
        stream.write_all(&self.rest)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let broken = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no whole HTTP answer: {text:?}"),
            )
        };
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(broken)?;
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "this client reads Content-Length bodies only: {head}"
        );
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(broken)?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(broken)?;
        if body.len() != length {
            return Err(broken());
        }
        Ok((status, body.to_string()))
    }
}

/// A running `pointsman serve --admin-key` (killed on drop, as every [`Serving`] is).
struct Server {
    child: Serving,
    base: String,
}

impl Server {
    /// Starts the server and waits until `/readyz` says the index is open.
    fn start(index: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--admin-key", ADMIN_KEY];
        args.extend_from_slice(extra);
        let (child, base) = serve(index, &args);
        let server = Server { child, base };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.ready() {
            assert!(Instant::now() < deadline, "not ready after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = http(&self.base, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: {status} with a body not JSON ({e}): {text}")
        });
        (status, value)
    }

    fn ready(&self) -> bool {
        matches!(http(&self.base, "GET", "/readyz", ""), Ok((200, _)))
    }

    /// The live index is open, ready, and routes an order question to `order_status`.
    fn assert_serving(&self) {
        let (status, v) = self.json("GET", "/readyz", "");
        assert_eq!((status, &v["status"]), (200, &json!("ready")), "{v}");
        let (status, v) = self.json(
            "POST",
            "/v1/route",
            &json!({ "prompt": ORDER_PROMPT }).to_string(),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["route"], "order_status", "{v}");
    }

    fn reload(&self) -> (u16, Value) {
        self.json("POST", "/v1/admin/reload", "")
    }

    /// A reload the server refuses: 422 `reload_failed`; returns the error message.
    fn failed_reload(&self) -> String {
        let (status, v) = self.reload();
        assert_eq!((status, &v["type"]), (422, &json!("reload_failed")), "{v}");
        let error = v["error"].as_str().unwrap().to_string();
        assert!(
            error.starts_with("reload failed, the previous index keeps serving: "),
            "{error}"
        );
        error
    }

    /// The value of one series from `/metrics`, e.g. `pointsman_queue_length`.
    fn metric(&self, series: &str) -> f64 {
        let (status, text) = http(&self.base, "GET", "/metrics", "").unwrap();
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    fn sigterm(&self) {
        signal(&self.child, "TERM");
    }

    /// Waits for the process to exit after a signal; it must exit 0 within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "serve still running {limit:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        self.sigterm();
        self.wait_exit(Duration::from_secs(10));
    }
}

/// Deterministic noise (xorshift).
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn current_file(index: &Path) -> String {
    std::fs::read_to_string(index.join(pointsman::index::CURRENT_FILE)).unwrap()
}

/// An index of the example routes in `root/index`.
fn example_index_in(root: &Path) -> PathBuf {
    let index = root.join("index");
    build(&example_routes(), &index);
    index
}

#[test]
fn deleting_the_index_directory_keeps_the_open_index_serving() {
    let root = tempfile::tempdir().unwrap();
    let index = example_index_in(root.path());
    let mut server = Server::start(&index, &[]);
    server.assert_serving();

    std::fs::remove_dir_all(&index).unwrap();
    // the open index lives in memory: decisions go on without its files
    for _ in 0..3 {
        server.assert_serving();
    }
    let error = server.failed_reload();
    assert!(
        error.contains("no index found") && error.contains(&*index.to_string_lossy()),
        "{error}"
    );
    server.assert_serving();
    assert_eq!(
        server.metric(r#"pointsman_reloads_total{result="failed"}"#),
        1.0
    );

    // once the index is rebuilt, a reload takes it
    build(&example_routes(), &index);
    let (status, v) = server.reload();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["generation"]
            .as_str()
            .unwrap()
            .starts_with(&*index.to_string_lossy()),
        "{v}"
    );
    server.assert_serving();
    server.stop();
}

#[test]
fn garbage_in_the_index_directory_is_refused_and_the_open_index_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let index = example_index_in(root.path());
    let live = pointsman::index::current_generation(&index).unwrap();
    // the example routes build no HNSW graph however low the switch: their classifier never
    // searches the vectors...
    let build_with_graph_from = |routes: &Path, out: &Path| {
        let run = pointsman()
            .arg("build")
            .arg(routes)
            .arg("--out")
            .arg(out)
            .args(["--hnsw-min-vectors", "1"])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let live = pointsman::index::current_generation(out).unwrap();
        let has_graph = listing(&live).iter().any(|f| f.ends_with(".hnsw.data"));
        (live, has_graph)
    };
    let (_, classifier_graph) = build_with_graph_from(&example_routes(), &root.path().join("c"));
    assert!(!classifier_graph);
    // ...while the same routes decided by their neighbours get one, whose files are verified
    // apart from the others
    let neighbour_routes = root.path().join("neighbour-routes");
    std::fs::create_dir(&neighbour_routes).unwrap();
    for f in listing(&example_routes()) {
        let text = std::fs::read_to_string(example_routes().join(&f)).unwrap();
        let text = text.replace("method: classifier", "method: neighbours");
        std::fs::write(neighbour_routes.join(f), text).unwrap();
    }
    let (hnsw_live, neighbours_graph) =
        build_with_graph_from(&neighbour_routes, &root.path().join("hnsw"));
    assert!(neighbours_graph, "{:?}", listing(&hnsw_live));

    let mut server = Server::start(&index, &[]);
    server.assert_serving();

    // a copy of generation `from` named `gen-9999...` (it sorts last, as the newest would), with
    // `damage` done to it, made current
    let fake_current = |from: &Path, damage: &dyn Fn(&Path)| {
        let name = "gen-9999999999-000000000-1";
        let generation = index.join(name);
        let _ = std::fs::remove_dir_all(&generation);
        std::fs::create_dir(&generation).unwrap();
        for f in listing(from) {
            std::fs::copy(from.join(&f), generation.join(&f)).unwrap();
        }
        damage(&generation);
        std::fs::write(index.join("CURRENT"), format!("{name}\n")).unwrap();
    };
    let flip_middle_byte = |file: &Path| {
        let mut bytes = std::fs::read(file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(file, bytes).unwrap();
    };
    let current = index.join("CURRENT");

    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "a flipped byte in vectors.f32",
            Box::new(|| fake_current(&live, &|g| flip_middle_byte(&g.join("vectors.f32")))),
            &["corrupted", "vectors.f32", "checksum"],
        ),
        (
            "a truncated utterances.json",
            Box::new(|| {
                fake_current(&live, &|g| {
                    let f = g.join("utterances.json");
                    let bytes = std::fs::read(&f).unwrap();
                    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
                })
            }),
            &["corrupted", "utterances.json", "truncated"],
        ),
        (
            "a manifest of random bytes",
            Box::new(|| {
                fake_current(&live, &|g| {
                    std::fs::write(g.join("manifest.json"), garbage(1000, 1)).unwrap()
                })
            }),
            &["corrupted", "manifest.json"],
        ),
        (
            "every file of random bytes",
            Box::new(|| {
                fake_current(&live, &|g| {
                    for (i, f) in listing(g).iter().enumerate() {
                        std::fs::write(g.join(f), garbage(4096, i as u64 + 7)).unwrap();
                    }
                })
            }),
            &["corrupted"],
        ),
        (
            "a damaged HNSW graph",
            Box::new(|| {
                fake_current(&hnsw_live, &|g| {
                    for f in listing(g) {
                        if f.ends_with(".hnsw.data") {
                            flip_middle_byte(&g.join(f));
                        }
                    }
                })
            }),
            &["corrupted", "hnsw.data"],
        ),
        (
            "CURRENT of random bytes",
            Box::new(|| std::fs::write(&current, garbage(64, 3)).unwrap()),
            &["CURRENT", "not text", "rebuild it"],
        ),
        (
            "CURRENT naming a generation that is not there",
            Box::new(|| std::fs::write(&current, "gen-1-000000000-1\n").unwrap()),
            &["gen-1-000000000-1", "does not exist", "rebuild it"],
        ),
        (
            "the directory replaced by a file of random bytes",
            Box::new(|| {
                std::fs::remove_dir_all(&index).unwrap();
                std::fs::write(&index, garbage(10_000, 5)).unwrap();
            }),
            &["CURRENT"],
        ),
    ];
    for (n, (what, damage, expected)) in cases.iter().enumerate() {
        damage();
        let error = server.failed_reload();
        for e in *expected {
            assert!(error.contains(e), "{what}: {e:?} not in {error}");
        }
        // the advice is given once, however deep the cause
        assert!(error.matches("rebuild it").count() <= 1, "{what}: {error}");
        // still answering, from the index opened before
        server.assert_serving();
        assert_eq!(
            server.metric(r#"pointsman_reloads_total{result="failed"}"#),
            (n + 1) as f64,
            "{what}"
        );
    }
    assert_eq!(
        server.metric(r#"pointsman_reloads_total{result="ok"}"#),
        0.0
    );

    std::fs::remove_file(&index).unwrap();
    build(&example_routes(), &index);
    let (status, v) = server.reload();
    assert_eq!(status, 200, "{v}");
    server.assert_serving();
    server.stop();
}

/// The binary run under `ulimit -f KIB` with SIGXFSZ ignored: a write past the limit fails with
/// EFBIG, as a write to a full disk fails with ENOSPC, instead of killing the process.
fn with_file_size_limit(kib: u64) -> Command {
    let inner = pointsman();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(r#"trap "" XFSZ; ulimit -f {kib}; exec "$0" "$@""#))
        .arg(inner.get_program());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd
}

#[test]
fn a_build_that_runs_out_of_disk_leaves_the_live_index_serving() {
    let root = tempfile::tempdir().unwrap();
    let index = example_index_in(root.path());
    let live = pointsman::index::current_generation(&index).unwrap();
    let current = current_file(&index);
    let before = listing(&index);
    let mut server = Server::start(&index, &[]);

    // 64 KiB a file: the route table and utterances fit, the vectors (95 KiB) do not
    let out = with_file_size_limit(64)
        .arg("build")
        .arg(example_routes())
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("error: building the index in {}", index.display()))
            && err.contains(".partial/vectors.f32")
            && err.contains("File too large"),
        "{err}"
    );
    // nothing published, nothing left behind: no new generation, no staging directory
    assert_eq!(current_file(&index), current);
    assert_eq!(listing(&index), before);

    // the live generation is whole: the CLI opens it, verifying every file's checksum
    let v = json_of(
        pointsman()
            .args(["route", "--index"])
            .arg(&index)
            .arg(ORDER_PROMPT),
    );
    assert_eq!(v["route"], "order_status", "{v}");
    // and the server, which never stopped answering, reloads it
    server.assert_serving();
    let (status, v) = server.reload();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], json!(live.to_string_lossy()), "{v}");
    server.assert_serving();

    // the limit is what failed the build: without it, the same build publishes
    build(&example_routes(), &index);
    assert_ne!(current_file(&index), current);
    server.stop();
}

#[test]
fn sigterm_lets_every_request_in_flight_finish_and_exits_0() {
    const CLIENTS: usize = 16;
    let root = tempfile::tempdir().unwrap();
    let index = example_index_in(root.path());
    let log = root.path().join("decisions.jsonl");
    let mut server = Server::start(
        &index,
        &[
            "--embed-cache-entries",
            "0",
            "--decision-log",
            log.to_str().unwrap(),
        ],
    );
    // every request is in the server's hands and none can be answered yet: each body lacks
    // its last byte
    let held: Vec<HeldRequest> = (0..CLIENTS)
        .map(|i| {
            let body = json!({ "prompt": format!("Where is my order #{i}?") });
            HeldRequest::send(&server.base, "POST", "/v1/route", &body.to_string()).unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // the scrape counts itself
        let in_flight = server.metric("pointsman_http_requests_in_flight") as usize;
        if in_flight > CLIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server took {in_flight} of {CLIENTS} requests in 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.sigterm();

    // it stops taking connections, and stays up for the requests it has
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(&server.base, "GET", "/healthz", "").is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections were still answered 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "serve exited with {CLIENTS} requests in flight"
    );

    // the held requests finish together, so they queue for the workers after the signal
    let released = Instant::now();
    let clients: Vec<_> = held
        .into_iter()
        .map(|request| std::thread::spawn(move || request.finish()))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let answer = client.join().unwrap();
        let (status, body) = answer.unwrap_or_else(|e| panic!("request {i} was not answered: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["route"], "order_status", "request {i}: {v}");
    }
    server.wait_exit(Duration::from_secs(10));
    // and every decision reached the decision log before the process ended
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), CLIENTS, "{logged}");
    eprintln!(
        "sigterm: {CLIENTS} requests in flight answered 200 and exit 0 within {:?} of their last byte",
        released.elapsed()
    );
}
