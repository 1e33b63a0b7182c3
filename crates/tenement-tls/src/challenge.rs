//! Answers to the CA's challenges while an order is open: http-01 (a key authorization at
//! `/.well-known/acme-challenge/{token}` on http_port) and tls-alpn-01 (a self-signed
//! certificate with the `acmeIdentifier` extension, served to a handshake asking for the
//! `acme-tls/1` protocol on https_port, RFC 8737).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The protocol a tls-alpn-01 validation asks for.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
pub struct Challenges {
    /// http-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// tls-alpn-01: name → its validation certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an http-01 `token`, while its order is open.
    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    pub(crate) fn open_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub(crate) fn close_http01(&self, token: &str) {
        lock(&self.http).remove(token);
    }

    /// Serves `digest` (SHA-256 of the key authorization) for `name` over `acme-tls/1`.
    pub(crate) fn open_alpn01(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        lock(&self.alpn).insert(name.to_owned(), Arc::new(CertifiedKey::new(chain, signing)));
        Ok(())
    }

    pub(crate) fn close_alpn01(&self, name: &str) {
        lock(&self.alpn).remove(name);
    }
}

/// The resolver of the `acme-tls/1` configuration: only names with an open challenge.
impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        lock(&self.alpn).get(&name).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
