//! `isolation = "wasm"` with and without `outbound`: what a component can reach (another host
//! yes, when allowed; this host by any of its addresses, never).

use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn building(extra: &str) -> Option<Building> {
    test_support::wasm::building(TEN, extra)
}

fn front(b: &Building, path: &str) -> (u16, String) {
    b.front("hello:one", "GET", path)
}

const OUTSIDE: &str = "import socket\ns=socket.socket(); s.bind((ADDR, PORT)); s.listen()\nwhile True:\n    c,_=s.accept(); c.recv(4096); c.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 7\\r\\nconnection: close\\r\\n\\r\\noutside'); c.close()";

#[test]
fn outbound_requests_are_refused_unless_allowed_and_never_reach_this_host() {
    if !test_support::root_or_skip("network namespaces") {
        return;
    }
    // "Outside": another host, in a network namespace of its own.
    let Some(mut outside) = test_support::netns::Netns::new("tenwasm", 231) else {
        return;
    };
    let script = OUTSIDE
        .replace("ADDR", &format!("'{}'", outside.ip))
        .replace("PORT", "8080");
    outside.spawn("python3", &["-c", &script]);
    // A service of this host, on all its addresses.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = std::io::Read::read(&mut s, &mut [0u8; 4096]);
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nmine",
            );
        }
    });
    let away = format!("/fetch?http://{}:8080/", outside.ip);
    wait_for("the outside server", SOON, || {
        std::net::TcpStream::connect((outside.ip.as_str(), 8080)).ok()
    });
    for (extra, allowed) in [("", false), ("outbound = true", true)] {
        let Some(mut b) = building(extra) else { return };
        b.start();
        b.ten_ok(&["spawn", "hello:one"]);
        let (status, body) = front(&b, &away);
        match allowed {
            true => assert_eq!((status, body.as_str()), (200, "fetched 200: outside")),
            false => assert!(
                status == 502 && body.contains("HttpRequestDenied"),
                "{body}"
            ),
        }
        // This host, by any of its addresses (loopback, the veth's, the LAN's, a name):
        // its own services and other tenants' ports. Never.
        let mut own = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("{}:{port}", outside.host_ip),
            format!("[::ffff:127.0.0.1]:{port}"),
            format!("localhost:{}", b.http_addr().rsplit(':').next().unwrap()),
        ];
        if let Some(ip) = non_loopback_ipv4() {
            own.push(format!("{ip}:{port}"));
        }
        for target in own {
            let (status, body) = front(&b, &format!("/fetch?http://{target}/"));
            let expected = match allowed {
                true => "DestinationIpProhibited",
                false => "HttpRequestDenied",
            };
            assert!(
                status == 502 && body.contains(expected),
                "{extra} {target}: {status} {body}"
            );
        }
        // HTTPS from inside the component (to a server that does not speak it): a TLS error
        // for the component, not a failure of its host.
        let pid = b.instance("hello:one").unwrap()["pid"].clone();
        let (status, body) = front(&b, &format!("/fetch?https://{}:8080/", outside.ip));
        assert_eq!(status, 502, "{body}");
        if allowed {
            assert!(
                body.contains("Tls") || body.contains("Connection"),
                "{body}"
            );
        }
        assert_eq!(front(&b, "/").0, 200);
        assert_eq!(b.instance("hello:one").unwrap()["pid"], pid);
        // Without outbound, the host has no network at all: a namespace of its own.
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let host_pid = b.tenant_processes().into_iter().max().unwrap();
        let theirs = std::fs::read_link(format!("/proc/{host_pid}/ns/net")).unwrap();
        assert_eq!(mine == theirs, allowed, "{extra}");
        if !allowed {
            // ...empty: not even its loopback is up.
            let lo = std::process::Command::new("nsenter")
                .arg(format!("--net=/proc/{host_pid}/ns/net"))
                .args(["ip", "-o", "link"])
                .output()
                .unwrap();
            let links = String::from_utf8_lossy(&lo.stdout);
            assert_eq!(links.lines().count(), 1, "{links}");
            assert!(
                links.contains("lo:") && links.contains("state DOWN"),
                "{links}"
            );
        }
    }
}

fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    // The address a UDP socket would use towards a public one (nothing is sent).
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
        _ => None,
    }
}
