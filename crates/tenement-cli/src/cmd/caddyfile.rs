//! `ten caddyfile [--upstream 127.0.0.1:8080]`: a Caddyfile for Caddy in front of `ten serve`
//! (which then runs without TLS): wildcard certificates per service from `dns_provider` by
//! DNS-01, every other name that routes on demand, after asking ten (`/api/tls/ask`).

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use tenement_core::config::LETS_ENCRYPT;

#[derive(clap::Args)]
pub struct Args {
    /// Where ten serve listens (plain HTTP) for Caddy.
    #[arg(long, default_value = "127.0.0.1:8080")]
    upstream: String,
    /// The routing domain (default: [settings.tls] domain).
    #[arg(long)]
    domain: Option<String>,
}

/// Every client reaches ten through Caddy from 127.0.0.1: ten's loopback-only ask endpoint
/// must be closed at Caddy, or anyone could list the names that route.
const ASK_CLOSED: &str = "\t@ask path /api/tls/ask\n\trespond @ask 404\n";

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let config = crate::config_file::load_for_client(config)?;
    let tls = &config.settings.tls;
    let domain = args
        .domain
        .or_else(|| tls.domain.clone())
        .ok_or_else(|| anyhow::anyhow!("which domain? --domain, or domain in [settings.tls]"))?;
    let up = &args.upstream;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Caddy in front of ten serve, written by `ten caddyfile` from tenement.toml.\n\
         # Run ten serve without TLS on {up} ([settings.tls] enabled = false), then\n\
         # caddy run --config Caddyfile --adapter caddyfile\n{{"
    );
    if let Some(email) = &tls.acme_email {
        let _ = writeln!(out, "\temail {email}");
    }
    if tls.http_port != 80 {
        let _ = writeln!(out, "\thttp_port {}", tls.http_port);
    }
    if tls.https_port != 443 {
        let _ = writeln!(out, "\thttps_port {}", tls.https_port);
    }
    if tls.directory_url != LETS_ENCRYPT {
        let _ = writeln!(out, "\tacme_ca {}", tls.directory_url);
    }
    if let Some(root) = &tls.ca_root {
        let _ = writeln!(out, "\tacme_ca_root {}", root.display());
    }
    let _ = writeln!(
        out,
        "\t# Caddy orders a certificate on demand only for names ten says route here.\n\
         \ton_demand_tls {{\n\t\task http://{up}/api/tls/ask\n\t}}\n}}\n"
    );
    if let Some(provider) = &tls.dns_provider {
        let _ = writeln!(
            out,
            "# One wildcard per service by DNS-01 ({provider}: Caddy must be built with the\n\
             # caddy-dns/{provider} module; its API token in $DNS_API_TOKEN)."
        );
        for service in config.services.keys() {
            let _ = writeln!(
                out,
                "*.{service}.{domain}, {service}.{domain} {{\n\ttls {{\n\t\tdns {provider} {{env.DNS_API_TOKEN}}\n\t}}\n{ASK_CLOSED}\treverse_proxy {up}\n}}\n"
            );
        }
    }
    let _ = writeln!(
        out,
        "# Every other name that routes (instances, the bare domain, custom domains): on demand.\n\
         https:// {{\n\ttls {{\n\t\ton_demand\n\t}}\n{ASK_CLOSED}\treverse_proxy {up}\n}}\n\n\
         # Plain HTTP: Caddy redirects to HTTPS by itself."
    );
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
