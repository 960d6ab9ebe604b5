//! OpenAI's API as the server speaks it: request bodies read into typed parameters (each error
//! naming its parameter), the error body, and the shapes of completions, chat completions and
//! their streamed chunks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::engine::{FinishReason, Token};
use crate::data::chat::{parse_messages, Message};
use crate::data::tokenizer::TextTokenizer;

/// An error answered with OpenAI's body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 on one parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: Some(code) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

/// A request body as a JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(ApiError::invalid("body", format!("the body must be a JSON object, found {}", kind_of(&other)))),
        Err(error) => Err(ApiError::invalid("body", format!("the body is not valid JSON: {error}"))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Which endpoint a body is for: the parameters each accepts differ a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

/// What a request asks of generation, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub max_tokens: Option<usize>,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub n: usize,
    /// Most likely tokens reported beside each chosen one; `None`: no log-probs at all.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The most choices one request may ask for.
pub const MAX_CHOICES: usize = 64;
/// The most alternatives reported per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Parameters accepted and ignored (they change nothing here), and parameters accepted only at
/// the value that changes nothing.
const IGNORED: [&str; 2] = ["user", "metadata"];
const NEUTRAL: [(&str, Value); 5] = [
    ("frequency_penalty", Value::Null),
    ("presence_penalty", Value::Null),
    ("echo", Value::Null),
    ("best_of", Value::Null),
    ("logit_bias", Value::Null),
];

impl Params {
    pub fn parse(body: &Map<String, Value>, endpoint: Endpoint) -> Result<Self, ApiError> {
        let own: &[&str] = match endpoint {
            Endpoint::Completions => &["prompt", "logprobs", "suffix"],
            Endpoint::ChatCompletions => &["messages", "logprobs", "top_logprobs", "max_completion_tokens"],
        };
        const COMMON: [&str; 10] =
            ["model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "stop_token_ids"];
        for key in body.keys() {
            let known = COMMON.contains(&key.as_str()) || own.contains(&key.as_str()) || IGNORED.contains(&key.as_str());
            if !known && !NEUTRAL.iter().any(|(name, _)| name == key) {
                return Err(ApiError::invalid(key, format!("unrecognized request argument supplied: {key}")));
            }
        }
        for (name, _) in NEUTRAL {
            check_neutral(body, name)?;
        }
        if let Some(suffix) = body.get("suffix").filter(|value| !value.is_null()) {
            return Err(ApiError::invalid("suffix", format!("`suffix` is not supported (got {suffix})")));
        }
        if body.get("stop_token_ids").is_some_and(|value| !value.is_null()) {
            return Err(ApiError::invalid("stop_token_ids", "`stop_token_ids` is not supported: use `stop`"));
        }
        let max_tokens_key = if endpoint == Endpoint::ChatCompletions && body.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let max_tokens = optional_integer(body, max_tokens_key, 1, i64::MAX)?.map(|n| n as usize);
        let temperature = optional_number(body, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
        let top_p = optional_number(body, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if top_p == 0.0 {
            return Err(ApiError::invalid("top_p", "`top_p` must be above 0 and at most 1, got 0"));
        }
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(stop)) => vec![stop.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("stop", "`stop` must be a string or a list of strings"))?,
            Some(other) => {
                return Err(ApiError::invalid("stop", format!("`stop` must be a string or a list of strings, found {}", kind_of(other))))
            }
        };
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "`stop` strings must not be empty"));
        }
        let seed = optional_integer(body, "seed", i64::MIN, i64::MAX)?.map(|seed| seed as u64);
        let n = optional_integer(body, "n", 1, MAX_CHOICES as i64)?.unwrap_or(1) as usize;
        let logprobs = match endpoint {
            Endpoint::Completions => optional_integer(body, "logprobs", 0, MAX_TOP_LOGPROBS as i64)?.map(|k| k as usize),
            Endpoint::ChatCompletions => {
                let wanted = optional_bool(body, "logprobs")?.unwrap_or(false);
                let top = optional_integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?.map(|k| k as usize);
                if top.is_some() && !wanted {
                    return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
                }
                wanted.then_some(top.unwrap_or(0))
            }
        };
        let stream = optional_bool(body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) if stream => optional_bool(options, "include_usage")?.unwrap_or(false),
            Some(Value::Object(_)) => return Err(ApiError::invalid("stream_options", "`stream_options` needs `stream: true`")),
            Some(other) => {
                return Err(ApiError::invalid("stream_options", format!("`stream_options` must be an object, found {}", kind_of(other))))
            }
        };
        Ok(Params { max_tokens, temperature, top_p, stop, seed, n, logprobs, stream, include_usage })
    }
}

fn check_neutral(body: &Map<String, Value>, name: &str) -> Result<(), ApiError> {
    let neutral = match body.get(name) {
        None | Some(Value::Null) => true,
        Some(Value::Number(number)) if name.ends_with("penalty") => number.as_f64() == Some(0.0),
        Some(Value::Number(number)) if name == "best_of" => number.as_i64() == Some(1),
        Some(Value::Bool(echo)) if name == "echo" => !echo,
        Some(Value::Object(bias)) if name == "logit_bias" => bias.is_empty(),
        Some(_) => false,
    };
    if neutral {
        Ok(())
    } else {
        Err(ApiError::invalid(name, format!("`{name}` is not supported (only its default value is accepted)")))
    }
}

fn optional_number(body: &Map<String, Value>, name: &str, low: f64, high: f64) -> Result<Option<f64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            if (low..=high).contains(&value) {
                Ok(Some(value))
            } else {
                Err(ApiError::invalid(name, format!("`{name}` must be between {low} and {high}, got {value}")))
            }
        }
        Some(other) => Err(ApiError::invalid(name, format!("`{name}` must be a number, found {}", kind_of(other)))),
    }
}

fn optional_integer(body: &Map<String, Value>, name: &str, low: i64, high: i64) -> Result<Option<i64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(value) if (low..=high).contains(&value) => Ok(Some(value)),
            Some(value) if high == i64::MAX => Err(ApiError::invalid(name, format!("`{name}` must be at least {low}, got {value}"))),
            Some(value) => Err(ApiError::invalid(name, format!("`{name}` must be between {low} and {high}, got {value}"))),
            None => Err(ApiError::invalid(name, format!("`{name}` must be an integer, got {number}"))),
        },
        Some(other) => Err(ApiError::invalid(name, format!("`{name}` must be an integer, found {}", kind_of(other)))),
    }
}

fn optional_bool(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(ApiError::invalid(name, format!("`{name}` must be a boolean, found {}", kind_of(other)))),
    }
}

/// The prompts of a completions request, as token ids: `prompt` is a string, a list of strings,
/// a list of token ids or a list of such lists.
pub fn completion_prompts(body: &Map<String, Value>, tokenizer: &TextTokenizer) -> Result<Vec<Vec<i64>>, ApiError> {
    let invalid =
        || ApiError::invalid("prompt", "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids");
    let vocab = tokenizer.vocab_size() as i64;
    let ids = |items: &[Value]| -> Result<Vec<i64>, ApiError> {
        let ids: Vec<i64> = items.iter().map(Value::as_i64).collect::<Option<_>>().ok_or_else(invalid)?;
        match ids.iter().find(|&&id| !(0..vocab).contains(&id)) {
            Some(id) => Err(ApiError::invalid("prompt", format!("token id {id} is outside the vocabulary (0..{vocab})"))),
            None => Ok(ids),
        }
    };
    let encode = |text: &str| tokenizer.encode(text).map_err(|error| ApiError::invalid("prompt", error.to_string()));
    let prompts = match body.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Value::String(text)) => vec![encode(text)?],
        Some(Value::Array(items)) if items.is_empty() => return Err(ApiError::invalid("prompt", "`prompt` is an empty list")),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => items.iter().map(|item| item.as_str().ok_or_else(invalid).and_then(encode)).collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(items)?],
            Value::Array(_) => {
                items.iter().map(|item| item.as_array().ok_or_else(invalid).and_then(|row| ids(row))).collect::<Result<_, _>>()?
            }
            _ => return Err(invalid()),
        },
        Some(_) => return Err(invalid()),
    };
    Ok(prompts)
}

/// The prompt of a chat request: its messages rendered with the model's chat template and
/// generation prompt. Content given as a list of text parts is joined.
pub fn chat_prompt(body: &Map<String, Value>, tokenizer: &TextTokenizer) -> Result<Vec<i64>, ApiError> {
    let Some(messages) = body.get("messages") else { return Err(ApiError::invalid("messages", "`messages` is required")) };
    let Some(items) = messages.as_array() else {
        return Err(ApiError::invalid("messages", format!("`messages` must be a list of messages, found {}", kind_of(messages))));
    };
    let plain: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let Some(object) = item.as_object() else { return Ok(item.clone()) };
            let mut message = object.clone();
            message.remove("name");
            if let Some(Value::Array(parts)) = object.get("content") {
                let texts: Option<Vec<&str>> = parts
                    .iter()
                    .map(|part| (part.get("type")?.as_str()? == "text").then(|| part.get("text")?.as_str()).flatten())
                    .collect();
                let texts = texts
                    .ok_or_else(|| ApiError::invalid(&format!("messages[{index}].content"), "only text content parts are supported"))?;
                message.insert("content".into(), Value::String(texts.concat()));
            }
            Ok(Value::Object(message))
        })
        .collect::<Result<_, ApiError>>()?;
    let messages: Vec<Message> =
        parse_messages(&Value::Array(plain), "messages").map_err(|message| ApiError::invalid("messages", message))?;
    tokenizer.apply_chat_template(&messages, true).map_err(|error| ApiError::invalid("messages", error.to_string()))
}

/// Token counts of an answer.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// The log-probs of a completions choice's tokens (`text_offset` counts characters of the text
/// before each token).
pub fn completion_logprobs(tokens: &[Token], tokenizer: &TextTokenizer) -> Value {
    let mut offset = 0;
    let (mut texts, mut values, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for token in tokens {
        let text = tokenizer.decode(&[token.id]);
        offsets.push(offset);
        offset += text.chars().count();
        texts.push(text);
        values.push(token.logprob);
        // Keyed by text, as OpenAI's format is: tokens that read alike (lone bytes of a character,
        // special tokens) keep the likeliest one's value, listed first.
        let mut top = Map::new();
        for (id, logprob) in &token.top {
            top.entry(tokenizer.decode(&[*id])).or_insert(json!(logprob));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": texts, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
}

/// The log-probs of a chat choice's tokens.
pub fn chat_logprobs(tokens: &[Token], tokenizer: &TextTokenizer) -> Value {
    let entry = |id: i64, logprob: f64| {
        let text = tokenizer.decode(&[id]);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|token| {
            let mut item = entry(token.id, token.logprob);
            item["top_logprobs"] = token.top.iter().map(|(id, logprob)| entry(*id, *logprob)).collect();
            item
        })
        .collect();
    json!({"content": content})
}

/// One choice of an answer, or of a streamed chunk (then `text` is the new text).
pub fn choice(endpoint: Endpoint, index: usize, text: &str, logprobs: Option<Value>, finish: Option<FinishReason>, chunk: bool) -> Value {
    let finish_reason = finish.map(FinishReason::as_str);
    match (endpoint, chunk) {
        (Endpoint::Completions, _) => json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}),
        (Endpoint::ChatCompletions, false) => json!({
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }),
        (Endpoint::ChatCompletions, true) => {
            let delta = if finish.is_some() && text.is_empty() { json!({}) } else { json!({"role": "assistant", "content": text}) };
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason})
        }
    }
}

/// An answer, or a streamed chunk, around its choices.
pub fn envelope(endpoint: Endpoint, id: &str, created: u64, model: &str, choices: Vec<Value>, chunk: bool) -> Value {
    let object = match (endpoint, chunk) {
        (Endpoint::Completions, _) => "text_completion",
        (Endpoint::ChatCompletions, false) => "chat.completion",
        (Endpoint::ChatCompletions, true) => "chat.completion.chunk",
    };
    json!({"id": id, "object": object, "created": created, "model": model, "choices": choices})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Map<String, Value> {
        parse_body(text.as_bytes()).unwrap()
    }

    #[test]
    fn parameters_are_read_with_openai_defaults() {
        let params = Params::parse(&body(r#"{"prompt": "x"}"#), Endpoint::Completions).unwrap();
        assert_eq!(
            params,
            Params {
                max_tokens: None,
                temperature: 1.0,
                top_p: 1.0,
                stop: vec![],
                seed: None,
                n: 1,
                logprobs: None,
                stream: false,
                include_usage: false
            }
        );
        let params = Params::parse(
            &body(
                r#"{"messages": [], "max_completion_tokens": 5, "temperature": 0, "stop": "\n", "logprobs": true, "top_logprobs": 2,
                      "stream": true, "stream_options": {"include_usage": true}, "seed": 7, "n": 3, "presence_penalty": 0}"#,
            ),
            Endpoint::ChatCompletions,
        )
        .unwrap();
        assert_eq!(
            params,
            Params {
                max_tokens: Some(5),
                temperature: 0.0,
                top_p: 1.0,
                stop: vec!["\n".into()],
                seed: Some(7),
                n: 3,
                logprobs: Some(2),
                stream: true,
                include_usage: true
            }
        );
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (text, param) in [
            (r#"{"max_tokens": "ten"}"#, "max_tokens"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"stop": [1]}"#, "stop"),
            (r#"{"n": 1000}"#, "n"),
            (r#"{"logprobs": 50}"#, "logprobs"),
            (r#"{"stream": "yes"}"#, "stream"),
            (r#"{"presence_penalty": 0.5}"#, "presence_penalty"),
            (r#"{"frobnicate": 1}"#, "frobnicate"),
        ] {
            let error = Params::parse(&body(text), Endpoint::Completions).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{text}");
            assert_eq!(error.param.as_deref(), Some(param), "{text}: {}", error.message);
        }
        assert_eq!(parse_body(b"[1]").unwrap_err().param.as_deref(), Some("body"));
        assert_eq!(parse_body(b"{").unwrap_err().param.as_deref(), Some("body"));
    }
}
