//! `POST /v1/score` for a reward model: rewards of (prompt, response) items, or for
//! (prompt, chosen, rejected) pairs both rewards and the Bradley–Terry probability that the
//! first is preferred, σ(r_chosen − r_rejected) — what `rlhf score` prints, over HTTP.

use std::sync::mpsc;
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::openai::ApiError;
use super::{read_request, Backend, Shared};
use crate::data::synthetic::annotators::sigmoid;
use crate::model::reward::RewardModel;

/// Texts scored per forward pass.
const BATCH: usize = 32;
/// The most texts one request may ask to score.
pub const MAX_ITEMS: usize = 1024;

type ScoreJob = (Vec<(String, String)>, oneshot::Sender<Result<Vec<f64>, String>>);

/// A reward model on its own thread (a model holds `Rc`s), scoring one request at a time.
pub struct Scorer {
    jobs: mpsc::Sender<ScoreJob>,
    thread: JoinHandle<()>,
}

impl Scorer {
    pub fn start(load: impl FnOnce() -> anyhow::Result<RewardModel> + Send + 'static) -> anyhow::Result<Scorer> {
        let (jobs, receiver) = mpsc::channel::<ScoreJob>();
        let (loaded, outcome) = mpsc::channel();
        let thread = std::thread::Builder::new().name("scorer".into()).spawn(move || {
            let model = match load() {
                Ok(model) => {
                    let _ = loaded.send(Ok(()));
                    model
                }
                Err(error) => {
                    let _ = loaded.send(Err(error));
                    return;
                }
            };
            for (texts, reply) in receiver {
                let pairs: Vec<(&str, &str)> = texts.iter().map(|(prompt, response)| (prompt.as_str(), response.as_str())).collect();
                let _ = reply.send(model.score_texts(&pairs, BATCH).map_err(|error| error.to_string()));
            }
        })?;
        outcome.recv().map_err(|_| anyhow::anyhow!("the scorer thread stopped while loading the model"))??;
        Ok(Scorer { jobs, thread })
    }

    async fn score(&self, texts: Vec<(String, String)>) -> Result<Vec<f64>, ApiError> {
        let stopped = || ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "scorer_stopped", "the scorer has stopped");
        let (reply, answer) = oneshot::channel();
        self.jobs.send((texts, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(|message| ApiError::invalid("items", message))
    }

    /// Scores what was asked, then ends the thread.
    pub fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("the scorer thread panicked");
        }
    }
}

/// `{"items": [{"prompt", "response"}]}` → `{"rewards": [...]}`;
/// `{"pairs": [{"prompt", "chosen", "rejected"}]}` → `{"rewards": [[r_chosen, r_rejected]...], "probabilities": [...]}`.
pub(super) async fn handler(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(app, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(app: Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let Backend::Score(scorer) = &app.backend else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "this server serves a language model, not a reward model: /v1/score is not available",
        ));
    };
    let body = read_request(&app, body)?;
    if let Some(key) = body.keys().find(|key| !["model", "items", "pairs"].contains(&key.as_str())) {
        return Err(ApiError::invalid(key, format!("unrecognized request argument supplied: {key}")));
    }
    let (field, fields): (&str, &[&str]) = match (body.get("items"), body.get("pairs")) {
        (Some(_), None) => ("items", &["prompt", "response"]),
        (None, Some(_)) => ("pairs", &["prompt", "chosen", "rejected"]),
        _ => {
            return Err(ApiError::invalid(
                "items",
                "give either `items` ([{\"prompt\", \"response\"}]) or `pairs` ([{\"prompt\", \"chosen\", \"rejected\"}])",
            ))
        }
    };
    let entries = body[field]
        .as_array()
        .filter(|entries| !entries.is_empty())
        .ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a non-empty list")))?;
    if entries.len() * (fields.len() - 1) > MAX_ITEMS {
        return Err(ApiError::invalid(field, format!("at most {MAX_ITEMS} texts per request, got {}", entries.len() * (fields.len() - 1))));
    }
    let mut texts = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let text = |name: &str| {
            entry.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                ApiError::invalid(&format!("{field}[{index}].{name}"), format!("`{field}[{index}].{name}` must be a string"))
            })
        };
        let prompt = text(fields[0])?;
        for name in &fields[1..] {
            texts.push((prompt.clone(), text(name)?));
        }
    }
    let rewards = scorer.score(texts).await?;
    let answer = if field == "items" {
        json!({"object": "list", "model": app.model_id, "rewards": rewards})
    } else {
        let pairs: Vec<[f64; 2]> = rewards.chunks(2).map(|pair| [pair[0], pair[1]]).collect();
        let probabilities: Vec<f64> = pairs.iter().map(|[chosen, rejected]| sigmoid(chosen - rejected)).collect();
        json!({"object": "list", "model": app.model_id, "rewards": pairs, "probabilities": probabilities})
    };
    Ok(Json(answer).into_response())
}
