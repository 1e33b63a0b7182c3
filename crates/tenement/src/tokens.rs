//! API tokens for the network API: `ten_<id>_<secret>`, the secret 24 random bytes (192 bits).
//! The token is shown once, when created; only a SHA-256 of the secret is stored.
//!
//! Why SHA-256 and not a password hash: a password hash (Argon2) is slow and memory-hard so
//! that a stolen hash of a *guessable* secret stays expensive to brute-force. These secrets are
//! random and far too long to guess, so one fast hash is as strong, and verification costs
//! about a microsecond and no memory: a spray of bad tokens cannot load the server, and an
//! admin never waits behind one (each Argon2 check cost ~19 MB and tens of milliseconds).
//!
//! Every token's hash is kept in memory (read at start, updated on create and revoke), so a
//! check touches no disk. Tokens made by earlier versions carry an Argon2 hash; such a token
//! still works, one check at a time, and its hash is replaced by the SHA-256 one the first time
//! it is presented correctly.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};

use sha2::{Digest, Sha256};
use tenement_core::{InstanceId, InstanceKey};

use crate::{Error, Store};

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The control socket, or an admin token: everything.
    Admin,
    /// A tenant token: only instances with this id.
    Tenant(InstanceId),
}

impl Principal {
    pub fn allows(&self, key: &InstanceKey) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(id) => key.id == *id,
        }
    }

    pub fn is_admin(&self) -> bool {
        *self == Principal::Admin
    }
}

pub use tenement_api::TokenInfo;

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Valid(Principal),
    Invalid,
    /// Its id has an Argon2 hash from an earlier version: [`Tokens::verify_legacy`] decides.
    Legacy,
}

#[derive(Clone)]
enum Hash {
    Sha256([u8; 32]),
    Argon2(String),
}

#[derive(Clone)]
struct Entry {
    hash: Hash,
    principal: Principal,
}

#[derive(Clone)]
pub struct Tokens {
    store: Store,
    by_id: Arc<RwLock<HashMap<i64, Entry>>>,
    /// Legacy (Argon2) checks run one at a time: each takes ~19 MB.
    legacy: Arc<tokio::sync::Semaphore>,
}

const PREFIX: &str = "sha256:";

impl Tokens {
    pub fn new(store: Store) -> Self {
        let rows = store.token_hashes().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read API tokens; none will work");
            Vec::new()
        });
        let by_id = rows
            .into_iter()
            .filter_map(|(id, hash, tenant)| {
                let principal = match tenant {
                    None => Principal::Admin,
                    Some(t) => Principal::Tenant(t.parse().ok()?),
                };
                let hash = match hash.strip_prefix(PREFIX) {
                    Some(hex) => Hash::Sha256(unhex(hex)?),
                    None => Hash::Argon2(hash),
                };
                Some((id, Entry { hash, principal }))
            })
            .collect();
        Self {
            store,
            by_id: Arc::new(RwLock::new(by_id)),
            legacy: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Creates a token (an admin's, or limited to `tenant`) and returns it; it cannot be
    /// recovered later.
    pub async fn generate(&self, tenant: Option<InstanceId>) -> Result<String, Error> {
        let secret = hex(&random::<24>());
        let digest = sha256(&secret);
        let store = self.store.clone();
        let stored = format!("{PREFIX}{}", hex(&digest));
        let t = tenant.as_ref().map(|t| t.to_string());
        let id = tokio::task::spawn_blocking(move || store.insert_token(&stored, t.as_deref()))
            .await
            .expect("token task")?;
        let principal = tenant.map_or(Principal::Admin, Principal::Tenant);
        let entry = Entry {
            hash: Hash::Sha256(digest),
            principal,
        };
        self.write().insert(id, entry);
        Ok(format!("ten_{id}_{secret}"))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i64, Entry>> {
        self.by_id.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `token` in memory, in about a microsecond, whatever it is.
    pub fn check(&self, token: &str) -> Check {
        let Some((id, secret)) = split(token) else {
            return Check::Invalid;
        };
        let entry = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        match entry {
            Some(Entry {
                hash: Hash::Sha256(want),
                principal,
            }) if ct_eq(&sha256(secret), &want) => Check::Valid(principal),
            Some(Entry {
                hash: Hash::Argon2(_),
                ..
            }) => Check::Legacy,
            _ => Check::Invalid,
        }
    }

    /// Who `token` stands for, if it is valid and not revoked.
    pub async fn verify(&self, token: &str) -> Option<Principal> {
        match self.check(token) {
            Check::Valid(p) => Some(p),
            Check::Invalid => None,
            Check::Legacy => self.verify_legacy(token).await,
        }
    }

    /// Checks a token whose stored hash is an earlier version's Argon2 one (one check at a
    /// time); a good one gets its hash replaced by the SHA-256 one.
    pub async fn verify_legacy(&self, token: &str) -> Option<Principal> {
        let (id, secret) = split(token)?;
        let Some(Entry {
            hash: Hash::Argon2(phc),
            principal,
        }) = self.by_id.read().ok()?.get(&id).cloned()
        else {
            return match self.check(token) {
                Check::Valid(p) => Some(p), // migrated meanwhile
                _ => None,
            };
        };
        let _one = self.legacy.acquire().await.ok()?;
        let secret = secret.to_owned();
        let good = tokio::task::spawn_blocking(move || {
            let good = PasswordHash::new(&phc)
                .map(|h| {
                    Argon2::default()
                        .verify_password(secret.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false);
            // Argon2's 19 MB go back to the system, not into this thread's malloc arena.
            // SAFETY: malloc_trim only releases free memory; always safe to call.
            unsafe { libc::malloc_trim(0) };
            good.then(|| sha256(&secret))
        })
        .await
        .ok()??;
        let stored = format!("{PREFIX}{}", hex(&good));
        let store = self.store.clone();
        let migrated = tokio::task::spawn_blocking(move || store.set_token_hash(id, &stored)).await;
        if let Ok(Err(e)) = migrated {
            tracing::warn!(token = id, error = %e, "cannot store the migrated token hash");
        }
        if let Some(entry) = self.write().get_mut(&id) {
            entry.hash = Hash::Sha256(good);
        }
        Some(principal)
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, Error> {
        let store = self.store.clone();
        let rows = tokio::task::spawn_blocking(move || store.tokens())
            .await
            .expect("token task")?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, created_at)| TokenInfo {
                id,
                tenant,
                created_at,
            })
            .collect())
    }

    /// Revokes token `id` at once; whether it existed.
    pub async fn revoke(&self, id: i64) -> Result<bool, Error> {
        let store = self.store.clone();
        let existed = tokio::task::spawn_blocking(move || store.delete_token(id))
            .await
            .expect("token task")?;
        self.write().remove(&id);
        Ok(existed)
    }
}

/// `ten_<id>_<secret>` → (id, secret).
fn split(token: &str) -> Option<(i64, &str)> {
    let (id, secret) = token.strip_prefix("ten_")?.split_once('_')?;
    Some((id.parse().ok()?, secret))
}

fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares in time independent of where the two differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[tokio::test]
    async fn tokens_check_in_memory_and_old_argon2_ones_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        // A token made by an earlier version: Argon2 hash of its secret.
        let secret = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let phc = Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let old = store.insert_token(&phc, Some("alice")).unwrap();
        let tokens = Tokens::new(store.clone());
        let old_token = format!("ten_{old}_{secret}");
        assert_eq!(tokens.check(&old_token), Check::Legacy);
        assert_eq!(tokens.verify(&format!("ten_{old}_nope")).await, None);
        let alice = Principal::Tenant("alice".parse().unwrap());
        assert_eq!(tokens.verify(&old_token).await, Some(alice.clone()));
        // Migrated: checked in memory from now on, and after a restart.
        assert_eq!(tokens.check(&old_token), Check::Valid(alice.clone()));
        let restarted = Tokens::new(store.clone());
        assert_eq!(restarted.check(&old_token), Check::Valid(alice));

        let admin = tokens.generate(None).await.unwrap();
        assert_eq!(tokens.check(&admin), Check::Valid(Principal::Admin));
        let (id, _) = split(&admin).unwrap();
        let wrong = format!("ten_{id}_{}", "0".repeat(48));
        for bad in [wrong.as_str(), "ten_999_x", "garbage", "ten_x_y", ""] {
            assert_eq!(tokens.check(bad), Check::Invalid, "{bad}");
        }
        assert!(tokens.revoke(id).await.unwrap());
        assert_eq!(tokens.check(&admin), Check::Invalid);
        assert!(
            store
                .token_hashes()
                .unwrap()
                .iter()
                .all(|(_, h, _)| h.starts_with(PREFIX))
        );
    }
}
