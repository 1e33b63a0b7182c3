//! Scale to zero: idle instances sleep; the next request wakes them and is answered, never
//! dropped; open streams and websockets are activity; on-request spawning is opt-in.

use std::io::{Read, Write};
use std::time::Duration;

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 1

[service.sleepy]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
idle_timeout = 1
isolation = "process"

[service.ondemand]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
spawn_on_request = true
max_instances = 2
isolation = "process"
"#;

fn starts(b: &Building, key: &str) -> usize {
    b.ten_ok(&["logs", key, "--limit", "1000"])
        .matches("fixture started")
        .count()
}

fn asleep(b: &Building, key: &str) {
    b.wait_instance(key, "asleep", |i| i["state"] == "sleeping");
}

#[test]
fn idle_instance_sleeps_and_fifty_concurrent_requests_share_one_wake() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "sleepy:a"]);
    asleep(&b, "sleepy:a");
    assert!(
        b.tenant_processes().is_empty(),
        "a sleeping instance has no process"
    );
    assert_eq!(starts(&b, "sleepy:a"), 1);

    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    let mut r = get(&addr, "a.sleepy.tenement.test", "/pid").unwrap();
                    (r.status, r.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(c, _)| *c == 200), "{answers:?}");
    let pids: std::collections::BTreeSet<&str> = answers.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(pids.len(), 1, "all answered by one process: {pids:?}");
    assert_eq!(starts(&b, "sleepy:a"), 2, "exactly one start for the wake");

    // The weighted route wakes it too.
    asleep(&b, "sleepy:a");
    let mut r = get(&addr, "sleepy.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from sleepy:a\n".into())
    );
}

#[test]
fn a_restart_brings_scale_to_zero_instances_back_asleep() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "sleepy:a"]);
    b.ten_ok(&["spawn", "ondemand:b"]); // no idle_timeout: comes back running
    b.terminate();
    b.start();
    b.wait_instance("ondemand:b", "running", |i| i["state"] == "running");
    // At once, not after idle_timeout: it was never started by the restore.
    assert_eq!(b.instance("sleepy:a").unwrap()["state"], "sleeping");
    assert_eq!(
        starts(&b, "sleepy:a"),
        1,
        "started once, before the restart"
    );
    assert_eq!(
        b.tenant_processes().len(),
        2,
        "only the instance without idle_timeout runs (its shim and app)"
    );
    let mut r = get(&b.http_addr(), "a.sleepy.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from sleepy:a\n".into())
    );
    assert_eq!(starts(&b, "sleepy:a"), 2, "woken by the request");
}

#[test]
fn listed_instances_start_with_the_server_even_if_they_scale_to_zero() {
    let mut b = Building::new(
        TEN,
        &format!("{CONFIG}\n[instances]\nsleepy = [\"listed\"]\n"),
    );
    for round in 1..=2 {
        b.start();
        // Started by `ten serve` itself, with no request, then asleep once idle.
        wait_for("[instances] entry started", SOON, || {
            let logs = b.ten(&["logs", "sleepy:listed", "--limit", "1000"]).stdout;
            let started = String::from_utf8_lossy(&logs)
                .matches("fixture started")
                .count();
            (started == round).then_some(())
        });
        asleep(&b, "sleepy:listed");
        // Sleeping is scale to zero working, not ill health.
        assert!(b.ten(&["health"]).status.success());
        b.terminate();
    }
}

#[test]
fn an_open_websocket_or_stream_keeps_it_awake() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "sleepy:a"]);
    let mut ws = test_support::http::websocket(&addr, "a.sleepy.tenement.test");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        b.instance("sleepy:a").unwrap()["state"],
        "running",
        "idle_timeout 1 s passed with a websocket open"
    );
    let mask = [9u8, 8, 7, 6];
    let mut frame = vec![0x81, 0x80 | 2, 9, 8, 7, 6];
    frame.extend(b"hi".iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    ws.get_mut().write_all(&frame).unwrap();
    let mut echo = [0u8; 4];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo[2..], b"hi");
    drop(ws);
    asleep(&b, "sleepy:a");

    // A slow stream (3 chunks, 1 s apart) is activity as well.
    let mut r = get(&addr, "a.sleepy.tenement.test", "/drip?n=3&ms=1000").unwrap();
    assert_eq!(r.text().unwrap(), "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(starts(&b, "sleepy:a"), 2, "not put to sleep mid-stream");
}

#[test]
fn a_closed_websocket_does_not_keep_it_awake_while_the_client_lingers() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "sleepy:a"]);
    let mut ws = test_support::http::websocket(&addr, "a.sleepy.tenement.test");
    // The close handshake: the app answers and hangs up; the client keeps its socket.
    ws.get_mut().write_all(&[0x88, 0x80, 1, 2, 3, 4]).unwrap();
    let mut close = [0u8; 2];
    ws.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 0]);
    assert_eq!(ws.read(&mut close).unwrap(), 0, "the app hung up");
    // Half-closed and idle for 10 s, the tunnel ends; then idle_timeout (1 s) puts it to sleep.
    asleep(&b, "sleepy:a");
    drop(ws);
}

#[test]
fn unknown_ids_are_404_unless_the_service_spawns_on_request() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    assert_eq!(
        get(&addr, "guess.sleepy.tenement.test", "/")
            .unwrap()
            .status,
        404
    );
    assert!(b.ps().is_empty(), "guessing a hostname started nothing");

    let mut r = get(&addr, "alice.ondemand.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from ondemand:alice\n".into())
    );
    assert_eq!(
        get(&addr, "bob.ondemand.tenement.test", "/")
            .unwrap()
            .status,
        200
    );
    let r = get(&addr, "carol.ondemand.tenement.test", "/").unwrap();
    assert_eq!(r.status, 503, "max_instances = 2");
    assert!(r.header("retry-after").is_some());
    wait_for("two on-demand instances", SOON, || {
        (b.ps().len() == 2).then_some(())
    });
}

#[test]
fn a_request_whose_client_hung_up_no_longer_keeps_the_instance_awake() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "sleepy:a"]);
    // The app takes 40 s to answer; the client gives up after half a second.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /sleep?ms=40000 HTTP/1.1\r\nHost: a.sleepy.tenement.test\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    // The abandoned request is dropped with the client: idle_timeout (1 s) puts the instance
    // to sleep long before the app would have answered.
    let started = std::time::Instant::now();
    asleep(&b, "sleepy:a");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stayed awake for the abandoned request"
    );
}

#[test]
fn a_sleeping_tcp_instance_keeps_its_port() {
    let mut b = Building::new(
        TEN,
        r#"
[service.tcpz]
command = "{fixture} --tcp"
listen = "tcp"
health = "/health"
idle_timeout = 1
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "tcpz:a"]);
    let port = b.instance("tcpz:a").unwrap()["port"].as_u64().unwrap() as u16;
    for round in 0..2 {
        // A request first: the app's side of the pooled connection lingers in TIME_WAIT on
        // the port once the app is put to sleep.
        let mut r = get(&b.http_addr(), "a.tcpz.tenement.test", "/").unwrap();
        assert_eq!(
            (r.status, r.text().unwrap()),
            (200, "hello from tcpz:a\n".into()),
            "round {round}"
        );
        assert_eq!(b.instance("tcpz:a").unwrap()["port"], port);
        asleep(&b, "tcpz:a");
        // No other program can take the port meanwhile (std sets SO_REUSEADDR, as most do).
        let taken = std::net::TcpListener::bind(("127.0.0.1", port));
        assert!(taken.is_err(), "port {port} was free while asleep");
    }
    // ten serve's pooled connections to the app, closed by the app when it went to sleep
    // (CLOSE_WAIT on ten's side), are closed too, not kept until their idle timeout.
    let close_wait_to_port = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[2].ends_with(&format!(":{port:04X}")) && f[3] == "08"
        })
    };
    wait_for(
        "pooled connections to the sleeping app closed",
        SOON,
        || (!close_wait_to_port()).then_some(()),
    );
}
