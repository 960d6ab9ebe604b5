//! Text ↔ token ids through a Hugging Face `tokenizer.json` (GPT-2 byte-level BPE), and training
//! such a tokenizer on a corpus. GPT-2 has one special token, `<|endoftext|>`, which ends every
//! document and doubles as padding.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub const END_OF_TEXT: &str = "<|endoftext|>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer `{path}`: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write tokenizer `{path}`: {message}")]
    Write { path: PathBuf, message: String },
    #[error("tokenizer `{path}` has no `{END_OF_TEXT}` token, which marks the end of a text and padding")]
    NoEndOfText { path: PathBuf },
    #[error("tokenizer has {tokenizer_vocab} tokens but the model's vocabulary has only {model_vocab}: they do not belong together")]
    VocabularyMismatch { tokenizer_vocab: usize, model_vocab: i64 },
    #[error("tokenizer training failed: {0}")]
    Train(String),
    #[error("cannot tokenize text: {0}")]
    Encode(String),
}

/// A byte-level BPE tokenizer with its end-of-text id.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_id: i64,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        let eos_id = inner.token_to_id(END_OF_TEXT).ok_or_else(|| TokenizerError::NoEndOfText { path: path.to_path_buf() })?;
        Ok(TextTokenizer { inner, eos_id: eos_id as i64 })
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
        Ok(TextTokenizer { inner, eos_id: eos_id as i64 })
    }

    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner.save(path, false).map_err(|e| TokenizerError::Write { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Token ids of `text`, without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// Text of `ids`; special tokens (end-of-text) are dropped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        // Decoding ids the tokenizer produced cannot fail; an unknown id decodes to nothing.
        self.inner.decode(&ids, true).unwrap_or_default()
    }

    pub fn eos_id(&self) -> i64 {
        self.eos_id
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
        let path = dir.path().join("tokenizer.json");
        tokenizer.save(&path).unwrap();
        let loaded = TextTokenizer::from_file(&path).unwrap();
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
