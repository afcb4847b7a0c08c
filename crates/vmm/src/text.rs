//! Bounding text that came from outside (API requests, the guest, config files) before it goes
//! into an error message or a log line. A leaf module: every layer uses it, it uses none.

/// Longest text taken from a request into an error message or a log line (characters).
pub const MAX_ECHO: usize = 256;

/// `s` if it has at most `max` characters, else its first `max` characters and "…".
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..i])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_characters_not_bytes() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("ééé", 2), "éé…");
    }
}
