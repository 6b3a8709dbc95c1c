//! The front door: slow clients, idle keep-alive connections and stalled bodies are closed, a
//! cap on connections refuses the rest at once, and a request in flight is never cut by any of
//! these. In process with short timeouts, and on the real binary with its defaults.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pointsman::server::{AppState, DoorOptions, ServerOptions, app, serve_connections};

use crate::common::*;

const ROUTE_BODY: &str = r#"{"prompt": "hello there"}"#;

/// A fake-engine server behind the front door with these limits, on a free port.
async fn door(options: DoorOptions, body_timeout: Duration) -> (String, AppState) {
    let (engine, dir) = fake_engine_for(FAKE_ROUTES);
    std::mem::forget(dir); // the index must outlive the server, which outlives the test
    let state = AppState::with_engine(
        engine,
        ServerOptions {
            body_timeout,
            ..ServerOptions::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics = state.metrics();
    let router = app(state.clone());
    tokio::spawn(serve_connections(
        listener,
        router,
        options,
        metrics,
        std::future::pending(),
        async {},
    ));
    (addr, state)
}

fn short() -> DoorOptions {
    DoorOptions {
        header_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_millis(2500),
        max_connections: 1000,
        // threads of their own beside the test's runtime, as `serve` has (the proxy's test
        // serves on the caller's runtime alone)
        connection_threads: 2,
    }
}

fn route_request(addr: &str, keep_alive: bool) -> String {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "POST /v1/route HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{ROUTE_BODY}",
        ROUTE_BODY.len()
    )
}

/// Reads one HTTP/1.1 response with a `content-length` body: its status line, head and body.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed mid-head: {:?}", String::from_utf8_lossy(&raw)),
            ));
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether the server closes `stream` (EOF or reset) within `within`; it must send nothing.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One request on a new connection (closed after it), with a 1 s read timeout.
fn exchange(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    read_response(&mut stream)
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Connections the server closed for `reason`, in a metrics text.
fn closed(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("pointsman_connections_closed_total{{reason=\"{reason}\"}} "),
    )
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_does_not_arrive_in_time_closes_its_connection() {
    let (addr, state) = door(short(), Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || {
        // nothing at all, then half a head
        let mut silent = connect(&addr);
        let mut half = connect(&addr);
        half.write_all(b"POST /v1/route HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(3)));
        assert!(closed_within(&mut half, Duration::from_secs(3)));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "closed after {waited:?}, before the header timeout"
        );
        let text = state.metrics().render(None, None);
        assert_eq!(closed(&text, "header_timeout"), 2.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_has_the_idle_timeout_between_requests_not_the_header_one() {
    let (addr, state) = door(short(), Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = connect(&addr);
        stream
            .write_all(route_request(&addr, true).as_bytes())
            .unwrap();
        let (head, _) = read_response(&mut stream).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        // idle longer than the header timeout, shorter than the idle one: still open
        std::thread::sleep(Duration::from_millis(1000));
        stream
            .write_all(route_request(&addr, true).as_bytes())
            .unwrap();
        let (head, _) = read_response(&mut stream).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        // a second request's head has the header timeout from its first byte
        stream.write_all(b"POST /v1/route HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut stream, Duration::from_secs(3)));
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(2000),
            "a started head waited {waited:?}: the idle timeout, not the header one"
        );
        // and an idle one is closed after the idle timeout
        let mut idle = connect(&addr);
        idle.write_all(route_request(&addr, true).as_bytes())
            .unwrap();
        read_response(&mut idle).unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut idle, Duration::from_secs(6)));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2300),
            "idle closed after {waited:?}"
        );
        let text = state.metrics().render(None, None);
        assert_eq!(closed(&text, "idle_timeout"), 1.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_slow_steady_one_is_read_whole() {
    let (addr, state) = door(short(), Duration::from_millis(1200)).await;
    tokio::task::spawn_blocking(move || {
        let mut stalled = connect(&addr);
        stalled
            .write_all(
                format!(
                    "POST /v1/route HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                     Content-Length: 100\r\n\r\n{{\"prompt\""
                )
                .as_bytes(),
            )
            .unwrap();
        let (head, body) = read_response(&mut stalled).unwrap();
        assert!(head.starts_with("http/1.1 408"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(body.contains("\"type\":\"body_timeout\""), "{body}");
        assert!(body.contains("--body-read-timeout-s"), "{body}");
        assert!(closed_within(&mut stalled, Duration::from_secs(2)));

        // a body that keeps coming, slower than the timeout in all, is answered
        let mut steady = connect(&addr);
        let request = route_request(&addr, false);
        let (head_part, body_part) = request.split_at(request.len() - ROUTE_BODY.len());
        steady.write_all(head_part.as_bytes()).unwrap();
        for chunk in body_part.as_bytes().chunks(6) {
            std::thread::sleep(Duration::from_millis(300));
            steady.write_all(chunk).unwrap();
        }
        let (head, _) = read_response(&mut steady).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let text = state.metrics().render(None, None);
        assert_eq!(closed(&text, "body_timeout"), 1.0);
        assert_eq!(
            metric(
                &text,
                "pointsman_requests_total{endpoint=\"/v1/route\",status=\"408\"} "
            ),
            1.0
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_new_connections_are_refused_at_once() {
    // the held connections must outlive the test's waits, on a loaded machine too
    let options = DoorOptions {
        max_connections: 3,
        header_timeout: Duration::from_secs(30),
        ..short()
    };
    let (addr, state) = door(options, Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..3).map(|_| connect(&addr)).collect();
        // the three are accepted before the fourth comes
        let metrics = state.metrics();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&metrics.render(None, None), "pointsman_connections_open ") < 3.0 {
            assert!(Instant::now() < deadline, "the three were not accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut refused = connect(&addr);
        refused
            .write_all(route_request(&addr, false).as_bytes())
            .unwrap();
        let started = Instant::now();
        // a whole answer, its length right, though the request was never read
        let (head, body) = read_response(&mut refused).unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], "too_many_connections");
        assert!(closed_within(&mut refused, Duration::from_secs(2)));
        let text = metrics.render(None, None);
        assert_eq!(metric(&text, "pointsman_connections_refused_total "), 1.0);
        drop(held);
        // room again once they are gone
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&metrics.render(None, None), "pointsman_connections_open ") > 0.0 {
            assert!(
                Instant::now() < deadline,
                "closed connections still counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut stream = connect(&addr);
        stream
            .write_all(route_request(&addr, false).as_bytes())
            .unwrap();
        let (head, _) = read_response(&mut stream).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
    })
    .await
    .unwrap();
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The bar of the front door, on the real binary and model with `serve`'s defaults: while
/// 12,000 slow connections are held (half without a whole head, half without their body), a
/// normal request is answered 200 within a second, and within 45 s the server has closed them.
#[test]
fn twelve_thousand_slow_connections_do_not_hold_the_server_shut() {
    const SLOW: usize = 12_000;
    // this process holds them all: it needs the room
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= SLOW as u64 + 500,
        "this test needs {} open files, the hard limit is {limit}",
        SLOW + 500
    );
    let (server, base) = serve(example_index().dir.path(), &[]);
    let addr = base.strip_prefix("http://").unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exchange(&addr, "GET", "/readyz", "")
        .is_ok_and(|(head, _)| head.starts_with("http/1.1 200"))
    {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let sent: &[u8] = if i % 2 == 0 {
            b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        } else {
            b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro"
        };
        stream.write_all(sent).unwrap();
        slow.push(stream);
    }
    let opened = started.elapsed();
    let held = open_descriptors(server.id());
    assert!(
        held > SLOW / 2,
        "the server holds only {held} descriptors after {opened:?}: the slow connections were not all open"
    );
    let asked = Instant::now();
    let (head, body) = exchange(
        &addr,
        "POST",
        "/v1/route",
        r#"{"prompt": "Where is my order #12345?"}"#,
    )
    .unwrap();
    let answered = asked.elapsed();
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    assert!(
        answered < Duration::from_secs(1),
        "answered in {answered:?}"
    );
    // every slow connection is closed within 45 s of its opening
    let deadline = started + Duration::from_secs(45);
    let mut left = open_descriptors(server.id());
    while left >= 500 {
        assert!(
            Instant::now() < deadline,
            "{left} descriptors still open 45 s after the slow connections came"
        );
        std::thread::sleep(Duration::from_millis(200));
        left = open_descriptors(server.id());
    }
    let closed_after = started.elapsed();
    // the ones that sent a head got their 408
    let mut stream = slow.swap_remove(1);
    let (head, _) = read_response(&mut stream).unwrap();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    // and every one of them was closed for its timeout, within the same 45 s
    let closed = |reason: &str| closed(&exchange(&addr, "GET", "/metrics", "").unwrap().1, reason);
    while closed("header_timeout") < (SLOW / 2) as f64 || closed("body_timeout") < (SLOW / 2) as f64
    {
        assert!(
            Instant::now() < deadline,
            "45 s after they came, {} slow heads and {} stalled bodies were closed, of {} each",
            closed("header_timeout"),
            closed("body_timeout"),
            SLOW / 2
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(closed("header_timeout"), (SLOW / 2) as f64);
    assert_eq!(closed("body_timeout"), (SLOW / 2) as f64);
    eprintln!(
        "door: {SLOW} slow connections opened in {opened:?} (server held {held} descriptors); \
         a normal request answered in {answered:?}; fewer than 500 descriptors after {closed_after:?}"
    );
    drop(slow);
    drop(server);
}

/// What requests leave running on the connection threads (the proxy's spend settlements) is
/// waited for: `settle` runs once the connections have ended and before their threads stop, so
/// a task a request spawned there finishes instead of being dropped with its thread's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_requests_leave_on_the_connection_threads_finish_before_they_stop() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{Barrier, Semaphore};
    let tracker = tokio_util::task::TaskTracker::new();
    let finished = Arc::new(AtomicUsize::new(0));
    // the tasks finish only once the test lets them, after the server was told to stop
    let release = Arc::new(Semaphore::new(0));
    // every request waits for the other two: the three connections are open together, so each
    // is served on a runtime of its own (the caller's and the two threads)
    let together = Arc::new(Barrier::new(3));
    let (t, f, r, b) = (
        tracker.clone(),
        Arc::clone(&finished),
        Arc::clone(&release),
        Arc::clone(&together),
    );
    let router = axum::Router::new().route(
        "/work",
        axum::routing::get(move || {
            let (t, f, r, b) = (t.clone(), Arc::clone(&f), Arc::clone(&r), Arc::clone(&b));
            async move {
                b.wait().await;
                // on the runtime serving this connection
                t.spawn(async move {
                    let _ = r.acquire().await.expect("not closed");
                    f.fetch_add(1, Ordering::SeqCst);
                });
                "spawned"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = AppState::new(ServerOptions::default()).metrics();
    let settle_tracker = tracker.clone();
    let serving = tokio::spawn(serve_connections(
        listener,
        router,
        short(),
        metrics,
        async move {
            let _ = stopped.await;
        },
        async move {
            settle_tracker.close();
            settle_tracker.wait().await;
        },
    ));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /work HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    for stream in &mut streams {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.ends_with("spawned"), "{answer}");
    }
    stop.send(()).unwrap();
    // long enough for threads stopped too early to have dropped their tasks
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.add_permits(3);
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stopped")
        .unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 3, "a task was dropped");
}
