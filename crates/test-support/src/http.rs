//! A small blocking HTTP/1.1 client for tests: the Host header is whatever the test says (that
//! is what routing looks at), bodies can be streamed, responses read incrementally.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    left: Option<u64>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of body (a chunk, or up to 64 KB); `None` at the end.
    pub fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk {line:?}")))?;
            if size == 0 {
                self.reader.read_line(&mut line)?;
                return Ok(None);
            }
            let mut data = vec![0; size];
            self.reader.read_exact(&mut data)?;
            self.reader.read_line(&mut line)?;
            return Ok(Some(data));
        }
        let want = match self.left {
            Some(0) => return Ok(None),
            Some(n) => n.min(65536) as usize,
            None => 65536,
        };
        let mut data = vec![0; want];
        let n = self.reader.read(&mut data)?;
        if n == 0 {
            return Ok(None);
        }
        data.truncate(n);
        if let Some(l) = self.left.as_mut() {
            *l -= n as u64;
        }
        Ok(Some(data))
    }

    /// Reads the rest of the body, counting bytes without keeping them.
    pub fn body_len(&mut self) -> io::Result<u64> {
        let mut total = 0;
        while let Some(p) = self.next_piece()? {
            total += p.len() as u64;
        }
        Ok(total)
    }

    pub fn text(&mut self) -> io::Result<String> {
        let mut out = Vec::new();
        while let Some(p) = self.next_piece()? {
            out.extend_from_slice(&p);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The connection, for protocols that take over after a 101.
    pub fn into_stream(self) -> BufReader<TcpStream> {
        self.reader
    }
}

/// Sends `method path` to `addr` with `Host: host`, extra headers, and an optional body of
/// `len` bytes produced by `body` (sent with Content-Length).
pub fn request(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(u64, &mut dyn Read)>,
) -> io::Result<Response> {
    send(TcpStream::connect(addr)?, host, method, path, headers, body)
}

/// Like [`request`] (without a body), giving up after `within` to connect and to read.
pub fn request_within(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    within: std::time::Duration,
) -> io::Result<Response> {
    let to: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let stream = TcpStream::connect_timeout(&to, within)?;
    stream.set_read_timeout(Some(within))?;
    send(stream, host, method, path, &[], None)
}

/// Like [`request`], from a chosen local address (e.g. 127.0.0.2), to look like another client.
pub fn request_from(
    from: std::net::Ipv4Addr,
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    send(connect_from(from, addr)?, host, method, path, headers, None)
}

/// A TCP connection to `addr` from the local address `from` (any 127.x.y.z on loopback).
pub fn connect_from(from: std::net::Ipv4Addr, addr: &str) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let to: std::net::SocketAddrV4 = addr.parse().map_err(io::Error::other)?;
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2)/bind(2)/connect(2) with valid, correctly sized addresses; the fd
    // is owned by the TcpStream from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(from, 0);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn send(
    mut s: TcpStream,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(u64, &mut dyn Read)>,
) -> io::Result<Response> {
    if s.read_timeout()?.is_none() {
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((len, _)) = &body {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some((_, reader)) = body {
        io::copy(reader, &mut s)?;
    }
    read_response(s)
}

pub fn get(addr: &str, host: &str, path: &str) -> io::Result<Response> {
    request(addr, host, "GET", path, &[], None)
}

fn read_response(s: TcpStream) -> io::Result<Response> {
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut left = find("content-length").and_then(|v| v.parse().ok());
    if status == 101 || status == 204 || status == 304 {
        left = Some(0);
    }
    Ok(Response {
        status,
        headers,
        reader,
        chunked,
        left,
    })
}

/// Requests `key` (`service:id`) through the front door at `addr` until `stop`: every status
/// seen (0: no answer).
pub fn hammer(
    addr: String,
    key: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<u16>> {
    let (service, id) = key.split_once(':').expect("service:id");
    let host = format!("{id}.{service}.{}", crate::DOMAIN);
    std::thread::spawn(move || {
        let mut seen = vec![];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            seen.push(get(&addr, &host, "/").map(|r| r.status).unwrap_or(0));
        }
        seen
    })
}

/// A websocket to `/ws` of `host` through the front door at `addr` (after its 101).
pub fn websocket(addr: &str, host: &str) -> BufReader<TcpStream> {
    let hs = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = request(addr, host, "GET", "/ws", &hs, None).expect("websocket handshake");
    assert_eq!(r.status, 101);
    r.into_stream()
}
