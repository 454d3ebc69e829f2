//! Referral codes and who referred whom (the `referrals` table, V20). The
//! reward, which goes through the ledger, is the credit engine's business
//! ([`crate::credits::referrals`]).
//!
//! Abuse resistance: a code is linked only when an account is created (one
//! referrer per account, ever, and never itself: the new account has no code
//! yet), the code must belong to an active account, and nothing is paid until
//! the new account pays for a purchase (creating accounts costs nothing;
//! paying does), at most a capped number of times per referrer and month.

use tokio_postgres::GenericClient;

use crate::kernel::error::{ApiError, FieldError};

/// The code alphabet: upper-case letters and digits without look-alikes
/// (0/O, 1/I/L), as the schema's CHECK constraint spells it.
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a code.
pub const CODE_LEN: usize = 8;

/// A random code (31^8 ≈ 8.5 × 10^11 of them).
fn new_code() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..CODE_LEN]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Whether `raw` could be a code at all (anything else is refused before a query).
pub fn plausible(raw: &str) -> bool {
    raw.len() == CODE_LEN && raw.bytes().all(|b| ALPHABET.contains(&b))
}

/// The user's code, given out on first use. Outside any transaction: a draw
/// that collides with another user's code (the unique index) just draws again.
pub async fn code_of(client: &impl GenericClient, user_id: &str) -> Result<String, ApiError> {
    for _ in 0..8 {
        let drawn = client
            .execute(
                "UPDATE users SET referral_code = $2 WHERE id = $1 AND referral_code IS NULL",
                &[&user_id, &new_code()],
            )
            .await;
        match drawn {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                continue;
            }
            other => other?,
        };
        let code: Option<String> = client
            .query_opt("SELECT referral_code FROM users WHERE id = $1", &[&user_id])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .flatten();
        return code.ok_or_else(|| ApiError::NotFound("no such user".into()));
    }
    Err(ApiError::internal("no free referral code after 8 draws"))
}

/// Links a new account to the owner of `code`, in the sign-up's transaction: a
/// 422 naming `referral_code` when no active account has it (and then the
/// sign-up creates nothing).
pub async fn link(
    client: &impl GenericClient,
    new_user_id: &str,
    code: &str,
) -> Result<(), ApiError> {
    let refused = || {
        ApiError::from_field_errors(vec![FieldError::new(
            "referral_code",
            "is not the referral code of an active account",
        )])
    };
    let code = code.to_ascii_uppercase();
    if !plausible(&code) {
        return Err(refused());
    }
    let referrer = client
        .query_opt(
            "SELECT id FROM users WHERE referral_code = $1 AND account_status = 'active' \
               AND id <> $2",
            &[&code, &new_user_id],
        )
        .await?
        .ok_or_else(refused)?;
    let referrer_id: String = referrer.try_get(0)?;
    client
        .execute(
            "INSERT INTO referrals (referred_user_id, referrer_id) VALUES ($1, $2) \
             ON CONFLICT (referred_user_id) DO NOTHING",
            &[&new_user_id, &referrer_id],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_eight_characters_of_the_alphabet() {
        for _ in 0..1000 {
            let code = new_code();
            assert!(plausible(&code), "{code}");
        }
        assert!(!plausible("ABCDEFG"));
        assert!(!plausible("ABCDEFG0"));
        assert!(!plausible("abcdefgh"));
    }
}
