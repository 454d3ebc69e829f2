//! The local stack's own identity provider: an RSA key, its JWKS, and tokens
//! shaped like Auth0 access tokens. Only the local stack and tests use it; no
//! Lambda function mounts its routes.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, pkcs8::LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::kernel::config::DEFAULT_EMAIL_CLAIM;

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("RSA key: {0}")]
    Key(String),
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A private RSA key in PKCS#1 PEM, shareable between issuers (tests reuse one
/// key rather than generating one per test).
#[derive(Clone)]
pub struct SigningKey {
    pem: String,
    kid: String,
    n: String,
    e: String,
}

/// Shows the kid only: the private key never reaches a log.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, DevIssuerError> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .map_err(|e| DevIssuerError::Key(e.to_string()))?;
        Self::from_key(&key)
    }

    pub fn from_pem(pem: &str) -> Result<Self, DevIssuerError> {
        let key =
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| DevIssuerError::Key(e.to_string()))?;
        Self::from_key(&key)
    }

    /// Loads the key at `path`, or generates one and stores it there, so
    /// tokens minted by the local stack survive restarts.
    pub fn load_or_generate(path: &Path) -> Result<Self, DevIssuerError> {
        let file_error = |reason: String| DevIssuerError::File {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pem(&pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| file_error(e.to_string()))?;
                }
                std::fs::write(path, &key.pem).map_err(|e| file_error(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(file_error(e.to_string())),
        }
    }

    fn from_key(key: &RsaPrivateKey) -> Result<Self, DevIssuerError> {
        let pem = key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| DevIssuerError::Key(e.to_string()))?
            .to_string();
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        // The kid is a thumbprint-like digest of the public key: stable per key.
        let kid = hex(&Sha256::digest(format!("{n}.{e}").as_bytes())[..8]);
        Ok(Self { pem, kid, n, e })
    }

    /// The public key as SPKI PEM (what an attacker who fetched the JWKS has).
    pub fn public_key_pem(&self) -> Result<String, DevIssuerError> {
        use rsa::pkcs8::EncodePublicKey;
        let key = RsaPrivateKey::from_pkcs1_pem(&self.pem)
            .map_err(|e| DevIssuerError::Key(e.to_string()))?;
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| DevIssuerError::Key(e.to_string()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The public half as one JWK.
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": self.n, "e": self.e})
    }

    /// Signs arbitrary claims with an arbitrary header's kid (tests use this to
    /// build wrong tokens).
    pub fn sign(&self, kid: &str, claims: &Value) -> Result<String, DevIssuerError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        header.typ = Some("JWT".into());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(self.pem.as_bytes())?,
        )?)
    }
}

/// Mints Auth0-shaped access tokens for the local stack.
#[derive(Clone)]
pub struct DevIssuer {
    key: SigningKey,
    issuer: String,
    audience: String,
}

impl DevIssuer {
    pub fn new(key: SigningKey, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The JWKS document served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.key.jwk()]})
    }

    /// A stable subject per email, like Auth0's `auth0|<id>`.
    pub fn subject_for(email: &str) -> String {
        let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
        format!("local|{}", hex(&digest[..12]))
    }

    /// The standard claims of a token for `email`, valid for `ttl`.
    pub fn claims_for(&self, email: &str, permissions: &[String], ttl: Duration) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "sub": Self::subject_for(email),
            "aud": [self.audience, format!("{}userinfo", self.issuer)],
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs() as i64,
            "scope": "openid profile email",
            "permissions": permissions,
            DEFAULT_EMAIL_CLAIM: email,
        })
    }

    pub fn mint(
        &self,
        email: &str,
        permissions: &[String],
        ttl: Duration,
    ) -> Result<String, DevIssuerError> {
        self.key
            .sign(self.key.kid(), &self.claims_for(email, permissions, ttl))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
