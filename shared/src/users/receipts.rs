//! Erasure receipts (`account_erasures`): what remains of an erased
//! account's identity — a digest of its token subject and the time — kept
//! only while a token issued before the erasure could still be valid. Signing
//! in reads them (a stale token is refused, a newer one starts a fresh
//! account); the erasure in `crate::gdpr` writes them; the scheduler purges
//! them.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::web::auth::Identity;

/// How long an erasure receipt is kept: the longest an access token issued
/// before the erasure can stay valid (Auth0 caps API access tokens at 30 days).
pub const RECEIPT_TTL_DAYS: i32 = 30;

/// The receipt's key: SHA-256 of the token subject, hex. The subject itself is
/// never stored once its account is erased.
pub fn subject_digest(subject: &str) -> String {
    Sha256::digest(subject.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Forgets erasure receipts past their expiry (the scheduler's
/// `idempotency-purge` task): after it no token issued before the erasure can
/// still be valid, and the receipt is one less trace of the identity.
pub async fn purge_expired_receipts(
    client: &impl GenericClient,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM account_erasures WHERE expires_at <= now()",
            &[],
        )
        .await
}

/// When this identity's account was erased, if it was recently enough that a
/// token issued before the erasure may still be valid.
pub async fn erased_at(
    client: &impl GenericClient,
    identity: &Identity,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    client
        .query_opt(
            "SELECT erased_at FROM account_erasures WHERE subject_digest = $1 AND expires_at > now()",
            &[&subject_digest(&identity.subject)],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()
}

/// Whether the token was issued before its identity's account was erased:
/// such tokens are refused, so a token taken before the erasure cannot quietly
/// sign up again. `iat` has whole seconds, so a token issued in the second of
/// the erasure counts as newer; one without `iat` counts as older.
pub async fn token_predates_erasure(
    client: &impl GenericClient,
    identity: &Identity,
) -> Result<bool, tokio_postgres::Error> {
    Ok(erased_at(client, identity)
        .await?
        .is_some_and(|at| identity.issued_at.is_none_or(|iat| iat < at.timestamp())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_digests_are_sha256_hex() {
        let digest = subject_digest("auth0|abc");
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(digest, subject_digest("auth0|abc"));
        assert_ne!(digest, subject_digest("auth0|abd"));
    }
}
