//! Authentication: who is calling.
//!
//! Production callers present Auth0 RS256 access tokens; the local stack mints
//! its own with [`dev_issuer::DevIssuer`] and they are verified by the very same
//! [`TokenVerifier`] against the JWKS the local stack publishes. Behind API
//! Gateway's JWT authorizer the already-verified claims may be trusted instead,
//! but only when `AUTH_TRUST_GATEWAY_CLAIMS` says so.

pub mod dev_issuer;
mod extract;
pub mod jwks;
mod verifier;

pub use extract::{ADMIN_PERMISSION, Admin, Caller, OptionalCaller};
pub use verifier::TokenVerifier;

use std::collections::HashMap;

use crate::kernel::config::AuthConfig;
use crate::kernel::error::ApiError;

/// The authenticated principal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub` (`auth0|65f...`), stored as `users.auth0_id`.
    pub subject: String,
    /// From the namespaced email claim, else `email`; absent in many access tokens.
    pub email: Option<String>,
    /// The email's verification: `true` when the namespaced email claim with
    /// `_verified` appended (`https://characters.app/email_verified`), else
    /// `email_verified`, is `true`. Sign-in records it in
    /// `users.email_verified_at`, which weighs the user's reports.
    pub email_verified: bool,
    /// From the `permissions` claim (Auth0 RBAC).
    pub permissions: Vec<String>,
    /// The token's `iat` (Unix seconds), if it has one: tokens issued before
    /// their account was erased are refused (see [`crate::gdpr`]).
    pub issued_at: Option<i64>,
}

impl Identity {
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("tokens signed with {0} are not accepted; only RS256")]
    UnsupportedAlgorithm(String),
    #[error("the token was signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token was issued by an untrusted issuer")]
    WrongIssuer,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token was rejected: {0}")]
    Invalid(String),
    #[error("the issuer's signing keys cannot be fetched right now")]
    KeysUnavailable,
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::KeysUnavailable => ApiError::ServiceUnavailable {
                detail: err.to_string(),
                retry_after: 5,
            },
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

/// Resolves the caller of a request, from a bearer token or trusted gateway claims.
pub struct Authenticator {
    verifier: TokenVerifier,
    trust_gateway_claims: bool,
    email_claim: String,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            verifier: TokenVerifier::new(config),
            trust_gateway_claims: config.trust_gateway_claims,
            email_claim: config.email_claim.clone(),
        }
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Identity from claims API Gateway's JWT authorizer verified, if trusted
    /// and present. The gateway flattens every claim to a string; arrays come
    /// as `[a b c]`.
    pub fn identity_from_gateway(&self, claims: &HashMap<String, String>) -> Option<Identity> {
        if !self.trust_gateway_claims {
            return None;
        }
        let subject = claims.get("sub").filter(|s| !s.is_empty())?.clone();
        let email = claims
            .get(&self.email_claim)
            .or_else(|| claims.get("email"))
            .filter(|e| !e.is_empty())
            .cloned();
        let permissions = claims
            .get("permissions")
            .map(|raw| {
                raw.trim_start_matches('[')
                    .trim_end_matches(']')
                    .split([' ', ','])
                    .map(|p| p.trim_matches('"'))
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let issued_at = claims.get("iat").and_then(|iat| iat.trim().parse().ok());
        let email_verified = claims
            .get(&format!("{}_verified", self.email_claim))
            .or_else(|| claims.get("email_verified"))
            .is_some_and(|v| v.trim() == "true");
        Some(Identity {
            subject,
            email,
            email_verified,
            permissions,
            issued_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn authenticator(trust: bool) -> Authenticator {
        Authenticator::new(&AuthConfig {
            issuer: "https://t.auth0.com/".into(),
            audiences: vec!["api".into()],
            jwks_url: "https://t.auth0.com/.well-known/jwks.json".into(),
            email_claim: "https://characters.app/email".into(),
            leeway_seconds: 30,
            jwks_min_refresh: Duration::from_secs(60),
            trust_gateway_claims: trust,
        })
    }

    fn claims() -> HashMap<String, String> {
        HashMap::from([
            ("sub".to_string(), "auth0|abc".to_string()),
            (
                "https://characters.app/email".to_string(),
                "ann@example.com".to_string(),
            ),
            ("permissions".to_string(), "[admin read:all]".to_string()),
        ])
    }

    #[test]
    fn gateway_claims_are_ignored_unless_trusted() {
        assert_eq!(authenticator(false).identity_from_gateway(&claims()), None);
    }

    #[test]
    fn gateway_claims_parse_flattened_arrays() {
        let identity = authenticator(true)
            .identity_from_gateway(&claims())
            .unwrap();
        assert_eq!(identity.subject, "auth0|abc");
        assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
        assert_eq!(identity.permissions, vec!["admin", "read:all"]);
        assert!(identity.has_permission("admin"));
    }
}
