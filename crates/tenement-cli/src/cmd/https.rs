//! `ten serve` with `[settings.tls] enabled`: the HTTPS listeners and the certificates.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use tenement::Supervisor;
use tenement_core::config::Tls as TlsSettings;
use tenement_edge::{Https, Routable, bind};
use tenement_tls::{ChallengeType, Tls};

/// With `[settings.tls] enabled`: the HTTPS listeners (`inherited` from an upgraded
/// predecessor, else bound on `https_port`) and what the front door needs for HTTPS.
pub fn front(
    supervisor: &Supervisor,
    domain: &str,
    inherited: Option<Vec<std::net::TcpListener>>,
    bind_to: IpAddr,
    threads: usize,
) -> anyhow::Result<Option<(Vec<std::net::TcpListener>, Https)>> {
    let settings = supervisor.config().settings.tls.clone();
    if !settings.enabled {
        return Ok(None);
    }
    let port = settings.https_port;
    let listeners = match inherited.filter(|l| !l.is_empty()) {
        Some(l) => l,
        None => bind(SocketAddr::new(bind_to, port), threads)
            .with_context(|| format!("cannot listen on {bind_to}:{port} (https_port)"))?,
    };
    let tls = certificates(&settings, supervisor, domain)?;
    let https = Https {
        tls,
        https_port: port,
    };
    Ok(Some((listeners, https)))
}

/// The certificates (loaded from `cache_dir`), and their renewal running.
fn certificates(
    settings: &TlsSettings,
    supervisor: &Supervisor,
    domain: &str,
) -> anyhow::Result<Arc<Tls>> {
    let wildcards = settings.dns_provider.as_deref() == Some("rfc2136");
    let names = Arc::new(Routable {
        supervisor: supervisor.clone(),
        domain: domain.to_owned(),
        wildcards,
    });
    let dns = match (settings.dns_provider.as_deref(), &settings.rfc2136) {
        (Some("rfc2136"), Some(r)) => {
            use base64::Engine;
            let key_secret = base64::engine::general_purpose::STANDARD
                .decode(r.key_secret.trim())
                .context(
                    "[settings.tls.rfc2136] key_secret is not base64 (as tsig-keygen prints it)",
                )?;
            Some(tenement_tls::dns::Rfc2136 {
                server: r.server.parse().context("[settings.tls.rfc2136] server")?,
                zone: r.zone.clone().unwrap_or_else(|| domain.to_owned()),
                key_name: r.key_name.clone(),
                key_secret,
            })
        }
        _ => None,
    };
    let challenge = match settings.challenge.as_str() {
        "tls-alpn-01" => ChallengeType::TlsAlpn01,
        _ => ChallengeType::Http01,
    };
    let tls = Tls::new(
        tenement_tls::Settings {
            cache_dir: settings.cache_dir.clone(),
            domain: domain.to_owned(),
            dns,
            directory_url: settings.directory_url.clone(),
            ca_root: settings.ca_root.clone(),
            email: settings.acme_email.clone().unwrap_or_default(),
            challenge,
            max_per_week: settings.max_certificates_per_week,
        },
        names,
    )
    .with_context(|| format!("cannot use cache_dir {}", settings.cache_dir.display()))?;
    tokio::spawn(tls.clone().renew());
    Ok(tls)
}
