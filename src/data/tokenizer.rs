//! Text ↔ token ids through a Hugging Face `tokenizer.json`, with the files transformers keeps
//! beside it: `tokenizer_config.json` (the special tokens) and the chat template
//! (`chat_template.jinja` or that file's `chat_template` key). Trained tokenizers are GPT-2's
//! byte-level BPE, whose one special token, `<|endoftext|>`, ends every document and doubles as
//! padding; a tokenizer made elsewhere names its own end-of-sequence token.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::chat::{ChatTemplate, ChatTemplateError, Message, Prompt, TemplateTokens};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// rlhf-lab's own chat template (`[tokenizer] chat_template = "chatml"`), with the special
/// tokens it prints and the one that ends an assistant's turn.
pub const CHATML_TEMPLATE: &str = include_str!("templates/chatml.jinja");
pub const CHATML_SPECIAL_TOKENS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
pub const CHATML_END_OF_TURN: &str = "<|im_end|>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer `{path}`: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write tokenizer `{path}`: {message}")]
    Write { path: PathBuf, message: String },
    #[error("tokenizer `{path}` has no `{END_OF_TEXT}` token and no `{TOKENIZER_CONFIG_FILE}` beside it naming an `eos_token`: nothing marks the end of a text")]
    NoEndOfText { path: PathBuf },
    #[error("`{path}`: `{key}` is `{token}`, which the vocabulary of `{TOKENIZER_FILE}` beside it does not hold")]
    UnknownSpecialToken { path: PathBuf, key: &'static str, token: String },
    #[error("`{path}`: `{key}` {expected}")]
    BadConfig { path: PathBuf, key: &'static str, expected: &'static str },
    #[error("tokenizer has {tokenizer_vocab} tokens but the model's vocabulary has only {model_vocab}: they do not belong together")]
    VocabularyMismatch { tokenizer_vocab: usize, model_vocab: i64 },
    #[error("tokenizer training failed: {0}")]
    Train(String),
    #[error("cannot tokenize text: {0}")]
    Encode(String),
    #[error("the tokenizer has no chat template (`{CHAT_TEMPLATE_FILE}` or `chat_template` in `{TOKENIZER_CONFIG_FILE}`) to render a conversation with")]
    NoChatTemplate,
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
}

/// A token by its text and id.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialToken {
    pub content: String,
    pub id: i64,
}

/// A tokenizer with its special tokens, the ids that end a generation and its chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eos: SpecialToken,
    bos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    /// The end-of-sequence id first, then other ids that also end a generation (for example
    /// `generation_config.json`'s list: Llama 3 stops at `<|eot_id|>` and `<|end_of_text|>`).
    stop_ids: Vec<i64>,
    chat_template: Option<ChatTemplate>,
}

impl TextTokenizer {
    /// Reads a tokenizer: `path` is a directory holding `tokenizer.json`, or that file itself;
    /// `tokenizer_config.json` and `chat_template.jinja` are read from beside it when present.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(TOKENIZER_FILE))
        } else {
            (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
        };
        let inner = Tokenizer::from_file(&file).map_err(|e| TokenizerError::Read { path: file.clone(), message: e.to_string() })?;
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| TokenizerError::Read { path: config_path.clone(), message: format!("not valid JSON: {e}") })?,
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(TokenizerError::Read { path: config_path, message: error.to_string() }),
        };
        let special = |key: &'static str| -> Result<Option<SpecialToken>, TokenizerError> {
            let Some(value) = config.as_ref().and_then(|c| c.get(key)).filter(|v| !v.is_null()) else { return Ok(None) };
            // A plain string, or an AddedToken written as an object with its `content`.
            let content =
                value.as_str().or_else(|| value.get("content").and_then(Value::as_str)).ok_or_else(|| TokenizerError::BadConfig {
                    path: config_path.clone(),
                    key,
                    expected: "must be a token's text or an object with its `content`",
                })?;
            let id = inner.token_to_id(content).ok_or_else(|| TokenizerError::UnknownSpecialToken {
                path: config_path.clone(),
                key,
                token: content.to_string(),
            })?;
            Ok(Some(SpecialToken { content: content.to_string(), id: id as i64 }))
        };
        let eos = match special("eos_token")? {
            Some(eos) => eos,
            None => {
                let id = inner.token_to_id(END_OF_TEXT).ok_or_else(|| TokenizerError::NoEndOfText { path: file.clone() })?;
                SpecialToken { content: END_OF_TEXT.to_string(), id: id as i64 }
            }
        };
        let (bos, pad) = (special("bos_token")?, special("pad_token")?);
        let chat_template = read_chat_template(&dir, config.as_ref())?;
        Ok(TextTokenizer { inner, stop_ids: vec![eos.id], eos, bos, pad, chat_template })
    }

    /// Trains a GPT-2-style byte-level BPE with `vocab_size` entries (256 byte symbols, the
    /// merges and `<|endoftext|>`, which the trainer places first, as id 0).
    pub fn train<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // GPT-2 does not add a space before the first word; offsets trimmed as in HF's GPT-2.
        let byte_level = ByteLevel::new(false, true, true);
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(byte_level)).with_post_processor(Some(byte_level)).with_decoder(Some(byte_level));
        inner.train(&mut trainer, texts).map_err(|e| TokenizerError::Train(e.to_string()))?;
        let eos_id =
            inner.token_to_id(END_OF_TEXT).ok_or_else(|| TokenizerError::Train(format!("trained vocabulary lacks `{END_OF_TEXT}`")))?;
        let eos = SpecialToken { content: END_OF_TEXT.to_string(), id: eos_id as i64 };
        Ok(TextTokenizer { inner, stop_ids: vec![eos.id], eos, bos: None, pad: None, chat_template: None })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (the special tokens, for
    /// `AutoTokenizer`) and, when there is one, `chat_template.jinja` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, TokenizerError> {
        let file = dir.join(TOKENIZER_FILE);
        self.inner.save(&file, false).map_err(|e| TokenizerError::Write { path: file.clone(), message: e.to_string() })?;
        let content = |token: &Option<SpecialToken>| token.as_ref().map(|t| t.content.clone());
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos.content,
            "bos_token": content(&self.bos),
            "pad_token": content(&self.pad),
            "clean_up_tokenization_spaces": false,
        });
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|e| TokenizerError::Write { path: path.to_path_buf(), message: e.to_string() })
        };
        write(&config_path, &serde_json::to_string_pretty(&config).expect("JSON serialises"))?;
        let mut written = vec![file, config_path];
        let template_path = dir.join(CHAT_TEMPLATE_FILE);
        match &self.chat_template {
            Some(template) => {
                write(&template_path, &template.source)?;
                written.push(template_path);
            }
            None if template_path.exists() => {
                std::fs::remove_file(&template_path).map_err(|e| TokenizerError::Write { path: template_path, message: e.to_string() })?
            }
            None => {}
        }
        Ok(written)
    }

    /// Token ids of `text`, without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// Token ids of `text`, each with the byte offset in `text` where it starts.
    pub fn encode_with_starts(&self, text: &str) -> Result<Vec<(i64, usize)>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().zip(encoding.get_offsets()).map(|(&id, &(start, _))| (id as i64, start)).collect())
    }

    /// Text of `ids`; special tokens (end-of-text) are dropped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        // Decoding ids the tokenizer produced cannot fail; an unknown id decodes to nothing.
        self.inner.decode(&ids, true).unwrap_or_default()
    }

    /// The end-of-sequence id: it ends documents and pads batches.
    pub fn eos_id(&self) -> i64 {
        self.eos.id
    }

    /// The padding id: the pad token when the tokenizer names one, else end-of-sequence.
    pub fn pad_id(&self) -> i64 {
        self.pad.as_ref().map_or(self.eos.id, |pad| pad.id)
    }

    /// Every id that ends a generation, the end-of-sequence id first.
    pub fn stop_ids(&self) -> &[i64] {
        &self.stop_ids
    }

    /// Adds special tokens (never split, dropped when decoding) at the end of the vocabulary;
    /// those it already has keep their ids.
    pub fn add_special_tokens(&mut self, tokens: &[String]) {
        let added: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
        self.inner.add_special_tokens(&added);
    }

    /// The id of a token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Adds ids that also end a generation (the model's `generation_config.json`).
    pub fn add_stop_ids(&mut self, ids: &[i64]) {
        for &id in ids {
            if !self.stop_ids.contains(&id) {
                self.stop_ids.push(id);
            }
        }
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn set_chat_template(&mut self, template: Option<ChatTemplate>) {
        self.chat_template = template;
    }

    /// The special tokens a chat template may print.
    pub fn template_tokens(&self) -> TemplateTokens {
        TemplateTokens {
            bos: self.bos.as_ref().map(|t| t.content.clone()),
            eos: self.eos.content.clone(),
            pad: self.pad.as_ref().map(|t| t.content.clone()),
        }
    }

    /// The text a prompt is given to a model as: plain text as it is, a conversation rendered
    /// with the chat template and its generation prompt.
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<String, TokenizerError> {
        match prompt {
            Prompt::Text(text) => Ok(text.clone()),
            Prompt::Messages(messages) => {
                let template = self.chat_template.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
                Ok(template.render(messages, true, &self.template_tokens())?)
            }
        }
    }

    /// The ids of a conversation rendered with the chat template, as transformers'
    /// `apply_chat_template(messages, add_generation_prompt=…, tokenize=True)` gives them: the
    /// template prints any BOS itself, so no special token is added.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<i64>, TokenizerError> {
        let template = self.chat_template.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        self.encode(&template.render(messages, add_generation_prompt, &self.template_tokens())?)
    }

    /// Number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A model can use this tokenizer when every token id has an embedding row.
    pub fn check_fits(&self, model_vocab: i64) -> Result<(), TokenizerError> {
        if self.vocab_size() as i64 > model_vocab {
            return Err(TokenizerError::VocabularyMismatch { tokenizer_vocab: self.vocab_size(), model_vocab });
        }
        Ok(())
    }
}

/// The chat template beside a tokenizer: `chat_template.jinja` (transformers ≥ 4.43 writes it),
/// else `tokenizer_config.json`'s `chat_template` — a string, or a list of named templates of
/// which the one named `default` is taken.
fn read_chat_template(dir: &Path, config: Option<&Value>) -> Result<Option<ChatTemplate>, TokenizerError> {
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if file.is_file() {
        let source = std::fs::read_to_string(&file).map_err(|e| TokenizerError::Read { path: file.clone(), message: e.to_string() })?;
        return Ok(Some(ChatTemplate::new(source, format!("`{}`", file.display()))?));
    }
    let config_path = dir.join(TOKENIZER_CONFIG_FILE);
    let bad = || TokenizerError::BadConfig {
        path: config_path.clone(),
        key: "chat_template",
        expected: "must be a template string or a list of {\"name\", \"template\"} objects, one named \"default\"",
    };
    let source = match config.and_then(|c| c.get("chat_template")) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(source)) => source.clone(),
        Some(Value::Array(named)) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|entry| entry.get("template").and_then(Value::as_str))
            .ok_or_else(bad)?
            .to_string(),
        Some(_) => return Err(bad()),
    };
    Ok(Some(ChatTemplate::new(source, format!("`{}` (key `chat_template`)", config_path.display()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..200).map(|i| format!("the battery of this phone lasts {} hours and the screen is bright{END_OF_TEXT}", i % 17)).collect()
    }

    #[test]
    fn trained_tokenizer_round_trips_text_and_knows_end_of_text() {
        let tokenizer = TextTokenizer::train(corpus().iter(), 300).unwrap();
        assert!(tokenizer.vocab_size() <= 300 && tokenizer.vocab_size() > 256);
        let text = "the screen is bright, the battery is weak!";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids), text);
        // Merges learned from the corpus compress it below one token per byte.
        assert!(ids.len() < text.len(), "{} ids for {} bytes", ids.len(), text.len());
        let with_eos = tokenizer.encode(&format!("hours{END_OF_TEXT}")).unwrap();
        assert_eq!(*with_eos.last().unwrap(), tokenizer.eos_id());
    }

    #[test]
    fn saved_tokenizer_loads_back_identically() {
        let tokenizer = TextTokenizer::train(corpus().iter(), 300).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tokenizer.save(dir.path()).unwrap();
        let loaded = TextTokenizer::load(&dir.path().join(TOKENIZER_FILE)).unwrap();
        let text = "the battery lasts 12 hours";
        assert_eq!(loaded.encode(text).unwrap(), tokenizer.encode(text).unwrap());
        assert_eq!(loaded.eos_id(), tokenizer.eos_id());
    }

    #[test]
    fn vocabulary_larger_than_the_model_is_rejected() {
        let tokenizer = TextTokenizer::train(corpus().iter(), 300).unwrap();
        let error = tokenizer.check_fits(100).unwrap_err().to_string();
        assert!(error.contains("100") && error.contains(&tokenizer.vocab_size().to_string()), "{error}");
        tokenizer.check_fits(tokenizer.vocab_size() as i64).unwrap();
    }
}
