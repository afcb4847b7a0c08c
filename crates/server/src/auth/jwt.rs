//! The HS256 access token: its [`Claims`], and the [`Keys`] that sign and verify it.

use std::time::Duration;

use kobako_state::now_ms;
use serde::{Deserialize, Serialize};

use super::secrets::{random_bytes, random_token};
use crate::error::{ApiError, ApiResult};

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    /// Random id, so two tokens issued in the same second differ.
    pub jti: String,
    /// The user row's `token_gen` when issued (tokens from before it existed have none and
    /// are refused).
    #[serde(default)]
    pub gen: String,
}

/// The HS256 key (32 random bytes in `<state>/server/jwt.key`, 0600, made on first start).
pub struct Keys {
    enc: jsonwebtoken::EncodingKey,
    dec: jsonwebtoken::DecodingKey,
}

impl Keys {
    pub fn load_or_create(dir: &std::path::Path) -> anyhow::Result<Keys> {
        let p = dir.join("jwt.key");
        let secret = match std::fs::read(&p) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let s = random_bytes(32);
                crate::tls::write_private(&p, &s)?;
                s
            }
        };
        Ok(Keys {
            enc: jsonwebtoken::EncodingKey::from_secret(&secret),
            dec: jsonwebtoken::DecodingKey::from_secret(&secret),
        })
    }

    pub(super) fn issue(&self, user: &str, gen: &str) -> ApiResult<String> {
        let now = (now_ms() / 1000) as u64;
        let c = Claims {
            sub: user.into(),
            iat: now,
            exp: now + ACCESS_TTL.as_secs(),
            jti: random_token(8),
            gen: gen.into(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &c,
            &self.enc,
        )
        .map_err(ApiError::internal)
    }

    pub(super) fn verify(&self, token: &str) -> ApiResult<Claims> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.leeway = 5;
        match jsonwebtoken::decode::<Claims>(token, &self.dec, &v) {
            Ok(d) => Ok(d.claims),
            Err(e) => Err(ApiError::unauthorized(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "access token expired: get a new one from POST /api/v1/auth/refresh".to_string()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "access token signature is not valid (tampered, or from another server)"
                        .to_string()
                }
                _ => {
                    "access token is not valid: log in again (POST /api/v1/auth/login)".to_string()
                }
            })),
        }
    }
}
