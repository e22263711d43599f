//! Who may connect: viewers with a signed, unexpired token (when viewer auth is on), and lower
//! tiers that present the shared link secret (when one is set).
//!
//! A viewer token is `<expires_s>.<hex user_id>.<hex stream>.<hex HMAC-SHA256(key, what precedes
//! it)>`: checked with the key alone, so a reconnect storm costs each subscriber a hash per viewer
//! and touches no session store (the reason Centrifugo recommends signed connection tokens). It is
//! good for the one stream it names, until it expires, also on a connection already open.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a viewer token was refused; every case is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    OtherStream,
}

impl TokenError {
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Missing => "a viewer token is required: register at the main publisher",
            TokenError::Malformed => "the viewer token is malformed",
            TokenError::BadSignature => "the viewer token's signature does not match",
            TokenError::Expired => "the viewer token has expired: register again",
            TokenError::OtherStream => {
                "the viewer token is for another stream: register for this one"
            }
        }
    }
}

/// Issues and checks viewer tokens.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
    ttl: Duration,
}

impl TokenKey {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Self {
            key: secret.as_bytes().to_vec(),
            ttl,
        }
    }

    fn mac(&self, signed: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(signed.as_bytes());
        mac
    }

    /// A token for `user_id` to watch `stream`, issued at `now`, and when it expires (Unix
    /// seconds).
    pub fn issue(&self, user_id: &str, stream: &str, now: SystemTime) -> (String, u64) {
        let expires_s = unix_s(now) + self.ttl.as_secs();
        let signed = format!(
            "{expires_s}.{}.{}",
            hex(user_id.as_bytes()),
            hex(stream.as_bytes())
        );
        let tag = hex(&self.mac(&signed).finalize().into_bytes());
        (format!("{signed}.{tag}"), expires_s)
    }

    /// Checks `token` for `stream` at `now`; returns when it expires (Unix seconds).
    pub fn verify(
        &self,
        token: Option<&str>,
        stream: &str,
        now: SystemTime,
    ) -> Result<u64, TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut fields = signed.split('.');
        let (Some(expires_s), Some(_user), Some(for_stream), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires_s: u64 = expires_s.parse().map_err(|_| TokenError::Malformed)?;
        let tag = unhex(tag).ok_or(TokenError::Malformed)?;
        // Constant-time: a forger learns nothing from how long a refusal takes.
        self.mac(signed)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if unhex(for_stream).as_deref() != Some(stream.as_bytes()) {
            return Err(TokenError::OtherStream);
        }
        if unix_s(now) >= expires_s {
            return Err(TokenError::Expired);
        }
        Ok(expires_s)
    }
}

/// Whether a link presented the shared secret, compared in constant time. Their digests are
/// compared, not the secrets: those are always 32 bytes, so neither the time taken nor an early
/// return on a length mismatch tells a guesser how long the secret is.
pub fn link_secret_matches(expected: &str, presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let (a, b) = (Sha256::digest(expected), Sha256::digest(presented));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").map(str::trim)
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_stream_until_they_expire_and_only_with_their_key() {
        let key = TokenKey::new("s3cret", Duration::from_secs(60));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (token, expires_s) = key.issue("user.with.dots", "main", t0);
        assert_eq!(expires_s, 1_000_060);
        assert_eq!(key.verify(Some(&token), "main", t0), Ok(1_000_060));
        assert_eq!(
            key.verify(Some(&token), "main", t0 + Duration::from_secs(59)),
            Ok(1_000_060)
        );
        assert_eq!(
            key.verify(Some(&token), "main", t0 + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.verify(Some(&token), "football", t0),
            Err(TokenError::OtherStream)
        );
        let other = TokenKey::new("other", Duration::from_secs(60));
        assert_eq!(
            other.verify(Some(&token), "main", t0),
            Err(TokenError::BadSignature)
        );
        // A longer life or another stream written into someone's token breaks its signature.
        let forged = token.replacen("1000060", "9000060", 1);
        assert_eq!(
            key.verify(Some(&forged), "main", t0),
            Err(TokenError::BadSignature)
        );
        let (football, _) = key.issue("user.with.dots", "football", t0);
        let restreamed = format!(
            "{}.{}",
            football.rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            key.verify(Some(&restreamed), "football", t0),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "abc",
            "1.2",
            "x.75.6d.00",
            "1.75.6d.zz",
            "1.75.00",
            "1.7.6d.5.00",
        ] {
            assert_eq!(
                key.verify(Some(bad), "main", t0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(key.verify(None, "main", t0), Err(TokenError::Missing));
    }

    #[test]
    fn link_secrets_must_match_exactly() {
        assert!(link_secret_matches("tiers", Some("tiers")));
        assert!(!link_secret_matches("tiers", Some("tier")));
        assert!(!link_secret_matches("tiers", Some("tierz")));
        assert!(!link_secret_matches("tiers", None));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
