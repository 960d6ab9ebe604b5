//! Conversations and chat templates. A model's chat template is the Jinja program Hugging Face
//! keeps beside its tokenizer (`chat_template.jinja`, or the `chat_template` key of
//! `tokenizer_config.json`); it is rendered here with MiniJinja in the environment transformers
//! gives it (`apply_chat_template`: `trim_blocks` and `lstrip_blocks`, loop controls, Python's
//! string methods, `raise_exception`, the special tokens as globals), so that the text — and the
//! ids once tokenised without adding special tokens — equal transformers'.

use serde::{Deserialize, Serialize};

/// Who speaks a turn. Tool turns are not part of the data formats this project reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The name transformers' templates read (`message['role']`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation, as TRL's conversational datasets write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: Role::User, content: content.into() }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message { role: Role::Assistant, content: content.into() }
    }
}

/// The messages of a JSON field (`field` names it in errors): a list of `{"role", "content"}`
/// objects, each role `system`, `user` or `assistant`, each content text.
pub fn parse_messages(value: &serde_json::Value, field: &str) -> Result<Vec<Message>, String> {
    let items =
        value.as_array().ok_or_else(|| format!("`{field}` must be text or a list of {{\"role\", \"content\"}} messages, found {value}"))?;
    if items.is_empty() {
        return Err(format!("`{field}` is an empty list of messages"));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = format!("{field}[{index}]");
            let object = item.as_object().ok_or_else(|| format!("`{at}` must be an object with `role` and `content`, found {item}"))?;
            if let Some(key) = object.keys().find(|key| !["role", "content"].contains(&key.as_str())) {
                return Err(format!("`{at}` has the unknown key `{key}` (a message has `role` and `content`)"));
            }
            let role = match object.get("role").and_then(serde_json::Value::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(other) => return Err(format!("`{at}.role` is `{other}`; expected system, user or assistant")),
                None => return Err(format!("`{at}` has no `role` text (system, user or assistant)")),
            };
            let content =
                object.get("content").and_then(serde_json::Value::as_str).ok_or_else(|| format!("`{at}` has no `content` text"))?;
            Ok(Message { role, content: content.to_string() })
        })
        .collect()
}

/// A prompt as data gives it: plain text, or the conversation so far (rendered with the model's
/// chat template and its generation prompt).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

impl Prompt {
    /// A prompt field: text or a list of messages.
    pub fn parse(value: &serde_json::Value, field: &str) -> Result<Self, String> {
        match value {
            serde_json::Value::String(text) => Ok(Prompt::Text(text.clone())),
            other => parse_messages(other, field).map(Prompt::Messages),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("chat template from {origin} does not parse{}: {message}", at_line(*.line))]
    Syntax { origin: String, line: Option<usize>, message: String },
    #[error("chat template from {origin} failed to render{}: {message}", at_line(*.line))]
    Render { origin: String, line: Option<usize>, message: String },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" at line {line}")).unwrap_or_default()
}

/// The special tokens a template may print (`bos_token`, `eos_token`, `pad_token`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplateTokens {
    pub bos: Option<String>,
    pub eos: String,
    pub pad: Option<String>,
}

/// A chat template with where it came from (for error messages), compiled once.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub origin: String,
    environment: minijinja::Environment<'static>,
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        (&self.source, &self.origin) == (&other.source, &other.origin)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles the template; `origin` names the file (and key) it came from.
    pub fn new(source: String, origin: String) -> Result<Self, ChatTemplateError> {
        let mut env = minijinja::Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks (Jinja's defaults are off).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<minijinja::Value, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", python_json);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|error| ChatTemplateError::Syntax {
            origin: origin.clone(),
            line: error.line(),
            message: describe(&error),
        })?;
        Ok(ChatTemplate { source, origin, environment: env })
    }

    /// The text of `messages`, ending with the assistant's turn header when
    /// `add_generation_prompt` (the prompt a model completes).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, tokens: &TemplateTokens) -> Result<String, ChatTemplateError> {
        let template = self.environment.get_template(TEMPLATE_NAME).expect("added when compiled");
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => tokens.bos.clone().unwrap_or_default(),
            eos_token => tokens.eos.clone(),
            pad_token => tokens.pad.clone().unwrap_or_default(),
        };
        template.render(context).map_err(|error| ChatTemplateError::Render {
            origin: self.origin.clone(),
            line: error.line(),
            message: describe(&error),
        })
    }

    /// The byte ranges of `render(messages, false)` that the assistant wrote: for each assistant
    /// turn, from the end of the conversation before it rendered with the generation prompt to
    /// the end of the conversation through it — its content and the template's end-of-turn
    /// marker, which the model must learn to emit. Fails when a template's rendering of a prefix
    /// is not a prefix of the whole (such a template cannot separate the turns).
    pub fn assistant_spans(
        &self,
        messages: &[Message],
        tokens: &TemplateTokens,
    ) -> Result<(String, Vec<(usize, usize)>), ChatTemplateError> {
        let text = self.render(messages, false, tokens)?;
        let mut spans = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            if message.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..index], true, tokens)?;
            let through = self.render(&messages[..=index], false, tokens)?;
            if !text.starts_with(&before) || !text.starts_with(&through) || through.len() < before.len() {
                return Err(ChatTemplateError::Render {
                    origin: self.origin.clone(),
                    line: None,
                    message: format!(
                        "the rendering of the first {index} messages (with the generation prompt) is not a prefix of the whole conversation, so assistant turn {} cannot be located",
                        index + 1
                    ),
                });
            }
            spans.push((before.len(), through.len()));
        }
        Ok((text, spans))
    }
}

/// transformers' `tojson`: Python's `json.dumps` with `ensure_ascii=False` — `", "` and `": "`
/// between items on one line, or `indent` spaces per level (MiniJinja's own filter escapes HTML
/// characters and writes compact JSON, which would change the rendered prompt).
fn python_json(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(out)
}

/// Walks the template's value itself: maps keep their order (Python dicts do), which a detour
/// through `serde_json::Value` would sort.
fn write_python_json(value: &minijinja::Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let to_error = |e: serde_json::Error| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string());
    let (open, close, is_map) = match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => ('[', ']', false),
        ValueKind::Map => ('{', '}', true),
        _ => {
            out.push_str(&serde_json::to_string(value).map_err(to_error)?);
            return Ok(());
        }
    };
    out.push(open);
    let mut count = 0;
    for (index, item) in value.try_iter()?.enumerate() {
        count += 1;
        match indent {
            Some(width) => {
                out.push_str(if index == 0 { "\n" } else { ",\n" });
                out.push_str(&" ".repeat(width * (depth + 1)));
            }
            None if index > 0 => out.push_str(", "),
            None => {}
        }
        if is_map {
            out.push_str(&serde_json::to_string(&item.to_string()).map_err(to_error)?);
            out.push_str(": ");
            write_python_json(&value.get_item(&item)?, indent, depth + 1, out)?;
        } else {
            write_python_json(&item, indent, depth + 1, out)?;
        }
    }
    if let (Some(width), true) = (indent, count > 0) {
        out.push('\n');
        out.push_str(&" ".repeat(width * depth));
    }
    out.push(close);
    Ok(())
}

/// transformers' `strftime_now(format)`: today's UTC date and time in C's `strftime` notation
/// (Llama 3.1's template prints the date with it); the directives templates use are supported.
fn strftime_now(format: String) -> Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let now = crate::clock::UtcTime::now();
    let month_name = MONTHS[(now.month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{:02}", now.day)),
            Some('m') => out.push_str(&format!("{:02}", now.month)),
            Some('Y') => out.push_str(&now.year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", now.year % 100)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('H') => out.push_str(&format!("{:02}", now.hour)),
            Some('M') => out.push_str(&format!("{:02}", now.minute)),
            Some('S') => out.push_str(&format!("{:02}", now.second)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{}", other.map(String::from).unwrap_or_default()),
                ))
            }
        }
    }
    Ok(out)
}

/// The error with its chain of causes (MiniJinja puts the detail in the source).
fn describe(error: &minijinja::Error) -> String {
    let mut message = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn tokens() -> TemplateTokens {
        TemplateTokens { bos: Some("<s>".into()), eos: "</s>".into(), pad: None }
    }

    #[test]
    fn renders_turns_with_python_string_methods_and_generation_prompt() {
        let template = ChatTemplate::new(CHATML.into(), "test".into()).unwrap();
        let messages = [Message::user("  hi "), Message::assistant("hello")];
        let text = template.render(&messages, false, &tokens()).unwrap();
        assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n");
        let prompt = template.render(&messages[..1], true, &tokens()).unwrap();
        assert_eq!(prompt, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn assistant_spans_cover_the_reply_and_its_end_of_turn() {
        let template = ChatTemplate::new(CHATML.into(), "test".into()).unwrap();
        let messages = [Message::user("q1"), Message::assistant("a1"), Message::user("q2"), Message::assistant("a2")];
        let (text, spans) = template.assistant_spans(&messages, &tokens()).unwrap();
        let pieces: Vec<&str> = spans.iter().map(|&(start, end)| &text[start..end]).collect();
        assert_eq!(pieces, ["a1<|im_end|>\n", "a2<|im_end|>\n"]);
    }

    #[test]
    fn bad_messages_are_named_with_their_place() {
        let error = |value: serde_json::Value| parse_messages(&value, "messages").unwrap_err();
        assert_eq!(
            error(serde_json::json!([{"role": "robot", "content": "x"}])),
            "`messages[0].role` is `robot`; expected system, user or assistant"
        );
        assert_eq!(error(serde_json::json!([{"role": "user", "content": "x"}, {"role": "user"}])), "`messages[1]` has no `content` text");
        assert!(error(serde_json::json!([{"role": "user", "content": "x", "name": "a"}])).contains("unknown key `name`"));
        assert!(error(serde_json::json!([])).contains("empty"));
        assert!(error(serde_json::json!(3)).contains("must be text or a list"));
        let prompt = Prompt::parse(&serde_json::json!([{"role": "user", "content": "hi"}]), "prompt").unwrap();
        assert_eq!(prompt, Prompt::Messages(vec![Message::user("hi")]));
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let template = ChatTemplate::new("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}".into(), "test".into()).unwrap();
        let text = template.render(&[Message::user("café <b>")], false, &tokens()).unwrap();
        assert_eq!(text, "{\"role\": \"user\", \"content\": \"café <b>\"}|{\n  \"role\": \"user\",\n  \"content\": \"café <b>\"\n}");
    }

    #[test]
    fn strftime_now_prints_a_date() {
        let template = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}".into(), "test".into()).unwrap();
        let text = template.render(&[], false, &tokens()).unwrap();
        let parts: Vec<&str> = text.split(' ').collect();
        assert!(parts.len() == 3 && parts[0].len() == 2 && parts[1].len() == 3 && parts[2].parse::<i64>().unwrap() >= 2026, "{text}");
    }

    #[test]
    fn raise_exception_and_syntax_errors_name_the_template_and_line() {
        let strict =
            "{% if messages[0]['role'] != 'user' %}\n{{ raise_exception('Conversations must start with a user turn') }}\n{% endif %}";
        let template = ChatTemplate::new(strict.into(), "`x/chat_template.jinja`".into()).unwrap();
        let error = template.render(&[Message::assistant("a")], false, &tokens()).unwrap_err().to_string();
        assert!(
            error.contains("`x/chat_template.jinja`") && error.contains("line 2") && error.contains("must start with a user turn"),
            "{error}"
        );

        let error = ChatTemplate::new("ok\n{% for m in messages %}".into(), "`y`".into()).unwrap_err().to_string();
        assert!(error.contains("`y`") && error.contains("does not parse") && error.contains("line"), "{error}");
    }
}
