//! What clients send, against the limits: request bodies against `upstream_timeout` (the
//! instance's time to answer counts from the end of the body, so a slow upload that keeps
//! moving is never cut, and a body that stops coming is the client's fault: 408, not the
//! instance's 504), and request heads against `max_header_kb`, whatever the request.

use std::io::Read;
use std::time::Duration;

use test_support::Building;
use test_support::http::request;

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
upstream_timeout = 2
max_header_kb = 16

[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"
"#;

/// A body that comes `piece` bytes at a time, `pause` apart, and ends after `total` bytes
/// (sooner than the declared length, for a stalled client).
struct Trickle {
    left: usize,
    piece: usize,
    pause: Duration,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        std::thread::sleep(self.pause);
        let n = self.piece.min(self.left).min(buf.len());
        buf[..n].fill(b'x');
        self.left -= n;
        Ok(n)
    }
}

fn upload(b: &Building, declared: u64, mut body: Trickle) -> (u16, String) {
    let body = Some((declared, &mut body as &mut dyn Read));
    let mut r = request(
        &b.http_addr(),
        "a.web.tenement.test",
        "POST",
        "/upload",
        &[],
        body,
    )
    .expect("an answer");
    (r.status, r.text().unwrap())
}

#[test]
fn a_slow_upload_that_keeps_moving_outlives_upstream_timeout() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    // 4 s of upload, twice upstream_timeout, a piece every 200 ms.
    let trickle = Trickle {
        left: 20 * 1000,
        piece: 1000,
        pause: Duration::from_millis(200),
    };
    let (status, text) = upload(&b, 20_000, trickle);
    assert_eq!((status, text.as_str()), (200, "received 20000 bytes"));
}

#[test]
fn a_body_that_stops_coming_is_a_408_not_the_instances_504() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let stalled = Trickle {
        left: 3,
        piece: 3,
        pause: Duration::ZERO,
    };
    let (status, text) = upload(&b, 100, stalled);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("stopped coming"), "{text}");
}

#[test]
fn a_head_over_max_header_kb_is_431_with_or_without_a_body() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let addr = b.http_addr();
    let big = "x".repeat(1000);
    let headers: Vec<(String, &str)> = (0..24)
        .map(|i| (format!("X-Big-{i}"), big.as_str()))
        .collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let host = "a.web.tenement.test";
    let get = request(&addr, host, "GET", "/", &headers, None);
    assert_eq!(get.map(|r| r.status).ok(), Some(431), "24 KB head, GET");
    let mut body = &b"hi"[..];
    let post = request(
        &addr,
        host,
        "POST",
        "/upload",
        &headers,
        Some((2, &mut body)),
    );
    assert_eq!(post.map(|r| r.status).ok(), Some(431), "24 KB head, POST");
    // Under the limit, both pass.
    let small = &headers[..8];
    assert_eq!(
        request(&addr, host, "GET", "/", small, None)
            .unwrap()
            .status,
        200
    );
}
