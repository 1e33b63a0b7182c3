//! Certificates from an ACME CA (RFC 8555; Let's Encrypt by default): the account, kept in
//! `{cache_dir}/account.json` (0600), and one order per certificate, proven by http-01 or
//! tls-alpn-01 through [`Challenges`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::OnceCell;
use tracing::info;

use crate::challenge::Challenges;
use crate::store::write_private;

/// Where certificates come from.
pub trait Source: Send + Sync + 'static {
    /// A certificate for `names`: PEM, the chain then its private key.
    fn issue<'a>(
        &'a self,
        names: &'a [String],
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// An ACME CA.
pub struct Acme {
    /// Where DNS-01 answers go (wildcards need it); `None`: no DNS-01.
    pub dns: Option<Arc<crate::dns::Rfc2136>>,
    pub directory_url: String,
    /// A root to trust for the directory's HTTPS (a private CA); `None`: the system's roots.
    pub ca_root: Option<PathBuf>,
    pub email: String,
    pub challenge: ChallengeType,
    pub cache_dir: PathBuf,
    pub challenges: Arc<Challenges>,
    pub(crate) account: OnceCell<Account>,
}

/// How long an order may take, from its creation to the certificate.
const ORDER_LIMIT: Duration = Duration::from_secs(60);

impl Acme {
    /// The account: from `account.json` if it was made on this directory, else registered
    /// now (and saved).
    async fn account(&self) -> Result<&Account, String> {
        self.account
            .get_or_try_init(|| async {
                let saved = self.cache_dir.join("account.json");
                let builder = || match &self.ca_root {
                    Some(root) => Account::builder_with_root(root),
                    None => Account::builder(),
                };
                let builder = builder().map_err(|e| format!("ACME client: {e}"))?;
                if let Ok(bytes) = std::fs::read(&saved) {
                    match serde_json::from_slice::<Stored>(&bytes) {
                        Ok(stored) if stored.directory_url == self.directory_url => {
                            return builder
                                .from_credentials(stored.credentials)
                                .await
                                .map_err(|e| format!("ACME account from {}: {e}", saved.display()));
                        }
                        Ok(stored) => tracing::warn!(
                            file = %saved.display(),
                            was = %stored.directory_url,
                            "the ACME account is another directory's: registering anew"
                        ),
                        Err(e) => {
                            // Kept aside, not overwritten: it may be the only copy of a key.
                            let aside = saved.with_extension("json.unreadable");
                            let _ = std::fs::rename(&saved, &aside);
                            tracing::warn!(file = %saved.display(), error = %e, kept = %aside.display(), "the ACME account file does not parse: registering anew");
                        }
                    }
                }
                let contact = format!("mailto:{}", self.email);
                let new = NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, self.directory_url.clone(), None)
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot register with the ACME CA at {}: {e}",
                            self.directory_url
                        )
                    })?;
                let stored = Stored {
                    directory_url: self.directory_url.clone(),
                    credentials,
                };
                let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
                write_private(&saved, &json).map_err(|e| format!("{}: {e}", saved.display()))?;
                info!(directory = %self.directory_url, "ACME account registered");
                Ok(account)
            })
            .await
    }

    async fn order(&self, names: &[String]) -> Result<String, String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut opened = Vec::new();
        // A wildcard's order proves its other names in DNS too: nothing of it needs inbound
        // HTTP (and the names share one `_acme-challenge` record set).
        let in_dns = names.iter().any(|n| n.starts_with("*.")) && self.dns.is_some();
        let proven = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                // A wildcard can only be proven in DNS.
                let kind = match (authz.wildcard, &self.dns) {
                    (true, None) => return Err("a wildcard needs a DNS provider".into()),
                    (true, Some(_)) => ChallengeType::Dns01,
                    (false, _) if in_dns => ChallengeType::Dns01,
                    (false, _) => self.challenge.clone(),
                };
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
                let name = match challenge.identifier().identifier {
                    Identifier::Dns(name) => name.clone(),
                    other => return Err(format!("not a DNS name: {other:?}")),
                };
                let key_auth = challenge.key_authorization();
                match (&kind, &self.dns) {
                    (ChallengeType::Http01, _) => {
                        let token = challenge.token.clone();
                        self.challenges.open_http01(&token, key_auth.as_str());
                        opened.push(Opened::Http(token));
                    }
                    (ChallengeType::Dns01, Some(dns)) => {
                        let value = key_auth.dns_value();
                        dns.set(&name, &value).await?;
                        opened.push(Opened::Dns(dns.clone(), name, value));
                    }
                    _ => {
                        self.challenges
                            .open_alpn01(&name, key_auth.digest().as_ref())?;
                        opened.push(Opened::Alpn(name));
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("challenge: {e}"))?;
            }
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(100))
                .timeout(ORDER_LIMIT);
            match order.poll_ready(&retries).await {
                Ok(OrderStatus::Ready) => {}
                Ok(status) => return Err(format!("order {status:?}")),
                Err(e) => return Err(format!("order: {e}")),
            }
            let key = order
                .finalize()
                .await
                .map_err(|e| format!("finalize: {e}"))?;
            let chain = order
                .poll_certificate(&retries)
                .await
                .map_err(|e| format!("certificate: {e}"))?;
            Ok(format!("{chain}\n{key}"))
        }
        .await;
        for o in opened {
            match o {
                Opened::Http(token) => self.challenges.close_http01(&token),
                Opened::Alpn(name) => self.challenges.close_alpn01(&name),
                Opened::Dns(dns, name, value) => {
                    if let Err(e) = dns.clear(&name, &value).await {
                        tracing::warn!(%name, error = %e, "DNS-01 record not removed");
                    }
                }
            }
        }
        proven
    }
}

enum Opened {
    Http(String),
    Alpn(String),
    Dns(Arc<crate::dns::Rfc2136>, String, String),
}

impl Source for Acme {
    fn issue<'a>(
        &'a self,
        names: &'a [String],
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(self.order(names))
    }
}

/// `account.json`: the account and the directory it belongs to (a changed `directory_url`
/// registers anew).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    directory_url: String,
    credentials: AccountCredentials,
}
