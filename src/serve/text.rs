//! A choice's text as its tokens arrive. The whole completion is decoded again after each token
//! (a token may complete a character or change how the one before it reads), and only what can
//! no longer change is released: a trailing replacement character (an incomplete UTF-8 sequence)
//! and any tail that could still grow into a stop string are held back. A stop string ends the
//! text before it, as OpenAI's API does.

use crate::data::tokenizer::TextTokenizer;

#[derive(Debug)]
pub struct TextStream {
    ids: Vec<i64>,
    /// The text released so far.
    released: String,
    stops: Vec<String>,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream { ids: Vec::new(), released: String::new(), stops }
    }

    /// Takes a token; returns the text it releases and whether a stop string was reached (the
    /// text then ends before it).
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: i64) -> (String, bool) {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids);
        if let Some(at) = self.stops.iter().filter_map(|stop| text.find(stop.as_str())).min() {
            return (self.release(&text, at), true);
        }
        let mut end = text.len() - self.held_back(&text);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (self.release(&text, end), false)
    }

    /// The text held back, released once the choice has ended without a stop string.
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> String {
        let text = tokenizer.decode(&self.ids);
        self.release(&text, text.len())
    }

    /// Everything released.
    pub fn text(&self) -> &str {
        &self.released
    }

    /// Releases `text[..end]` beyond what was released; nothing when the text read earlier no
    /// longer starts it (a decoder that rewrote an earlier character).
    fn release(&mut self, text: &str, end: usize) -> String {
        match text.get(self.released.len()..end) {
            Some(new) if text.starts_with(self.released.as_str()) => {
                self.released.push_str(new);
                new.to_string()
            }
            _ => String::new(),
        }
    }

    /// Bytes at the end of `text` that may still change: an incomplete character, or the start
    /// of a stop string.
    fn held_back(&self, text: &str) -> usize {
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            return char::REPLACEMENT_CHARACTER.len_utf8();
        }
        self.stops
            .iter()
            .flat_map(|stop| (1..stop.len()).rev().filter(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n])).take(1))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        TextTokenizer::train(["the cat sat on the mat. END of story", "stop here END now"].into_iter(), 300).unwrap()
    }

    fn run(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let tokenizer = tokenizer();
        let mut stream = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for id in tokenizer.encode(text).unwrap() {
            let (piece, stopped) = stream.push(&tokenizer, id);
            pieces.push(piece);
            if stopped {
                return (pieces, true, stream.text().to_string());
            }
        }
        pieces.push(stream.finish(&tokenizer));
        (pieces, false, stream.text().to_string())
    }

    #[test]
    fn text_ends_before_a_stop_string_and_pieces_add_up() {
        let (pieces, stopped, text) = run("the cat sat on the mat. END of story", &["END"]);
        assert!(stopped);
        assert_eq!(text, "the cat sat on the mat. ");
        assert_eq!(pieces.concat(), text);
        let (pieces, stopped, text) = run("the cat sat on the mat.", &["END"]);
        assert!(!stopped);
        assert_eq!(text, "the cat sat on the mat.");
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn a_possible_stop_string_start_is_held_back() {
        let tokenizer = tokenizer();
        let mut stream = TextStream::new(vec!["mat.".into()]);
        let mut released = String::new();
        for id in tokenizer.encode("on the ma").unwrap() {
            released.push_str(&stream.push(&tokenizer, id).0);
        }
        assert_eq!(released, "on the ", "`ma` may become `mat.`");
        assert_eq!(stream.finish(&tokenizer), "ma");
    }
}
