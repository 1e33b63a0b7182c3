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
        let (not_before, not_after) = (
            time(x509.validity().not_before),
            time(x509.validity().not_after),
        );
        drop(x509);
        let key = CertifiedKey::new(chain, signing);
        // A key that is not the certificate's would fail every handshake for its names.
        key.keys_match()
            .map_err(|e| format!("the private key is not the certificate's: {e}"))?;
        Ok(Self {
            names,
            not_before,
            not_after,
            file,
            key: Arc::new(key),
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
    /// By name; a wildcard `*.web.example.com` under `.web.example.com`, so that a name's
    /// covering wildcard is found with a slice of the name itself (every handshake looks).
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
        let wild = || map.get(&name[name.find('.')?..]);
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
            let key = name.strip_prefix('*').unwrap_or(name);
            // Two files for one name (a renewal under another file name): the later one.
            if map.get(key).is_none_or(|c| c.not_after <= cert.not_after) {
                map.insert(key.to_owned(), cert.clone());
            }
        }
    }

    /// Every certificate in force, once each.
    pub fn all(&self) -> Vec<Arc<Cert>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Arc<Cert>> = map
            .values()
            .filter(|c| seen.insert(Arc::as_ptr(c)))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.names.cmp(&b.names));
        out
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid `days` from now (negative: expired), as
    /// the cache keeps it: chain, then key.
    pub(crate) fn pem(names: &[&str], valid: bool) -> String {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = match valid {
            true => rcgen::date_time_ymd(2090, 1, 1),
            false => rcgen::date_time_ymd(2021, 1, 1),
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_find_their_own_certificate_then_a_covering_wildcard_never_an_expired_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put("own", pem(&["a.web.example.com"], true).as_bytes())
            .unwrap();
        store
            .put(
                "wild",
                pem(&["*.web.example.com", "web.example.com"], true).as_bytes(),
            )
            .unwrap();
        store
            .put("old", pem(&["old.example.com"], false).as_bytes())
            .unwrap();
        assert_eq!(
            store.get("a.web.example.com").unwrap().names,
            ["a.web.example.com"]
        );
        assert_eq!(
            store.get("b.web.example.com").unwrap().names[0],
            "*.web.example.com"
        );
        assert_eq!(
            store.get("web.example.com").unwrap().names[0],
            "*.web.example.com"
        );
        // A wildcard covers one label only.
        assert!(store.get("x.b.web.example.com").is_none());
        assert!(
            store.get("old.example.com").is_none(),
            "an expired certificate served"
        );
        // Kept on disk, 0600, and found again by the next process.
        let file = dir.path().join("certs/own.pem");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Store::open(dir.path()).unwrap();
        assert!(again.get("b.web.example.com").is_some());
        assert_eq!(again.all().len(), 3);
    }

    #[test]
    fn a_file_that_does_not_parse_is_left_alone_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put("good", pem(&["good.example.com"], true).as_bytes())
            .unwrap();
        std::fs::write(dir.path().join("certs/bad.pem"), "not a certificate").unwrap();
        // A key that is not the certificate's is refused when kept.
        let mixed = format!(
            "{}{}",
            pem(&["x.example.com"], true)
                .split("-----BEGIN PRIVATE KEY-----")
                .next()
                .unwrap(),
            rcgen::KeyPair::generate().unwrap().serialize_pem()
        );
        let err = store.put("mixed", mixed.as_bytes());
        assert!(err.is_err(), "a certificate with another key was kept");
        let again = Store::open(dir.path()).unwrap();
        assert!(again.get("good.example.com").is_some());
        assert!(dir.path().join("certs/bad.pem").exists());
    }

    #[test]
    fn a_cache_directory_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to give a directory to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::os::unix::fs::chown(&certs, Some(65534), Some(65534)).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("belongs to another user"), "{err}");
        // A link in its place is refused too (not followed).
        std::fs::remove_dir(&certs).unwrap();
        std::os::unix::fs::symlink("/etc", &certs).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cert = store
            .put("c", pem(&["c.example.com"], true).as_bytes())
            .unwrap();
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        let at = cert.renew_at().duration_since(cert.not_before).unwrap();
        assert_eq!(at.as_secs(), life.as_secs() * 2 / 3);
    }
}
