//! The fast path against hyper: one corpus of raw requests, sent through an engine with the
//! fast path and through one without (hyper serves every request there), to the same app on a
//! real Unix socket. What the app receives and what the client gets back must be the same
//! (header names compared without case, `Date` left out, chunked bodies decoded: framing
//! boundaries are each side's own).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Request, Response, StatusCode};
use tenement_proxy::{Body, Endpoint, Engine, Resolve, Route, Settings, Unavailable, plain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Routes `*.app.test` to the app, `app.test` to the server itself, the rest nowhere.
struct Fixed(Endpoint);

impl Resolve for Fixed {
    type Target = ();
    type Lease = Endpoint;

    fn route(&self, host: Option<&str>, _path: &str) -> Route<()> {
        let host = host.unwrap_or("app.test").to_ascii_lowercase();
        let host = host.split(':').next().unwrap_or_default();
        match host {
            "app.test" => Route::Local,
            "gone.app.test" => Route::Upstream(()),
            h if h.ends_with(".app.test") => Route::Upstream(()),
            h => Route::Refused(StatusCode::NOT_FOUND, format!("no such host here: {h}")),
        }
    }

    async fn lease(&self, (): &()) -> Result<Endpoint, Unavailable> {
        Ok(self.0.clone())
    }

    async fn local(&self, req: Request<hyper::body::Incoming>, _: SocketAddr) -> Response<Body> {
        plain(StatusCode::OK, &format!("local {}", req.uri().path()))
    }
}

/// What the app saw of one request: request line, headers (lower-case names, sorted), body.
type Seen = (String, Vec<(String, String)>, Vec<u8>);

/// The app: records each request, answers by path (every framing an upstream may use).
fn app(path: &std::path::Path, seen: Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((line, headers, body, rest)) = read_request(&mut s, buf).await else {
                        return;
                    };
                    buf = rest;
                    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let head = line.starts_with("HEAD ");
                    seen.lock().unwrap().push((line, headers, body));
                    let answer = answer(&target, head);
                    if s.write_all(&answer).await.is_err() || target == "/close" {
                        return;
                    }
                }
            });
        }
    });
}

fn answer(target: &str, head: bool) -> Vec<u8> {
    let body = |b: &str| if head { String::new() } else { b.to_owned() };
    let answer: String = match target {
        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
                       5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .into(),
        "/close" => format!(
            "HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\n{}",
            body("until close")
        ),
        "/big" => {
            let big = "x".repeat(100_000);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                body(&big)
            )
        }
        "/empty" => "HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".into(),
        "/not-modified" => "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n".into(),
        "/cookies" => "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\
                       X-Weird-CASE: yes\r\nConnection: x-drop\r\nX-Drop: no\r\n\
                       Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"
            .into(),
        "/dated" => "HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
                     Content-Length: 0\r\n\r\n"
            .into(),
        "/error" => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops".into(),
        "/broken" => "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n".into(),
        "/teapot" => "HTTP/1.1 418 I'm a teapot\r\nContent-Length: 3\r\n\r\ntea".into(),
        _ => {
            let b = body("hello");
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Path: {target}\r\n\r\n{b}")
        }
    };
    answer.into_bytes()
}

/// Reads one request (head, then a body framed by length or chunks) from `s`.
async fn read_request(
    s: &mut tokio::net::UnixStream,
    mut buf: Vec<u8>,
) -> Option<(String, Vec<(String, String)>, Vec<u8>, Vec<u8>)> {
    let (line, headers, len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(len) = req.parse(&buf).ok()? {
            let line = format!("{} {} HTTP/1.{}", req.method?, req.path?, req.version?);
            let mut headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    let v = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_ascii_lowercase(), v)
                })
                .collect();
            headers.sort();
            break (line, headers, len);
        }
        read_more(s, &mut buf).await?;
    };
    buf.drain(..len);
    let value = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone());
    let mut body = Vec::new();
    if let Some(n) = value("content-length") {
        let n: usize = n.trim().parse().ok()?;
        while buf.len() < n {
            read_more(s, &mut buf).await?;
        }
        body = buf.drain(..n).collect();
    } else if value("transfer-encoding").is_some() {
        loop {
            let line_end = loop {
                match buf.windows(2).position(|w| w == b"\r\n") {
                    Some(at) => break at,
                    None => read_more(s, &mut buf).await?,
                }
            };
            let size = std::str::from_utf8(&buf[..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            while buf.len() < line_end + 2 + size + 2 {
                read_more(s, &mut buf).await?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Some((line, headers, body, buf))
}

async fn read_more(s: &mut tokio::net::UnixStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// An engine on a loopback port.
async fn engine(endpoint: Endpoint, fast_path: bool) -> SocketAddr {
    let settings = Settings {
        max_body: 1 << 20,
        upstream_timeout: Duration::from_secs(10),
        max_head: 8192,
        header_timeout: Duration::from_secs(10),
        fast_path,
    };
    let engine = Engine::new(Fixed(endpoint), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let engine = engine.clone();
            tokio::spawn(engine.serve(
                stream,
                peer,
                tenement_proxy::Transport::Plain,
                CancellationToken::new(),
            ));
        }
    });
    addr
}

/// Every answer on one connection, until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A last request after the corpus's: the connection ends with it (unless the server
    // closed it before), so everything the server had to say has been read.
    let end = b"GET /end HTTP/1.1\r\nHost: x.app.test\r\nConnection: close\r\n\r\n";
    let mut all = request.to_vec();
    all.extend_from_slice(end);
    let _ = s.write_all(&all).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no end to the answers to {request:?}");
    out
}

/// The answers in `raw`, normalised: status line, headers (lower-case names, sorted, `date`
/// left out), body (chunks decoded).
fn answers(raw: &[u8], heads: &[bool]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    let mut heads = heads.iter();
    while !rest.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = res.parse(rest) else {
            out.push(format!("unparsed: {:?}", String::from_utf8_lossy(rest)));
            break;
        };
        let head_request = *heads.next().unwrap_or(&false);
        let mut headers: Vec<String> = res
            .headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("date"))
            .map(|h| {
                let v = String::from_utf8_lossy(h.value);
                format!("{}: {v}", h.name.to_ascii_lowercase())
            })
            .collect();
        headers.sort();
        let code = res.code.unwrap_or(0);
        let length = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok());
        let chunked = headers.iter().any(|h| h == "transfer-encoding: chunked");
        let body_rest = &rest[len..];
        let (body, used) = if head_request || code == 204 || code == 304 {
            (Vec::new(), 0)
        } else if chunked {
            dechunk(body_rest)
        } else if let Some(n) = length {
            let n = n.min(body_rest.len());
            (body_rest[..n].to_vec(), n)
        } else {
            (body_rest.to_vec(), body_rest.len())
        };
        out.push(format!(
            "{code} {}\n{}\n\n{}",
            res.reason.unwrap_or(""),
            headers.join("\n"),
            String::from_utf8_lossy(&body)
        ));
        rest = &body_rest[used..];
    }
    out
}

fn dechunk(mut raw: &[u8]) -> (Vec<u8>, usize) {
    let (start, mut body) = (raw.len(), Vec::new());
    while let Some(at) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..at]).unwrap_or("0");
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let data = &raw[at + 2..];
        if size == 0 {
            raw = data.get(2..).unwrap_or_default();
            break;
        }
        body.extend_from_slice(&data[..size.min(data.len())]);
        raw = data.get(size + 2..).unwrap_or_default();
    }
    (body, start - raw.len())
}

/// The corpus: what clients send, ordinary and odd.
fn corpus() -> Vec<(&'static str, String)> {
    let h = "Host: a.app.test\r\n";
    let long = "x".repeat(9000);
    vec![
        ("plain GET", format!("GET / HTTP/1.1\r\n{h}\r\n")),
        (
            "query and sub-delims",
            format!("GET /p/a-b_c.d~e?x=1&y=%20;z@:!$'()*+, HTTP/1.1\r\n{h}\r\n"),
        ),
        ("HEAD", format!("HEAD / HTTP/1.1\r\n{h}\r\n")),
        (
            "HEAD of a big body",
            format!("HEAD /big HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "chunked answer",
            format!("GET /chunked HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "close-delimited answer",
            format!("GET /close HTTP/1.1\r\n{h}\r\n"),
        ),
        ("big answer", format!("GET /big HTTP/1.1\r\n{h}\r\n")),
        ("204", format!("GET /empty HTTP/1.1\r\n{h}\r\n")),
        ("304", format!("GET /not-modified HTTP/1.1\r\n{h}\r\n")),
        (
            "answer headers",
            format!("GET /cookies HTTP/1.1\r\n{h}\r\n"),
        ),
        ("app's own Date", format!("GET /dated HTTP/1.1\r\n{h}\r\n")),
        (
            "500 from the app",
            format!("GET /error HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "malformed answer",
            format!("GET /broken HTTP/1.1\r\n{h}\r\n"),
        ),
        ("unusual status", format!("GET /teapot HTTP/1.1\r\n{h}\r\n")),
        (
            "POST with Content-Length: 0",
            format!("POST /form HTTP/1.1\r\n{h}Content-Length: 0\r\n\r\n"),
        ),
        (
            "POST with a body",
            format!("POST /form HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello"),
        ),
        (
            "chunked request body",
            format!(
                "POST /up HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        (
            "duplicate and hop-by-hop headers",
            format!(
                "GET / HTTP/1.1\r\n{h}X-A: 1\r\nX-B: 2\r\nx-a: 3\r\nConnection: keep-alive, \
                 X-B\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\n\r\n"
            ),
        ),
        (
            "client forwarding headers",
            format!(
                "GET / HTTP/1.1\r\n{h}X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\
                 X-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.test\r\n\r\n"
            ),
        ),
        (
            "Host with port and capitals",
            "GET / HTTP/1.1\r\nHost: A.App.Test:8080\r\n\r\n".into(),
        ),
        (
            "unknown host",
            "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n".into(),
        ),
        ("no Host", "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n".into()),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\n{h}Host: b.app.test\r\n\r\n"),
        ),
        ("HTTP/1.0 without Host", "GET /x HTTP/1.0\r\n\r\n".into()),
        ("HTTP/1.0 with Host", format!("GET /x HTTP/1.0\r\n{h}\r\n")),
        (
            "the server's own",
            "GET /health HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
        ),
        (
            "absolute-form target",
            format!("GET http://a.app.test/abs?q=1 HTTP/1.1\r\n{h}\r\n"),
        ),
        ("asterisk form", format!("OPTIONS * HTTP/1.1\r\n{h}\r\n")),
        (
            "authority form",
            format!("GET a.app.test HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "CONNECT",
            format!("CONNECT a.app.test:443 HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "characters a URI may not hold",
            format!("GET /a<b> HTTP/1.1\r\n{h}\r\n"),
        ),
        ("fragment", format!("GET /a#frag HTTP/1.1\r\n{h}\r\n")),
        (
            "Expect: 100-continue",
            format!("POST /e HTTP/1.1\r\n{h}Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
        ),
        (
            "unsupported transfer coding",
            format!("POST /g HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"),
        ),
        (
            "two Content-Lengths",
            format!("POST /c HTTP/1.1\r\n{h}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ),
        (
            "Content-Length and chunked",
            format!(
                "POST /c HTTP/1.1\r\n{h}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                 0\r\n\r\n"
            ),
        ),
        (
            "a head over max_head",
            format!("GET / HTTP/1.1\r\n{h}X-Long: {long}\r\n\r\n"),
        ),
        (
            "Connection: close",
            format!("GET / HTTP/1.1\r\n{h}Connection: close\r\n\r\n"),
        ),
        ("lower-case method", format!("get / HTTP/1.1\r\n{h}\r\n")),
        ("extension method", format!("PURGE /x HTTP/1.1\r\n{h}\r\n")),
        (
            "bare LF line ends",
            "GET /lf HTTP/1.1\nHost: a.app.test\n\n".into(),
        ),
        (
            "obsolete line folding",
            format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("GET / HTTP/1.1\r\n{h}X-Bad : 1\r\n\r\n"),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\n{h}X-Nul: a\0b\r\n\r\n"),
        ),
        ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into()),
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\n{h}\r\n")),
        (
            "garbage",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03".into(),
        ),
        (
            "pipelined pair",
            format!("GET /one HTTP/1.1\r\n{h}\r\nGET /two HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "Upgrade asked, app does not switch",
            format!("GET /ws HTTP/1.1\r\n{h}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        ),
    ]
}

#[tokio::test]
async fn the_fast_path_and_hyper_treat_every_request_alike() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let seen = Arc::new(Mutex::new(Vec::new()));
    app(&socket, seen.clone());
    let endpoint = Endpoint::unix_any(&socket);
    let (fast, hyper) = (
        engine(endpoint.clone(), true).await,
        engine(endpoint, false).await,
    );
    let started = Instant::now();
    let mut differences = Vec::new();
    for (name, request) in corpus() {
        let mut got = Vec::new();
        for addr in [fast, hyper] {
            seen.lock().unwrap().clear();
            let raw = exchange(addr, request.as_bytes()).await;
            let received = std::mem::take(&mut *seen.lock().unwrap());
            // HEAD answers have no body: the parser must know which requests were HEAD.
            let heads: Vec<bool> = received
                .iter()
                .map(|(line, _, _)| line.starts_with("HEAD "))
                .collect();
            got.push((received, answers(&raw, &heads)));
        }
        if got[0] != got[1] {
            differences.push(format!(
                "{name}:\n  fast path: {:?}\n  hyper:     {:?}",
                got[0], got[1]
            ));
        }
        // The corpus ends every exchange with GET /end: a request the app never saw (other
        // than that one) was refused by both, which is fine; one that got through must have
        // got through both ways, which the comparison above says.
    }
    assert!(
        differences.is_empty(),
        "the fast path and hyper differ ({} of {} requests):\n{}",
        differences.len(),
        corpus().len(),
        differences.join("\n")
    );
    eprintln!(
        "{} requests compared in {:?}",
        corpus().len(),
        started.elapsed()
    );
}
