//! `slum serve` for the tests: started on a free port, killed on drop; raw HTTP to it; the
//! `ten` beside it; a fleet of servers on a LAN (`fleet`).
#![allow(dead_code)] // each test binary uses its part

pub mod fleet;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const SLUM: &str = env!("CARGO_BIN_EXE_slum");

pub struct Serving {
    child: Child,
    pub url: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slum serve --db DB ARGS` on a free port of 127.0.0.1 (its URL read from the line it
/// prints).
pub fn serve(db: &Path, args: &[&str]) -> Serving {
    serve_on("127.0.0.1", db, args)
}

/// `slum serve --db DB ARGS` on a free port of `ip`.
pub fn serve_on(ip: &str, db: &Path, args: &[&str]) -> Serving {
    let mut child = Command::new(SLUM)
        .args(["serve", "--listen", &format!("{ip}:0"), "--db"])
        .arg(db)
        .args(args)
        .env_remove("SLUM_TOKEN")
        .env_remove("SLUM_JOIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(format!("{}.log", db.display())).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    Serving { child, url }
}

/// `ten`, built next to `slum` (`cargo build --workspace --bins`; scripts/test does).
pub fn ten() -> String {
    let path = PathBuf::from(SLUM).with_file_name("ten");
    assert!(
        path.exists(),
        "{} is missing: cargo build --workspace --bins",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A raw HTTP/1.1 request to `base` (`http://HOST:PORT`) with `Authorization: Bearer TOKEN`
/// and `Content-Type: KIND`: the whole answer, head and body.
pub fn raw(base: &str, method: &str, path: &str, token: &str, kind: &str, body: &str) -> String {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A JSON request (see [`raw`]): (status, body).
pub fn http(base: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let answer = raw(base, method, path, token, "application/json", body);
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
