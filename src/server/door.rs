//! The front door: the accept loop of `serve`. It caps the connections open at once (beyond
//! the cap a connection gets a 503 and is closed at once) and closes the ones that hold the
//! server without asking anything of it: a request head that does not arrive in time, and a
//! keep-alive connection idle for too long. A body that stalls is the app's to answer (408,
//! see [`bound_body_silence`]), since only a request in flight has a body.
//!
//! None of these bound a request in flight: a long proxied stream is answered for as long as
//! it lasts, whatever the client sends meanwhile.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::{ApiError, AppState};
use crate::metrics::{Closed, Metrics};

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct DoorOptions {
    /// How long a connection may take to send a whole request head: from its accept, or from
    /// the first byte of a later request on a kept-alive connection.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond it new ones are refused.
    pub max_connections: usize,
    /// Threads that serve connections beside the runtime that calls [`serve`] (which should
    /// have one worker thread: see [`Fronts`]), each its own single-threaded runtime; a new
    /// connection goes to the one with the fewest open, the caller's first.
    pub connection_threads: usize,
}

/// Descriptors `serve` keeps for itself beyond the connections: the index files, Redis, logs.
/// (A proxied request's upstream socket is not in it: see `--max-connections`.)
const RESERVED_DESCRIPTORS: u64 = 1024;

/// Raises this process's open-file limit to its hard limit, and returns the default cap on
/// connections it leaves room for: the limit less [`RESERVED_DESCRIPTORS`] (a quarter of a
/// small limit), at least 64.
pub fn default_max_connections() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    let reserve = RESERVED_DESCRIPTORS.min(limit / 4);
    usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(64)
}

/// Connections the kernel may hold for `accept` (capped by `net.core.somaxconn`). A burst of
/// new connections beyond it waits a second for its SYN to be sent again: the 128 that std
/// and tokio ask for fills up during a burst, 4,096 does not.
const ACCEPT_BACKLOG: u32 = 4096;

/// Listens on `addr` with a backlog of [`ACCEPT_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // a restarted server may bind while its old connections are in TIME_WAIT
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The body of the answer to a connection beyond the cap.
const REFUSED_BODY: &str =
    r#"{"error":"too many open connections; retry shortly","type":"too_many_connections"}"#;

/// How long a refused connection is read from (and its bytes dropped) before it is closed:
/// closing a socket with unread bytes would reset it, and the client would never see its 503.
const REFUSED_LINGER: Duration = Duration::from_millis(200);

/// Answers a connection beyond the cap with a 503 and closes it, without reading its request.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{REFUSED_BODY}",
        REFUSED_BODY.len()
    );
    let _ = tokio::time::timeout(REFUSED_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, asks every
/// connection to finish its request in flight, and once they all have, runs `settle` (what the
/// requests left running: spend still being written) before the connection threads stop.
/// Connections are served on the caller's runtime and on [`DoorOptions::connection_threads`]
/// threads of their own.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: DoorOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    settle: impl Future<Output = ()>,
) {
    let fronts = match options.connection_threads {
        0 => None,
        n => match Fronts::start(n) {
            Ok(fronts) => Some(fronts),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the connection threads; serving connections on the main runtime");
                None
            }
        },
    };
    let (stop, stopping) = watch::channel(false);
    let open = Arc::new(Open::default());
    tokio::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // the peer gave up before its connection was accepted: nothing to do
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // out of descriptors, most likely: accepting again at once would spin
                if !accept_failing {
                    tracing::warn!(error = %e, open = open.count(), "cannot accept connections; trying again every 50 ms");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if accept_failing {
            tracing::info!(open = open.count(), "accepting connections again");
            accept_failing = false;
        }
        if open.count() >= options.max_connections {
            metrics.connection_refused();
            tokio::spawn(refuse(stream));
            continue;
        }
        let guard = open.enter(&metrics);
        let (app, metrics, stopping) = (app.clone(), Arc::clone(&metrics), stopping.clone());
        let (front, on_front) = match &fronts {
            Some(fronts) => fronts.place(),
            None => (None, None),
        };
        let Some(front) = front else {
            tokio::spawn(async move {
                connection(stream, app, options, &metrics, stopping).await;
                drop((guard, on_front));
            });
            continue;
        };
        // the socket moves to the other thread's own reactor
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to its thread");
                continue;
            }
        };
        front.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => connection(stream, app, options, &metrics, stopping).await,
                Err(e) => tracing::debug!(error = %e, "cannot take a connection on its thread"),
            }
            drop((guard, on_front));
        });
    }
    drop(listener);
    let _ = stop.send(true);
    open.drained().await;
    // tasks the requests spawned on the connection threads end with them
    settle.await;
    if let Some(fronts) = fronts {
        fronts.stop().await;
    }
}

/// The threads that serve connections beside the caller's runtime, each a single-threaded
/// tokio runtime.
///
/// On a runtime of several threads, a task woken while it runs is queued behind the others and
/// another thread is woken to take it. Every request with a body does that to its connection's
/// task (hyper's body channel wakes it from inside its own poll, when the handler takes the
/// body), so each answer ended with the wake-up of a second thread, at the moment the client
/// was being woken on the other core: 0.05-0.07 ms more a request at concurrency 1 on this
/// 2-core machine (`benches/ab.sh`, 600 prompts). A runtime of one thread runs such a task again
/// itself. So `serve` runs on one runtime thread and serves connections there and on these
/// threads, one a core in all. A connection stays on its thread; a new one goes where the
/// fewest are open (the caller's runtime first: a connection handed to another thread costs
/// that thread's wake-up), so that while one thread runs a forward pass the others go on
/// serving theirs.
struct Fronts {
    runtimes: Vec<tokio::runtime::Handle>,
    /// Connections open: on the caller's runtime, then on each thread.
    open: Vec<Arc<AtomicUsize>>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A connection counted where it is served until it is dropped.
struct OnFront(Arc<AtomicUsize>);

impl Drop for OnFront {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Fronts {
    fn start(n: usize) -> io::Result<Self> {
        let mut fronts = Fronts {
            runtimes: Vec::with_capacity(n),
            open: vec![Arc::default()],
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            fronts.runtimes.push(runtime.handle().clone());
            fronts.open.push(Arc::default());
            fronts.stops.push(stop);
            fronts.threads.push(
                std::thread::Builder::new()
                    .name(format!("pointsman-http-{i}"))
                    .spawn(move || {
                        // a dropped sender stops it too
                        let _ = runtime.block_on(stopped);
                    })?,
            );
        }
        Ok(fronts)
    }

    /// Where a new connection is served: the thread with the fewest open (`None`: the caller's
    /// runtime, which wins ties), and the connection counted there.
    fn place(&self) -> (Option<&tokio::runtime::Handle>, Option<OnFront>) {
        let i = (0..self.open.len())
            .min_by_key(|&i| self.open[i].load(Ordering::Relaxed))
            .expect("the caller's runtime is counted");
        self.open[i].fetch_add(1, Ordering::Relaxed);
        let on = OnFront(Arc::clone(&self.open[i]));
        (i.checked_sub(1).map(|t| &self.runtimes[t]), Some(on))
    }

    /// Stops the threads (their connections have ended) and waits for them.
    async fn stop(self) {
        drop(self.stops);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The connections open now.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    none_left: Notify,
}

impl Open {
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>, metrics: &Arc<Metrics>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics.connection_opened();
        OpenGuard {
            open: Arc::clone(self),
            metrics: Arc::clone(metrics),
        }
    }

    async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct OpenGuard {
    open: Arc<Open>,
    metrics: Arc<Metrics>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics.connection_ended();
        if self.open.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.open.none_left.notify_waiters();
        }
    }
}

/// Serves one connection until it closes, or until it is closed for a timeout or the shutdown.
async fn connection(
    stream: TcpStream,
    app: Router,
    options: DoorOptions,
    metrics: &Metrics,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let on_request = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::begin(&on_request);
        let answer = app.clone().oneshot(req.map(Body::new));
        async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, in_flight })))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // the head's timeout is ours (it must not also end idle keep-alive connections)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        conn.as_mut().graceful_shutdown();
    }
    // The deadline is looked at again after every poll of the connection: every change to it
    // (a head begun, a request begun or answered) happens in that poll, on this task, so no
    // wake-up is needed for it (a `Notify` did that, waking this task from inside its own poll).
    let mut deadline = Deadline {
        activity: &activity,
        options: &options,
        sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
        armed: None,
    };
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !shutting_down => {
                // a dropped sender is a shutdown too
                let _ = changed;
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            reason = &mut deadline => {
                metrics.connection_closed(reason);
                return;
            }
        }
    }
}

/// Ready when the connection's deadline has passed, with why it is closed; pending while a
/// request is in flight. Each poll reads the deadline afresh and moves its timer to it.
struct Deadline<'a> {
    activity: &'a Activity,
    options: &'a DoorOptions,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The deadline the timer is set to, if any.
    armed: Option<Instant>,
}

impl Future for Deadline<'_> {
    type Output = Closed;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closed> {
        let this = &mut *self;
        let Some((at, reason)) = this.activity.deadline(this.options) else {
            // a timer set earlier may still wake this task once: it finds no deadline
            return Poll::Pending;
        };
        if this.armed != Some(at) {
            this.sleep.as_mut().reset(at);
            this.armed = Some(at);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(reason),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What a connection has been doing, for its timeouts: written by its IO and its requests,
/// read by its watch in [`connection`]. Times are milliseconds since the accept.
struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// Whether a request has been answered on this connection (it is a kept-alive one).
    served: AtomicBool,
    /// When the last request was answered.
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived, or [`NOTHING_YET`].
    head_started: AtomicU64,
}

const NOTHING_YET: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NOTHING_YET),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// When the connection is to be closed, and why; `None` while a request is in flight.
    fn deadline(&self, options: &DoorOptions) -> Option<(Instant, Closed)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        Some(if head != NOTHING_YET {
            (
                self.at(head) + options.header_timeout,
                Closed::HeaderTimeout,
            )
        } else if !self.served.load(Ordering::Acquire) {
            (
                self.accepted + options.header_timeout,
                Closed::HeaderTimeout,
            )
        } else {
            let idle = self.idle_since.load(Ordering::Acquire);
            (self.at(idle) + options.idle_timeout, Closed::IdleTimeout)
        })
    }

    /// Bytes arrived: between requests, they start the next request's head.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.served.load(Ordering::Acquire)
            && self.head_started.load(Ordering::Acquire) == NOTHING_YET
        {
            self.head_started.store(self.now_ms(), Ordering::Release);
        }
    }
}

/// A request in flight on its connection, until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(NOTHING_YET, Ordering::Release);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Release);
        activity.served.store(true, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent.
struct Tracked {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Middleware: a request whose body stops arriving for the body timeout is answered 408 and
/// its connection closed, whatever its handler made of the cut body.
pub(super) async fn bound_body_silence(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let timeout = state.options.body_timeout;
    let stalled = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(SilenceBound {
            body,
            timeout,
            sleep: None,
            stalled: Arc::clone(&stalled),
        })
    });
    let response = next.run(req).await;
    if !stalled.load(Ordering::Acquire) {
        return response;
    }
    state.metrics.connection_closed(Closed::BodyTimeout);
    let mut response = ApiError::BodyTimeout(timeout.as_secs_f64()).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once no frame has arrived for `timeout`.
struct SilenceBound {
    body: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl http_body::Body for SilenceBound {
    type Data = axum::body::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.stalled.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body stopped arriving",
                    ))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(fronts: &Fronts) -> Vec<usize> {
        fronts
            .open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn a_new_connection_goes_where_the_fewest_are_open_the_callers_runtime_first() {
        let fronts = Fronts::start(2).unwrap();
        let (at, a) = fronts.place();
        assert!(at.is_none(), "a tie: the caller's runtime");
        let (at, b) = fronts.place();
        assert!(at.is_some());
        let (_, c) = fronts.place();
        assert_eq!(counts(&fronts), [1, 1, 1]);
        let (at, d) = fronts.place();
        assert!(at.is_none());
        assert_eq!(counts(&fronts), [2, 1, 1]);
        // connections that end leave room where they were
        drop((b, c));
        let (_, e) = fronts.place();
        let (_, f) = fronts.place();
        assert_eq!(counts(&fronts), [2, 1, 1]);
        drop((a, d, e, f));
        assert_eq!(counts(&fronts), [0, 0, 0]);
    }

    #[test]
    fn the_connection_threads_run_what_they_are_given_and_stop() {
        let fronts = Fronts::start(2).unwrap();
        // the caller's runtime takes one first
        let (at, here) = fronts.place();
        assert!(at.is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (at, on) = fronts.place();
            let tx = tx.clone();
            at.expect("a connection thread").spawn(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(std::thread::current().name().map(str::to_string))
                    .unwrap();
                drop(on);
            });
        }
        let mut names: Vec<_> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["pointsman-http-1", "pointsman-http-2"]);
        drop(here);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(fronts.stop());
    }
}
