//! The embedded verifiable task, "synthetic arithmetic": addition and subtraction problems
//! generated from a seed, whose answers are checked exactly.
//!
//! A prompt asks for the value of an expression of 2..=`terms` operands, each in
//! 0..=`max_operand`, evaluated left to right and never negative along the way:
//! `What is 47 + 38 - 12?\nAnswer:`. The one answer format is a space and the number, nothing
//! else (` 73`; SFT adds the end-of-text token after it). The corpus holds worked problems
//! (`What is 47 + 38?\nAnswer: 85`, one to four to a text) to pretrain on.
//!
//! Checking an answer reads the expected one from the prompt itself (the last `What is …?` in
//! it), so it works on any rendering of the prompt. Only the response's first line counts:
//! - exact match (the gold score): the first line, trimmed, is the answer written as Rust's
//!   `to_string` writes it — ` 85` and `85` match 85; ` 085`, `+85`, ` 85 apples` and ` 85.`
//!   do not (a leading zero is not the answer format, and a policy rewarded for it could pad);
//! - the answer format (the verifier's format credit): the first line is exactly a space and a
//!   non-negative number without leading zeros (` 85`, ` 0`; not `85`, ` 085`, ` 85 `), right
//!   or wrong.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Demonstration;

/// One problem: the expression and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `47 + 38 - 12`: operands and operators separated by single spaces.
    pub expression: String,
    pub answer: u64,
}

impl Problem {
    pub fn prompt(&self) -> String {
        format!("What is {}?\nAnswer:", self.expression)
    }

    /// The response in the answer format: ` 85`.
    pub fn response(&self) -> String {
        format!(" {}", self.answer)
    }

    /// A worked problem, as the corpus writes it: the prompt and the response.
    pub fn worked(&self) -> String {
        format!("{}{}", self.prompt(), self.response())
    }

    /// A problem of 2..=`terms` operands in 0..=`max_operand`: each next one is added or (as
    /// often) subtracted; a subtracted operand is at most the value so far, so no intermediate
    /// result is negative.
    pub fn draw(rng: &mut impl Rng, max_operand: u64, terms: usize) -> Problem {
        let count = rng.random_range(2..=terms.max(2));
        let mut value = rng.random_range(0..=max_operand);
        let mut expression = value.to_string();
        for _ in 1..count {
            if rng.random_bool(0.5) {
                let operand = rng.random_range(0..=max_operand);
                value += operand;
                expression.push_str(&format!(" + {operand}"));
            } else {
                let operand = rng.random_range(0..=value.min(max_operand));
                value -= operand;
                expression.push_str(&format!(" - {operand}"));
            }
        }
        Problem { expression, answer: value }
    }
}

/// How many different two-operand problems `Problem::draw` can make: every sum, and every
/// difference that is not negative.
pub fn two_operand_problems(max_operand: u64) -> u128 {
    let n = u128::from(max_operand) + 1;
    n * n + n * (n + 1) / 2
}

/// Everything the task provides, generated from one seed.
#[derive(Debug, Clone)]
pub struct SyntheticArithmetic {
    /// Worked problems, one to four to a text (pretraining text).
    pub corpus: Vec<String>,
    pub demonstrations: Vec<Demonstration>,
    /// Prompts without responses, drawn independently of the demonstrations.
    pub prompts: Vec<String>,
}

/// Which problems a generation must avoid, and whether its prompts must differ from each other.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    /// Expressions never drawn (a task's held-out problems, avoided by its training part).
    pub expressions: HashSet<String>,
    /// Every demonstration and prompt a different problem (the held-out part: each evaluation
    /// prompt counts once).
    pub distinct: bool,
}

/// Draws before a generation gives up avoiding `Exclusions`: with at most half of the problems
/// excluded (which the config check ensures) it never comes close.
const MAX_DRAWS: usize = 100_000;

impl SyntheticArithmetic {
    /// The given numbers of records, all drawn from `seed`, avoiding `exclusions`: a task's
    /// held-out part from the evaluation seed with `distinct`, its training part from the
    /// experiment's seed avoiding the held-out demonstrations' and prompts' problems.
    pub fn generate(seed: u64, max_operand: u64, terms: usize, sizes: [usize; 3], exclusions: &Exclusions) -> SyntheticArithmetic {
        let [corpus_size, demonstrations, prompts] = sizes;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut used: HashSet<String> = HashSet::new();
        let mut draw = |rng: &mut ChaCha8Rng, distinct: bool| {
            for _ in 0..MAX_DRAWS {
                let problem = Problem::draw(rng, max_operand, terms);
                if exclusions.expressions.contains(&problem.expression) || (distinct && used.contains(&problem.expression)) {
                    continue;
                }
                if distinct {
                    used.insert(problem.expression.clone());
                }
                return problem;
            }
            panic!("no problem left to draw after {MAX_DRAWS} tries (max_operand = {max_operand}, terms = {terms})")
        };
        let corpus = (0..corpus_size)
            .map(|_| {
                let count = rng.random_range(1..=4);
                (0..count).map(|_| draw(&mut rng, false).worked()).collect::<Vec<_>>().join("\n")
            })
            .collect();
        let demonstrations = (0..demonstrations)
            .map(|_| {
                let problem = draw(&mut rng, exclusions.distinct);
                Demonstration { prompt: problem.prompt(), response: problem.response(), messages: None }
            })
            .collect();
        let prompts = (0..prompts).map(|_| draw(&mut rng, exclusions.distinct).prompt()).collect();
        SyntheticArithmetic { corpus, demonstrations, prompts }
    }
}

/// The expression a prompt asks about: what follows its last `What is ` up to the next `?`.
pub fn expression_of(prompt: &str) -> Option<&str> {
    let start = prompt.rfind("What is ")? + "What is ".len();
    let rest = &prompt[start..];
    Some(&rest[..rest.find('?')?])
}

/// The value of `47 + 38 - 12` (non-negative integers joined by `+` or `-`, left to right, the
/// tokens separated by whitespace); `None` for anything else or on overflow. The value may be
/// negative (a prompt written by hand), though the task never asks for one.
pub fn evaluate(expression: &str) -> Option<i64> {
    let number = |token: &str| -> Option<i64> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        token.parse().ok()
    };
    let mut tokens = expression.split_whitespace();
    let mut value = number(tokens.next()?)?;
    while let Some(operator) = tokens.next() {
        let operand = number(tokens.next()?)?;
        value = match operator {
            "+" => value.checked_add(operand)?,
            "-" => value.checked_sub(operand)?,
            _ => return None,
        };
    }
    Some(value)
}

/// The answer a prompt asks for, read from its text.
pub fn expected_answer(prompt: &str) -> Option<i64> {
    evaluate(expression_of(prompt)?)
}

/// The line of a response that is its answer: the first.
fn first_line(response: &str) -> &str {
    response.split('\n').next().unwrap_or("")
}

/// Whether the response's first line, trimmed, is exactly the prompt's answer (see the module
/// documentation); false when the prompt asks no arithmetic question.
pub fn is_correct(prompt: &str, response: &str) -> bool {
    expected_answer(prompt).is_some_and(|answer| first_line(response).trim() == answer.to_string())
}

/// Whether the response's first line is in the answer format: a space, then a non-negative
/// number without leading zeros, nothing else.
pub fn in_answer_format(response: &str) -> bool {
    let Some(digits) = first_line(response).strip_prefix(' ') else { return false };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'))
}

/// The reward of a verifiable-reward RL stage on the arithmetic task: 1 for the exact answer,
/// plus `format_reward` for a response in the answer format (right or wrong).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verifier {
    pub format_reward: f64,
}

impl Verifier {
    pub fn reward(&self, prompt: &str, response: &str) -> f64 {
        let correct = f64::from(u8::from(is_correct(prompt, response)));
        let formatted = f64::from(u8::from(in_answer_format(response)));
        correct + self.format_reward * formatted
    }
}

#[cfg(test)]
mod tests {
    use super::super::GoldOracle;
    use super::*;

    const PROMPT: &str = "What is 47 + 38?\nAnswer:";

    fn generate(seed: u64, max_operand: u64, terms: usize, exclusions: &Exclusions) -> SyntheticArithmetic {
        SyntheticArithmetic::generate(seed, max_operand, terms, [50, 200, 100], exclusions)
    }

    #[test]
    fn expressions_evaluate_left_to_right() {
        assert_eq!(evaluate("47 + 38"), Some(85));
        assert_eq!(evaluate("47 + 38 - 12"), Some(73));
        assert_eq!(evaluate("10 - 3 - 2"), Some(5)); // not 10 - (3 - 2)
        assert_eq!(evaluate("3 - 5"), Some(-2));
        assert_eq!(evaluate("7"), Some(7));
        for bad in ["", "47 +", "47 * 2", "-3 + 1", "4.5 + 1", "47 + x", "99999999999999999999 + 1"] {
            assert_eq!(evaluate(bad), None, "{bad:?}");
        }
        assert_eq!(expected_answer(PROMPT), Some(85));
        // Inside a rendering (a chat template, a few-shot prefix): the last question counts.
        let rendered = "<|im_start|>user\nWhat is 1 + 1?\nAnswer: 2\nWhat is 47 + 38 - 12?\nAnswer:<|im_end|>\n";
        assert_eq!(expected_answer(rendered), Some(73));
        assert_eq!(expected_answer("Write a positive review of the phone about its battery.\nReview:"), None);
    }

    #[test]
    fn exact_match_reads_the_first_line_trimmed() {
        for right in [" 85", "85", " 85 ", " 85\nWhat is 1 + 1?\nAnswer: 2", "85\n"] {
            assert!(is_correct(PROMPT, right), "{right:?}");
        }
        for wrong in [" 84", " 85 apples", " 085", " +85", " 85.", " 8 5", "", " eighty-five", "\n 85", " 85.0"] {
            assert!(!is_correct(PROMPT, wrong), "{wrong:?}");
        }
        assert!(is_correct("What is 3 - 5?\nAnswer:", " -2"));
        assert!(!is_correct("Tell me a story.", " 85"));
    }

    #[test]
    fn the_gold_score_is_exact_match() {
        assert_eq!(GoldOracle::Arithmetic.score(PROMPT, " 85").total, 1.0);
        assert_eq!(GoldOracle::Arithmetic.score(PROMPT, "85").total, 1.0);
        assert_eq!(GoldOracle::Arithmetic.score(PROMPT, " 85 apples").total, 0.0);
        assert_eq!(GoldOracle::Arithmetic.score(PROMPT, " 085").total, 0.0);
        assert_eq!(GoldOracle::Arithmetic.score(PROMPT, " 86").sentiment, 0.0);
    }

    #[test]
    fn the_answer_format_is_a_space_and_a_number() {
        for formatted in [" 85", " 0", " 84", " 85\nmore"] {
            assert!(in_answer_format(formatted), "{formatted:?}");
        }
        for unformatted in ["85", "  85", " 085", " 85 ", " -2", " 85 apples", "", " ", " 85."] {
            assert!(!in_answer_format(unformatted), "{unformatted:?}");
        }
    }

    #[test]
    fn the_verifier_adds_format_credit_to_exact_match() {
        let verifier = Verifier { format_reward: 0.25 };
        assert_eq!(verifier.reward(PROMPT, " 85"), 1.25);
        assert_eq!(verifier.reward(PROMPT, "85"), 1.0);
        assert_eq!(verifier.reward(PROMPT, " 84"), 0.25);
        assert_eq!(verifier.reward(PROMPT, " 85 apples"), 0.0);
        assert_eq!(Verifier { format_reward: 0.0 }.reward(PROMPT, " 84"), 0.0);
    }

    #[test]
    fn problems_have_two_to_terms_operands_in_range_and_no_negative_step() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut counts = HashSet::new();
        for _ in 0..2000 {
            let problem = Problem::draw(&mut rng, 20, 4);
            let tokens: Vec<&str> = problem.expression.split(' ').collect();
            counts.insert(tokens.len().div_ceil(2));
            let mut value = 0i64;
            for (i, token) in tokens.iter().enumerate().step_by(2) {
                let operand: i64 = token.parse().unwrap();
                assert!((0..=20).contains(&operand), "{problem:?}");
                value = if i == 0 || tokens[i - 1] == "+" { value + operand } else { value - operand };
                assert!(value >= 0, "negative along the way: {problem:?}");
            }
            assert_eq!(value, problem.answer as i64);
            assert_eq!(expected_answer(&problem.prompt()), Some(problem.answer as i64));
            assert!(in_answer_format(&problem.response()) && is_correct(&problem.prompt(), &problem.response()));
        }
        assert_eq!(counts, HashSet::from([2, 3, 4]));
    }

    #[test]
    fn the_two_operand_count_is_every_problem_draw_makes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let seen: HashSet<String> = (0..5000).map(|_| Problem::draw(&mut rng, 3, 2).expression).collect();
        assert_eq!(seen.len() as u128, two_operand_problems(3)); // 16 sums, 10 differences
    }

    #[test]
    fn same_seed_same_task_other_seed_other_task() {
        let none = Exclusions::default();
        let (a, b, c) = (generate(3, 99, 3, &none), generate(3, 99, 3, &none), generate(4, 99, 3, &none));
        assert_eq!((&a.corpus, &a.demonstrations, &a.prompts), (&b.corpus, &b.demonstrations, &b.prompts));
        assert_ne!(a.prompts, c.prompts);
        assert!(a.corpus.iter().all(|text| text.starts_with("What is ") && text.matches("\nAnswer: ").count() >= 1));
        assert!(a.demonstrations.iter().all(|d| is_correct(&d.prompt, &d.response) && in_answer_format(&d.response)));
    }

    #[test]
    fn excluded_problems_are_never_drawn_and_distinct_ones_differ() {
        // A small space (610 problems), so that collisions are certain without the checks.
        let held_out = generate(0, 19, 2, &Exclusions { expressions: HashSet::new(), distinct: true });
        let mut expressions: Vec<&str> =
            held_out.prompts.iter().chain(held_out.demonstrations.iter().map(|d| &d.prompt)).filter_map(|p| expression_of(p)).collect();
        assert_eq!(expressions.len(), 300);
        expressions.sort_unstable();
        expressions.dedup();
        assert_eq!(expressions.len(), 300, "held-out problems repeat");

        let mut few = held_out.clone();
        few.prompts.truncate(40);
        few.demonstrations.truncate(10);
        let excluded: HashSet<String> =
            few.prompts.iter().chain(few.demonstrations.iter().map(|d| &d.prompt)).map(|p| expression_of(p).unwrap().to_string()).collect();
        let train = generate(1, 19, 2, &Exclusions { expressions: excluded.clone(), distinct: false });
        let corpus_problems = train.corpus.iter().flat_map(|text| text.split("\nAnswer: ").filter_map(expression_of));
        let mut drawn = train.prompts.iter().chain(train.demonstrations.iter().map(|d| &d.prompt)).filter_map(|p| expression_of(p));
        assert!(drawn.all(|expression| !excluded.contains(expression)));
        assert!(corpus_problems.clone().count() >= 50);
        assert!(corpus_problems.clone().all(|expression| !excluded.contains(expression)));
    }

    /// The task as `data::task::load` builds it from a `[task]` table.
    fn load(table: &str, seed: u64) -> crate::data::task::TaskData {
        let config: crate::config::TaskConfig = toml::from_str(&format!("kind = \"synthetic-arithmetic\"\n{table}")).unwrap();
        crate::data::task::load(&config, seed).unwrap()
    }

    fn prompts<'a>(prompts: &'a [String], demonstrations: &'a [Demonstration]) -> impl Iterator<Item = &'a str> {
        prompts.iter().chain(demonstrations.iter().map(|d| &d.prompt)).map(String::as_str)
    }

    #[test]
    fn the_loaded_task_holds_out_problems_training_never_asks() {
        // 30² + 30·31/2 = 1365 two-operand problems; 2000 training ones repeat many of them.
        let table = "max_operand = 29\ncorpus_size = 400\ndemonstrations_size = 2000\nprompts_size = 200\neval_fraction = 0.1";
        let data = load(table, 1);
        assert_eq!((data.demonstrations.eval.len(), data.prompts.eval.len()), (200, 20));
        assert_eq!((data.demonstrations.train.len(), data.prompts.train.len(), data.corpus.train.len()), (1800, 180, 360));
        let held_out: HashSet<&str> = prompts(&data.prompts.eval, &data.demonstrations.eval).map(|p| expression_of(p).unwrap()).collect();
        assert_eq!(held_out.len(), 220, "held-out problems repeat");
        let corpus = data.corpus.train.iter().flat_map(|text| text.split("\nAnswer: ").filter_map(expression_of));
        let mut train = prompts(&data.prompts.train, &data.demonstrations.train).filter_map(expression_of).chain(corpus);
        assert!(train.all(|expression| !held_out.contains(expression)));
        assert_eq!(data.oracle, Some(GoldOracle::Arithmetic));
        assert_eq!(data.verifier, Some(Verifier { format_reward: 0.0 }));
        assert!(data.demonstrations.eval.iter().all(|d| data.oracle.unwrap().score(&d.prompt, &d.response).total == 1.0));
    }

    #[test]
    fn the_training_part_follows_the_seed_and_the_held_out_part_the_eval_seed() {
        let table = "terms = 3\nformat_reward = 0.1\ncorpus_size = 200\ndemonstrations_size = 200\nprompts_size = 100";
        let (a, b, c) = (load(table, 1), load(table, 1), load(table, 2));
        assert_eq!(a.corpus.train, b.corpus.train);
        assert_eq!(a.demonstrations.train, b.demonstrations.train);
        assert_eq!(a.prompts.train, b.prompts.train);
        assert_ne!(a.demonstrations.train, c.demonstrations.train);
        assert_ne!(a.corpus.train, c.corpus.train);
        // Any seed: the same evaluation set, and the same digest of it.
        assert_eq!((&a.corpus.eval, &a.demonstrations.eval, &a.prompts.eval), (&c.corpus.eval, &c.demonstrations.eval, &c.prompts.eval));
        assert_eq!(a.eval_set_digest(), c.eval_set_digest());
        let other = load(&format!("{table}\neval_seed = 5"), 1);
        assert_ne!(a.prompts.eval, other.prompts.eval);
        assert_ne!(a.eval_set_digest(), other.eval_set_digest());
        assert_eq!(a.verifier, Some(Verifier { format_reward: 0.1 }));
        assert_eq!(a.evaluation_prompts(1000).len(), 15); // 5 held-out prompts, then 10 demonstrations'
    }
}
