//! Buyer accounts: password hashing (Argon2id, on the node that takes the signup, before the
//! command is proposed, so the log never carries a password) and login tokens signed with the
//! cluster's token secret (drawn at bootstrap, held in the ledger), so any node verifies any
//! token without a lookup in a session table.
//!
//! A token is `tl1.<user id>.<expires unix ms>.<mac>`, the MAC being the first 16 bytes of
//! `blake3::keyed_hash(token_secret, "tl1.<user id>.<expires>")` in hex.

use crate::error::ApiError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ledger::{Digest32, UserId};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 256;
const TOKEN_PREFIX: &str = "tl1";
const MAC_LEN: usize = 16;

/// Password hashing with a bound on how many hashes run at once: each takes
/// `memory_kib` of memory and a core for milliseconds, so an unbounded signup burst would
/// exhaust both. Callers wait for a permit (their request deadline still applies).
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
}

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32) -> anyhow::Result<Passwords> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(cores)),
        })
    }

    /// One of the per-core slots a hash runs in.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| ApiError::internal("password hashing stopped"))
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    pub fn check_password(password: &str) -> Result<(), ApiError> {
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Err(ApiError::invalid(format!(
                "password must be {MIN_PASSWORD_LEN}..={MAX_PASSWORD_LEN} bytes"
            )));
        }
        Ok(())
    }

    /// The PHC string (`$argon2id$v=19$m=…`) to store; a fresh random salt each time.
    pub async fn hash(&self, password: String) -> Result<Vec<u8>, ApiError> {
        Self::check_password(&password)?;
        let _permit = self.permit().await?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| ApiError::internal(format!("salt: {e}")))?;
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string().into_bytes())
                .map_err(|e| ApiError::internal(format!("hashing: {e}")))
        })
        .await
        .map_err(|_| ApiError::internal("password hashing task failed"))?
    }

    /// Whether `password` matches a stored PHC string (its own parameters are used).
    pub async fn verify(&self, password: String, stored: Vec<u8>) -> Result<bool, ApiError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Ok(false);
        }
        let _permit = self.permit().await?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            let Ok(text) = std::str::from_utf8(&stored) else {
                return false;
            };
            let Ok(parsed) = PasswordHash::new(text) else {
                return false;
            };
            argon2.verify_password(password.as_bytes(), &parsed).is_ok()
        })
        .await
        .map_err(|_| ApiError::internal("password check task failed"))
    }
}

fn mac(secret: &Digest32, user: u64, expires_ms: u64) -> String {
    let msg = format!("{TOKEN_PREFIX}.{user}.{expires_ms}");
    let h = blake3::keyed_hash(secret, msg.as_bytes());
    ledger::hex(&h.as_bytes()[..MAC_LEN])
}

pub fn mint(secret: &Digest32, user: UserId, expires_ms: u64) -> String {
    format!(
        "{TOKEN_PREFIX}.{}.{expires_ms}.{}",
        user.0,
        mac(secret, user.0, expires_ms)
    )
}

/// Whether a bearer credential has the shape of a login token (else it is an API key).
pub fn looks_like_token(bearer: &str) -> bool {
    bearer.starts_with("tl1.")
}

/// The user a token names, if its MAC is right and it has not expired at `now_ms`.
pub fn verify(secret: &Digest32, token: &str, now_ms: u64) -> Result<UserId, ApiError> {
    let bad = || ApiError::unauthenticated("invalid token; log in again");
    let mut parts = token.split('.');
    let (Some(TOKEN_PREFIX), Some(user), Some(expires), Some(given), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let user: u64 = user.parse().map_err(|_| bad())?;
    let expires: u64 = expires.parse().map_err(|_| bad())?;
    let want = mac(secret, user, expires);
    // Constant time in the MAC's length: no early exit on the first differing byte.
    let same = want.len() == given.len()
        && want
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(bad());
    }
    if expires <= now_ms {
        return Err(ApiError::unauthenticated("the token expired; log in again"));
    }
    Ok(UserId(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires_and_not_once_altered() {
        let secret = [7u8; 32];
        let t = mint(&secret, UserId(42), 1_000);
        assert_eq!(verify(&secret, &t, 999).unwrap(), UserId(42));
        assert!(verify(&secret, &t, 1_000).is_err(), "expired");
        assert!(
            verify(&[8u8; 32], &t, 0).is_err(),
            "another cluster's secret"
        );
        let forged = t.replacen(".42.", ".43.", 1);
        assert!(verify(&secret, &forged, 0).is_err(), "another user");
        let later = t.replacen(".1000.", ".9000.", 1);
        assert!(verify(&secret, &later, 0).is_err(), "extended expiry");
        for junk in ["", "tl1", "tl1.x.1.ab", "tl1.1.1.ab.cd", "tl1.1.1."] {
            assert!(verify(&secret, junk, 0).is_err(), "{junk:?}");
        }
    }

    #[tokio::test]
    async fn a_password_hash_verifies_only_its_password() {
        let p = Passwords::new(64, 1).unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(String::from_utf8_lossy(&h).starts_with("$argon2id$"));
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong horse!".into(), h.clone()).await.unwrap());
        assert!(!p.verify("x".into(), b"not a hash".to_vec()).await.unwrap());
        assert!(p.hash("short".into()).await.is_err());
    }
}
