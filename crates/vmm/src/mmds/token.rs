//! MMDS V2 session tokens: `PUT /latest/api/token` with a lifetime hands the guest a random
//! token; `GET`s must carry a live one. Tokens are 32 random bytes (hex), kept in memory with
//! their expiry, at most [`MAX_TOKENS`] at a time (a guest asking for more pushes out the one
//! that expires first), so a guest cannot grow the VMM's memory by asking for tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest lifetime a token may ask for (seconds), as Firecracker and EC2 IMDS.
pub const MAX_TTL_SECONDS: u32 = 21600;
/// Most live tokens kept.
pub const MAX_TOKENS: usize = 1024;

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Invalid time to live value provided for token: {0}. Please provide a value between 1 and {MAX_TTL_SECONDS}.")]
    BadTtl(String),
    #[error("Cannot generate a token: the host's random source failed.")]
    Random,
}

/// The live tokens.
#[derive(Debug, Default)]
pub struct TokenAuthority {
    tokens: HashMap<String, Instant>,
}

impl TokenAuthority {
    /// A new token valid for `ttl` seconds (the header's text, checked here).
    pub fn generate(&mut self, ttl: &str) -> Result<String, TokenError> {
        let secs = ttl
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|s| (1..=MAX_TTL_SECONDS).contains(s))
            .ok_or_else(|| TokenError::BadTtl(crate::text::clip(ttl, 32).into_owned()))?;
        self.generate_for(Duration::from_secs(u64::from(secs)))
    }

    fn generate_for(&mut self, ttl: Duration) -> Result<String, TokenError> {
        let now = Instant::now();
        self.tokens.retain(|_, exp| *exp > now);
        if self.tokens.len() >= MAX_TOKENS {
            if let Some(first) = self
                .tokens
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(t, _)| t.clone())
            {
                self.tokens.remove(&first);
            }
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|_| TokenError::Random)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens.insert(token.clone(), now + ttl);
        Ok(token)
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        self.tokens
            .get(token.trim())
            .is_some_and(|exp| *exp > Instant::now())
    }

    /// How many tokens are held (expired ones until the next issue).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_for_their_ttl_and_are_bounded() {
        let mut a = TokenAuthority::default();
        for bad in ["0", "21601", "-1", "abc", "", "99999999999999999999"] {
            assert!(
                matches!(a.generate(bad), Err(TokenError::BadTtl(_))),
                "{bad}"
            );
        }
        let t = a.generate("60").unwrap();
        assert_eq!(t.len(), 64);
        assert!(a.is_valid(&t));
        assert!(!a.is_valid("x"));
        assert!(!a.is_valid(&t[1..]));
        let short = a.generate_for(Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!a.is_valid(&short), "an expired token is refused");
        for _ in 0..MAX_TOKENS + 10 {
            a.generate("21600").unwrap();
        }
        assert!(a.len() <= MAX_TOKENS);
        assert!(
            !a.is_valid(&t),
            "the token that expires first was pushed out"
        );
    }
}
