//! A `wasi:http/proxy` handler that does, per path, what tenement's wasm tests need.
//!
//! `/` hello · `/health` · `/env?NAME` · `/write?NAME` (body to `$HOME/NAME`, then read
//! back) · `/read?PATH` (read any path: what can it see?) · `/alloc?MB` · `/spin` ·
//! `/panic` · `/count` (a static counter: 1 on a fresh instance) · `/log?TEXT` (stdout and
//! stderr) · `/fetch?URL` (an outbound request) · `/echo` (the request body back) ·
//! `/args` (its arguments).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

static COUNT: AtomicU32 = AtomicU32::new(0);

struct Handler;

impl Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = percent_decode(query);
        let (status, body): (u16, Vec<u8>) = match path {
            "/" => (200, b"hello from wasm\n".to_vec()),
            "/health" => (200, b"ok\n".to_vec()),
            "/env" => (
                200,
                std::env::var(&query)
                    .unwrap_or_else(|_| "(unset)".into())
                    .into_bytes(),
            ),
            "/args" => (
                200,
                std::env::args().collect::<Vec<_>>().join(" ").into_bytes(),
            ),
            "/count" => (
                200,
                (COUNT.fetch_add(1, Ordering::SeqCst) + 1)
                    .to_string()
                    .into_bytes(),
            ),
            "/echo" => (200, read_body(request)),
            "/write" => {
                let home = std::env::var("HOME").unwrap_or_default();
                let file = format!("{home}/{query}");
                let data = read_body(request);
                match std::fs::write(&file, &data).and_then(|()| std::fs::read(&file)) {
                    Ok(back) => (200, back),
                    Err(e) => (500, format!("{file}: {e}").into_bytes()),
                }
            }
            "/read" => match std::fs::read(&query) {
                Ok(bytes) => (200, bytes),
                Err(e) => (403, format!("{query}: {e}").into_bytes()),
            },
            "/alloc" => {
                let mb: usize = query.parse().unwrap_or(1);
                let mut v = vec![0u8; mb << 20];
                v.iter_mut().step_by(4096).for_each(|b| *b = 1);
                (
                    200,
                    format!(
                        "allocated {mb} MB ({})",
                        v.iter().filter(|b| **b == 1).count()
                    )
                    .into_bytes(),
                )
            }
            "/spin" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/panic" => panic!("asked to panic"),
            "/log" => {
                println!("stdout: {query}");
                eprintln!("stderr: {query}");
                (200, b"logged\n".to_vec())
            }
            "/fetch" => fetch(&query),
            _ => (404, b"no such path\n".to_vec()),
        };
        respond(out, status, &body);
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).unwrap();
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = outgoing.write().unwrap();
        stream.write_all(body).unwrap();
        stream.flush().unwrap();
    }
    OutgoingBody::finish(outgoing, None).unwrap();
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let body = request.consume().unwrap();
    let mut bytes = Vec::new();
    {
        let mut stream = body.stream().unwrap();
        let _ = stream.read_to_end(&mut bytes);
    }
    bytes
}

/// `GET url` from inside the component; the status and body, or the error.
fn fetch(url: &str) -> (u16, Vec<u8>) {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).unwrap();
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    let future = match wasi::http::outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(e) => return (502, format!("refused: {e:?}").into_bytes()),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let body = response.consume().unwrap();
            let mut bytes = Vec::new();
            {
                let mut stream = body.stream().unwrap();
                let _ = stream.read_to_end(&mut bytes);
            }
            (
                200,
                format!("fetched {status}: ")
                    .into_bytes()
                    .into_iter()
                    .chain(bytes)
                    .collect(),
            )
        }
        Some(Ok(Err(e))) => (502, format!("refused: {e:?}").into_bytes()),
        other => (502, format!("failed: {other:?}").into_bytes()),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

wasi::http::proxy::export!(Handler);
