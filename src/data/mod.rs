//! The data side: the task's records (synthetic or JSONL, cleaned, split and augmented) and the
//! tokenizer.

pub mod augment;
pub mod chat;
pub mod cleaning;
pub mod jsonl;
pub mod preferences;
pub mod synthetic;
pub mod task;
pub mod tokenizer;
