//! `tenement-fixture`: a tiny, deliberately dumb HTTP/1.1 server used by the
//! integration tests and benchmarks of the tenement supervisor.
//!
//! It listens on the Unix socket named by `SOCKET_PATH` (or on
//! `127.0.0.1:$PORT` with `--tcp`), serves a few plain-text endpoints
//! (`/health`, `/`, `/env`, `/pid`, `/exit?code=N`) with keep-alive, and has
//! flags to misbehave on purpose (slow start, crash, hang, fork, ignore
//! SIGTERM, huge or invalid log lines, log spam, ...). Run with `--help`.

mod attack;
mod stream;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::process::{self, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const USAGE: &str = "\
usage: tenement-fixture [flags]
  env SOCKET_PATH=<path> (required), SERVICE_NAME, INSTANCE_ID, PORT (with --tcp)
  --tcp                  listen on 127.0.0.1:$PORT instead of SOCKET_PATH
  --delay-listen MS      sleep MS milliseconds before binding
  --crash-after MS       exit MS ms after listening (code from --exit-code, default 1)
  --exit-code N          alone: exit immediately with code N without listening
  --hang                 never bind; sleep forever
  --fork N               start N child processes that sleep forever (not waited on)
  --sleeper              (internal) just sleep forever
  --unhealthy-after N    /health answers 200 N times, then 500
  --ignore-sigterm       ignore SIGTERM
  --big-line-mb N        print one N MiB stdout line and an invalid UTF-8 line at start
  --spam                 after listening, print `line N` to stdout forever
  --threads N            start N idle background threads
  --exit-on-term N       exit with code N on SIGTERM";

#[derive(Default)]
struct Opts {
    tcp: bool,
    delay_listen_ms: Option<u64>,
    crash_after_ms: Option<u64>,
    exit_code: Option<i32>,
    hang: bool,
    fork: u32,
    sleeper: bool,
    unhealthy_after: Option<u64>,
    ignore_sigterm: bool,
    exit_on_term: Option<i32>,
    big_line_mb: Option<usize>,
    spam: bool,
    threads: u32,
}

static TERM_EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(TERM_EXIT_CODE.load(Ordering::SeqCst)) }
}

/// Number of `/health` requests answered so far.
static HEALTH_COUNT: AtomicU64 = AtomicU64::new(0);

fn usage_exit(msg: &str) -> ! {
    eprintln!("tenement-fixture: {msg}\n{USAGE}");
    process::exit(2);
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Opts {
    fn value<T: std::str::FromStr>(flag: &str, v: Option<OsString>) -> T {
        v.and_then(|v| v.to_str()?.parse().ok())
            .unwrap_or_else(|| usage_exit(&format!("{flag} needs a numeric value")))
    }
    let mut o = Opts::default();
    while let Some(arg) = args.next() {
        let flag = arg.to_string_lossy();
        match &*flag {
            "--tcp" => o.tcp = true,
            "--delay-listen" => o.delay_listen_ms = Some(value(&flag, args.next())),
            "--crash-after" => o.crash_after_ms = Some(value(&flag, args.next())),
            "--exit-code" => o.exit_code = Some(value(&flag, args.next())),
            "--hang" => o.hang = true,
            "--fork" => o.fork = value(&flag, args.next()),
            "--sleeper" => o.sleeper = true,
            "--unhealthy-after" => o.unhealthy_after = Some(value(&flag, args.next())),
            "--ignore-sigterm" => o.ignore_sigterm = true,
            "--exit-on-term" => o.exit_on_term = Some(value(&flag, args.next())),
            "--big-line-mb" => o.big_line_mb = Some(value(&flag, args.next())),
            "--spam" => o.spam = true,
            "--threads" => o.threads = value(&flag, args.next()),
            "-h" | "--help" => usage_exit("help requested"),
            other => usage_exit(&format!("unknown argument {other:?}")),
        }
    }
    o
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let opts = parse_args(std::env::args_os().skip(1));
    if opts.sleeper {
        sleep_forever();
    }
    if opts.ignore_sigterm {
        // SAFETY: installing SIG_IGN for SIGTERM has no handler code to run and
        // is done before any other thread exists.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    if let Some(code) = opts.exit_on_term {
        TERM_EXIT_CODE.store(code, Ordering::SeqCst);
        // SAFETY: the handler only calls async-signal-safe functions (atomic load, _exit).
        unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    }
    eprintln!("fixture started pid={}", process::id());

    if let (Some(code), None) = (opts.exit_code, opts.crash_after_ms) {
        process::exit(code);
    }

    // Resolve the address early so a missing variable fails before forking.
    let addr = if opts.hang {
        None
    } else {
        Some(listen_addr(opts.tcp))
    };

    if let Some(mb) = opts.big_line_mb {
        let mut out = io::stdout().lock();
        let mut line = vec![b'x'; mb * 1024 * 1024];
        line.push(b'\n');
        let _ = out.write_all(&line);
        let _ = out.write_all(b"bad \xff\xfe utf8\n");
        let _ = out.write_all(b"after big line\n");
        let _ = out.flush();
    }
    for i in 0..opts.threads {
        thread::Builder::new()
            .name(format!("idle-{i}"))
            .spawn(|| sleep_forever())
            .expect("spawn idle thread");
    }
    for _ in 0..opts.fork {
        let exe = std::env::current_exe().expect("current_exe");
        // The Child is dropped on purpose: it is never waited on.
        let pid = Command::new(exe)
            .arg("--sleeper")
            .spawn()
            .expect("fork")
            .id();
        eprintln!("fixture forked child pid={pid}");
    }
    let Some(addr) = addr else { sleep_forever() };
    if let Some(ms) = opts.delay_listen_ms {
        thread::sleep(Duration::from_millis(ms));
    }

    let listener = bind(&addr);
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening on {}", addr.display());
        let _ = out.flush();
    }
    if let Some(ms) = opts.crash_after_ms {
        let code = opts.exit_code.unwrap_or(1);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            eprintln!("fixture crashing with code {code}");
            process::exit(code);
        });
    }
    if opts.spam {
        thread::spawn(spam);
    }
    let unhealthy_after = opts.unhealthy_after.unwrap_or(u64::MAX);
    match listener {
        Listener::Unix(l) => serve(l.incoming(), unhealthy_after),
        Listener::Tcp(l) => serve(l.incoming(), unhealthy_after),
    }
}

enum Addr {
    Unix(OsString),
    Tcp(u16),
}

impl Addr {
    fn display(&self) -> String {
        match self {
            Addr::Unix(p) => p.to_string_lossy().into_owned(),
            Addr::Tcp(port) => format!("127.0.0.1:{port}"),
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

fn listen_addr(tcp: bool) -> Addr {
    let var = if tcp { "PORT" } else { "SOCKET_PATH" };
    let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        eprintln!("tenement-fixture: {var} is not set");
        process::exit(2);
    };
    if !tcp {
        return Addr::Unix(v);
    }
    match v.to_str().and_then(|s| s.parse().ok()) {
        Some(port) => Addr::Tcp(port),
        None => {
            eprintln!("tenement-fixture: PORT is not a port number: {v:?}");
            process::exit(2);
        }
    }
}

fn bind(addr: &Addr) -> Listener {
    let res = match addr {
        Addr::Unix(path) => {
            // Remove a stale socket left by a previous run.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => UnixListener::bind(path).map(Listener::Unix),
            }
        }
        Addr::Tcp(port) => TcpListener::bind(("127.0.0.1", *port)).map(Listener::Tcp),
    };
    res.unwrap_or_else(|e| {
        eprintln!("tenement-fixture: cannot listen on {}: {e}", addr.display());
        process::exit(1);
    })
}

/// Prints `line N` forever; exits the process quietly (code 0) on EPIPE.
fn spam() {
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    for n in 0u64.. {
        if let Err(e) = writeln!(out, "line {n}")
            && e.kind() == io::ErrorKind::BrokenPipe
        {
            process::exit(0);
        }
    }
}

fn serve<S>(incoming: impl Iterator<Item = io::Result<S>>, unhealthy_after: u64)
where
    S: Send + 'static,
    for<'a> &'a S: Read + Write,
{
    for stream in incoming {
        match stream {
            Ok(s) => {
                thread::spawn(move || {
                    let _ = handle_conn(&s, unhealthy_after);
                });
            }
            Err(e) => eprintln!("tenement-fixture: accept: {e}"),
        }
    }
}

/// Serves requests on one connection until EOF, error or `Connection: close`.
fn handle_conn<S>(stream: &S, unhealthy_after: u64) -> io::Result<()>
where
    for<'a> &'a S: Read + Write,
{
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_owned();
        if request_line.is_empty() {
            continue; // tolerate stray CRLF between requests
        }
        let mut parts = request_line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let mut close = version == "HTTP/1.0";
        let mut body_len = 0u64;
        let mut chunked = false;
        let mut seen_headers: Vec<String> = Vec::new();
        let mut ws_key = None;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            seen_headers.push(header.to_ascii_lowercase());
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                body_len = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                ws_key = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close")
                    || (close && !value.eq_ignore_ascii_case("keep-alive"));
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == "/upload" && query.contains("hints=1") {
            // An interim answer before the body is read (what a proxy must pass over).
            let mut writer = stream;
            writer.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")?;
        }
        let received = if chunked {
            stream::read_chunked(&mut reader)?
        } else {
            io::copy(&mut (&mut reader).take(body_len), &mut io::sink())?
        };

        let num = |name: &str, default: u64| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let mut writer = stream;
        match (method, path) {
            ("GET", "/ws") if ws_key.is_some() => {
                return stream::websocket(
                    &mut reader,
                    &mut writer,
                    ws_key.as_deref().unwrap_or(""),
                );
            }
            ("GET", "/download") => {
                stream::download(&mut writer, num("mb", 1))?;
                continue;
            }
            ("GET", "/drip") => {
                stream::drip(&mut writer, num("n", 3), num("ms", 1000))?;
                continue;
            }
            // Head first, body 100 ms later (as many frameworks write them): a client that
            // hangs up after the head makes the body's write fail, which is logged.
            ("GET", "/split") => {
                writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")?;
                thread::sleep(Duration::from_millis(100));
                if let Err(e) = writer.write_all(b"ok\n") {
                    eprintln!("body write failed: {e}");
                    return Ok(());
                }
                continue;
            }
            // Dies without answering: the proxy must say 502.
            ("GET", "/crash") => process::exit(3),
            ("GET", "/sleep") => thread::sleep(Duration::from_millis(num("ms", 1000))),
            _ => {}
        }
        let mut exit_code = None;
        let (status, body): (u16, Vec<u8>) = match (method, path) {
            ("GET", p) if let Some(answer) = attack::handle(p, query) => answer,
            ("GET", "/health") => {
                if HEALTH_COUNT.fetch_add(1, Ordering::SeqCst) < unhealthy_after {
                    (200, b"ok".to_vec())
                } else {
                    (500, b"unhealthy".to_vec())
                }
            }
            ("GET", "/") => {
                let var = |k| std::env::var(k).unwrap_or_default();
                let msg = format!(
                    "hello from {}:{}\n",
                    var("SERVICE_NAME"),
                    var("INSTANCE_ID")
                );
                (200, msg.into_bytes())
            }
            ("GET", "/env") => (200, env_dump()),
            ("GET", "/pid") => (200, process::id().to_string().into_bytes()),
            ("GET", "/sleep") => (200, b"slept".to_vec()),
            ("POST", "/upload") => (200, format!("received {received} bytes").into_bytes()),
            ("GET", "/headers") => (200, seen_headers.join("\n").into_bytes()),
            ("GET", "/exit") => {
                let code = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("code="))
                    .unwrap_or("0");
                match code.parse::<i32>() {
                    Ok(c) => {
                        exit_code = Some(c);
                        close = true;
                        (200, format!("exiting with {c}").into_bytes())
                    }
                    Err(_) => (400, b"bad exit code".to_vec()),
                }
            }
            // Introspection for isolation tests: what this process can see.
            ("GET", "/ps") => (200, visible_pids().into_bytes()),
            ("GET", "/zombies") => (200, zombies().to_string().into_bytes()),
            ("GET", "/say") => {
                let text = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("text="))
                    .unwrap_or("");
                println!("{text}");
                eprintln!("said {text}");
                (200, b"said".to_vec())
            }
            ("GET", "/alloc") => (200, alloc(num("mb", 1)).into_bytes()),
            ("GET", "/forkbomb") => (200, forkbomb(num("max", 10_000)).into_bytes()),
            ("GET", "/write") => write_file(num("mb", 1)),
            ("GET", "/orphan") => {
                orphan();
                (200, b"orphaned a grandchild".to_vec())
            }
            ("GET", "/hostname") => (
                200,
                std::fs::read("/proc/sys/kernel/hostname").unwrap_or_default(),
            ),
            ("GET", "/read") => match std::fs::read(query_path(query)) {
                Ok(bytes) => (200, bytes),
                Err(e) => (500, e.to_string().into_bytes()),
            },
            ("GET", "/ls") => match std::fs::read_dir(query_path(query)) {
                Ok(dir) => {
                    let mut names: Vec<String> = dir
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    (200, names.join("\n").into_bytes())
                }
                Err(e) => (500, e.to_string().into_bytes()),
            },
            _ => (404, b"not found".to_vec()),
        };
        let reason = match status {
            200 => "OK",
            507 => "Insufficient Storage",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let mut resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        )
        .into_bytes();
        resp.extend_from_slice(&body);
        writer.write_all(&resp)?;
        writer.flush()?;
        if let Some(code) = exit_code {
            process::exit(code);
        }
        if close {
            return Ok(());
        }
    }
}

/// All environment variables as sorted `KEY=VALUE\n` lines (raw bytes).
fn env_dump() -> Vec<u8> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    vars.sort();
    let mut out = Vec::new();
    for (k, v) in vars {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `path=...` from a query string (no percent-decoding: tests pass plain paths).
fn query_path(query: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .unwrap_or("")
        .to_owned()
}

/// The pids visible in /proc, one per line, ascending.
fn visible_pids() -> String {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids.iter().map(|p| format!("{p}\n")).collect()
}

/// How many visible processes are zombies (state `Z` in /proc/PID/stat).
fn zombies() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Starts `sh -c 'sleep 0.2 &'`: the shell exits at once, its `sleep` is orphaned to PID 1 and
/// exits 200 ms later; only a reaping init keeps it from staying a zombie.
fn orphan() {
    if let Ok(mut child) = Command::new("/bin/sh").args(["-c", "sleep 0.2 &"]).spawn() {
        let _ = child.wait();
    }
}

/// Allocates `mb` MiB, touches every page, and keeps it (for OOM tests).
fn alloc(mb: u64) -> String {
    let v: &'static mut [u8] = Vec::leak(vec![0u8; (mb * 1024 * 1024) as usize]);
    for i in (0..v.len()).step_by(4096) {
        // Volatile: a release build may otherwise drop writes to memory never read again.
        // SAFETY: `i` is in bounds of the leaked slice.
        unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 1) };
    }
    format!("allocated {mb} MiB")
}

/// Starts `sleep` children until fork fails or `max` are running (for pids.max tests).
fn forkbomb(max: u64) -> String {
    for n in 0..max {
        match Command::new("sleep").arg("600").spawn() {
            Ok(child) => std::mem::forget(child),
            Err(e) => return format!("started {n}, then: {e}"),
        }
    }
    format!("started {max}")
}

/// Writes `mb` MiB to `$HOME/fill` (for storage quota tests): 200 on success, 507 with the
/// error (ENOSPC shows as "No space left on device").
fn write_file(mb: u64) -> (u16, Vec<u8>) {
    let path =
        std::path::Path::new(&std::env::var("HOME").unwrap_or_else(|_| ".".into())).join("fill");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        let block = vec![b'f'; 1024 * 1024];
        for _ in 0..mb {
            f.write_all(&block)?;
        }
        f.sync_all()
    });
    match result {
        Ok(()) => (200, format!("wrote {mb} MiB").into_bytes()),
        Err(e) => (507, e.to_string().into_bytes()),
    }
}
