//! The labeling HTTP server: the JSON API of docs/reference.md §7 (with `DELETE /api/labels/last` to undo)
//! and the page from `labeling-ui/`, embedded in the binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::assign::{Policy, Preferred};
use super::stats::Progress;
use super::store::{sha256_hex, Annotator, Role, Store};
use super::LabelError;

/// Request bodies are a pair id and a word; anything bigger is refused with 413.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// The page's files; only these are served, so no path can reach anything else.
const PAGE_FILES: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("../../labeling-ui/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../../labeling-ui/app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../../labeling-ui/style.css")),
];

/// The page loads only its own script and style: data shown in it can never run as code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How long a checked token is trusted before it is looked up again. Removal and rotation from
/// the command line take effect within it, without a restart; meanwhile the busy path (two
/// requests per label) skips a database read per request, which cost about 15 % of throughput.
const TOKEN_RECHECK: Duration = Duration::from_secs(1);

struct App {
    store: Store,
    policy: Policy,
    /// Valid tokens (by SHA-256) with when they were last checked; unknown tokens are not kept,
    /// so the map holds at most one entry per annotator.
    checked_tokens: Mutex<HashMap<String, (Annotator, Instant)>>,
}

impl App {
    async fn annotator(&self, token: &str) -> Result<Option<Annotator>, LabelError> {
        let token_hash = sha256_hex(token.as_bytes());
        let lock = || self.checked_tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((annotator, checked_at)) = lock().get(&token_hash) {
            if checked_at.elapsed() < TOKEN_RECHECK {
                return Ok(Some(annotator.clone()));
            }
        }
        let found = self.store.annotator_by_token(token).await?;
        match &found {
            Some(annotator) => lock().insert(token_hash, (annotator.clone(), Instant::now())),
            None => lock().remove(&token_hash),
        };
        Ok(found)
    }
}

/// The whole application; `serve` runs it, tests may drive it directly.
pub fn router(store: Store, policy: Policy) -> Router {
    let app = Arc::new(App { store, policy, checked_tokens: Mutex::new(HashMap::new()) });
    let api = Router::new()
        .route("/pairs/next", get(next_pair))
        .route("/labels", post(post_label))
        .route("/labels/last", delete(undo_last_label))
        .route("/stats", get(stats))
        .route("/admin/stats", get(admin_stats))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
        // `layer` (not `route_layer`): unknown /api paths also answer 401 without a token.
        .layer(middleware::from_fn_with_state(app.clone(), require_annotator));
    let mut router = Router::new();
    for (path, content_type, body) in PAGE_FILES {
        router = router.route(path, get(move || async move { page_file(content_type, body) }));
    }
    router
        .nest("/api", api)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(tower_http::LatencyUnit::Micros)),
        )
        .with_state(app)
}

/// Serves on `bind` until Ctrl-C or SIGTERM under `limits` (timeouts, a connection cap; see
/// `connections`), then lets requests in flight finish for at most `limits.shutdown_grace`.
/// Prints `listening on http://ADDR` on stderr once the socket is bound.
pub async fn serve(
    store: Store,
    bind: SocketAddr,
    policy: Policy,
    limits: crate::http::connections::ConnectionLimits,
) -> Result<(), LabelError> {
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| LabelError::Bind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|source| LabelError::Bind { addr: bind, source })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving beyond this machine: tokens travel unencrypted (no TLS)");
    }
    let shutdown = crate::http::shutdown_signal();
    eprintln!("listening on http://{addr}");
    let app = router(store.clone(), policy);
    crate::http::connections::serve(listener, app, limits, shutdown).await;
    store.close().await;
    tracing::info!("server stopped");
    Ok(())
}

fn page_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// Checks the bearer token on every request (against the database at least once a second, see
/// `TOKEN_RECHECK`).
async fn require_annotator(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::unauthorized("send `Authorization: Bearer <token>` (from `rlhf label annotator add`)"))?;
    let annotator = app.annotator(token).await?.ok_or(ApiError::unauthorized("unknown token"))?;
    request.extensions_mut().insert(annotator);
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name is case-insensitive
/// (RFC 7235 §2.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Labeling routes refuse admin tokens: whoever sees everyone's judgements does not judge.
fn labeler(annotator: Annotator) -> Result<Annotator, ApiError> {
    match annotator.role {
        Role::Annotator => Ok(annotator),
        Role::Admin => Err(ApiError::new(StatusCode::FORBIDDEN, "an admin token does not label: add an annotator for that")),
    }
}

async fn next_pair(State(app): State<Arc<App>>, Extension(annotator): Extension<Annotator>) -> Result<Response, ApiError> {
    let annotator = labeler(annotator)?;
    Ok(match app.store.next_pair(annotator.id, &app.policy).await? {
        Some(pair) => Json(pair).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(serde::Deserialize)]
struct LabelRequest {
    pair_id: i64,
    preferred: Preferred,
}

async fn post_label(
    State(app): State<Arc<App>>,
    Extension(annotator): Extension<Annotator>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let annotator = labeler(annotator)?;
    let request: LabelRequest = parse_json(body)?;
    let label = app.store.record_label(annotator.id, request.pair_id, request.preferred, &app.policy).await?;
    Ok((StatusCode::CREATED, Json(label)).into_response())
}

async fn undo_last_label(State(app): State<Arc<App>>, Extension(annotator): Extension<Annotator>) -> Result<Response, ApiError> {
    let annotator = labeler(annotator)?;
    let label = app.store.undo_last_label(annotator.id, &app.policy).await?;
    Ok(Json(label).into_response())
}

/// What an annotator may see: their own progress and the server's settings, nothing about
/// others (whose judgements they could otherwise read, undo and flip).
#[derive(serde::Serialize)]
struct StatsResponse {
    labels_per_pair: u32,
    undo_secs: u64,
    you: You,
}

#[derive(serde::Serialize)]
struct You {
    name: String,
    #[serde(flatten)]
    progress: Progress,
}

async fn stats(State(app): State<Arc<App>>, Extension(annotator): Extension<Annotator>) -> Result<Response, ApiError> {
    let progress = app.store.progress(annotator.id, app.policy.labels_per_pair).await?;
    let you = You { name: annotator.name, progress };
    Ok(Json(StatsResponse { labels_per_pair: app.policy.labels_per_pair, undo_secs: app.policy.undo_window.as_secs(), you })
        .into_response())
}

/// Every figure, as `rlhf label stats --json` prints it: for admin tokens only.
async fn admin_stats(State(app): State<Arc<App>>, Extension(annotator): Extension<Annotator>) -> Result<Response, ApiError> {
    if annotator.role != Role::Admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "these figures need an admin token (`rlhf label annotator add --admin NAME`)"));
    }
    Ok(Json(app.store.stats().await?).into_response())
}

/// Parses a JSON object body: 400 when it is not JSON, 422 when it is JSON of the wrong shape,
/// 413 when it is over the size limit.
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {} KiB", BODY_LIMIT_BYTES / 1024))
        }
        status => ApiError::new(status, rejection.body_text()),
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("request body is not JSON: {error}")))?;
    // serde would also take a struct's fields from an array; the API speaks objects only.
    if !value.is_object() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request body: {error}")))
}

/// An error answer: `{"error": "..."}` with its status.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl From<LabelError> for ApiError {
    fn from(error: LabelError) -> Self {
        let status = match &error {
            LabelError::UnknownPair(_) | LabelError::NothingToUndo => StatusCode::NOT_FOUND,
            LabelError::AlreadyLabeled(_)
            | LabelError::NotAssigned(_)
            | LabelError::PairFull(_)
            | LabelError::UndoPairTaken(_)
            | LabelError::UndoTooLate(_) => StatusCode::CONFLICT,
            _ => {
                tracing::error!(%error, "request failed");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server log)");
            }
        };
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
