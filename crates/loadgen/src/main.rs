//! `tenement-loadgen (--unix PATH | --tcp HOST:PORT) [--host H] [--path P] [-c N] [-d SECS]`
//!
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
}

fn parse() -> Opts {
    let mut o = Opts {
        unix: None,
        tcp: None,
        host: "localhost".into(),
        path: "/".into(),
        connections: 32,
        duration: Duration::from_secs(10),
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
                    Box::new(s)
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
            if close {
                continue 'reconnect;
            }
        }
    }
    (lat, errors, retried)
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
