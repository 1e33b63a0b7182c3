//! The front door: Host routing, the streaming reverse proxy to Unix sockets (and TCP when a
//! service says so), websockets, forwarding headers, limits and error statuses.

use std::io::{Read, Write};
use std::time::Instant;

use test_support::http::{self, get};
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 1
backoff_base_ms = 100
upstream_timeout = 2
max_body_mb = 30

[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.tcponly]
command = "{fixture} --tcp"
listen = "tcp"
health = "/health"
isolation = "process"

[routing.subdomain]
"www" = "web"
"#;

fn building() -> (Building, String) {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    (b, addr)
}

fn text(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut r = get(addr, host, path).unwrap();
    (r.status, r.text().unwrap())
}

#[test]
fn routes_by_host() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "tcponly:t"]);
    assert_eq!(
        text(&addr, "a.web.tenement.test", "/"),
        (200, "hello from web:a\n".into())
    );
    assert_eq!(
        text(&addr, "A.WEB.tenement.test.:8080", "/"),
        (200, "hello from web:a\n".into())
    );
    assert_eq!(
        text(&addr, "web.tenement.test", "/"),
        (200, "hello from web:a\n".into())
    );
    assert_eq!(
        text(&addr, "www.tenement.test", "/"),
        (200, "hello from web:a\n".into()),
        "[routing.subdomain]"
    );
    assert_eq!(
        text(&addr, "t.tcponly.tenement.test", "/"),
        (200, "hello from tcponly:t\n".into()),
        "listen = tcp"
    );
    let (code, body) = text(&addr, "tenement.test", "/health");
    assert_eq!(code, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    let (code, body) = text(&addr, "nope.tenement.test", "/");
    assert_eq!(code, 404);
    assert!(body.contains("no service `nope`"), "{body}");
    assert_eq!(
        text(&addr, "zz.web.tenement.test", "/").0,
        404,
        "never spawned"
    );
    // A Host outside the domain (localhost, the machine's name) reaches tenement itself.
    let (code, body) = text(&addr, "localhost", "/health");
    assert_eq!(code, 200, "{body}");
    assert_eq!(text(&addr, "a.b.web.tenement.test", "/").0, 404);
    for bad in [
        "a b",
        "web.tenement.test:99999",
        "a_b.web.tenement.test",
        "..tenement.test",
    ] {
        assert_eq!(text(&addr, bad, "/").0, 400, "Host {bad:?}");
    }
    // No Host at all: allowed in HTTP/1.0 (the bare domain), a 400 in HTTP/1.1.
    for (version, want) in [("1.0", "200"), ("1.1", "400")] {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "GET /health HTTP/{version}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(
            answer.split(' ').nth(1) == Some(want),
            "HTTP/{version}: {answer}"
        );
    }
    // X-Forwarded-Host never routes.
    let mut r = http::request(
        &addr,
        "tenement.test",
        "GET",
        "/health",
        &[("X-Forwarded-Host", "a.web.tenement.test")],
        None,
    )
    .unwrap();
    assert!(r.text().unwrap().contains("status"));
    // An absolute-form target is routed by Host and reaches the app in origin form.
    b.ten_ok(&["spawn", "web:abs"]);
    let mut r = http::request(
        &addr,
        "abs.web.tenement.test",
        "GET",
        "http://admin.internal/pid",
        &[],
        None,
    )
    .unwrap();
    let status = r.status;
    assert_eq!(status, 200, "{}", r.text().unwrap());
}

#[test]
fn forwarding_headers_and_hop_by_hop() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let headers = [
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "secret"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Custom", "kept"),
    ];
    let mut r = http::request(
        &addr,
        "a.web.tenement.test",
        "GET",
        "/headers",
        &headers,
        None,
    )
    .unwrap();
    let seen = r.text().unwrap();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: a.web.tenement.test"),
        "{seen}"
    );
    assert!(
        seen.contains("forwarded: for=127.0.0.1;host=\"a.web.tenement.test\";proto=http"),
        "{seen}"
    );
    assert!(seen.contains("x-custom: kept"), "{seen}");
    assert!(
        !seen.contains("x-private") && !seen.contains("keep-alive"),
        "{seen}"
    );
}

#[test]
fn framing_and_host_cannot_be_smuggled() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let host = "a.web.tenement.test";
    // A Connection token naming Content-Length must not strip the body's framing: the app
    // would read this body as a second request, of the client's making.
    let smuggled = b"GET /headers HTTP/1.1\r\nHost: a.web.tenement.test\r\n\r\n";
    let mut body = &smuggled[..];
    let mut r = http::request(
        &addr,
        host,
        "POST",
        "/upload",
        &[("Connection", "content-length")],
        Some((smuggled.len() as u64, &mut body)),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, format!("received {} bytes", smuggled.len()))
    );
    // Two Host headers: routed by one, perhaps read by the app as the other.
    let r = http::request(
        &addr,
        host,
        "GET",
        "/",
        &[("Host", "b.web.tenement.test")],
        None,
    );
    assert_eq!(r.unwrap().status, 400);
    let r = http::request(&addr, host, "CONNECT", "a.web.tenement.test:443", &[], None);
    assert_eq!(r.unwrap().status, 405);
    // A target that is no path; a transfer coding the app would not be told of.
    let te = "Transfer-Encoding: gzip, chunked\r\n";
    for (line, extra, want) in [("GET pid", "", "400"), ("POST /upload", te, "501")] {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "{line} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.split(' ').nth(1), Some(want), "{line}: {answer}");
    }
}

#[test]
fn an_interim_answer_before_the_body_is_read_does_not_stop_the_upload() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    // The app sends 103 Early Hints, then reads the 2 MB body, then answers.
    let len = 2 * 1024 * 1024;
    assert_eq!(
        upload(&addr, "/upload?hints=1", len),
        (200, format!("received {len} bytes"))
    );
}

/// One response read off a kept-alive connection: status, headers (names lowercased), body
/// (by Content-Length or chunked; none for a HEAD).
fn next_response(
    r: &mut impl std::io::BufRead,
    head_request: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let Some((n, v)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_request {
    } else if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (status, headers, body)
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    // Four requests in one write: the POST (a body) is where the connection moves from the
    // front door's own loop to hyper, with the bytes already read.
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a.web.tenement.test\r\n\r\n\
          HEAD /pid HTTP/1.1\r\nHost: a.web.tenement.test\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: a.web.tenement.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /pid HTTP/1.1\r\nHost: a.web.tenement.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let (status, headers, body) = next_response(&mut r, false);
    assert_eq!((status, &body[..]), (200, &b"hello from web:a\n"[..]));
    assert!(headers.iter().any(|(n, _)| n == "date"), "{headers:?}");
    let (status, _, body) = next_response(&mut r, true);
    assert!(body.is_empty() && status != 0);
    let (status, _, body) = next_response(&mut r, false);
    assert_eq!((status, &body[..]), (200, &b"received 3 bytes"[..]));
    let (status, headers, _) = next_response(&mut r, false);
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("connection".into(), "close".into())),
        "{headers:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );

    // The same on the front door's own path, with nothing else on the connection; header
    // names come out in lower case (the app writes `Content-Type`), as hyper writes them.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.web.tenement.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("\r\ncontent-type: text/plain\r\n"), "{raw}");
    assert!(raw.contains("\r\nconnection: close\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nhello from web:a\n"), "{raw}");
}

#[test]
fn idle_and_slow_clients_are_cut_off_after_header_timeout() {
    let config = CONFIG.replace("max_body_mb = 30", "max_body_mb = 30\nheader_timeout = 1");
    let mut b = Building::new(TEN, &config);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "web:a"]);
    let host = "a.web.tenement.test";
    // Kept alive after an answer, then closed once idle for header_timeout.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.web.tenement.test\r\n\r\n")
        .unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    assert_eq!(next_response(&mut r, false).0, 200);
    let idle = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0);
    assert!(idle.elapsed().as_secs() < 20);
    // A head trickling in a byte at a time is cut off too (the limit is for the whole head).
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    for byte in b"GET / HTTP/1.1\r\nHost: a.web.tenement.test\r\nX-Slow: 1234567890\r\n\r\n" {
        if s.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        cut || answer.is_empty(),
        "a slow head was answered: {answer:?}"
    );
    assert!(started.elapsed().as_secs() < 20);
    // upstream_timeout (2 s) runs on the same per-connection timer as header_timeout (1 s):
    // an answer after 1.5 s is waited for, one after 4 s is a 504.
    assert_eq!(text(&addr, host, "/sleep?ms=1500"), (200, "slept".into()));
    assert_eq!(text(&addr, host, "/sleep?ms=4000").0, 504);
    // An answer that streams for longer than header_timeout is not cut.
    let mut r = get(&addr, host, "/drip?n=3&ms=800").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text().unwrap(), "chunk 0\nchunk 1\nchunk 2\n");
}

/// POSTs `len` bytes (never all held in memory) to web:a at `path`: status and answer.
fn upload(addr: &str, path: &str, len: u64) -> (u16, String) {
    let mut up = Zeros(len);
    let host = "a.web.tenement.test";
    let mut r = http::request(addr, host, "POST", path, &[], Some((len, &mut up))).unwrap();
    (r.status, r.text().unwrap())
}

/// A reader of `n` bytes that never holds them all.
struct Zeros(u64);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.0) as usize;
        buf[..n].fill(b'z');
        self.0 -= n as u64;
        Ok(n)
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap()
}

#[test]
fn twenty_mb_up_and_down_are_streamed() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let before = rss_kb(b.server_pid());
    let len = 20 * 1024 * 1024u64;
    assert_eq!(
        upload(&addr, "/upload", len),
        (200, format!("received {len} bytes"))
    );
    let mut down = get(&addr, "a.web.tenement.test", "/download?mb=20").unwrap();
    assert_eq!(down.status, 200);
    assert_eq!(down.body_len().unwrap(), len);
    let grown = rss_kb(b.server_pid()).saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "ten serve grew by {grown} KB while proxying 40 MB: bodies are being buffered"
    );
}

#[test]
fn chunked_response_arrives_incrementally() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let mut r = get(&addr, "a.web.tenement.test", "/drip?n=3&ms=1000").unwrap();
    assert_eq!(r.status, 200);
    let first = r.next_piece().unwrap().unwrap();
    let got_first = Instant::now();
    assert_eq!(first, b"chunk 0\n");
    let mut rest = vec![];
    while let Some(p) = r.next_piece().unwrap() {
        rest.push(p);
    }
    assert_eq!(rest, [b"chunk 1\n".to_vec(), b"chunk 2\n".to_vec()]);
    // The app waits 1 s between chunks; had the proxy buffered, all would arrive together.
    assert!(
        got_first.elapsed().as_millis() >= 1500,
        "chunks arrived together"
    );
}

/// A masked client frame.
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn websocket_echo_through_the_proxy() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    let hs = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = http::request(&addr, "a.web.tenement.test", "GET", "/ws", &hs, None).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let mut conn = r.into_stream();
    for msg in ["hello", "again, after the 101"] {
        conn.get_mut()
            .write_all(&ws_frame(1, msg.as_bytes()))
            .unwrap();
        let mut head = [0u8; 2];
        conn.read_exact(&mut head).unwrap();
        let mut payload = vec![0; (head[1] & 0x7f) as usize];
        conn.read_exact(&mut payload).unwrap();
        assert_eq!(
            (head[0], String::from_utf8(payload).unwrap()),
            (0x81, msg.to_string())
        );
    }
}

#[test]
fn dying_app_gives_502_then_the_restarted_one_answers() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    assert_eq!(text(&addr, "a.web.tenement.test", "/crash").0, 502);
    b.wait_instance("web:a", "restarted", |i| {
        i["restarts"] == 1 && i["state"] == "running"
    });
    assert_eq!(text(&addr, "a.web.tenement.test", "/").0, 200);
    let log = b.serve_log();
    assert!(
        log.contains("WARN") && log.contains("proxied request failed"),
        "{log}"
    );
}

#[test]
fn timeouts_and_limits() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    assert_eq!(
        text(&addr, "a.web.tenement.test", "/sleep?ms=4000").0,
        504,
        "upstream_timeout = 2"
    );
    let mut big = Zeros(31 * 1024 * 1024);
    let r = http::request(
        &addr,
        "a.web.tenement.test",
        "POST",
        "/upload",
        &[],
        Some((31 * 1024 * 1024, &mut big)),
    );
    // The proxy answers 413 at once; it may close before the client finished sending.
    if let Ok(r) = r {
        assert_eq!(r.status, 413);
    }
    let long = "x".repeat(200 * 1024);
    let r = http::request(
        &addr,
        "a.web.tenement.test",
        "GET",
        "/",
        &[("X-Long", &long)],
        None,
    );
    assert!(
        r.is_err() || r.unwrap().status == 431,
        "oversized head refused"
    );
    assert_eq!(
        text(&addr, "a.web.tenement.test", "/").0,
        200,
        "still serving"
    );
}

#[test]
fn weighted_routing_and_weight_zero() {
    let (b, addr) = building();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    b.ten_ok(&["weight", "web:a", "80"]);
    b.ten_ok(&["weight", "web:b", "20"]);
    let n = 500;
    let mut a = 0;
    for _ in 0..n {
        if text(&addr, "web.tenement.test", "/").1 == "hello from web:a\n" {
            a += 1;
        }
    }
    let share = a as f64 / n as f64;
    assert!(
        (0.70..=0.90).contains(&share),
        "web:a got {share} of traffic at weight 80/20"
    );
    b.ten_ok(&["weight", "web:b", "0"]);
    for _ in 0..100 {
        assert_eq!(
            text(&addr, "web.tenement.test", "/").1,
            "hello from web:a\n"
        );
    }
    for out_of_range in ["101", "-1"] {
        let bad = b.ten(&["weight", "web:a", out_of_range]);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.contains("0..=100"), "{err}");
    }
    assert_eq!(b.instance("web:b").unwrap()["weight"], 0);
    b.ten_ok(&["weight", "web:a", "0"]);
    assert_eq!(
        text(&addr, "web.tenement.test", "/").0,
        503,
        "no instance takes traffic"
    );
    wait_for("the building to still be fine", SOON, || {
        (text(&addr, "tenement.test", "/health").0 == 200).then_some(())
    });
}
