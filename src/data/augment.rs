//! EDA-style augmentation of training records (Wei & Zou 2019, "EDA: Easy Data Augmentation
//! Techniques for Boosting Performance on Text Classification Tasks"): copies of each record whose
//! texts are rewritten by synonym replacement, random insertion, random swap and random deletion,
//! plus a reordering of sentences, and exact copies that oversample under-represented prompts.
//!
//! Only the texts a model learns to produce are rewritten — a demonstration's response (each
//! assistant turn of a conversation), a preference pair's chosen and rejected responses — never
//! a prompt: the prompt states the request (the synthetic task's oracle reads it back), and a
//! garbled request over an untouched answer would teach the model to ignore it. Evaluation
//! records are never augmented.
//!
//! EDA makes each augmented sentence with one operation; here each copy goes through every
//! technique whose strength is above 0 (in the order sentence shuffle, synonym replacement,
//! random insertion, random swap, random deletion), so setting one technique alone gives EDA's.
//! As in EDA, a technique of strength α changes n = max(1, round(α · words)) words, and random
//! deletion drops each word with probability α. Words are the whitespace-separated tokens; their
//! trailing punctuation stays in place when words move (a swap keeps the full stop at the end of
//! its sentence), and the whitespace between words is kept (line breaks included).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::chat::Role;
use super::preferences::PreferencePair;
use super::synthetic::Demonstration;

/// Purpose of the seeds augmentation draws from (`crate::rng::step_seed`): step 0 for the task's
/// demonstrations, step 1 for a stage's preference pairs.
pub const AUGMENTATION_SEED: u64 = 51;

/// The `augment = { ... }` table of `[task]` and of the preference stages. Every key defaults to
/// 0 (off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSettings {
    /// Augmented copies made of each training record (0: none, whatever the techniques say).
    #[serde(default)]
    pub copies: usize,
    /// EDA's α for synonym replacement: the share of words replaced by a synonym.
    #[serde(default)]
    pub synonym_replace: f64,
    /// EDA's α for random swap: the share of words, as a number of swaps of two words.
    #[serde(default)]
    pub random_swap: f64,
    /// EDA's p for random deletion: the probability that each word is deleted.
    #[serde(default)]
    pub random_delete: f64,
    /// EDA's α for random insertion: the share of words, as a number of synonyms inserted.
    #[serde(default)]
    pub random_insert: f64,
    /// Probability that a copy of a text of two or more sentences has them reordered.
    #[serde(default)]
    pub sentence_shuffle: f64,
    /// Exact copies added, as a share of the training records (⌊resample · N⌋), drawn with
    /// probability ∝ 1 / (records with the same prompt): under-represented prompts are
    /// oversampled.
    #[serde(default)]
    pub resample: f64,
    /// A TSV file of synonym groups, one group of interchangeable words a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synonyms: Option<PathBuf>,
}

impl AugmentSettings {
    /// No key set: how the resolved config leaves the table out.
    pub fn is_default(&self) -> bool {
        *self == AugmentSettings::default()
    }

    /// Values that parse but cannot work, as `(key, what is expected)` (the synonyms file is read
    /// and checked too). `vocabulary` says whether the data has synonyms of its own (the synthetic
    /// reviews') for a technique that needs some when there is no `synonyms` file.
    pub fn check(&self, vocabulary: bool) -> Result<(), (&'static str, String)> {
        self.augmenter(vocabulary.then(Synonyms::reviews)).map(drop)
    }

    /// What these settings augment with — `None` when they add nothing — or why they cannot work,
    /// as `(key, what is expected)`. `vocabulary` is used when there is no `synonyms` file.
    pub fn augmenter(&self, vocabulary: Option<Synonyms>) -> Result<Option<Augmenter>, (&'static str, String)> {
        let probabilities = [
            ("augment.synonym_replace", self.synonym_replace),
            ("augment.random_swap", self.random_swap),
            ("augment.random_delete", self.random_delete),
            ("augment.random_insert", self.random_insert),
            ("augment.sentence_shuffle", self.sentence_shuffle),
        ];
        if let Some((key, value)) = probabilities.into_iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err((key, format!("a value in [0, 1], got {value}")));
        }
        if !(self.resample >= 0.0 && self.resample.is_finite()) {
            return Err(("augment.resample", format!("a finite share ≥ 0 of the training records, got {}", self.resample)));
        }
        let synonyms = match &self.synonyms {
            Some(path) => Synonyms::read(path).map_err(|error| ("augment.synonyms", format!("a file of synonym groups: {error}")))?,
            None => vocabulary.unwrap_or_default(),
        };
        if self.copies > 0 && synonyms.is_empty() {
            let needing = [("augment.synonym_replace", self.synonym_replace), ("augment.random_insert", self.random_insert)];
            if let Some((key, _)) = needing.into_iter().find(|(_, v)| *v > 0.0) {
                return Err((
                    key,
                    "synonyms to draw from: a `synonyms` file (only the synthetic reviews have synonyms of their own)".into(),
                ));
            }
        }
        if self.copies == 0 && self.resample == 0.0 {
            return Ok(None);
        }
        Ok(Some(Augmenter { settings: self.clone(), synonyms }))
    }
}

/// A technique that made an added record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Technique {
    SentenceShuffle,
    SynonymReplace,
    RandomInsert,
    RandomSwap,
    RandomDelete,
    /// An exact copy added by `resample`.
    Resample,
}

/// How an added record was made: from which training record (its index among the originals)
/// and by which techniques — those that changed one of its texts (none: an augmented copy
/// identical to its original), or `resample`.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub original: usize,
    pub techniques: Vec<Technique>,
}

/// What augmentation added to one set of training records, as `data_report.json` records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AugmentationReport {
    /// Training records before augmentation.
    pub original: usize,
    /// Augmented copies added (`copies` per original record).
    pub copies: usize,
    /// Augmented copies each technique (those set) changed; a copy counts for every technique
    /// that changed it.
    pub by_technique: BTreeMap<Technique, usize>,
    /// Augmented copies no technique changed (kept: they weigh their original twice).
    pub unchanged: usize,
    /// Exact copies added by `resample`.
    pub resampled: usize,
    /// Training records after augmentation.
    pub total: usize,
}

/// The records augmentation added (to follow the originals), how each was made, and the counts.
#[derive(Debug, Clone)]
pub struct Augmented<T> {
    pub records: Vec<T>,
    pub augmentation: Augmentation,
}

/// How the added records of a training set were made, one `Provenance` each, and the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    pub provenance: Vec<Provenance>,
    pub report: AugmentationReport,
}

/// The added records as JSONL: each record's own fields, with `original` and `techniques`.
pub fn marked_lines<T: Serialize>(records: impl IntoIterator<Item = T>, provenance: &[Provenance]) -> String {
    #[derive(Serialize)]
    struct Marked<'a, T> {
        original: usize,
        techniques: &'a [Technique],
        #[serde(flatten)]
        record: T,
    }
    records
        .into_iter()
        .zip(provenance)
        .map(|(record, mark)| {
            let line = Marked { original: mark.original, techniques: &mark.techniques, record };
            serde_json::to_string(&line).expect("records serialise") + "\n"
        })
        .collect()
}

/// A training record augmentation can copy and rewrite.
pub trait Augmentable: Clone {
    /// The texts a copy rewrites: those the model learns to produce.
    fn augmented_texts(&mut self) -> Vec<&mut String>;
    /// What records answering the same prompt share (resampling evens out prompts).
    fn prompt_key(&self) -> String;
}

impl Augmentable for Demonstration {
    fn augmented_texts(&mut self) -> Vec<&mut String> {
        match &mut self.messages {
            // SFT learns every assistant turn of a conversation.
            Some(messages) => messages.iter_mut().filter(|m| m.role == Role::Assistant).map(|m| &mut m.content).collect(),
            None => vec![&mut self.response],
        }
    }

    fn prompt_key(&self) -> String {
        match &self.messages {
            Some(messages) => {
                let last = messages.iter().rposition(|m| m.role == Role::Assistant).unwrap_or(messages.len());
                messages[..last].iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\u{1f}")
            }
            None => self.prompt.clone(),
        }
    }
}

impl Augmentable for PreferencePair {
    /// Chosen and rejected, each rewritten by its own draws.
    fn augmented_texts(&mut self) -> Vec<&mut String> {
        vec![&mut self.chosen, &mut self.rejected]
    }

    fn prompt_key(&self) -> String {
        self.prompt.clone()
    }
}

/// Checked settings with their synonyms: what makes the added records.
#[derive(Debug, Clone)]
pub struct Augmenter {
    settings: AugmentSettings,
    synonyms: Synonyms,
}

impl Augmenter {
    /// The records to add to `originals` — `copies` rewritten copies of each, in order, then
    /// the resampled ones — drawn from `seed`: the same seed gives the same records.
    pub fn augment<T: Augmentable>(&self, originals: &[T], seed: u64) -> Augmented<T> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut records = Vec::new();
        let mut provenance = Vec::new();
        let mut report = AugmentationReport { original: originals.len(), ..Default::default() };
        report.by_technique = self.techniques().map(|(technique, _)| (technique, 0)).collect();
        for (original, record) in originals.iter().enumerate() {
            for _ in 0..self.settings.copies {
                let mut copy = record.clone();
                let mut applied = BTreeSet::new();
                for text in copy.augmented_texts() {
                    applied.extend(self.rewrite(text, &mut rng));
                }
                for technique in &applied {
                    *report.by_technique.entry(*technique).or_default() += 1;
                }
                report.unchanged += usize::from(applied.is_empty());
                records.push(copy);
                provenance.push(Provenance { original, techniques: applied.into_iter().collect() });
            }
        }
        report.copies = records.len();
        let resampled = (self.settings.resample * originals.len() as f64).floor() as usize;
        if resampled > 0 && !originals.is_empty() {
            let mut per_prompt: HashMap<String, usize> = HashMap::new();
            let keys: Vec<String> = originals.iter().map(Augmentable::prompt_key).collect();
            for key in &keys {
                *per_prompt.entry(key.clone()).or_default() += 1;
            }
            let weights: Vec<f64> = keys.iter().map(|key| 1.0 / per_prompt[key] as f64).collect();
            let draw = WeightedIndex::new(&weights).expect("weights are positive and finite");
            for _ in 0..resampled {
                let original = draw.sample(&mut rng);
                records.push(originals[original].clone());
                provenance.push(Provenance { original, techniques: vec![Technique::Resample] });
            }
        }
        report.resampled = records.len() - report.copies;
        report.total = originals.len() + records.len();
        Augmented { records, augmentation: Augmentation { provenance, report } }
    }

    /// The rewriting techniques set, with their strength, in the order they apply.
    fn techniques(&self) -> impl Iterator<Item = (Technique, f64)> {
        let settings = &self.settings;
        [
            (Technique::SentenceShuffle, settings.sentence_shuffle),
            (Technique::SynonymReplace, settings.synonym_replace),
            (Technique::RandomInsert, settings.random_insert),
            (Technique::RandomSwap, settings.random_swap),
            (Technique::RandomDelete, settings.random_delete),
        ]
        .into_iter()
        .filter(|(_, strength)| *strength > 0.0)
    }

    /// Rewrites `text` with every technique set; returns those that changed it.
    fn rewrite(&self, text: &mut String, rng: &mut ChaCha8Rng) -> Vec<Technique> {
        let mut words = Words::parse(text);
        // EDA's n: from the length of the text as given, at least one change.
        let length = words.len() as f64;
        let changes = |alpha: f64| ((alpha * length).round() as usize).max(1);
        let mut applied = Vec::new();
        for (technique, strength) in self.techniques() {
            let before = words.clone();
            match technique {
                Technique::SentenceShuffle => {
                    if rng.random_bool(strength) {
                        words.shuffle_sentences(rng);
                    }
                }
                Technique::SynonymReplace => words.replace_synonyms(changes(strength), &self.synonyms, rng),
                Technique::RandomInsert => words.insert_synonyms(changes(strength), &self.synonyms, rng),
                Technique::RandomSwap => words.swap(changes(strength), rng),
                Technique::RandomDelete => words.delete(strength, rng),
                Technique::Resample => unreachable!("not a rewriting technique"),
            }
            if words != before {
                applied.push(technique);
            }
        }
        if !applied.is_empty() {
            *text = words.render();
        }
        applied
    }
}

/// EDA's stop words (the list of its reference implementation): never replaced by a synonym nor
/// the source of an inserted one.
#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself", "yourselves", "he", "him", "his",
    "himself", "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which",
    "who", "whom", "this", "that", "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at",
    "by", "for", "with", "about", "against", "between", "into", "through", "during", "before", "after", "above", "below", "to", "from",
    "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why",
    "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so",
    "than", "too", "very", "s", "t", "can", "will", "just", "don", "should", "now",
];

/// Groups of interchangeable words: a word's synonyms are the other words of the groups it is
/// in. Words are matched without regard to case.
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    of: HashMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynonymsError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    BadLine { path: PathBuf, line: usize, message: String },
    #[error("`{path}` holds no synonym groups")]
    Empty { path: PathBuf },
}

impl Synonyms {
    /// From groups of words (each group's words lower-cased; a word in several groups has the
    /// synonyms of all of them).
    pub fn from_groups<G: IntoIterator<Item = S>, S: AsRef<str>>(groups: impl IntoIterator<Item = G>) -> Self {
        let mut of: HashMap<String, Vec<String>> = HashMap::new();
        for group in groups {
            let words: Vec<String> = group.into_iter().map(|w| w.as_ref().to_lowercase()).collect();
            for word in &words {
                let synonyms = of.entry(word.clone()).or_default();
                for other in words.iter().filter(|other| *other != word) {
                    if !synonyms.contains(other) {
                        synonyms.push(other.clone());
                    }
                }
            }
        }
        Synonyms { of }
    }

    /// The synthetic reviews' own (`synthetic::synonym_groups`).
    pub fn reviews() -> Self {
        Synonyms::from_groups(super::synthetic::synonym_groups())
    }

    /// A TSV file: one group a line, its words separated by tabs; blank lines and lines starting
    /// with `#` are skipped. A group needs two different words, each without whitespace (a word is
    /// what augmentation splits text into).
    pub fn read(path: &Path) -> Result<Self, SynonymsError> {
        let bytes = std::fs::read(path).map_err(|source| SynonymsError::Io { path: path.into(), source })?;
        let mut groups = Vec::new();
        for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let bad = |message: String| SynonymsError::BadLine { path: path.into(), line: index + 1, message };
            let line = std::str::from_utf8(line)
                .map_err(|error| bad(format!("not valid UTF-8 (byte {} of the line)", error.valid_up_to() + 1)))?
                .trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split('\t').map(str::trim).collect();
            if let Some(position) = words.iter().position(|w| w.is_empty()) {
                return Err(bad(format!("word {} is empty (words are separated by one tab)", position + 1)));
            }
            if let Some(word) = words.iter().find(|w| w.contains(char::is_whitespace)) {
                return Err(bad(format!("`{word}` holds whitespace: a synonym is one word, and words are separated by tabs")));
            }
            let distinct: BTreeSet<String> = words.iter().map(|w| w.to_lowercase()).collect();
            if distinct.len() < 2 {
                return Err(bad(format!("a group needs two or more different words, found `{line}`")));
            }
            groups.push(words);
        }
        if groups.is_empty() {
            return Err(SynonymsError::Empty { path: path.into() });
        }
        Ok(Synonyms::from_groups(groups))
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// The synonyms of `word` (any case).
    fn of(&self, word: &str) -> &[String] {
        self.of.get(&word.to_lowercase()).map_or(&[], Vec::as_slice)
    }

    /// Whether a synonym may replace `word`, or be inserted for it: it has synonyms and is not a
    /// stop word.
    fn replaceable(&self, word: &str) -> bool {
        !STOP_WORDS.contains(&word.to_lowercase().as_str()) && !self.of(word).is_empty()
    }
}

/// Punctuation that stays in place when the word it follows moves.
const TRAILING_PUNCTUATION: &[char] = &['.', ',', '!', '?', ';', ':'];

/// A text as words and the whitespace around them: `gaps[0] words[0] gaps[1] … words[n-1] gaps[n]`.
#[derive(Debug, Clone, PartialEq)]
struct Words {
    gaps: Vec<String>,
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    /// Trailing punctuation (`battery.` is `battery` and `.`), kept in place by swaps.
    punctuation: String,
}

impl Word {
    fn ends_sentence(&self) -> bool {
        self.punctuation.ends_with(['.', '!', '?']) || (self.punctuation.is_empty() && self.text.ends_with(['.', '!', '?']))
    }
}

impl Words {
    fn parse(text: &str) -> Words {
        let mut gaps = vec![String::new()];
        let mut words = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let gap_end = rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len());
            gaps.last_mut().expect("a gap before every word").push_str(&rest[..gap_end]);
            rest = &rest[gap_end..];
            if rest.is_empty() {
                break;
            }
            let token_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let token = &rest[..token_end];
            // A token of punctuation alone (`...`, `!`) is a word of its own.
            let core = match token.trim_end_matches(TRAILING_PUNCTUATION).len() {
                0 => token.len(),
                len => len,
            };
            words.push(Word { text: token[..core].to_string(), punctuation: token[core..].to_string() });
            gaps.push(String::new());
            rest = &rest[token_end..];
        }
        Words { gaps, words }
    }

    fn render(&self) -> String {
        let mut text = self.gaps[0].clone();
        for (word, gap) in self.words.iter().zip(&self.gaps[1..]) {
            text.push_str(&word.text);
            text.push_str(&word.punctuation);
            text.push_str(gap);
        }
        text
    }

    fn len(&self) -> usize {
        self.words.len()
    }

    /// Reorders the sentences (runs of words up to one ending in `.`, `!` or `?`; the words after
    /// the last such one are a sentence too) when there are two or more: some order other than
    /// the given one. The whitespace between words stays where it was.
    fn shuffle_sentences(&mut self, rng: &mut impl Rng) {
        let mut sentences: Vec<Vec<Word>> = vec![Vec::new()];
        for word in self.words.drain(..) {
            let ends = word.ends_sentence();
            sentences.last_mut().expect("a sentence is open").push(word);
            if ends {
                sentences.push(Vec::new());
            }
        }
        sentences.retain(|sentence| !sentence.is_empty());
        let mut order: Vec<usize> = (0..sentences.len()).collect();
        if order.len() >= 2 {
            while order.iter().enumerate().all(|(position, &sentence)| position == sentence) {
                order.shuffle(rng);
            }
        }
        let mut sentences: Vec<Option<Vec<Word>>> = sentences.into_iter().map(Some).collect();
        self.words = order.into_iter().flat_map(|i| sentences[i].take().expect("each sentence once")).collect();
    }

    /// EDA's synonym replacement: `n` words that are not stop words and have synonyms (fewer
    /// when the text has fewer), drawn at random, each replaced by one of its synonyms.
    fn replace_synonyms(&mut self, n: usize, synonyms: &Synonyms, rng: &mut impl Rng) {
        let candidates: Vec<usize> = (0..self.len()).filter(|&i| synonyms.replaceable(&self.words[i].text)).collect();
        for &position in candidates.choose_multiple(rng, n) {
            let word = &mut self.words[position];
            let synonym = synonyms.of(&word.text).choose(rng).expect("candidates have synonyms");
            word.text = in_case_of(&word.text, synonym);
        }
    }

    /// EDA's random insertion, `n` times: a synonym of a random word (not a stop word) inserted
    /// before a random word — never after the last, so that a text keeps its ending.
    fn insert_synonyms(&mut self, n: usize, synonyms: &Synonyms, rng: &mut impl Rng) {
        for _ in 0..n {
            let candidates: Vec<usize> = (0..self.len()).filter(|&i| synonyms.replaceable(&self.words[i].text)).collect();
            let Some(&source) = candidates.choose(rng) else { return };
            let synonym = synonyms.of(&self.words[source].text).choose(rng).expect("candidates have synonyms").clone();
            let position = rng.random_range(0..self.len());
            self.words.insert(position, Word { text: synonym, punctuation: String::new() });
            self.gaps.insert(position + 1, " ".into());
        }
    }

    /// EDA's random swap, `n` times: two different positions exchange their words (their
    /// punctuation stays).
    fn swap(&mut self, n: usize, rng: &mut impl Rng) {
        if self.len() < 2 {
            return;
        }
        for _ in 0..n {
            let first = rng.random_range(0..self.len());
            let second = (first + rng.random_range(1..self.len())) % self.len();
            let text = std::mem::take(&mut self.words[first].text);
            self.words[first].text = std::mem::replace(&mut self.words[second].text, text);
        }
    }

    /// EDA's random deletion: each word deleted with probability `p`, one random word kept when
    /// all would go. A deleted word's punctuation passes to the word before it, so a sentence
    /// keeps its end.
    fn delete(&mut self, p: f64, rng: &mut impl Rng) {
        if self.len() < 2 {
            return;
        }
        let mut deleted: Vec<bool> = (0..self.len()).map(|_| rng.random_bool(p)).collect();
        if deleted.iter().all(|&d| d) {
            deleted[rng.random_range(0..self.len())] = false;
        }
        for position in (0..self.len()).rev().filter(|&i| deleted[i]) {
            self.remove(position);
        }
    }

    fn remove(&mut self, position: usize) {
        let word = self.words.remove(position);
        // The gap before the word goes with it — the one after it for the first word, so that the
        // text's leading whitespace stays — unless that gap breaks a line and the other does not.
        let (before, after) = (position, position + 1);
        let mut gone = if position == 0 { after } else { before };
        let other = if gone == before { after } else { before };
        let inner = other != 0 && other != self.gaps.len() - 1;
        if inner && self.gaps[gone].contains('\n') && !self.gaps[other].contains('\n') {
            gone = other;
        }
        self.gaps.remove(gone);
        if position > 0 && !word.punctuation.is_empty() {
            self.words[position - 1].punctuation = word.punctuation;
        }
    }
}

/// `replacement` capitalised like `original`'s first letter.
fn in_case_of(original: &str, replacement: &str) -> String {
    let mut chars = replacement.chars();
    match (original.chars().next(), chars.next()) {
        (Some(first), Some(head)) if first.is_uppercase() => head.to_uppercase().chain(chars).collect(),
        _ => replacement.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &str = " The battery is great and the screen is superb. Overall the phone feels reliable. I would buy this phone again.";

    fn settings(configure: impl FnOnce(&mut AugmentSettings)) -> AugmentSettings {
        let mut settings = AugmentSettings { copies: 1, ..Default::default() };
        configure(&mut settings);
        settings
    }

    fn augmenter(settings: &AugmentSettings, synonyms: Synonyms) -> Augmenter {
        settings.augmenter(Some(synonyms)).unwrap().unwrap()
    }

    /// `copies` rewrites of `text` with `settings`, drawn from `seed`.
    fn rewrites(settings: &AugmentSettings, synonyms: Synonyms, text: &str, seed: u64) -> Vec<String> {
        let pair = PreferencePair { prompt: "p".into(), chosen: text.into(), rejected: text.into(), tie: false, margin: None, gold: None };
        let added = augmenter(settings, synonyms).augment(&[pair], seed).records;
        added.into_iter().flat_map(|pair| [pair.chosen, pair.rejected]).collect()
    }

    fn sorted_words(text: &str) -> Vec<String> {
        let mut words: Vec<String> = Words::parse(text).words.into_iter().map(|w| w.text).collect();
        words.sort();
        words
    }

    fn groups() -> Synonyms {
        Synonyms::from_groups([["great", "superb", "excellent"], ["phone", "handset", "mobile"]])
    }

    #[test]
    fn text_parses_and_renders_back_unchanged() {
        for text in [REVIEW, "", "   ", "one", "  Hello,   world!\n\nNext line...  ", "trailing \n"] {
            assert_eq!(Words::parse(text).render(), text);
        }
        let words = Words::parse(" The battery. Really!");
        let parts: Vec<(&str, &str)> = words.words.iter().map(|w| (w.text.as_str(), w.punctuation.as_str())).collect();
        assert_eq!(parts, [("The", ""), ("battery", "."), ("Really", "!")]);
    }

    #[test]
    fn swap_keeps_the_multiset_of_words_and_the_punctuation_in_place() {
        let swap = settings(|s| {
            s.copies = 50;
            s.random_swap = 0.3;
        });
        let copies = rewrites(&swap, Synonyms::default(), REVIEW, 1);
        assert!(copies.iter().any(|copy| copy != REVIEW), "no swap changed the text");
        for copy in copies {
            assert_eq!(sorted_words(&copy), sorted_words(REVIEW), "{copy}");
            assert!(copy.starts_with(' ') && copy.ends_with('.'), "{copy:?}");
            assert_eq!(copy.matches('.').count(), 3, "{copy}");
        }
    }

    #[test]
    fn delete_removes_about_the_asked_share_in_order_and_never_everything() {
        let delete = settings(|s| {
            s.copies = 400;
            s.random_delete = 0.2;
        });
        let original: Vec<String> = Words::parse(REVIEW).words.into_iter().map(|w| w.text).collect();
        let copies = rewrites(&delete, Synonyms::default(), REVIEW, 2);
        let mut deleted = 0;
        for copy in &copies {
            let kept: Vec<String> = Words::parse(copy).words.into_iter().map(|w| w.text).collect();
            assert!(!kept.is_empty());
            // The words left are the original's, in their order.
            let mut rest = original.iter();
            assert!(kept.iter().all(|word| rest.any(|o| o == word)), "{copy}");
            deleted += original.len() - kept.len();
        }
        let share = deleted as f64 / (original.len() * copies.len()) as f64;
        assert!((share - 0.2).abs() < 0.02, "deleted {share} of the words, asked 0.2");
        // p = 1 would delete everything: one word stays.
        let all = settings(|s| {
            s.copies = 20;
            s.random_delete = 1.0;
        });
        for copy in rewrites(&all, Synonyms::default(), REVIEW, 3) {
            assert_eq!(Words::parse(&copy).len(), 1, "{copy:?}");
        }
        let one_word = rewrites(&settings(|s| s.random_delete = 1.0), Synonyms::default(), " Alone.", 3);
        assert_eq!(one_word, [" Alone.", " Alone."]);
    }

    #[test]
    fn synonym_replacement_uses_only_the_groups_and_leaves_other_words_alone() {
        let replace = settings(|s| {
            s.copies = 60;
            s.synonym_replace = 0.1;
        });
        let groups = groups();
        let original = Words::parse(REVIEW);
        let copies = rewrites(&replace, groups.clone(), REVIEW, 4);
        assert!(copies.iter().any(|c| c.contains("excellent")) && copies.iter().any(|c| c.contains("mobile")));
        for copy in copies {
            let words = Words::parse(&copy);
            assert_eq!(words.len(), original.len(), "{copy}");
            let changed: Vec<(&Word, &Word)> = original.words.iter().zip(&words.words).filter(|(a, b)| a != b).collect();
            // n = round(0.1 × 20 words) = 2.
            assert!(!changed.is_empty() && changed.len() <= 2, "{copy}");
            for (before, after) in changed {
                assert!(groups.of(&before.text).contains(&after.text.to_lowercase()), "{} → {}", before.text, after.text);
                assert_eq!(before.punctuation, after.punctuation);
            }
        }
        // A capitalised word keeps its capital.
        let capital = rewrites(&settings(|s| s.synonym_replace = 1.0), groups, "Great phone", 5);
        assert!(capital.iter().all(|c| c.starts_with(|ch: char| ch.is_uppercase()) && c != "Great phone"), "{capital:?}");
    }

    #[test]
    fn insertion_inserts_only_synonyms_of_words_in_the_text() {
        let insert = settings(|s| {
            s.copies = 60;
            s.random_insert = 0.1;
        });
        let groups = groups();
        let original = sorted_words(REVIEW);
        for copy in rewrites(&insert, groups.clone(), REVIEW, 6) {
            let mut added = sorted_words(&copy);
            for word in &original {
                let at = added.iter().position(|w| w == word).unwrap_or_else(|| panic!("`{word}` lost in {copy}"));
                added.remove(at);
            }
            assert_eq!(added.len(), 2, "{copy}");
            assert!(added.iter().all(|word| ["excellent", "superb", "great", "handset", "mobile", "phone"].contains(&word.as_str())));
            assert!(copy.ends_with("again."), "the ending moved: {copy}");
        }
        // Stop words are never the source of an insertion, even when a group has them.
        let stop = Synonyms::from_groups([["the", "this"]]);
        assert_eq!(rewrites(&settings(|s| s.random_insert = 1.0), stop, "the cat", 7), ["the cat", "the cat"]);
    }

    #[test]
    fn sentence_shuffle_reorders_the_sentences_and_keeps_each_whole() {
        let shuffle = settings(|s| {
            s.copies = 30;
            s.sentence_shuffle = 1.0;
        });
        let sentences = |text: &str| -> Vec<String> {
            let mut parts: Vec<String> = text.split_inclusive('.').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            parts.sort();
            parts
        };
        for copy in rewrites(&shuffle, Synonyms::default(), REVIEW, 8) {
            assert_ne!(copy, REVIEW);
            assert_eq!(sentences(&copy), sentences(REVIEW), "{copy}");
            assert!(copy.starts_with(' '));
        }
        assert_eq!(rewrites(&shuffle, Synonyms::default(), " One sentence only.", 8)[0], " One sentence only.");
    }

    #[test]
    fn the_same_seed_gives_the_same_copies_and_another_seed_others() {
        let all = AugmentSettings {
            copies: 5,
            synonym_replace: 0.1,
            random_swap: 0.1,
            random_delete: 0.1,
            random_insert: 0.1,
            sentence_shuffle: 0.5,
            resample: 0.0,
            synonyms: None,
        };
        let first = rewrites(&all, groups(), REVIEW, 9);
        assert_eq!(first, rewrites(&all, groups(), REVIEW, 9));
        assert_ne!(first, rewrites(&all, groups(), REVIEW, 10));
    }

    #[test]
    fn resampling_oversamples_the_rare_prompt_and_copies_exactly() {
        let demonstration =
            |prompt: &str, response: &str| Demonstration { prompt: prompt.into(), response: response.into(), messages: None };
        let mut originals: Vec<Demonstration> = (0..9).map(|i| demonstration("common", &format!(" answer {i}"))).collect();
        originals.push(demonstration("rare", " the rare answer"));
        let resample = AugmentSettings { resample: 40.0, ..Default::default() };
        let augmented = augmenter(&resample, Synonyms::default()).augment(&originals, 11);
        assert_eq!(augmented.records.len(), 400);
        assert_eq!(augmented.augmentation.report, AugmentationReport { original: 10, resampled: 400, total: 410, ..Default::default() });
        let rare = augmented.records.iter().filter(|d| d.prompt == "rare").count() as f64 / 400.0;
        // Each prompt is drawn half the time: the rare one's tenth of the data becomes about half
        // (a standard deviation of 0.025 over 400 draws).
        assert!((0.42..0.58).contains(&rare), "rare share {rare}");
        for (record, mark) in augmented.records.iter().zip(&augmented.augmentation.provenance) {
            assert_eq!(record, &originals[mark.original]);
            assert_eq!(mark.techniques, [Technique::Resample]);
        }
    }

    #[test]
    fn conversations_rewrite_only_the_assistant_turns_and_reports_count_per_technique() {
        use crate::data::chat::Message;
        let conversation = Demonstration {
            prompt: String::new(),
            response: String::new(),
            messages: Some(vec![Message::user("Is the phone great? Tell me."), Message::assistant(REVIEW.trim())]),
        };
        let swap = settings(|s| {
            s.copies = 3;
            s.random_swap = 0.2;
        });
        let augmented = augmenter(&swap, Synonyms::default()).augment(std::slice::from_ref(&conversation), 12);
        for copy in &augmented.records {
            let messages = copy.messages.as_ref().unwrap();
            assert_eq!(messages[0], conversation.messages.as_ref().unwrap()[0]);
            assert_ne!(messages[1].content, REVIEW.trim());
        }
        let report = &augmented.augmentation.report;
        assert_eq!((report.original, report.copies, report.resampled, report.total), (1, 3, 0, 4));
        assert_eq!(report.by_technique, BTreeMap::from([(Technique::RandomSwap, 3)]));
        let lines = marked_lines(&augmented.records, &augmented.augmentation.provenance);
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["original"], 0);
        assert_eq!(first["techniques"], serde_json::json!(["random_swap"]));
        assert_eq!(first["messages"][0]["content"], "Is the phone great? Tell me.");
    }

    #[test]
    fn the_review_vocabulary_keeps_the_gold_sentiment() {
        use crate::data::synthetic::GoldOracle;
        let prompt = "Write a positive review of the phone about its battery.\nReview:";
        let replace = settings(|s| {
            s.copies = 40;
            s.synonym_replace = 0.2;
        });
        let gold = GoldOracle::Reviews.score(prompt, REVIEW);
        for copy in rewrites(&replace, Synonyms::reviews(), REVIEW, 13) {
            assert_eq!(GoldOracle::Reviews.score(prompt, &copy).sentiment, gold.sentiment, "{copy}");
        }
    }

    #[test]
    fn settings_are_checked_and_synonyms_required_where_needed() {
        let error = |settings: AugmentSettings, vocabulary: bool| settings.check(vocabulary).unwrap_err();
        assert_eq!(error(settings(|s| s.random_swap = 1.5), false), ("augment.random_swap", "a value in [0, 1], got 1.5".into()));
        assert_eq!(error(settings(|s| s.resample = -1.0), false).0, "augment.resample");
        let (key, expected) = error(settings(|s| s.random_insert = 0.1), false);
        assert_eq!(key, "augment.random_insert");
        assert!(expected.contains("`synonyms` file"), "{expected}");
        assert!(settings(|s| s.random_insert = 0.1).check(true).is_ok(), "the reviews' own vocabulary serves");
        // No copies: the techniques have nothing to rewrite, and need nothing.
        assert!(AugmentSettings { random_insert: 0.1, ..Default::default() }.check(false).is_ok());
        assert!(AugmentSettings::default().augmenter(None).unwrap().is_none());
    }

    #[test]
    fn synonym_files_read_groups_and_name_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syn.tsv");
        std::fs::write(&path, "# adjectives\ngreat\tsuperb\texcellent\n\n  \nphone\thandset\r\n").unwrap();
        let synonyms = Synonyms::read(&path).unwrap();
        assert_eq!(synonyms.of("Great"), ["superb", "excellent"]);
        assert_eq!(synonyms.of("handset"), ["phone"]);
        assert!(synonyms.of("battery").is_empty());
        let bad = |contents: &[u8]| {
            std::fs::write(&path, contents).unwrap();
            Synonyms::read(&path).unwrap_err().to_string()
        };
        assert!(bad(b"great\tsuperb\ngreat\n").ends_with("syn.tsv:2: a group needs two or more different words, found `great`"));
        assert!(bad(b"# c\ngreat\t\tsuperb\n").ends_with("syn.tsv:2: word 2 is empty (words are separated by one tab)"));
        assert!(bad(b"very good\tgreat\n")
            .ends_with("syn.tsv:1: `very good` holds whitespace: a synonym is one word, and words are separated by tabs"));
        assert!(bad(b"great\tsuperb\n\xFF\tx\n").ends_with("syn.tsv:2: not valid UTF-8 (byte 1 of the line)"));
        assert!(bad(b"# nothing\n").ends_with("holds no synonym groups"));
        let missing = AugmentSettings { synonyms: Some(dir.path().join("none.tsv")), ..Default::default() };
        let (key, expected) = missing.check(false).unwrap_err();
        assert_eq!(key, "augment.synonyms");
        assert!(expected.contains("none.tsv"), "{expected}");
    }
}
