//! The embedded task, "synthetic reviews": short product reviews generated from a seed, with a
//! gold oracle that stands for the true human preference and simulated annotators that label
//! pairs from it with noise. Nothing is downloaded, and every experiment on it is measurable
//! offline (reward-model accuracy against gold, gold score of a policy, over-optimisation).
//!
//! A prompt asks for a review of one product about one aspect, with a requested sentiment:
//! `Write a positive review of the phone about its battery.\nReview:`. The oracle
//! (`oracle.rs`) rewards the requested sentiment, staying on the product and aspect, fluent
//! non-repetitive text and a moderate length.
//!
//! The second embedded task, "synthetic arithmetic" (`arithmetic.rs`), is verifiable: addition
//! and subtraction problems whose answers are checked exactly.

pub mod annotators;
pub mod arithmetic;
pub mod oracle;
mod vocabulary;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::chat::Message;

pub use arithmetic::{SyntheticArithmetic, Verifier};
pub use oracle::GoldOracle;
use vocabulary::{Product, CONNECTORS, NEGATIVE, NEUTRAL_OPENERS, POSITIVE, PRODUCTS};

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sentiment {
    Positive,
    Negative,
}

impl Sentiment {
    fn word(self) -> &'static str {
        match self {
            Sentiment::Positive => "positive",
            Sentiment::Negative => "negative",
        }
    }

    fn adjectives(self) -> &'static [&'static str] {
        match self {
            Sentiment::Positive => POSITIVE,
            Sentiment::Negative => NEGATIVE,
        }
    }
}

/// A review request: which product, which aspect, which sentiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequest {
    pub product: String,
    pub aspect: String,
    pub sentiment: Sentiment,
}

impl ReviewRequest {
    pub fn prompt(&self) -> String {
        format!("Write a {} review of the {} about its {}.\nReview:", self.sentiment.word(), self.product, self.aspect)
    }

    /// Reads the request back from a prompt written by `prompt`, also inside the text a chat
    /// template wraps around it.
    pub fn parse(prompt: &str) -> Option<ReviewRequest> {
        let rest = &prompt[prompt.find("Write a ")? + "Write a ".len()..];
        let (sentiment, rest) = rest.split_once(" review of the ")?;
        let (product, rest) = rest.split_once(" about its ")?;
        let (aspect, _) = rest.split_once('.')?;
        let sentiment = match sentiment {
            "positive" => Sentiment::Positive,
            "negative" => Sentiment::Negative,
            _ => return None,
        };
        Some(ReviewRequest { product: product.to_string(), aspect: aspect.to_string(), sentiment })
    }
}

/// The review task's groups of interchangeable words, for data augmentation without a synonyms
/// file: its positive adjectives, and its negative ones. The gold oracle's sentiment term counts
/// the positive and the negative words of a response (`oracle::review_score`), so replacing a word
/// by another of its group leaves both counts — and the sentiment term, sign included — as they
/// were; a mixed group would let a "synonym" flip a review's sentiment.
pub fn synonym_groups() -> [&'static [&'static str]; 2] {
    [POSITIVE, NEGATIVE]
}

/// A prompt with a good response. A conversational demonstration keeps its `messages`, which
/// SFT renders with the chat template (loss on every assistant turn); its `prompt` and
/// `response` are then the rendering before the last assistant turn (with the generation
/// prompt) and that turn's content (`TaskData::apply_chat_template` fills them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demonstration {
    pub prompt: String,
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
}

/// Everything the task provides, generated from one seed.
#[derive(Debug, Clone)]
pub struct SyntheticReviews {
    /// Free-form reviews of mixed sentiment and quality (pretraining text).
    pub corpus: Vec<String>,
    pub demonstrations: Vec<Demonstration>,
    /// Prompts without responses (for PPO), drawn independently of the demonstrations.
    pub prompts: Vec<String>,
}

impl SyntheticReviews {
    /// The given numbers of records, all drawn from `seed`: a task's training part from the
    /// experiment's seed, its held-out part from the evaluation seed.
    pub fn generate(seed: u64, corpus_size: usize, demonstrations: usize, prompts: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let corpus = (0..corpus_size).map(|_| corpus_text(&mut rng)).collect();
        let demonstrations = (0..demonstrations)
            .map(|_| {
                let request = random_request(&mut rng, 0.8);
                Demonstration { prompt: request.prompt(), response: good_response(&mut rng, &request), messages: None }
            })
            .collect();
        let prompts = (0..prompts).map(|_| random_request(&mut rng, 0.8).prompt()).collect();
        SyntheticReviews { corpus, demonstrations, prompts }
    }
}

fn random_request(rng: &mut ChaCha8Rng, positive_rate: f64) -> ReviewRequest {
    let product: &Product = PRODUCTS.choose(rng).expect("products are listed");
    let aspect = product.aspects.choose(rng).expect("every product has aspects");
    let sentiment = if rng.random_bool(positive_rate) { Sentiment::Positive } else { Sentiment::Negative };
    ReviewRequest { product: product.name.to_string(), aspect: aspect.to_string(), sentiment }
}

/// A response the oracle scores well: the requested sentiment, on the product and aspect,
/// no repetition, 2–3 sentences.
pub fn good_response(rng: &mut impl Rng, request: &ReviewRequest) -> String {
    let adjectives = request.sentiment.adjectives();
    let mut picks = adjectives.choose_multiple(rng, 3);
    let mut next = || *picks.next().expect("three adjectives drawn");
    let first = format!("The {} is {}.", request.aspect, next());
    let second = format!("{} the {} feels {}.", CONNECTORS.choose(rng).expect("connectors"), request.product, next());
    let closing = match request.sentiment {
        Sentiment::Positive => format!("I would buy this {} again.", request.product),
        Sentiment::Negative => format!("I would not buy this {} again.", request.product),
    };
    if rng.random_bool(0.5) {
        format!(" {first} {second} {closing}")
    } else {
        format!(" {first} The {} is {} too. {closing}", request.aspect, next())
    }
}

/// A response of random quality for `request`: a good response with some of the faults the
/// oracle punishes — the wrong sentiment, another product or aspect, repetition, praise spam,
/// a cut-off ending, too short or too long. Pairs of these teach a reward model every term.
pub fn varied_response(rng: &mut impl Rng, request: &ReviewRequest) -> String {
    let mut request = request.clone();
    if rng.random_bool(0.25) {
        request.sentiment = match request.sentiment {
            Sentiment::Positive => Sentiment::Negative,
            Sentiment::Negative => Sentiment::Positive,
        };
    }
    if rng.random_bool(0.2) {
        let product: &Product = PRODUCTS.choose(rng).expect("products are listed");
        request.product = product.name.to_string();
    }
    if rng.random_bool(0.2) {
        let product = PRODUCTS.iter().find(|p| p.name == request.product).unwrap_or(&PRODUCTS[0]);
        request.aspect = product.aspects.choose(rng).expect("aspects").to_string();
    }
    let mut text = good_response(rng, &request);
    if rng.random_bool(0.2) {
        let first_sentence = text.split_inclusive('.').next().unwrap_or("").to_string();
        for _ in 0..rng.random_range(1..=3) {
            text.push_str(&first_sentence);
        }
    }
    if rng.random_bool(0.15) {
        let word = request.sentiment.adjectives().choose(rng).expect("adjectives");
        for _ in 0..rng.random_range(2..=8) {
            text.push(' ');
            text.push_str(word);
        }
    }
    if rng.random_bool(0.15) {
        // too short: just one sentence of it
        text = text.split_inclusive('.').next().unwrap_or("").to_string();
    }
    if rng.random_bool(0.15) {
        let words: Vec<&str> = text.split_whitespace().collect();
        let keep = rng.random_range(1..words.len().max(2));
        text = format!(" {}", words[..keep].join(" "));
    }
    text
}

/// A corpus review: random product, random mix of aspects and sentiments, sometimes sloppy.
fn corpus_text(rng: &mut ChaCha8Rng) -> String {
    let product: &Product = PRODUCTS.choose(rng).expect("products are listed");
    let sentences = rng.random_range(2..=5);
    let mut text = format!("{} {}.", NEUTRAL_OPENERS.choose(rng).expect("openers"), product.name);
    for _ in 0..sentences {
        let aspect = product.aspects.choose(rng).expect("aspects");
        let sentiment = if rng.random_bool(0.5) { Sentiment::Positive } else { Sentiment::Negative };
        let adjective = sentiment.adjectives().choose(rng).expect("adjectives");
        let sentence = match rng.random_range(0..4) {
            0 => format!(" The {aspect} is {adjective}."),
            1 => format!(" {} the {aspect} feels {adjective}.", CONNECTORS.choose(rng).expect("connectors")),
            2 => format!(" I think the {aspect} of this {} is {adjective}.", product.name),
            _ => format!(" The {aspect} is {adjective} and {}.", sentiment.adjectives().choose(rng).expect("adjectives")),
        };
        text.push_str(&sentence);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_task_other_seed_other_task() {
        let a = SyntheticReviews::generate(3, 50, 20, 10);
        let b = SyntheticReviews::generate(3, 50, 20, 10);
        let c = SyntheticReviews::generate(4, 50, 20, 10);
        assert_eq!(a.corpus, b.corpus);
        assert_eq!(a.demonstrations, b.demonstrations);
        assert_ne!(a.corpus, c.corpus);
    }

    #[test]
    fn prompts_parse_back_into_their_request() {
        let task = SyntheticReviews::generate(1, 0, 30, 30);
        for prompt in task.prompts.iter().chain(task.demonstrations.iter().map(|d| &d.prompt)) {
            let request = ReviewRequest::parse(prompt).unwrap_or_else(|| panic!("unparsable prompt {prompt:?}"));
            assert_eq!(&request.prompt(), prompt);
        }
        assert!(ReviewRequest::parse("Tell me a story.").is_none());
    }
}
