//! HTTPS for tenement: a certificate for every name that routes, from an ACME CA, got at the
//! first handshake for the name (or ahead of time: [`Tls::ensure`]), kept on disk, renewed at
//! two thirds of its life.
//!
//! # Design
//! - [`Names`] says which names may have a certificate (the router: an instance, a service, a
//!   rule, a custom domain, the bare domain). A handshake for any other name fails at once and
//!   nothing is asked of the CA.
//! - [`Tls::accept`] reads the ClientHello first (`LazyConfigAcceptor`): a name without a
//!   certificate waits for one (one order per name at a time, [`ORDERS_AT_ONCE`] orders at
//!   once, a failed name waits out a backoff, and `max_certificates_per_week` bounds them all);
//!   `acme-tls/1` handshakes get the tls-alpn-01 answer; then one shared rustls configuration
//!   serves every name from the [`store::Store`] (ALPN `h2`, `http/1.1`).
//! - Certificates come from a [`acme::Source`] (ACME today): a new source is a file added.
//!
//! - With a DNS provider ([`dns::Rfc2136`]), an instance's name (`prod.api.DOMAIN`) is served
//!   by its service's wildcard (`*.api.DOMAIN`, with `api.DOMAIN`), proven by DNS-01: one
//!   certificate per service instead of one per instance.
//!
//! # Limitations
//! Without SNI (a client connecting by IP address) the handshake fails.

pub mod acme;
mod challenge;
pub mod dns;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

pub use challenge::{ACME_TLS_ALPN, Challenges};
pub use instant_acme::ChallengeType;
pub use store::{Cert, Store};

/// Which names may have a certificate.
pub trait Names: Send + Sync + 'static {
    fn routes(&self, name: &str) -> bool;
}

/// How many orders may be open at once (all names together).
pub const ORDERS_AT_ONCE: usize = 4;
/// How long a handshake waits for its name's first certificate.
pub const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(30);
/// After a failed order, how long a name waits before the next (doubling to a day).
const FAILURE_BACKOFF: Duration = Duration::from_secs(60);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a name has no certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("no such name here: {0}")]
    Unknown(String),
    #[error("{0} failed its last order; next attempt in {1:?}")]
    BackingOff(String, Duration),
    #[error("{0} certificates were issued in the last 7 days (max_certificates_per_week)")]
    Budget(u32),
    #[error("the CA did not issue a certificate for {0}: {1}")]
    Failed(String, String),
    #[error("no certificate for {0} within {1:?}")]
    TimedOut(String, Duration),
}

/// What a client negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// An order's outcome, once it has one.
type Outcome = watch::Receiver<Option<Result<(), Refused>>>;

/// Certificates, their sources and their limits.
pub struct Tls {
    store: Arc<Store>,
    challenges: Arc<Challenges>,
    source: Box<dyn acme::Source>,
    names: Arc<dyn Names>,
    /// The routing domain, and whether instance names get their service's wildcard.
    domain: String,
    wildcards: bool,
    main: Arc<ServerConfig>,
    challenge_config: Arc<ServerConfig>,
    /// Orders under way, by name: their outcome, when there is one.
    pending: Mutex<HashMap<String, Outcome>>,
    orders: Semaphore,
    failures: Mutex<HashMap<String, (Instant, Duration)>>,
    budget: Budget,
    /// Woken when a certificate is added: the renewal loop looks again.
    added: Notify,
}

/// What `[settings.tls]` says of certificates.
pub struct Settings {
    pub cache_dir: PathBuf,
    /// The routing domain (`prod.api.DOMAIN`).
    pub domain: String,
    /// Where DNS-01 answers go; with it, instances get their service's wildcard.
    pub dns: Option<dns::Rfc2136>,
    pub directory_url: String,
    pub ca_root: Option<PathBuf>,
    pub email: String,
    pub challenge: ChallengeType,
    pub max_per_week: u32,
}

/// A certificate as `GET /api/tls` and `/metrics` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    pub renew_at: u64,
}

impl Tls {
    /// Loads the certificates in `cache_dir`; the ACME account is registered at the first
    /// order.
    pub fn new(settings: Settings, names: Arc<dyn Names>) -> std::io::Result<Arc<Self>> {
        let store = Arc::new(Store::open(&settings.cache_dir)?);
        let challenges = Arc::new(Challenges::default());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = |resolver: Arc<dyn rustls::server::ResolvesServerCert>, alpn: Vec<Vec<u8>>| {
            let mut c = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(resolver);
            c.alpn_protocols = alpn;
            Ok::<_, std::io::Error>(c)
        };
        let mut main = config(store.clone(), vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        main.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(std::io::Error::other)?;
        let challenge_config = config(challenges.clone(), vec![ACME_TLS_ALPN.to_vec()])?;
        let wildcards = settings.dns.is_some();
        let source = acme::Acme {
            dns: settings.dns.map(Arc::new),
            directory_url: settings.directory_url,
            ca_root: settings.ca_root,
            email: settings.email,
            challenge: settings.challenge,
            cache_dir: settings.cache_dir.clone(),
            challenges: challenges.clone(),
            account: Default::default(),
        };
        Ok(Arc::new(Self {
            store,
            challenges,
            source: Box::new(source),
            names,
            domain: settings.domain.trim_end_matches('.').to_ascii_lowercase(),
            wildcards,
            main: Arc::new(main),
            challenge_config: Arc::new(challenge_config),
            pending: Mutex::default(),
            orders: Semaphore::new(ORDERS_AT_ONCE),
            failures: Mutex::default(),
            budget: Budget::open(
                settings.cache_dir.join("issued.json"),
                settings.max_per_week,
            ),
            added: Notify::new(),
        }))
    }

    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// TLS on a client connection: the ClientHello read, a certificate for its name found or
    /// got (or the connection closed), the handshake completed. The client has `limit` for
    /// its ClientHello and again for the rest of the handshake (a connection that sends
    /// nothing is closed then); a new name's certificate may take [`FIRST_CERTIFICATE_WAIT`].
    pub async fn accept(
        self: &Arc<Self>,
        tcp: TcpStream,
        limit: Duration,
    ) -> Result<(TlsStream<TcpStream>, Protocol), String> {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout(limit, acceptor).await {
            Ok(hello) => hello.map_err(|e| format!("ClientHello: {e}"))?,
            Err(_) => return Err(format!("no ClientHello within {limit:?}")),
        };
        let hello = start.client_hello();
        let name = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        let Some(name) = name else {
            return Err("no server name (SNI)".into());
        };
        if acme {
            // A CA validating tls-alpn-01: its answer, and nothing else on this connection.
            let stream = start.into_stream(self.challenge_config.clone()).await;
            info!(%name, answered = stream.is_ok(), "tls-alpn-01 validation");
            drop(stream);
            return Err(format!("tls-alpn-01 validation of {name}"));
        }
        // (At once when the name has its certificate: `obtain` looks first.)
        match tokio::time::timeout(FIRST_CERTIFICATE_WAIT, self.obtain(&name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(Refused::TimedOut(name, FIRST_CERTIFICATE_WAIT).to_string()),
        }
        let stream = match tokio::time::timeout(limit, start.into_stream(self.main.clone())).await {
            Ok(done) => done.map_err(|e| format!("handshake for {name}: {e}"))?,
            Err(_) => return Err(format!("handshake for {name} not done within {limit:?}")),
        };
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        Ok((stream, protocol))
    }

    /// A certificate for `name` now, if it routes: one in the store, or a new one. Orders
    /// run in their own task (a client giving up does not cancel one); callers for the same
    /// name share it.
    pub async fn obtain(self: &Arc<Self>, name: &str) -> Result<(), Refused> {
        if self.store.get(name).is_some() {
            return Ok(());
        }
        if !self.names.routes(name) {
            return Err(Refused::Unknown(name.to_owned()));
        }
        let (key, names) = self.plan(name);
        let mut outcome = self.order(&key, names, false)?;
        let done = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Refused::Failed(name.into(), "the order was dropped".into()))?;
        done.clone().unwrap_or(Ok(()))
    }

    /// Gets a certificate for `name` ahead of its first visitor (a new instance or domain),
    /// in the background; failures are logged, and retried at the first handshake.
    pub fn ensure(self: &Arc<Self>, name: &str) {
        if self.store.get(name).is_none() && self.names.routes(name) {
            let (key, names) = self.plan(name);
            let _ = self.order(&key, names, false);
        }
    }

    /// What to order for `name`: a certificate of its own, or (with a DNS provider) for an
    /// instance's name (`prod.api.DOMAIN`), its service's wildcard and the service's own name
    /// (`*.api.DOMAIN`, `api.DOMAIN`). Returns the order's key (the first name) and the names.
    fn plan(&self, name: &str) -> (String, Vec<String>) {
        let below = name
            .strip_suffix(&self.domain)
            .and_then(|s| s.strip_suffix('.'));
        match below.map(|b| b.split_once('.')) {
            Some(Some((_, service))) if self.wildcards && !service.contains('.') => {
                let parent = format!("{service}.{}", self.domain);
                (format!("*.{parent}"), vec![format!("*.{parent}"), parent])
            }
            _ => (name.to_owned(), vec![name.to_owned()]),
        }
    }

    /// The outcome of the order keyed `name` (`names` in one certificate): the one under
    /// way, or a new one (`renewal`: even if a certificate is in force).
    fn order(
        self: &Arc<Self>,
        name: &str,
        names: Vec<String>,
        renewal: bool,
    ) -> Result<Outcome, Refused> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = pending.get(name) {
            return Ok(rx.clone());
        }
        if let Some((until, _)) = self.failure(name)
            && !renewal
        {
            let left = until.saturating_duration_since(Instant::now());
            return Err(Refused::BackingOff(name.to_owned(), left));
        }
        let (tx, rx) = watch::channel(None);
        pending.insert(name.to_owned(), rx.clone());
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            let outcome = this.issue(&name, &names).await;
            match &outcome {
                Ok(()) => {
                    info!(%name, "certificate issued");
                    this.failures().remove(&name);
                    this.added.notify_one();
                }
                Err(e) => {
                    warn!(%name, error = %e, "no certificate");
                    let mut failures = this.failures();
                    let backoff = failures
                        .get(&name)
                        .map_or(FAILURE_BACKOFF, |(_, b)| (*b * 2).min(FAILURE_BACKOFF_MAX));
                    failures.insert(name.clone(), (Instant::now() + backoff, backoff));
                }
            }
            this.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }

    async fn issue(&self, name: &str, names: &[String]) -> Result<(), Refused> {
        let _slot = self.orders.acquire().await.expect("never closed");
        let reserved = self.budget.reserve()?;
        let issued = self.source.issue(names).await.and_then(|pem| {
            self.store.put(&file_name(name), pem.as_bytes())?;
            Ok(())
        });
        // Only a certificate issued counts against the CA's weekly limit.
        self.budget.settle(reserved, issued.is_ok());
        issued.map_err(|e| Refused::Failed(name.to_owned(), e))
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Duration)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A name's backoff after a failed order, if it is still running.
    fn failure(&self, name: &str) -> Option<(Instant, Duration)> {
        self.failures()
            .get(name)
            .copied()
            .filter(|(until, _)| *until > Instant::now())
    }

    /// Renews every certificate at two thirds of its life, for as long as it runs; a failed
    /// renewal is tried again after a backoff while the old certificate keeps serving. A
    /// certificate for a name that no longer routes is not renewed.
    pub async fn renew(self: Arc<Self>) {
        loop {
            let now = SystemTime::now();
            let mut next = now + Duration::from_secs(3600);
            for cert in self.store.all() {
                // A wildcard's order is keyed by it, as when it was first ordered.
                let wild = cert.names.iter().find(|n| n.starts_with("*."));
                let key = wild.unwrap_or(&cert.names[0]);
                let due = match self.failure(key) {
                    Some((until, _)) => now + until.saturating_duration_since(Instant::now()),
                    None => cert.renew_at(),
                };
                if due <= now && self.names.routes(key.trim_start_matches("*.")) {
                    let _ = self.order(key, cert.names.clone(), true);
                    next = next.min(now + Duration::from_secs(1));
                } else if due > now {
                    next = next.min(due);
                }
            }
            let wait = next.duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(500))) => {}
                _ = self.added.notified() => {}
            }
        }
    }

    /// The certificates in force.
    pub fn certificates(&self) -> Vec<CertInfo> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.store
            .all()
            .iter()
            .map(|c| CertInfo {
                names: c.names.clone(),
                not_before: secs(c.not_before),
                not_after: secs(c.not_after),
                renew_at: secs(c.renew_at()),
            })
            .collect()
    }

    /// Certificates issued in the last 7 days, and the most allowed.
    pub fn budget(&self) -> (u32, u32) {
        (self.budget.used(), self.budget.max)
    }
}

/// The cache file of `name`'s certificate (`*` of a wildcard spelled out; a name too long for
/// a file name, up to 253 bytes, is cut and told apart by a hash of the whole).
fn file_name(name: &str) -> String {
    let name = name.replace('*', "_wildcard_");
    if name.len() <= 200 {
        return name;
    }
    // FNV-1a: stable across runs, unlike std's hashers.
    let mut hasher = tenement_core::fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hasher, name.as_bytes());
    let digest = std::hash::Hasher::finish(&hasher);
    format!("{}-{digest:016x}", &name[..180])
}

/// Certificates issued in the last 7 days, counted against `max_certificates_per_week`, and
/// kept in `issued.json` (a restart does not reset the count). An order holds a place while it
/// runs, so orders at once cannot overshoot the limit together.
struct Budget {
    file: PathBuf,
    max: u32,
    issued: Mutex<Vec<u64>>,
}

impl Budget {
    fn open(file: PathBuf, max: u32) -> Self {
        let issued = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            file,
            max,
            issued: Mutex::new(issued),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn used(&self) -> u32 {
        let since = Self::now().saturating_sub(WEEK.as_secs());
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.iter().filter(|t| **t > since).count() as u32
    }

    /// A place for one order, if the week's budget has one (its time, to settle it by).
    fn reserve(&self) -> Result<u64, Refused> {
        let since = Self::now().saturating_sub(WEEK.as_secs());
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.retain(|t| *t > since);
        if issued.len() as u32 >= self.max {
            return Err(Refused::Budget(issued.len() as u32));
        }
        let at = Self::now();
        issued.push(at);
        Ok(at)
    }

    /// Keeps the place of an order that issued a certificate (saved), frees that of one that
    /// did not.
    fn settle(&self, at: u64, issued: bool) {
        let mut list = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if !issued {
            if let Some(i) = list.iter().rposition(|t| *t == at) {
                list.remove(i);
            }
            return;
        }
        if let Ok(json) = serde_json::to_vec(&*list)
            && let Err(e) = store::write_private(&self.file, &json)
        {
            warn!(file = %self.file.display(), error = %e, "issuance count not saved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Every;
    impl Names for Every {
        fn routes(&self, _: &str) -> bool {
            true
        }
    }

    fn tls(dir: &std::path::Path, dns: bool, max_per_week: u32) -> Arc<Tls> {
        let dns = dns.then(|| dns::Rfc2136 {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: "example.com".into(),
            key_name: "k".into(),
            key_secret: vec![0; 32],
        });
        let settings = Settings {
            cache_dir: dir.to_path_buf(),
            domain: "example.com".into(),
            dns,
            directory_url: "https://127.0.0.1:1/dir".into(),
            ca_root: None,
            email: "a@example.com".into(),
            challenge: ChallengeType::Http01,
            max_per_week,
        };
        Tls::new(settings, Arc::new(Every)).unwrap()
    }

    #[test]
    fn with_a_dns_provider_instances_get_their_services_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let plain = tls(dir.path(), false, 40);
        let own = |n: &str| (n.to_owned(), vec![n.to_owned()]);
        assert_eq!(plain.plan("a.api.example.com"), own("a.api.example.com"));
        let dns = tls(dir.path(), true, 40);
        let wild = (
            "*.api.example.com".to_owned(),
            vec!["*.api.example.com".to_owned(), "api.example.com".to_owned()],
        );
        assert_eq!(dns.plan("a.api.example.com"), wild);
        // Services, the bare domain, deeper names and custom domains keep their own.
        for name in [
            "api.example.com",
            "example.com",
            "x.a.api.example.com",
            "shop.org",
        ] {
            assert_eq!(dns.plan(name), own(name), "{name}");
        }
    }

    #[test]
    fn the_weekly_budget_counts_issued_certificates_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("issued.json");
        let budget = Budget::open(file.clone(), 2);
        let a = budget.reserve().unwrap();
        budget.settle(a, false); // a failed order gives its place back
        assert_eq!(budget.used(), 0);
        let (a, b) = (budget.reserve().unwrap(), budget.reserve().unwrap());
        assert!(
            matches!(budget.reserve(), Err(Refused::Budget(2))),
            "over budget"
        );
        budget.settle(a, true);
        budget.settle(b, true);
        let again = Budget::open(file, 2);
        assert_eq!(again.used(), 2);
        assert!(again.reserve().is_err());
    }
}
