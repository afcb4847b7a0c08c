//! Passwords: argon2id hashing and verification (timed the same for unknown users), the
//! password policy, and the size limits on login input checked before any hashing.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::secrets::random_bytes;
use crate::error::{ApiError, ApiResult};

/// Longest login name and password accepted (checked before hashing).
pub const MAX_LOGIN_NAME: usize = 64;
pub const MAX_PASSWORD: usize = 1024;

/// argon2id PHC string of a password (slow on purpose: call from a blocking thread).
pub fn hash_password(pw: &str) -> ApiResult<String> {
    let salt = SaltString::encode_b64(&random_bytes(16)).map_err(ApiError::internal)?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Verifies `pw` against `phc`; a missing user or one without a password (OIDC users) is
/// verified against `dummy` instead and fails, so the time taken does not tell them apart.
pub fn verify_or_dummy(pw: &str, phc: Option<&str>, dummy: &str) -> bool {
    match phc.filter(|h| PasswordHash::new(h).is_ok()) {
        Some(h) => verify_password(pw, h),
        None => {
            verify_password(pw, dummy);
            false
        }
    }
}

/// Login input before any hashing: 400 for names and passwords no user can have.
pub fn check_login_input(name: &str, pw: &str) -> ApiResult<()> {
    if name.len() > MAX_LOGIN_NAME {
        return Err(ApiError::bad_request(format!(
            "username is {} bytes; user names are at most {MAX_LOGIN_NAME}",
            name.len()
        )));
    }
    if pw.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password is {} bytes; passwords are at most {MAX_PASSWORD}",
            pw.len()
        )));
    }
    Ok(())
}

/// Password policy: at least 8 characters.
pub fn check_password(pw: &str) -> ApiResult<()> {
    if pw.chars().count() < 8 {
        return Err(ApiError::unprocessable(
            "weak_password",
            "passwords need at least 8 characters",
        ));
    }
    if pw.len() > 1024 {
        return Err(ApiError::unprocessable(
            "invalid_password",
            "passwords are at most 1024 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::time::Instant;

    #[test]
    fn login_input_is_bounded_before_hashing() {
        assert!(check_login_input(&"a".repeat(64), &"p".repeat(1024)).is_ok());
        let e = check_login_input(&"a".repeat(65), "x").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = check_login_input("ann", &"p".repeat(1_000_000)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("at most 1024"), "{}", e.message);
    }

    #[test]
    fn users_without_a_password_take_as_long_as_unknown_ones() {
        let dummy = hash_password("dummy-password").unwrap();
        let time = |phc: Option<&str>| {
            let t0 = Instant::now();
            assert!(!verify_or_dummy("guess-guess", phc, &dummy));
            t0.elapsed()
        };
        // Both run one argon2 verification (milliseconds), not a failed parse (microseconds);
        // compared with a real user's wrong password, not with each other (a loaded machine
        // makes ratios noisy).
        let real = hash_password("the-real-password").unwrap();
        let (unknown, oidc, known) = (time(None), time(Some("!oidc")), time(Some(&real)));
        for t in [unknown, oidc] {
            assert!(t * 10 > known, "{t:?} vs a real user's {known:?}");
        }
    }
}
