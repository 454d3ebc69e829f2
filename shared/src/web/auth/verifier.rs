//! RS256 access-token verification.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Clock, JwksCache};
use super::{AuthError, Identity};
use crate::kernel::config::AuthConfig;

pub struct TokenVerifier {
    jwks: JwksCache,
    validation: Validation,
    email_claim: String,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Self {
        // Only RS256: `none`, HS256 keyed with the public key, and every other
        // algorithm an attacker might pick are refused before any key is used.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&config.audiences);
        validation.leeway = config.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            jwks: JwksCache::new(config.jwks_url.clone(), config.jwks_min_refresh),
            validation,
            email_claim: config.email_claim.clone(),
        }
    }

    /// The same verifier, its key cache reading the time from `clock`.
    pub fn with_jwks_clock(mut self, clock: Clock) -> Self {
        self.jwks = self.jwks.with_clock(clock);
        self
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and unknown algorithms fail to parse as a header.
            ErrorKind::Json(_) => AuthError::Malformed("unsupported or unreadable header".into()),
            _ => AuthError::Malformed(e.to_string()),
        })?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::UnsupportedAlgorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("the header has no kid".into()))?;
        let key = self.jwks.key(&kid).await?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => {
                    AuthError::UnsupportedAlgorithm("another algorithm".into())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("missing claim {claim}"))
                }
                ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_)
                | ErrorKind::InvalidToken => {
                    AuthError::Malformed("the token cannot be decoded".into())
                }
                _ => AuthError::Invalid(e.to_string()),
            })?;
        identity_from_claims(&data.claims, &self.email_claim)
    }
}

fn identity_from_claims(
    claims: &Map<String, Value>,
    email_claim: &str,
) -> Result<Identity, AuthError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or_else(|| AuthError::Invalid("the sub claim must be a non-empty string".into()))?
        .to_string();
    let email = claims
        .get(email_claim)
        .or_else(|| claims.get("email"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let permissions = claims
        .get("permissions")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // NumericDate: whole seconds, though a fraction is allowed.
    let issued_at = claims
        .get("iat")
        .and_then(|iat| iat.as_i64().or_else(|| iat.as_f64().map(|f| f as i64)));
    let email_verified = claims
        .get(&format!("{email_claim}_verified"))
        .or_else(|| claims.get("email_verified"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Identity {
        subject,
        email,
        email_verified,
        permissions,
        issued_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaced_email_wins_over_plain_email() {
        let claims = json!({
            "sub": "auth0|1",
            "email": "plain@example.com",
            "https://characters.app/email": "ns@example.com",
            "permissions": ["admin", 7]
        });
        let identity =
            identity_from_claims(claims.as_object().unwrap(), "https://characters.app/email")
                .unwrap();
        assert_eq!(identity.email.as_deref(), Some("ns@example.com"));
        assert_eq!(identity.permissions, vec!["admin"]);
    }

    #[test]
    fn email_verification_comes_from_the_namespaced_claim_else_the_plain_one() {
        let ns = "https://characters.app/email";
        for (claims, verified) in [
            (json!({"sub": "a"}), false),
            (json!({"sub": "a", "email_verified": true}), true),
            (json!({"sub": "a", "email_verified": "true"}), false),
            (
                json!({"sub": "a", "email_verified": true, "https://characters.app/email_verified": false}),
                false,
            ),
            (
                json!({"sub": "a", "https://characters.app/email_verified": true}),
                true,
            ),
        ] {
            let identity = identity_from_claims(claims.as_object().unwrap(), ns).unwrap();
            assert_eq!(identity.email_verified, verified, "{claims}");
        }
    }

    #[test]
    fn empty_subject_is_refused() {
        let claims = json!({"sub": ""});
        assert!(identity_from_claims(claims.as_object().unwrap(), "e").is_err());
    }
}
