//! Certificates on disk and in memory: `{cache_dir}/certs/{name}.pem` (the chain, then the
//! private key; mode 0600, written whole or not at all), loaded at start, looked up by SNI at
//! every handshake (exact name, then the wildcard one level up).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::warn;

/// One certificate: the names it covers, its validity, the key rustls serves.
#[derive(Debug)]
pub struct Cert {
    /// Its DNS names (`*.api.example.com` for a wildcard).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Where it lives in the cache.
    pub file: PathBuf,
    pub key: Arc<CertifiedKey>,
}

impl Cert {
    /// Parses a PEM of a chain followed by its private key.
    pub fn from_pem(pem: &[u8], file: PathBuf) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificates: {e}"))?;
        let leaf = chain.first().ok_or("no certificate")?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("private key: {e}"))?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("certificate: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let names = match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            return Err("the certificate names no DNS name".into());
        }
        Ok(Self {
            names,
            not_before: time(x509.validity().not_before),
            not_after: time(x509.validity().not_after),
            file,
            key: Arc::new(CertifiedKey::new(chain, signing)),
        })
    }

    /// When to get its successor: at two thirds of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }

    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}

/// The certificates in force, by name.
pub struct Store {
    dir: PathBuf,
    by_name: RwLock<HashMap<String, Arc<Cert>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens `{cache_dir}/certs` (created 0700) and loads every certificate in it; a file that
    /// does not parse is left there and said in the log.
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("certs");
        private_dir(cache_dir)?;
        private_dir(&dir)?;
        let store = Self {
            dir,
            by_name: RwLock::default(),
        };
        for entry in std::fs::read_dir(&store.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| Cert::from_pem(&pem, path.clone()))
            {
                Ok(cert) => store.insert(Arc::new(cert)),
                Err(e) => warn!(file = %path.display(), error = %e, "certificate not loaded"),
            }
        }
        Ok(store)
    }

    /// The certificate serving `name`: its own, else a wildcard covering it; `None` if there
    /// is none or it has expired.
    pub fn get(&self, name: &str) -> Option<Arc<Cert>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let own = map.get(name);
        let wild = || {
            let (_, parent) = name.split_once('.')?;
            map.get(&format!("*.{parent}"))
        };
        own.filter(|c| !c.expired())
            .or_else(|| wild().filter(|c| !c.expired()))
            .cloned()
    }

    /// Keeps a newly issued certificate (PEM: chain, then key) as `{file_name}.pem`.
    pub fn put(&self, file_name: &str, pem: &[u8]) -> Result<Arc<Cert>, String> {
        let path = self.dir.join(format!("{file_name}.pem"));
        let cert = Arc::new(Cert::from_pem(pem, path.clone())?);
        write_private(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        self.insert(cert.clone());
        Ok(cert)
    }

    fn insert(&self, cert: Arc<Cert>) {
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        for name in &cert.names {
            // Two files for one name (a renewal under another file name): the later one.
            if map.get(name).is_none_or(|c| c.not_after <= cert.not_after) {
                map.insert(name.clone(), cert.clone());
            }
        }
    }

    /// Every certificate in force, once each.
    pub fn all(&self) -> Vec<Arc<Cert>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Cert>> = Vec::new();
        for cert in map.values() {
            if !out.iter().any(|c| Arc::ptr_eq(c, cert)) {
                out.push(cert.clone());
            }
        }
        out.sort_by(|a, b| a.names.cmp(&b.names));
        out
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.get(&name).map(|c| c.key.clone())
    }
}

/// A directory of ours alone: created 0700; an existing one is set to 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        let msg = format!("{} is not a directory", dir.display());
        return Err(std::io::Error::other(msg));
    }
    // Another user's directory (a tenant's) could hand us certificates and keys of its own.
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != nix::unistd::geteuid().as_raw() {
        let msg = format!("{} belongs to another user (uid {owner})", dir.display());
        return Err(std::io::Error::other(msg));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file renamed over it, synced:
/// a crash leaves the old file or the new one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
