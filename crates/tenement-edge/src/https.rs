//! The front door's HTTPS side: which names get certificates ([`Routable`]), TLS client
//! connections handed to the proxy engine, and the HTTP port (`http_port`), which answers the
//! CA's http-01 challenges and sends everything else to HTTPS (308).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tenement::Supervisor;
use tenement_core::route::{Router, Target};
use tenement_proxy::{Engine, Joined, Resolve, Transport};
use tenement_tls::{Names, Protocol, Tls};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The names that may have a certificate: the bare domain, a service (`api.DOMAIN`, a
/// `[routing.subdomain]` rule), an instance that exists (`prod.api.DOMAIN`), a custom domain
/// whose instance exists. Not an instance of a `spawn_on_request` service, unless its
/// service's wildcard serves it (`wildcards`): anyone can create those instances with a
/// request, and so make the server order certificates until the week's budget is gone.
pub struct Routable {
    pub supervisor: Supervisor,
    pub domain: String,
    /// Instance names are served by their service's wildcard (DNS-01).
    pub wildcards: bool,
}

impl Names for Routable {
    fn routes(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name == self.domain {
            return true;
        }
        if let Some(key) = self.supervisor.domains().get(&name) {
            return self.supervisor.get(&key).is_ok();
        }
        // A slum fleet's tenant is answered by every server (here, or one hop away).
        if self.supervisor.fleet().route(&name).is_some() {
            return true;
        }
        if !name.ends_with(&format!(".{}", self.domain)) {
            return false;
        }
        let config = self.supervisor.config();
        let router = Router::new(
            &self.domain,
            config.routing.clone(),
            config.services.keys().cloned(),
        );
        match router.route(Some(&name), "/") {
            Ok(Target::Service(_)) => true,
            Ok(Target::Instance(key)) => {
                let on_request = config
                    .service(&key.service)
                    .is_some_and(|s| s.spawn_on_request);
                (self.wildcards || !on_request) && self.supervisor.get(&key).is_ok()
            }
            _ => false,
        }
    }
}

/// `GET /api/tls/ask?domain=NAME`, for Caddy's on-demand TLS (`ten caddyfile`): 200 if the name
/// routes here (Caddy may order its certificate), 404 if not. Loopback clients only (Caddy on
/// the same machine): it would tell anyone which tenants exist.
pub(crate) fn ask<B>(
    supervisor: &Supervisor,
    domain: &str,
    req: &Request<B>,
    peer: std::net::SocketAddr,
) -> axum::response::Response {
    let text = |status: StatusCode, msg: &str| {
        let mut res = Response::new(Body::from(format!("{msg}\n")));
        *res.status_mut() = status;
        res
    };
    if !peer.ip().is_loopback() {
        return text(StatusCode::FORBIDDEN, "for clients on this machine only");
    }
    let name = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("domain="))
            .map(str::to_owned)
    });
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "ask with ?domain=NAME");
    };
    // Caddy orders one certificate per name asked about (its wildcards, with a DNS
    // provider, are site blocks of their own that never ask).
    let names = Routable {
        supervisor: supervisor.clone(),
        domain: domain.to_owned(),
        wildcards: false,
    };
    match names.routes(&name) {
        true => text(StatusCode::OK, "routes here"),
        false => text(StatusCode::NOT_FOUND, "does not route here"),
    }
}

/// What a TLS front door needs: the certificates, and where HTTPS listens (for redirects).
#[derive(Clone)]
pub struct Https {
    pub tls: Arc<Tls>,
    pub https_port: u16,
}

/// A TLS client connection: handshake (a certificate got first if the name is new), then the
/// engine, over HTTP/1.1 or HTTP/2 as negotiated.
pub(crate) async fn serve_tls<R: Resolve>(
    engine: Arc<Engine<R>>,
    tls: &Arc<Tls>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let (stream, protocol) = match tls.accept(stream, header_timeout).await {
        Ok(accepted) => accepted,
        Err(e) => return debug!(%peer, error = %e, "TLS handshake refused"),
    };
    let transport = match protocol {
        Protocol::Http2 => Transport::TlsHttp2,
        Protocol::Http1 => Transport::Tls,
    };
    engine
        .serve(Joined(stream), peer, transport, shutdown)
        .await;
}

/// A connection to the HTTP port while HTTPS is on: http-01 answers, else 308 to HTTPS.
pub(crate) async fn serve_http_port(
    https: Https,
    stream: TcpStream,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let https = https.clone();
        async move { Ok::<_, Infallible>(http_port_answer(&https, &req)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = builder.serve_connection(TokioIo::new(stream), service);
    let result = tokio::select! {
        r = &mut conn => r,
        _ = shutdown.cancelled() => {
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP port connection ended with an error");
    }
}

fn http_port_answer<B>(https: &Https, req: &Request<B>) -> Response<Body> {
    let answer = |status: StatusCode, body: String| {
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    };
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    {
        return match https.tls.challenges().http01(token) {
            Some(key_authorization) => {
                tracing::info!(token, "http-01 validation");
                answer(StatusCode::OK, key_authorization)
            }
            None => answer(StatusCode::NOT_FOUND, "no such challenge\n".into()),
        };
    }
    // The Location names the host the client asked for: only a plain host name, so that no
    // header can turn the answer into a redirect elsewhere (or into a header of its own).
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        });
    let Some(host) = host else {
        return answer(StatusCode::BAD_REQUEST, "no usable Host header\n".into());
    };
    let port = match https.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = format!("https://{}{port}{target}", host.to_ascii_lowercase());
    let mut res = answer(StatusCode::PERMANENT_REDIRECT, format!("{location}\n"));
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, value);
    }
    res
}
