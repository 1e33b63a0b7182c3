//! API tokens for the network API: `ten_<id>_<secret>`. Only an Argon2 hash of the secret is
//! stored; the token is shown once, when created. A token is either an admin's or limited to
//! one tenant — the instances whose id is the tenant's name. Verification runs on the blocking
//! pool (Argon2 is deliberately slow) and verified tokens are remembered for a minute (the
//! memory is cleared when any token is revoked).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use tenement_core::{InstanceId, InstanceKey};

use crate::{Error, Store};

const CACHE_FOR: Duration = Duration::from_secs(60);

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

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub tenant: Option<String>,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Tokens {
    store: Store,
    verified: Arc<Mutex<HashMap<String, (Principal, Instant)>>>,
    /// Bumped by every revocation, so a verification that read a token before it was
    /// revoked does not put it back in the cache.
    revocations: Arc<AtomicU64>,
    /// Argon2 verifications running at once: each takes ~19 MB, so a burst of guesses must
    /// queue, not grow the server by gigabytes.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl Tokens {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            verified: Arc::default(),
            revocations: Arc::default(),
            hashing: Arc::new(tokio::sync::Semaphore::new(2)),
        }
    }

    /// Creates a token (an admin's, or limited to `tenant`) and returns it; it cannot be
    /// recovered later.
    pub async fn generate(&self, tenant: Option<InstanceId>) -> Result<String, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let secret = hex(&random::<24>());
            let salt = SaltString::encode_b64(&random::<16>()).expect("16 bytes is a valid salt");
            let hash = Argon2::default()
                .hash_password(secret.as_bytes(), &salt)
                .expect("argon2 with default parameters hashes any input")
                .to_string();
            let id = store.insert_token(&hash, tenant.as_ref().map(|t| t.as_str()))?;
            Ok(format!("ten_{id}_{secret}"))
        })
        .await
        .expect("token task")
    }

    /// The principal of a token verified in the last minute, without hashing anything.
    pub fn cached(&self, token: &str) -> Option<Principal> {
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let (p, until) = verified.get(token)?;
        (*until > Instant::now()).then(|| p.clone())
    }

    /// Who `token` stands for, if it is valid and not revoked.
    pub async fn verify(&self, token: &str) -> Option<Principal> {
        let now = Instant::now();
        let revocations = self.revocations.load(Ordering::SeqCst);
        if let Some(p) = self.cached(token) {
            return Some(p);
        }
        let (id, secret) = token
            .strip_prefix("ten_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, secret)| Some((id.parse::<i64>().ok()?, secret.to_owned())))?;
        let store = self.store.clone();
        let _permit = self.hashing.acquire().await.ok()?;
        let principal = tokio::task::spawn_blocking(move || {
            let (hash, tenant) = store.token(id).ok()??;
            let hash = PasswordHash::new(&hash).ok()?;
            Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .ok()?;
            match tenant {
                None => Some(Principal::Admin),
                Some(t) => t.parse().ok().map(Principal::Tenant),
            }
        })
        .await
        .ok()??;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (_, until)| *until > now);
        // (revoke bumps the count under this same lock)
        if self.revocations.load(Ordering::SeqCst) == revocations {
            cache.insert(token.to_owned(), (principal.clone(), now + CACHE_FOR));
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

    /// Revokes token `id` at once (forgotten by the verification memory, where the other
    /// tokens stay); whether it existed.
    pub async fn revoke(&self, id: i64) -> Result<bool, Error> {
        let store = self.store.clone();
        let existed = tokio::task::spawn_blocking(move || store.delete_token(id))
            .await
            .expect("token task")?;
        let prefix = format!("ten_{id}_");
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified.retain(|token, _| !token.starts_with(&prefix));
        self.revocations.fetch_add(1, Ordering::SeqCst);
        Ok(existed)
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
