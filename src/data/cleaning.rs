//! Cleaning of user text before training: Unicode normalisation (NFC), whitespace, length
//! filters, exact and near-duplicate removal, with a count of what was dropped and why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

use crate::rng::splitmix64;

/// Limits of the cleaning pipeline.
#[derive(Debug, Clone, Copy)]
pub struct CleaningRules {
    pub min_chars: usize,
    pub max_chars: usize,
    /// Two records whose word-trigram Jaccard similarity reaches this are near-duplicates
    /// (1.0 disables near-duplicate removal).
    pub near_duplicate_threshold: f64,
}

/// What the pipeline kept and dropped, per reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleaningReport {
    pub read: usize,
    pub kept: usize,
    pub dropped: BTreeMap<&'static str, usize>,
}

impl CleaningReport {
    fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

/// NFC, whitespace runs collapsed to one space (newlines kept, each line trimmed).
pub fn normalize(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    let lines: Vec<String> = nfc.lines().map(|line| line.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    lines.join("\n").trim().to_string()
}

/// A record made of one or more text fields, which cleaning normalises in place.
pub trait TextFields {
    fn text_fields(&mut self) -> Vec<&mut String>;
}

impl TextFields for Vec<String> {
    fn text_fields(&mut self) -> Vec<&mut String> {
        self.iter_mut().collect()
    }
}

/// Cleans records. Each text field is normalised; a record is dropped when a field is empty, the
/// record is too short or too long, or it repeats (exactly or nearly) an earlier record. Returns
/// the kept records, normalised, in their original order.
pub fn clean<R: TextFields>(records: Vec<R>, rules: &CleaningRules) -> (Vec<R>, CleaningReport) {
    let mut report = CleaningReport { read: records.len(), ..Default::default() };
    let mut exact_seen = HashSet::new();
    let mut near = NearDuplicateIndex::new(rules.near_duplicate_threshold);
    let mut kept = Vec::new();
    for mut record in records {
        for field in record.text_fields() {
            *field = normalize(field);
        }
        let fields: Vec<String> = record.text_fields().into_iter().map(|field| field.clone()).collect();
        let chars: usize = fields.iter().map(|f| f.chars().count()).sum();
        if fields.iter().any(String::is_empty) {
            report.drop("empty");
        } else if chars < rules.min_chars {
            report.drop("too_short");
        } else if chars > rules.max_chars {
            report.drop("too_long");
        } else if !exact_seen.insert(fields.join("\u{1f}")) {
            report.drop("duplicate");
        } else if !near.insert_if_new(&fields.join(" ")) {
            report.drop("near_duplicate");
        } else {
            kept.push(record);
        }
    }
    report.kept = kept.len();
    (kept, report)
}

/// MinHash over word trigrams with LSH banding (Broder 1997; Leskovec et al., "Mining of Massive
/// Datasets", ch. 3): candidates share a band, and are confirmed by their exact Jaccard similarity.
struct NearDuplicateIndex {
    threshold: f64,
    buckets: HashMap<(usize, u64), Vec<usize>>,
    shingle_sets: Vec<HashSet<u64>>,
}

const HASHES: usize = 64;
const BANDS: usize = 16;
const ROWS: usize = HASHES / BANDS;

impl NearDuplicateIndex {
    fn new(threshold: f64) -> Self {
        NearDuplicateIndex { threshold, buckets: HashMap::new(), shingle_sets: Vec::new() }
    }

    /// Adds `text` unless it is a near-duplicate of an earlier one; returns whether it was added.
    fn insert_if_new(&mut self, text: &str) -> bool {
        if self.threshold >= 1.0 {
            return true;
        }
        let shingles = shingles(text);
        let signature: Vec<u64> = (0..HASHES as u64)
            .map(|seed| shingles.iter().map(|&s| splitmix64(s ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))).min().unwrap_or(0))
            .collect();
        let keys: Vec<(usize, u64)> = signature.chunks(ROWS).enumerate().map(|(band, rows)| (band, hash_of(rows))).collect();
        let candidates: HashSet<usize> = keys.iter().filter_map(|key| self.buckets.get(key)).flatten().copied().collect();
        if candidates.into_iter().any(|other| jaccard(&shingles, &self.shingle_sets[other]) >= self.threshold) {
            return false;
        }
        let id = self.shingle_sets.len();
        self.shingle_sets.push(shingles);
        for key in keys {
            self.buckets.entry(key).or_default().push(id);
        }
        true
    }
}

/// Hashes of the lower-cased word trigrams (the words themselves for texts under three words).
fn shingles(text: &str) -> HashSet<u64> {
    let words: Vec<String> = text.split_whitespace().map(|w| w.to_lowercase()).collect();
    if words.len() < 3 {
        return words.iter().map(hash_of).collect();
    }
    words.windows(3).map(hash_of).collect()
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    // DefaultHasher::new() has fixed keys, so signatures are the same in every run.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: CleaningRules = CleaningRules { min_chars: 5, max_chars: 200, near_duplicate_threshold: 0.7 };

    fn one_field(texts: &[&str]) -> Vec<Vec<String>> {
        texts.iter().map(|t| vec![t.to_string()]).collect()
    }

    #[test]
    fn normalizes_unicode_and_whitespace() {
        // "e" + combining acute → "é" (NFC); tabs and runs of spaces → one space.
        assert_eq!(normalize("  caf\u{65}\u{301}\t is   open \n  today  "), "caf\u{e9} is open\ntoday");
    }

    #[test]
    fn counts_every_drop_reason_on_a_crafted_set() {
        let texts = [
            "The battery of this phone lasts two full days of heavy use.",
            "The  battery of this phone lasts two full days of heavy use.", // duplicate after whitespace
            "   ",                                                          // empty
            "abc",                                                          // too short
            &"long ".repeat(60),                                            // too long
            "The battery of this phone lasts two full days of heavy use!",  // near duplicate
            "A completely different review about the hotel breakfast buffet.",
        ];
        let (kept, report) = clean(one_field(&texts), &RULES);
        assert_eq!(kept.len(), 2);
        assert_eq!(report.read, 7);
        assert_eq!(report.kept, 2);
        let expected: BTreeMap<&str, usize> =
            [("duplicate", 1), ("empty", 1), ("too_short", 1), ("too_long", 1), ("near_duplicate", 1)].into_iter().collect();
        assert_eq!(report.dropped, expected);
    }

    #[test]
    fn near_duplicate_removal_can_be_disabled_and_spares_different_texts() {
        let texts = ["the screen is bright and sharp today", "the screen is bright and sharp today!"];
        let rules = CleaningRules { near_duplicate_threshold: 1.0, ..RULES };
        assert_eq!(clean(one_field(&texts), &rules).0.len(), 2);
        let different = ["the screen is bright and sharp", "the keyboard is loud and cheap"];
        assert_eq!(clean(one_field(&different), &RULES).0.len(), 2);
    }
}
