//! The HTTP servers' own accept loop: hyper's HTTP/1 connections under time limits and a cap.
//!
//! `axum::serve` keeps a connection for as long as the client likes: half a request's headers, a
//! promised body that never comes or a kept-alive connection that says nothing each hold a socket
//! (and a file descriptor) forever, enough of them starve real clients, and one of them keeps
//! SIGTERM from ever stopping the server. Here every connection is bounded:
//! - headers must arrive within `header_timeout` (hyper's own timer, which hyper also restarts
//!   when a kept-alive connection goes back to waiting for its next request);
//! - a request's body and its answer within `request_timeout` (past it: `408`);
//! - a connection with no byte moving and no request being handled for `idle_timeout` is closed
//!   (this also catches a client that stops reading its answer);
//! - at most `max_connections` at once, fewer when the open-file limit is lower: at the cap a new
//!   connection closes the longest-idle one that has no request in flight, so idle connections
//!   cannot lock annotators out;
//! - on shutdown, requests in flight get `shutdown_grace` to finish, then what is left is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// File descriptors kept back from the open-file limit for everything but client connections: the
/// database (five SQLite connections of up to three files each), the standard streams, the
/// listener, the runtime's own and the connection being accepted, with room to spare.
pub const RESERVED_FDS: u64 = 32;

/// The longest timeout or grace accepted, a day: a deadline far beyond would overflow the clock
/// (hyper adds its header timeout to `Instant::now()`).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Waits after a failed accept, doubling while failures last: out of file descriptors, accepting
/// again at once would only fail again in a busy loop.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// To receive a request's headers, from the connection's start or the end of its last answer.
    pub header_timeout: Duration,
    /// To receive a request's body and answer it.
    pub request_timeout: Duration,
    /// With no byte read or written and no request being handled.
    pub idle_timeout: Duration,
    /// The most connections served at once (lowered to fit the open-file limit).
    pub max_connections: usize,
    /// After the shutdown signal, for requests in flight to finish.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets requests
/// in flight finish for at most `limits.shutdown_grace` and drops the connections still open.
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>) {
    let cap = connection_cap(limits.max_connections);
    let router = router.layer(middleware::from_fn_with_state(limits.request_timeout, request_timeout));
    let service = TowerToHyperService::new(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let registry = Arc::new(Registry::new(cap));
    let (stop, _) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            // The client gave up before it was accepted: nothing is wrong with the listener.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; trying again in {backoff:?}");
                if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    registry.lock().evict_longest_idle();
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = registry.admit() => slot,
        };
        // Answers are small and written whole: Nagle's algorithm would only delay them.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_connection(stream, slot, http.clone(), service.clone(), limits.idle_timeout, stop.subscribe()));
        while let Some(finished) = connections.try_join_next() {
            report_panic(finished);
        }
    }
    drop(listener);
    stop.send_replace(());
    while let Some(finished) = connections.try_join_next() {
        report_panic(finished);
    }
    if !connections.is_empty() {
        tracing::info!(connections = connections.len(), "waiting up to {:?} for requests in flight", limits.shutdown_grace);
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while let Some(finished) = connections.join_next().await {
            report_panic(finished);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "shutdown deadline of {:?} passed: dropping the connections still open",
            limits.shutdown_grace
        );
        connections.shutdown().await;
    }
}

/// `max_connections`, lowered to the open-file limit less `RESERVED_FDS` (at least one).
fn connection_cap(max_connections: usize) -> usize {
    match open_file_limit() {
        Some(limit) => {
            let fitting = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX).max(1);
            let cap = max_connections.min(fitting);
            tracing::info!(
                max_connections = cap,
                open_file_limit = limit,
                "serving at most {cap} connections at once (configured {max_connections}; the open-file limit {limit} less {RESERVED_FDS} kept for the database and logs allows {fitting})"
            );
            cap
        }
        None => {
            tracing::info!(max_connections, "serving at most {max_connections} connections at once (no open-file limit)");
            max_connections
        }
    }
}

/// The soft RLIMIT_NOFILE; `None` when unlimited or unreadable.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which outlives the call.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if status != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

fn report_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        if error.is_panic() {
            tracing::error!(%error, "a connection's task panicked");
        }
    }
}

/// Answers `408` with the API's error body when the body has not arrived or the answer is not
/// ready within `limit`.
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%method, path, "request not received and answered within {limit:?}: 408");
            let message = format!("the request was not received and answered within {} s", limit.as_secs());
            (StatusCode::REQUEST_TIMEOUT, Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

/// One connection until it ends, is closed by a limit, or is made room for.
async fn serve_connection(
    stream: TcpStream,
    slot: Slot,
    http: http1::Builder,
    service: TowerToHyperService<Router>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<()>,
) {
    let state = slot.state.clone();
    let handler = {
        let (registry, state) = (slot.registry.clone(), state.clone());
        service_fn(move |request| {
            let in_flight = InFlight::begin(&registry, &state);
            let answer = service.call(request);
            async move {
                let answer = answer.await;
                drop(in_flight);
                answer
            }
        })
    };
    let io = TokioIo::new(Metered { inner: stream, state: state.clone() });
    let connection = http.serve_connection(io, handler);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = state.idle_past(idle_timeout) => {
                tracing::debug!("closing a connection idle for {idle_timeout:?}");
                break;
            }
            () = state.evict.notified() => {
                if state.in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!("closing the longest-idle connection to make room for a new one");
                    break;
                }
                // A request started after it was picked: let it finish, then close.
                connection.as_mut().graceful_shutdown();
            }
            // Also when the sender is gone: the server is stopping either way.
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

/// The live connections, for the cap and the choice of which one to close.
struct Registry {
    cap: usize,
    epoch: Instant,
    live: Mutex<Live>,
    /// Woken when a connection ends or a request finishes: either may make room.
    changed: Notify,
}

struct Live {
    next_id: u64,
    connections: HashMap<u64, Arc<ConnectionState>>,
}

impl Registry {
    fn new(cap: usize) -> Self {
        Registry { cap, epoch: Instant::now(), live: Mutex::new(Live { next_id: 0, connections: HashMap::new() }), changed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection. At the cap, closes the longest-idle connection without a
    /// request in flight and waits for it to go; when every connection has one, waits until one
    /// ends or finishes its request.
    async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before looking, so that a change between the look and the wait wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut live = self.lock();
                if live.connections.len() < self.cap {
                    let id = live.next_id;
                    live.next_id += 1;
                    let state = Arc::new(ConnectionState::new(self.epoch));
                    live.connections.insert(id, state.clone());
                    return Slot { registry: self.clone(), id, state };
                }
                live.evict_longest_idle();
            }
            changed.await;
        }
    }
}

impl Live {
    /// Tells the longest-idle connection without a request in flight to close, unless one told
    /// before has not closed yet (its place is coming). Activity is kept in milliseconds, so many
    /// connections can tie; the oldest of them (lowest id) goes, not whichever the map yields.
    fn evict_longest_idle(&self) {
        if self.connections.values().any(|state| state.evicted.load(Ordering::Acquire)) {
            return;
        }
        let victim = self
            .connections
            .iter()
            .filter(|(_, state)| state.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(&id, state)| (state.last_active_ms.load(Ordering::Acquire), id))
            .map(|(_, state)| state);
        if let Some(state) = victim {
            state.evicted.store(true, Ordering::Release);
            state.evict.notify_one();
        }
    }
}

/// A connection's place in the registry, given back when the connection's task ends (or is
/// aborted at the shutdown deadline).
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    state: Arc<ConnectionState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().connections.remove(&self.id);
        self.registry.changed.notify_waiters();
    }
}

/// What the accept loop and the idle timer know of one connection.
struct ConnectionState {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written, or of the end of a request.
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
}

impl ConnectionState {
    fn new(epoch: Instant) -> Self {
        let state = ConnectionState {
            epoch,
            last_active_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        };
        state.touch();
        state
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Completes once the connection has had no activity and no request in flight for `limit`.
    /// A request being handled is bounded by the request timeout instead.
    async fn idle_past(&self, limit: Duration) {
        loop {
            let idle = Duration::from_millis(self.now_ms().saturating_sub(self.last_active_ms.load(Ordering::Acquire)));
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            if !busy && idle >= limit {
                return;
            }
            tokio::time::sleep(if busy { limit } else { limit - idle }).await;
        }
    }
}

/// Counts a request as in flight while its answer is being made; at its end the connection's
/// idle time starts afresh and a wait for room looks again.
struct InFlight {
    registry: Arc<Registry>,
    state: Arc<ConnectionState>,
}

impl InFlight {
    fn begin(registry: &Arc<Registry>, state: &Arc<ConnectionState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { registry: registry.clone(), state: state.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.touch();
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.registry.changed.notify_waiters();
    }
}

/// The socket, noting when bytes move in either direction.
struct Metered {
    inner: TcpStream,
    state: Arc<ConnectionState>,
}

impl AsyncRead for Metered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.touch();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.state.touch();
        }
        polled
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
