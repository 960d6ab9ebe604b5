//! `rlhf serve`: a trained model behind OpenAI's HTTP API. Completions and chat completions
//! (streamed as server-sent events when asked) from a language model, decoded with continuous
//! batching by the [`engine`]; rewards and preference probabilities from a reward model
//! (`POST /v1/score`); `/v1/models`, `/health` and Prometheus `/metrics` for both.

pub mod engine;
pub mod metrics;
pub mod openai;
pub mod score;
pub mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use self::engine::{Engine, Event, FinishReason, Job, ModelInfo, Sampling, Token};
use self::metrics::Metrics;
use self::openai::{ApiError, Endpoint, Params};
use self::score::Scorer;
use self::text::TextStream;
use crate::data::tokenizer::TextTokenizer;
use crate::http::connections::ConnectionLimits;

/// What serves requests: a language model's engine, or a reward model's scorer.
pub enum Backend {
    Generate { engine: Engine, info: Box<ModelInfo> },
    Score(Scorer),
}

pub struct ServeOptions {
    pub bind: SocketAddr,
    /// The id clients name in `model`.
    pub model_id: String,
    /// Sequences waiting to join the batch beyond which requests are refused (429).
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub limits: ConnectionLimits,
}

struct App {
    backend: Backend,
    model_id: String,
    created: u64,
    max_queue: usize,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    next_id: AtomicU64,
}

type Shared = Arc<App>;

/// Serves `backend` until SIGTERM or Ctrl-C, then stops accepting, finishes every request in
/// flight (streams included) within the shutdown grace, and stops the backend. Prints
/// `listening on http://ADDR` on stdout once the socket is bound.
pub async fn serve(backend: Backend, metrics: Arc<Metrics>, options: ServeOptions) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(options.bind).await.map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", options.bind))?;
    let addr = listener.local_addr()?;
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let app = Arc::new(App {
        backend,
        model_id: options.model_id,
        created,
        max_queue: options.max_queue,
        metrics,
        draining: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
    });
    let signal = crate::http::shutdown_signal();
    let draining = Arc::clone(&app);
    let shutdown = async move {
        signal.await;
        draining.draining.store(true, Ordering::SeqCst);
    };
    println!("listening on http://{addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    tracing::info!(model = app.model_id, %addr, "serving");
    crate::http::connections::serve(listener, router(Arc::clone(&app), options.max_body_bytes), options.limits, shutdown).await;
    match Arc::try_unwrap(app) {
        Ok(App { backend: Backend::Generate { engine, .. }, .. }) => engine.stop(),
        Ok(App { backend: Backend::Score(scorer), .. }) => scorer.stop(),
        Err(_) => tracing::warn!("requests still hold the server: stopping without waiting for them"),
    }
    tracing::info!("server stopped");
    Ok(())
}

fn router(app: Shared, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/score", post(score::handler))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), admit_and_count))
        .with_state(app)
}

/// Refuses work while draining (503) and counts every answer by endpoint and status.
async fn admit_and_count(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let endpoint = request.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |path| path.as_str().to_string());
    let response = if app.draining.load(Ordering::SeqCst) && request.uri().path().starts_with("/v1/") {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "shutting_down", "the server is shutting down").into_response()
    } else {
        next.run(request).await
    };
    app.metrics.count_request(&endpoint, response.status().as_u16());
    response
}

async fn health(State(app): State<Shared>) -> Response {
    if app.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"}))).into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics_text(State(app): State<Shared>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

async fn models(State(app): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": app.model_id, "object": "model", "created": app.created, "owned_by": "rlhf-lab"}]}))
}

/// The request's body as a JSON object, its `model` checked.
fn read_request(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_body" };
        ApiError::new(status, "invalid_request_error", code, rejection.body_text())
    })?;
    let body = openai::parse_body(&body)?;
    match body.get("model") {
        None | Some(Value::Null) => Ok(body),
        Some(Value::String(model)) if *model == app.model_id => Ok(body),
        Some(Value::String(model)) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist; this server serves `{}`", app.model_id),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
        Some(_) => Err(ApiError::invalid("model", "`model` must be a string")),
    }
}

async fn completions(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, body, Endpoint::ChatCompletions).await.unwrap_or_else(IntoResponse::into_response)
}

async fn generate(app: Shared, body: Result<Bytes, BytesRejection>, endpoint: Endpoint) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Backend::Generate { engine, info } = &app.backend else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "this server serves a reward model: POST /v1/score",
        ));
    };
    let body = read_request(&app, body)?;
    let params = Params::parse(&body, endpoint)?;
    let prompts = match endpoint {
        Endpoint::Completions => openai::completion_prompts(&body, &info.tokenizer)?,
        Endpoint::ChatCompletions => vec![openai::chat_prompt(&body, &info.tokenizer)?],
    };
    let prompt_param = if endpoint == Endpoint::Completions { "prompt" } else { "messages" };
    let context = info.context_length as usize;
    let (events, receiver) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut jobs = Vec::new();
    let mut choices = Vec::new();
    for prompt in &prompts {
        // An empty prompt starts from end-of-sequence, as `rlhf generate` does (GPT-2's
        // beginning of text).
        let prompt = if prompt.is_empty() { vec![info.tokenizer.eos_id()] } else { prompt.clone() };
        if prompt.len() >= context {
            return Err(ApiError::invalid(
                prompt_param,
                format!("the prompt is {} tokens; this model's context is {context} tokens", prompt.len()),
            ));
        }
        let max_tokens = match (params.max_tokens, endpoint) {
            (Some(asked), _) if prompt.len() + asked > context => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the prompt, {asked} for the completion).",
                        prompt.len() + asked,
                        prompt.len()
                    ),
                ))
            }
            (Some(asked), _) => asked,
            // OpenAI's default for completions; a chat answer may fill the context.
            (None, Endpoint::Completions) => 16.min(context - prompt.len()),
            (None, Endpoint::ChatCompletions) => context - prompt.len(),
        };
        for _ in 0..params.n {
            let index = choices.len();
            let sampling = if params.temperature == 0.0 {
                Sampling::Greedy
            } else {
                // A seeded request's choices draw from the seed and their index; an unseeded one
                // from fresh entropy.
                let rng = match params.seed {
                    Some(seed) => ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64)),
                    None => ChaCha8Rng::from_os_rng(),
                };
                Sampling::Sample { temperature: params.temperature, top_p: params.top_p, rng: Box::new(rng) }
            };
            let cancelled = Arc::new(AtomicBool::new(false));
            jobs.push(Job {
                prompt: prompt.clone(),
                max_tokens,
                sampling,
                top_logprobs: params.logprobs.unwrap_or(0),
                choice: index,
                events: events.clone(),
                cancelled: Arc::clone(&cancelled),
            });
            choices.push(ChoiceState { text: TextStream::new(params.stop.clone()), tokens: Vec::new(), finish: None, cancelled });
        }
    }
    drop(events);
    let prompt_tokens: usize = jobs.iter().map(|job| job.prompt.len()).sum::<usize>() / params.n;
    let submitted = engine
        .submit(jobs, app.max_queue)
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_stopped", error.to_string()))?;
    if !submitted {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!("the server's queue is full ({} sequences waiting); retry later", app.max_queue),
        ));
    }
    let prefix = if endpoint == Endpoint::Completions { "cmpl" } else { "chatcmpl" };
    let run = Run {
        id: format!("{prefix}-{}", app.next_id.fetch_add(1, Ordering::Relaxed)),
        endpoint,
        params,
        choices,
        receiver,
        prompt_tokens,
        arrived,
        first_token: false,
        app: Arc::clone(&app),
    };
    if run.params.stream {
        Ok(stream(run).into_response())
    } else {
        run.collect().await.map(|answer| Json(answer).into_response())
    }
}

/// A choice's progress.
struct ChoiceState {
    text: TextStream,
    tokens: Vec<Token>,
    finish: Option<FinishReason>,
    cancelled: Arc<AtomicBool>,
}

/// A choice's news: text released, tokens generated, and its end.
struct Update {
    index: usize,
    text: String,
    tokens: Vec<Token>,
    finish: Option<FinishReason>,
}

/// The tokenizer of a language model's server (a run exists only there).
fn tokenizer_of(app: &App) -> &TextTokenizer {
    match &app.backend {
        Backend::Generate { info, .. } => &info.tokenizer,
        Backend::Score(_) => unreachable!("generation runs only on a language model"),
    }
}

/// A request being generated: its choices' events, turned into text.
struct Run {
    id: String,
    endpoint: Endpoint,
    params: Params,
    choices: Vec<ChoiceState>,
    receiver: mpsc::UnboundedReceiver<(usize, Event)>,
    prompt_tokens: usize,
    arrived: Instant,
    first_token: bool,
    app: Shared,
}

impl Run {
    fn tokenizer(&self) -> &TextTokenizer {
        tokenizer_of(&self.app)
    }

    /// The next choice's news; `None` once every choice has ended.
    async fn next(&mut self) -> Option<Result<Update, ApiError>> {
        loop {
            if self.choices.iter().all(|choice| choice.finish.is_some()) {
                return None;
            }
            let Some((index, event)) = self.receiver.recv().await else {
                return Some(Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "engine_stopped",
                    "generation stopped unexpectedly (see the server log)",
                )));
            };
            if self.choices[index].finish.is_some() {
                continue;
            }
            let app = Arc::clone(&self.app);
            let tokenizer = tokenizer_of(&app);
            let choice = &mut self.choices[index];
            let update = match event {
                Event::Token(token) => {
                    if !self.first_token {
                        self.first_token = true;
                        self.app.metrics.time_to_first_token.observe(self.arrived.elapsed().as_secs_f64());
                    }
                    let (text, stopped) = choice.text.push(tokenizer, token.id);
                    choice.tokens.push(token.clone());
                    if stopped {
                        choice.cancelled.store(true, Ordering::Relaxed);
                        choice.finish = Some(FinishReason::Stop);
                    }
                    Update { index, text, tokens: vec![token], finish: choice.finish }
                }
                Event::Finished(reason) => {
                    choice.finish = Some(reason);
                    Update { index, text: choice.text.finish(tokenizer), tokens: Vec::new(), finish: Some(reason) }
                }
            };
            return Some(Ok(update));
        }
    }

    fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|choice| choice.tokens.len()).sum()
    }

    fn logprobs(&self, tokens: &[Token]) -> Option<Value> {
        self.params.logprobs.map(|_| match self.endpoint {
            Endpoint::Completions => openai::completion_logprobs(tokens, self.tokenizer()),
            Endpoint::ChatCompletions => openai::chat_logprobs(tokens, self.tokenizer()),
        })
    }

    fn envelope(&self, choices: Vec<Value>, chunk: bool) -> Value {
        openai::envelope(self.endpoint, &self.id, self.app.created, &self.app.model_id, choices, chunk)
    }

    /// The whole answer.
    async fn collect(mut self) -> Result<Value, ApiError> {
        while let Some(update) = self.next().await {
            update?;
        }
        let choices = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                openai::choice(self.endpoint, index, choice.text.text(), self.logprobs(&choice.tokens), choice.finish, false)
            })
            .collect();
        let mut answer = self.envelope(choices, false);
        answer["usage"] = openai::usage(self.prompt_tokens, self.completion_tokens());
        self.app.metrics.request_latency.observe(self.arrived.elapsed().as_secs_f64());
        Ok(answer)
    }
}

/// The answer as server-sent events: a chunk per choice's news, the usage when asked, then
/// `[DONE]`. An error after the first chunk ends the stream with an error event.
fn stream(run: Run) -> impl IntoResponse {
    enum Phase {
        Running(Box<Run>),
        Done,
    }
    let events = futures_util::stream::unfold(Phase::Running(Box::new(run)), |phase| async move {
        let Phase::Running(mut run) = phase else { return None };
        let event = match run.next().await {
            Some(Ok(update)) => {
                let logprobs = if update.tokens.is_empty() { None } else { run.logprobs(&update.tokens) };
                let choice = openai::choice(run.endpoint, update.index, &update.text, logprobs, update.finish, true);
                SseEvent::default().data(run.envelope(vec![choice], true).to_string())
            }
            Some(Err(error)) => {
                let body = json!({"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}});
                run.app.metrics.request_latency.observe(run.arrived.elapsed().as_secs_f64());
                return Some((Ok::<_, std::convert::Infallible>(SseEvent::default().data(body.to_string())), Phase::Done));
            }
            None if run.params.include_usage => {
                let mut chunk = run.envelope(Vec::new(), true);
                chunk["usage"] = openai::usage(run.prompt_tokens, run.completion_tokens());
                // `[DONE]` follows as the next event.
                run.params.include_usage = false;
                SseEvent::default().data(chunk.to_string())
            }
            None => {
                run.app.metrics.request_latency.observe(run.arrived.elapsed().as_secs_f64());
                return Some((Ok(SseEvent::default().data("[DONE]")), Phase::Done));
            }
        };
        Some((Ok(event), Phase::Running(run)))
    });
    Sse::new(events)
}
