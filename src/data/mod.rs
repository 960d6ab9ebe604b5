//! The data side: tokenizer and JSONL records.

pub mod jsonl;
pub mod synthetic;
pub mod tokenizer;
