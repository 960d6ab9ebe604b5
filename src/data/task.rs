//! The data an experiment trains on, whichever task provides it: split into train and eval,
//! cleaned when it comes from the user's files, its training demonstrations augmented when
//! `[task] augment` says so.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::augment::{Augmentation, Synonyms, AUGMENTATION_SEED};
use super::chat::{parse_messages, Message, Prompt, Role};
use super::cleaning::{clean, CleaningReport, CleaningRules, TextFields};
use super::jsonl::{read_converted, JsonlError, TextRecord};
use super::synthetic::arithmetic::{expression_of, Exclusions};
use super::synthetic::{Demonstration, GoldOracle, SyntheticArithmetic, SyntheticReviews, Verifier};
use super::tokenizer::{TextTokenizer, TokenizerError};
use crate::config::{TaskConfig, TaskKind};
use crate::rng::step_seed;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Jsonl(#[from] JsonlError),
    #[error("[task] `{key}`: expected {expected}")]
    Augment { key: &'static str, expected: String },
}

/// Records held for training and for evaluation.
#[derive(Debug, Clone)]
pub struct Split<T> {
    pub train: Vec<T>,
    pub eval: Vec<T>,
}

impl<T> Default for Split<T> {
    fn default() -> Self {
        Split { train: Vec::new(), eval: Vec::new() }
    }
}

impl<T> Split<T> {
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.eval.is_empty()
    }

    /// A seeded shuffle, then the first `eval_fraction` (at least one record when there are two
    /// or more) goes to eval.
    fn new(mut records: Vec<T>, eval_fraction: f64, seed: u64) -> Self {
        records.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let train = records.split_off(held_out(records.len(), eval_fraction));
        Split { train, eval: records }
    }
}

/// How many of `records` go to eval: ⌈records · fraction⌉, at least one when there are two or more.
pub fn held_out(records: usize, eval_fraction: f64) -> usize {
    if records >= 2 {
        ((records as f64 * eval_fraction).ceil() as usize).max(1)
    } else {
        0
    }
}

/// Everything a task provides.
#[derive(Debug, Clone, Default)]
pub struct TaskData {
    pub corpus: Split<String>,
    pub demonstrations: Split<Demonstration>,
    pub prompts: Split<String>,
    /// Prompts given as conversations, until `apply_chat_template` renders them into `prompts`.
    pub chat_prompts: Split<Vec<Message>>,
    /// The gold oracle, on tasks that have one.
    pub oracle: Option<GoldOracle>,
    /// The programmatic reward of a verifiable task (synthetic arithmetic).
    pub verifier: Option<Verifier>,
    /// What cleaning dropped, per input file (JSONL task), and skipped malformed lines.
    pub cleaning: BTreeMap<String, CleaningReport>,
    /// How `[task] augment` made the training demonstrations that follow the originals in
    /// `demonstrations.train`.
    pub demonstration_augmentation: Option<Augmentation>,
}

impl TaskData {
    /// Every text the task has, for training a tokenizer — augmented copies aside, so that
    /// augmentation leaves the tokenizer as it was.
    pub fn all_text(&self) -> impl Iterator<Item = &str> + Send {
        let corpus = self.corpus.train.iter().chain(&self.corpus.eval).map(String::as_str);
        let demonstrations = self.original_training_demonstrations().iter().chain(&self.demonstrations.eval).flat_map(|d| {
            let contents = d.messages.iter().flatten().map(|m| m.content.as_str());
            [d.prompt.as_str(), d.response.as_str()].into_iter().chain(contents)
        });
        let chat_prompts = self.chat_prompts.train.iter().chain(&self.chat_prompts.eval).flatten().map(|m| m.content.as_str());
        corpus.chain(demonstrations).chain(self.prompts.train.iter().chain(&self.prompts.eval).map(String::as_str)).chain(chat_prompts)
    }

    /// The training demonstrations as the task gave them, without those augmentation added.
    pub fn original_training_demonstrations(&self) -> &[Demonstration] {
        &self.demonstrations.train[..self.demonstrations.train.len() - self.added_demonstrations().len()]
    }

    /// The training demonstrations augmentation added (after the originals).
    pub fn added_demonstrations(&self) -> &[Demonstration] {
        let added = self.demonstration_augmentation.as_ref().map_or(0, |a| a.provenance.len());
        &self.demonstrations.train[self.demonstrations.train.len() - added..]
    }

    /// The training prompts: the task's, then its original training demonstrations' (augmented
    /// copies would weigh some prompts more: what RL stages and synthetic pairs draw from stays
    /// as the task gave it).
    pub fn training_prompts(&self) -> impl Iterator<Item = &String> {
        self.prompts.train.iter().chain(self.original_training_demonstrations().iter().map(|d| &d.prompt))
    }

    /// The first `count` prompts a policy is evaluated on: the held-out prompts, then the
    /// held-out demonstrations' prompts.
    pub fn evaluation_prompts(&self, count: usize) -> Vec<String> {
        self.prompts.eval.iter().chain(self.demonstrations.eval.iter().map(|d| &d.prompt)).take(count).cloned().collect()
    }

    /// SHA-256 (hex) of the held-out records — corpus, demonstrations and prompts as rendered —
    /// which runs compare to know whether they were evaluated on the same data.
    pub fn eval_set_digest(&self) -> String {
        let demonstrations: Vec<[&str; 2]> = self.demonstrations.eval.iter().map(|d| [d.prompt.as_str(), d.response.as_str()]).collect();
        let records = serde_json::json!({
            "corpus": self.corpus.eval,
            "demonstrations": demonstrations,
            "prompts": self.prompts.eval,
        });
        hex::encode(Sha256::digest(records.to_string().as_bytes()))
    }

    /// Renders the conversations with the tokenizer's chat template: each conversational
    /// demonstration's `prompt` (before its last assistant turn, with the generation prompt) and
    /// `response` (that turn), and the conversational prompts into `prompts`. A template is needed
    /// only when the task has conversations.
    pub fn apply_chat_template(&mut self, tokenizer: &TextTokenizer) -> Result<(), TokenizerError> {
        for demonstration in self.demonstrations.train.iter_mut().chain(self.demonstrations.eval.iter_mut()) {
            let Some(messages) = &demonstration.messages else { continue };
            let last =
                messages.iter().rposition(|m| m.role == Role::Assistant).expect("checked when read: a conversation has an assistant turn");
            demonstration.prompt = tokenizer.prompt_text(&Prompt::Messages(messages[..last].to_vec()))?;
            demonstration.response = messages[last].content.clone();
        }
        let chat_prompts = std::mem::take(&mut self.chat_prompts);
        for (rendered, conversations) in [(&mut self.prompts.train, chat_prompts.train), (&mut self.prompts.eval, chat_prompts.eval)] {
            for messages in conversations {
                rendered.push(tokenizer.prompt_text(&Prompt::Messages(messages))?);
            }
        }
        Ok(())
    }
}

impl TextFields for Demonstration {
    fn text_fields(&mut self) -> Vec<&mut String> {
        match &mut self.messages {
            Some(messages) => messages.iter_mut().map(|m| &mut m.content).collect(),
            None => vec![&mut self.prompt, &mut self.response],
        }
    }
}

impl TextFields for Prompt {
    fn text_fields(&mut self) -> Vec<&mut String> {
        match self {
            Prompt::Text(text) => vec![text],
            Prompt::Messages(messages) => messages.iter_mut().map(|m| &mut m.content).collect(),
        }
    }
}

impl TextFields for TextRecord {
    fn text_fields(&mut self) -> Vec<&mut String> {
        vec![&mut self.text]
    }
}

/// A demonstration line: `{"prompt", "response"}` — the prompt as text, or as the conversation
/// the response answers — or `{"messages"}`, a conversation with at least one assistant turn.
pub fn demonstration_from(record: Map<String, Value>) -> Result<Demonstration, String> {
    if let Some(messages) = record.get("messages") {
        if record.contains_key("prompt") || record.contains_key("response") {
            return Err("a demonstration has either `messages` or `prompt` and `response`, not both".into());
        }
        let messages = parse_messages(messages, "messages")?;
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err("the conversation in `messages` has no assistant turn: there is nothing to learn from it".into());
        }
        return Ok(Demonstration { prompt: String::new(), response: String::new(), messages: Some(messages) });
    }
    let field = |name: &str| {
        record.get(name).ok_or_else(|| format!("missing field `{name}` (a demonstration has `prompt` and `response`, or `messages`)"))
    };
    let response = field("response")?.as_str().ok_or_else(|| "`response` must be text".to_string())?.to_string();
    Ok(match Prompt::parse(field("prompt")?, "prompt")? {
        // The response follows the prompt in one text: a space keeps the words apart.
        Prompt::Text(prompt) => Demonstration { prompt, response: format!(" {response}"), messages: None },
        Prompt::Messages(mut messages) => {
            messages.push(Message::assistant(response));
            Demonstration { prompt: String::new(), response: String::new(), messages: Some(messages) }
        }
    })
}

/// A prompt line: `{"prompt"}`, text or a list of messages (other fields ignored).
pub fn prompt_from(record: Map<String, Value>) -> Result<Prompt, String> {
    Prompt::parse(record.get("prompt").ok_or("missing field `prompt`")?, "prompt")
}

/// Builds the task's data from its config. The synthetic task generates its training part from
/// the experiment's `seed` and its held-out part from `eval_seed`; a JSONL task is split by a
/// shuffle drawn from `eval_seed`. Either way every run of the task, whatever its seed, is
/// evaluated on the same records. Then `augment` adds to the training demonstrations (never to
/// the held-out ones), drawn from `seed`.
pub fn load(config: &TaskConfig, seed: u64) -> Result<TaskData, TaskError> {
    let mut data = unaugmented(config, seed)?;
    // Synonyms of the review task's own words serve it when there is no file (chat form too).
    let vocabulary = (config.kind == TaskKind::SyntheticReviews).then(Synonyms::reviews);
    let augmenter = config.augment.augmenter(vocabulary).map_err(|(key, expected)| TaskError::Augment { key, expected })?;
    if let Some(augmenter) = augmenter {
        let added = augmenter.augment(&data.demonstrations.train, step_seed(seed, AUGMENTATION_SEED, 0));
        let report = &added.augmentation.report;
        tracing::info!(
            original = report.original,
            copies = report.copies,
            resampled = report.resampled,
            "augmented the training demonstrations"
        );
        data.demonstrations.train.extend(added.records);
        data.demonstration_augmentation = Some(added.augmentation);
    }
    Ok(data)
}

fn unaugmented(config: &TaskConfig, seed: u64) -> Result<TaskData, JsonlError> {
    match config.kind {
        TaskKind::SyntheticReviews => {
            let held_out = |size: usize| held_out(size, config.eval_fraction);
            let (corpus, demonstrations, prompts) = (config.corpus_size, config.demonstrations_size, config.prompts_size);
            let train = SyntheticReviews::generate(
                seed,
                corpus - held_out(corpus),
                demonstrations - held_out(demonstrations),
                prompts - held_out(prompts),
            );
            let eval = SyntheticReviews::generate(
                step_seed(config.eval_seed, EVAL_SET_SEED, 0),
                held_out(corpus),
                held_out(demonstrations),
                held_out(prompts),
            );
            let data = TaskData {
                corpus: Split { train: train.corpus, eval: eval.corpus },
                demonstrations: Split { train: train.demonstrations, eval: eval.demonstrations },
                prompts: Split { train: train.prompts, eval: eval.prompts },
                chat_prompts: Split::default(),
                oracle: Some(GoldOracle::Reviews),
                verifier: None,
                cleaning: BTreeMap::new(),
                demonstration_augmentation: None,
            };
            Ok(if config.chat { as_conversations(data) } else { data })
        }
        TaskKind::SyntheticArithmetic => Ok(load_arithmetic(config, seed)),
        TaskKind::Jsonl => load_jsonl(config),
    }
}

/// The arithmetic task: its held-out part from the evaluation seed, every held-out
/// demonstration and prompt a different problem; its training part from `seed`, redrawn where
/// it would ask a held-out demonstration's or prompt's problem (in the corpus too).
fn load_arithmetic(config: &TaskConfig, seed: u64) -> TaskData {
    let held_out = |size: usize| held_out(size, config.eval_fraction);
    let (corpus, demonstrations, prompts) = (config.corpus_size, config.demonstrations_size, config.prompts_size);
    let generate = |seed: u64, sizes: [usize; 3], exclusions: &Exclusions| {
        SyntheticArithmetic::generate(seed, config.max_operand, config.terms, sizes, exclusions)
    };
    let eval = generate(
        step_seed(config.eval_seed, EVAL_SET_SEED, 0),
        [held_out(corpus), held_out(demonstrations), held_out(prompts)],
        &Exclusions { expressions: HashSet::new(), distinct: true },
    );
    let expressions = eval.prompts.iter().chain(eval.demonstrations.iter().map(|d| &d.prompt)).filter_map(|p| expression_of(p));
    let train = generate(
        seed,
        [corpus - held_out(corpus), demonstrations - held_out(demonstrations), prompts - held_out(prompts)],
        &Exclusions { expressions: expressions.map(str::to_string).collect(), distinct: false },
    );
    TaskData {
        corpus: Split { train: train.corpus, eval: eval.corpus },
        demonstrations: Split { train: train.demonstrations, eval: eval.demonstrations },
        prompts: Split { train: train.prompts, eval: eval.prompts },
        chat_prompts: Split::default(),
        oracle: Some(GoldOracle::Arithmetic),
        verifier: Some(Verifier { format_reward: config.format_reward }),
        cleaning: BTreeMap::new(),
        demonstration_augmentation: None,
    }
}

/// Purpose of the seed the synthetic task's held-out records are generated from.
const EVAL_SET_SEED: u64 = 41;

fn load_jsonl(config: &TaskConfig) -> Result<TaskData, JsonlError> {
    let seed = config.eval_seed;
    let rules = CleaningRules {
        min_chars: config.min_chars,
        max_chars: config.max_chars,
        near_duplicate_threshold: config.near_duplicate_threshold,
    };
    let mut data = TaskData::default();
    if let Some(path) = &config.corpus {
        let (texts, report) = read_clean(path, config.skip_bad_lines, &rules, |r: TextRecord| Ok(r))?;
        data.cleaning.insert(path.display().to_string(), report);
        data.corpus = Split::new(texts.into_iter().map(|r| r.text).collect(), config.eval_fraction, seed ^ 1);
    }
    if let Some(path) = &config.demonstrations {
        let (demonstrations, report) = read_clean(path, config.skip_bad_lines, &rules, demonstration_from)?;
        data.cleaning.insert(path.display().to_string(), report);
        data.demonstrations = Split::new(demonstrations, config.eval_fraction, seed ^ 2);
    }
    if let Some(path) = &config.prompts {
        let (prompts, report) = read_clean(path, config.skip_bad_lines, &rules, prompt_from)?;
        data.cleaning.insert(path.display().to_string(), report);
        let (texts, conversations): (Vec<Prompt>, Vec<Prompt>) = prompts.into_iter().partition(|p| matches!(p, Prompt::Text(_)));
        let texts = texts.into_iter().map(|p| match p {
            Prompt::Text(text) => text,
            Prompt::Messages(_) => unreachable!("partitioned"),
        });
        let conversations = conversations.into_iter().map(|p| match p {
            Prompt::Messages(messages) => messages,
            Prompt::Text(_) => unreachable!("partitioned"),
        });
        data.prompts = Split::new(texts.collect(), config.eval_fraction, seed ^ 3);
        data.chat_prompts = Split::new(conversations.collect(), config.eval_fraction, seed ^ 3);
    }
    for (file, report) in &data.cleaning {
        tracing::info!(file, read = report.read, kept = report.kept, dropped = ?report.dropped, "cleaned");
    }
    Ok(data)
}

/// The synthetic task as a chat: each demonstration a user turn and the assistant's answer,
/// each prompt a user turn, all rendered later with the chat template.
fn as_conversations(mut data: TaskData) -> TaskData {
    for demonstration in data.demonstrations.train.iter_mut().chain(data.demonstrations.eval.iter_mut()) {
        let messages = vec![
            Message::user(std::mem::take(&mut demonstration.prompt)),
            Message::assistant(std::mem::take(&mut demonstration.response).trim().to_string()),
        ];
        demonstration.messages = Some(messages);
    }
    let prompts = std::mem::take(&mut data.prompts);
    let to_chat = |prompts: Vec<String>| prompts.into_iter().map(|p| vec![Message::user(p)]).collect();
    data.chat_prompts = Split { train: to_chat(prompts.train), eval: to_chat(prompts.eval) };
    data
}

/// Reads a JSONL file of `R` lines, converts each into a record and cleans them. Skipped
/// malformed lines count as the drop reason `malformed`.
fn read_clean<L: DeserializeOwned, R: TextFields>(
    path: &Path,
    skip_bad_lines: bool,
    rules: &CleaningRules,
    convert: impl Fn(L) -> Result<R, String>,
) -> Result<(Vec<R>, CleaningReport), JsonlError> {
    let (records, bad_lines) = read_converted(path, skip_bad_lines, convert)?;
    for bad in &bad_lines {
        tracing::warn!("skipped {bad}");
    }
    let (kept, mut report) = clean(records, rules);
    if !bad_lines.is_empty() {
        report.read += bad_lines.len();
        report.dropped.insert("malformed", bad_lines.len());
    }
    Ok((kept, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews(keys: &str) -> TaskConfig {
        let table = format!("kind = \"synthetic-reviews\"\ncorpus_size = 20\ndemonstrations_size = 40\nprompts_size = 10\n{keys}");
        toml::from_str(&table).unwrap()
    }

    #[test]
    fn augmentation_adds_training_demonstrations_and_changes_nothing_else() {
        let plain = load(&reviews(""), 1).unwrap();
        let config = reviews("augment = { copies = 2, random_swap = 0.2, resample = 0.5 }");
        let augmented = load(&config, 1).unwrap();
        // 40 demonstrations, 2 held out: 38 originals, 2 copies of each, ⌊0.5 · 38⌋ resampled.
        assert_eq!(augmented.original_training_demonstrations(), plain.demonstrations.train.as_slice());
        assert_eq!(augmented.added_demonstrations().len(), 38 * 2 + 19);
        assert_eq!(augmented.demonstration_augmentation.as_ref().unwrap().report.total, 38 * 3 + 19);
        assert_eq!(augmented.eval_set_digest(), plain.eval_set_digest());
        assert_eq!(augmented.demonstrations.eval, plain.demonstrations.eval);
        assert!(augmented.all_text().eq(plain.all_text()), "the tokenizer would train on augmented text");
        assert!(augmented.training_prompts().eq(plain.training_prompts()), "RL stages would draw other prompts");
        assert_eq!(load(&config, 1).unwrap().demonstrations.train, augmented.demonstrations.train);
        assert_ne!(load(&config, 2).unwrap().added_demonstrations(), augmented.added_demonstrations());
    }

    #[test]
    fn the_chat_form_augments_the_assistant_turns() {
        let chat = load(&reviews("chat = true\naugment = { copies = 1, random_swap = 0.3 }"), 1).unwrap();
        let originals = chat.original_training_demonstrations();
        let mark = &chat.demonstration_augmentation.as_ref().unwrap().provenance;
        let mut changed = 0;
        for (copy, mark) in chat.added_demonstrations().iter().zip(mark) {
            let (copy, original) = (copy.messages.as_ref().unwrap(), originals[mark.original].messages.as_ref().unwrap());
            assert_eq!(copy[0], original[0], "the user turn is the request");
            changed += usize::from(copy[1] != original[1]);
        }
        assert!(changed > 30, "{changed} of 38 assistant turns rewritten");
    }

    #[test]
    fn synonym_techniques_need_synonyms_outside_the_review_task() {
        let arithmetic: TaskConfig =
            toml::from_str("kind = \"synthetic-arithmetic\"\naugment = { copies = 1, synonym_replace = 0.1 }").unwrap();
        let error = load(&arithmetic, 1).unwrap_err().to_string();
        assert!(error.starts_with("[task] `augment.synonym_replace`: expected synonyms to draw from"), "{error}");
    }
}
