//! Bearer tokens: issued to a user after its password was checked, carried in every request's
//! `authorization: Bearer <token>`, verified by any node with one HMAC and no lookup but the
//! user's current generation. A token reads
//! `strata1:<user>:<generation>:<expires_ms>:<hex HMAC-SHA256>`, signed with the cluster's
//! token secret (kept in the controller's state). Changing a user's password or deleting the
//! user bumps or ends its generation, which revokes every token issued before.

use ring::hmac;

use super::scram::{hex, unhex};

/// The version tag every token starts with.
const PREFIX: &str = "strata1";
/// Longest token accepted (anything longer is refused before it is parsed).
pub const MAX_TOKEN_BYTES: usize = 512;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user it was issued to.
    pub user: String,
    /// The user's generation when it was issued.
    pub generation: u64,
    /// When it expires (ms since the epoch).
    pub expires_ms: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format.
    #[error("the token is malformed")]
    Malformed,
    /// The signature does not match (another cluster's, or tampered with).
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Past its expiry.
    #[error("the token has expired; log in again")]
    Expired,
}

fn signed_part(user: &str, generation: u64, expires_ms: i64) -> String {
    format!("{PREFIX}:{user}:{generation}:{expires_ms}")
}

/// A token for `claims`, signed with `secret`.
pub fn issue(secret: &[u8], claims: &Claims) -> String {
    let body = signed_part(&claims.user, claims.generation, claims.expires_ms);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body.as_bytes());
    format!("{body}:{}", hex(tag.as_ref()))
}

/// The claims of `token` if `secret` signed it and it has not expired at `now_ms`.
pub fn verify(secret: &[u8], token: &str, now_ms: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let (body, tag) = token.rsplit_once(':').ok_or(TokenError::Malformed)?;
    let mut parts = body.split(':');
    let (Some(PREFIX), Some(user), Some(generation), Some(expires), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let generation: u64 = generation.parse().map_err(|_| TokenError::Malformed)?;
    let expires_ms: i64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let tag = unhex(tag).ok_or(TokenError::Malformed)?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        body.as_bytes(),
        &tag,
    )
    .map_err(|_| TokenError::BadSignature)?;
    if expires_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(Claims {
        user: user.to_string(),
        generation,
        expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_secret() {
        let claims = Claims {
            user: "ada".into(),
            generation: 3,
            expires_ms: 2_000,
        };
        let token = issue(b"secret", &claims);
        assert_eq!(verify(b"secret", &token, 1_999), Ok(claims.clone()));
        assert_eq!(verify(b"secret", &token, 2_000), Err(TokenError::Expired));
        assert_eq!(verify(b"other", &token, 0), Err(TokenError::BadSignature));
        let forged = token.replacen(":3:", ":4:", 1);
        assert_eq!(verify(b"secret", &forged, 0), Err(TokenError::BadSignature));
        let as_root = token.replacen("ada", "root", 1);
        assert_eq!(
            verify(b"secret", &as_root, 0),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            "strata1",
            "strata1:a:b:c:d",
            &"x".repeat(600),
            "strata1:a:1:2:zz",
        ] {
            assert_eq!(
                verify(b"secret", junk, 0),
                Err(TokenError::Malformed),
                "{junk}"
            );
        }
    }
}
