//! The platform's user tokens, verified: a JWT in `Authorization: Bearer`, signed with the
//! shared HS256 secret or with a key of the JWKS file (RS256, EdDSA), carrying the configured
//! `aud` (and `iss`), unexpired; its `sub` is the user. The gateway's ingest routes and the main
//! publisher's `/register` use it when `[auth]` is on ([`crate::config::AuthConfig`]).

use crate::config::AuthConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a request's token was not taken; the text is for the client (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    Missing,
    /// The token is malformed, forged, expired, not yet valid, or for another audience or issuer.
    Invalid(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => write!(f, "a user token is required (Authorization: Bearer)"),
            Refused::Invalid(why) => write!(f, "the user token is not valid: {why}"),
        }
    }
}

/// The keys and the rules tokens are checked against.
pub struct UserTokens {
    keys: Keys,
    audience: String,
    issuer: Option<String>,
    leeway_s: u64,
}

enum Keys {
    Secret(DecodingKey),
    /// The JWKS file's keys, with their `kid` and algorithm.
    Set(Vec<(Option<String>, Algorithm, DecodingKey)>),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

impl UserTokens {
    /// `None` when `[auth]` is off; an error that names the problem when its keys cannot be
    /// read (a missing or malformed JWKS file, a key of an unsupported type).
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, String> {
        if !config.enabled {
            return Ok(None);
        }
        let keys = match (&config.hs256_secret, &config.jwks_file) {
            (Some(secret), None) => Keys::Secret(DecodingKey::from_secret(secret.as_bytes())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("auth.jwks_file {}: {e}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| format!("auth.jwks_file {}: {e}", path.display()))?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let key = DecodingKey::from_jwk(jwk)
                        .map_err(|e| format!("auth.jwks_file {}: {e}", path.display()))?;
                    let alg = match jwk.common.key_algorithm {
                        Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
                        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                        other => {
                            return Err(format!(
                                "auth.jwks_file {}: key {:?} has alg {other:?}; RS256 and EdDSA are taken",
                                path.display(),
                                jwk.common.key_id
                            ))
                        }
                    };
                    keys.push((jwk.common.key_id.clone(), alg, key));
                }
                if keys.is_empty() {
                    return Err(format!("auth.jwks_file {}: no keys", path.display()));
                }
                Keys::Set(keys)
            }
            _ => return Err("auth.enabled needs exactly one of hs256_secret and jwks_file".into()),
        };
        Ok(Some(UserTokens {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_s: config.leeway_s,
        }))
    }

    /// The user an `Authorization` header's token names.
    pub fn user(&self, authorization: Option<&str>) -> Result<String, Refused> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(Refused::Missing)?;
        let invalid = |e: jsonwebtoken::errors::Error| Refused::Invalid(reason(&e));
        let header = decode_header(token).map_err(invalid)?;
        let (alg, key) = match &self.keys {
            Keys::Secret(key) => (Algorithm::HS256, key),
            Keys::Set(keys) => keys
                .iter()
                .find(|(kid, alg, _)| {
                    *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
                })
                .map(|(_, alg, key)| (*alg, key))
                .ok_or_else(|| {
                    Refused::Invalid("signed with a key this platform does not have".into())
                })?,
        };
        // The algorithm comes from the key, never from the token: a token cannot choose a
        // weaker one (or `none`).
        let mut rules = Validation::new(alg);
        rules.set_audience(&[&self.audience]);
        if let Some(issuer) = &self.issuer {
            rules.set_issuer(&[issuer]);
        }
        rules.set_required_spec_claims(&["exp", "aud"]);
        rules.leeway = self.leeway_s;
        let data = decode::<Claims>(token, key, &rules).map_err(invalid)?;
        data.claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| Refused::Invalid("it has no sub".into()))
    }
}

/// What went wrong, in words a client's developer can act on (the crate's own are terse).
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "for another audience".into(),
        ErrorKind::InvalidIssuer => "from another issuer".into(),
        ErrorKind::InvalidSignature => "its signature does not match".into(),
        ErrorKind::InvalidAlgorithm => "signed with another algorithm".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim}"),
        _ => "malformed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_names_its_user_and_every_flaw_is_refused_with_its_reason() {
        let config = AuthConfig {
            enabled: true,
            hs256_secret: Some("platform".into()),
            audience: "emostream".into(),
            leeway_s: 0,
            ..AuthConfig::default()
        };
        let tokens = UserTokens::from_config(&config).unwrap().unwrap();
        let bearer = |t: String| format!("Bearer {t}");
        let good = serde_json::json!({"sub": "u1", "aud": "emostream", "exp": now() + 60});
        assert_eq!(
            tokens.user(Some(&bearer(token("platform", good.clone())))),
            Ok("u1".into())
        );
        assert_eq!(tokens.user(None), Err(Refused::Missing));
        assert_eq!(tokens.user(Some("Basic abc")), Err(Refused::Missing));
        let refused = |claims: serde_json::Value, secret: &str| {
            tokens
                .user(Some(&bearer(token(secret, claims))))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(good.clone(), "forged"),
            "the user token is not valid: its signature does not match"
        );
        assert_eq!(
            refused(
                serde_json::json!({"sub": "u1", "aud": "emostream", "exp": now() - 10}),
                "platform"
            ),
            "the user token is not valid: expired"
        );
        assert_eq!(
            refused(
                serde_json::json!({"sub": "u1", "aud": "other", "exp": now() + 60}),
                "platform"
            ),
            "the user token is not valid: for another audience"
        );
        assert_eq!(
            refused(
                serde_json::json!({"aud": "emostream", "exp": now() + 60}),
                "platform"
            ),
            "the user token is not valid: it has no sub"
        );
        assert_eq!(
            tokens.user(Some("Bearer not.a.jwt")).unwrap_err(),
            Refused::Invalid("malformed".into())
        );
        assert!(UserTokens::from_config(&AuthConfig::default())
            .unwrap()
            .is_none());
    }
}
