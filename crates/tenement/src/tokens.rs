//! API tokens for the network API: `ten_<id>_<secret>`. Only an Argon2 hash of the secret is
//! stored; the token is shown once, when created. Verification runs on the blocking pool (it is
//! deliberately slow) and verified tokens are remembered for a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::{Error, Store};

const CACHE_FOR: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Tokens {
    store: Store,
    verified: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Tokens {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            verified: Arc::default(),
        }
    }

    /// Creates an admin token and returns it; it cannot be recovered later.
    pub async fn generate(&self) -> Result<String, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut secret = [0u8; 24];
            getrandom::fill(&mut secret).expect("the OS random source works");
            let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).expect("the OS random source works");
            let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
            let hash = Argon2::default()
                .hash_password(secret.as_bytes(), &salt)
                .expect("argon2 with default parameters hashes any input")
                .to_string();
            let id = store.insert_token(&hash)?;
            Ok(format!("ten_{id}_{secret}"))
        })
        .await
        .expect("token task")
    }

    /// Whether `token` is a valid, unrevoked token.
    pub async fn verify(&self, token: &str) -> bool {
        let now = Instant::now();
        if self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|t| *t > now)
        {
            return true;
        }
        let Some((id, secret)) = token
            .strip_prefix("ten_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, secret)| Some((id.parse::<i64>().ok()?, secret.to_owned())))
        else {
            return false;
        };
        let store = self.store.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let Ok(Some(hash)) = store.token_hash(id) else {
                return false;
            };
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(secret.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, until| *until > now);
            cache.insert(token.to_owned(), now + CACHE_FOR);
        }
        ok
    }
}
