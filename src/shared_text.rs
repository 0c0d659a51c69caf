//! A string sent unchanged to many receivers (a media event a room broadcasts to every peer):
//! one allocation shared by all of them, and its JSON string literal made once, by the first
//! socket that writes it, for every frame that carries it. Phoenix's fastlane encodes a
//! broadcast once for all subscribers for the same reason: escaping a media event (SDP quoted
//! inside JSON) per subscriber was the largest single cost of a room's pushes.
//!
//! Owns only the text and its cached literal; it never decides what is sent to whom.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

#[derive(Clone)]
pub struct SharedText(Arc<Inner>);

struct Inner {
    text: String,
    literal: OnceLock<String>,
}

impl SharedText {
    pub fn new(text: String) -> Self {
        SharedText(Arc::new(Inner {
            text,
            literal: OnceLock::new(),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The text as a JSON string literal (quoted and escaped), made on first use.
    pub fn json_literal(&self) -> &str {
        self.0.literal.get_or_init(|| {
            serde_json::to_string(&self.0.text).expect("a string always serialises")
        })
    }
}

impl From<String> for SharedText {
    fn from(text: String) -> Self {
        SharedText::new(text)
    }
}

impl Deref for SharedText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SharedText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedText {}

impl fmt::Display for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::SharedText;

    #[test]
    fn the_literal_is_the_json_of_the_text_and_clones_share_it() {
        let t = SharedText::new("a \"quoted\"\r\nline\u{1}é".into());
        let c = t.clone();
        assert_eq!(t.json_literal(), serde_json::to_string(t.as_str()).unwrap());
        assert!(std::ptr::eq(t.json_literal(), c.json_literal()));
        assert_eq!(&*c, t.as_str());
    }
}
