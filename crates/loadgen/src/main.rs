//! `tenement-loadgen (--unix PATH | --tcp HOST:PORT) [--host H] [--path P] [-c N] [-d SECS]
//! [--tls CA_FILE] [--new]`
//!
//! `--tls CA_FILE`: HTTPS (HTTP/1.1 over TLS, SNI = the host, the server's certificate checked
//! against CA_FILE). `--new`: one request per connection (a new TCP and TLS handshake each:
//! TLS sessions are not resumed), for handshakes per second.
//! N keep-alive connections send `GET P` back to back for SECS seconds; prints one line:
//! `requests=… errors=… retried=… rps=… p50_us=… p99_us=…`. A connection the server closes
//! (`Connection: close`, or closed while idle) is replaced, and a request it took down
//! before any byte of an answer is sent again on the new one, as HTTP clients do with
//! idempotent requests (RFC 9112 §9.3.1): counted in `retried`, not in `errors`. Used by `bench/proxy.py` so that the direct
//! Unix-socket run, the run through `ten serve` and the run through nginx use the same client.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[derive(Clone)]
struct Opts {
    unix: Option<String>,
    tcp: Option<String>,
    host: String,
    path: String,
    connections: usize,
    duration: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    new_connections: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        unix: None,
        tcp: None,
        host: "localhost".into(),
        path: "/".into(),
        connections: 32,
        duration: Duration::from_secs(10),
        tls: None,
        new_connections: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--unix" => o.unix = Some(v()),
            "--tcp" => o.tcp = Some(v()),
            "--host" => o.host = v(),
            "--path" => o.path = v(),
            "-c" => o.connections = v().parse().expect("-c N"),
            "-d" => o.duration = Duration::from_secs_f64(v().parse().expect("-d SECS")),
            "--tls" => o.tls = Some(tls_config(&v())),
            "--new" => o.new_connections = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        o.unix.is_some() != o.tcp.is_some(),
        "give exactly one of --unix PATH, --tcp ADDR"
    );
    o
}

async fn worker(o: Opts, until: Instant) -> (Vec<u32>, u64, u64) {
    let mut lat = Vec::with_capacity(100_000);
    let (mut errors, mut retried) = (0, 0);
    'reconnect: while Instant::now() < until {
        let io: Box<dyn IoStream> = match (&o.unix, &o.tcp) {
            (Some(p), _) => match tokio::net::UnixStream::connect(p).await {
                Ok(s) => Box::new(s),
                Err(_) => {
                    errors += 1;
                    continue;
                }
            },
            (_, Some(a)) => match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    match &o.tls {
                        None => Box::new(s),
                        Some(config) => {
                            let name = rustls::pki_types::ServerName::try_from(o.host.clone())
                                .expect("--host: a server name");
                            let connector = tokio_rustls::TlsConnector::from(config.clone());
                            match connector.connect(name, s).await {
                                Ok(tls) => Box::new(tls),
                                Err(e) => {
                                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                                        eprintln!("TLS handshake failed: {e}");
                                    }
                                    errors += 1;
                                    continue;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("connect failed: {e}");
                    }
                    errors += 1;
                    continue;
                }
            },
            _ => unreachable!(),
        };
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < until {
            let req = hyper::Request::get(o.path.as_str())
                .header(hyper::header::HOST, o.host.as_str())
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            if send.ready().await.is_err() {
                continue 'reconnect; // closed by the server: a new one
            }
            let t0 = Instant::now();
            let (ok, close) = match send.send_request(req).await {
                Ok(res) => {
                    let close = res
                        .headers()
                        .get(hyper::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let ok = res.status().is_success() && res.into_body().collect().await.is_ok();
                    (ok, close)
                }
                // Closed before any answer: sent again on a new connection.
                Err(e) if e.is_canceled() || e.is_incomplete_message() => {
                    retried += 1;
                    continue 'reconnect;
                }
                Err(e) => {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("request failed: {e:?}");
                    }
                    (false, true)
                }
            };
            if !ok {
                if std::env::var_os("LOADGEN_DEBUG").is_some() {
                    eprintln!("request failed (status or body)");
                }
                errors += 1;
                continue 'reconnect;
            }
            lat.push(t0.elapsed().as_micros() as u32);
            if close || o.new_connections {
                continue 'reconnect;
            }
        }
    }
    (lat, errors, retried)
}

/// A client trusting the roots in `ca_file` (PEM), HTTP/1.1 by ALPN, no session resumption.
fn tls_config(ca_file: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("--tls CA_FILE") {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    // X25519 alone: the key exchange every server here offers (nginx with OpenSSL 3.0 has no
    // post-quantum one), so handshakes compare like with like.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    std::sync::Arc::new(config)
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

#[tokio::main]
async fn main() {
    let o = parse();
    let start = Instant::now();
    let until = start + o.duration;
    let tasks: Vec<_> = (0..o.connections)
        .map(|_| tokio::spawn(worker(o.clone(), until)))
        .collect();
    let mut all = Vec::new();
    let (mut errors, mut retried) = (0, 0);
    for t in tasks {
        let (lat, e, r) = t.await.expect("worker");
        all.extend(lat);
        errors += e;
        retried += r;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests={} errors={errors} retried={retried} rps={:.0} p50_us={} p99_us={}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
}
