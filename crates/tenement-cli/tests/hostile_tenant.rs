//! The tenant boundary, attacked as a hostile tenant (and a local user, and an anonymous
//! client) would: real `ten serve`, real tenants at the default isolation level, each attack
//! done by the tenant itself through the fixture's attack endpoints (`crates/fixture-app/src/
//! attack.rs`). Each test failed on the code before the boundary work (docs/isolation.md).
//! Anonymous clients' attacks: hostile_client.rs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use test_support::http::request;
use test_support::{Building, get_unix};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn root() -> bool {
    test_support::root_or_skip("the tenant boundary (namespace isolation, uids) needs root")
}

/// Two tenants of one service at the default isolation and socket.
const TWO: &str = r#"
[service.web]
command = "{fixture}"
health = "/health"
"#;

fn front(b: &Building, key: &str, method: &str, path: &str) -> (u16, String) {
    b.front(key, method, path)
}

/// The tenant `key` does `path` (an attack endpoint) itself, on its own socket.
fn tenant_does(b: &Building, key: &str, path: &str) -> (u16, String) {
    get_unix(&b.socket(key), path).unwrap()
}

#[test]
fn a_symlink_in_place_of_its_socket_reaches_neither_ten_sock_nor_a_neighbour() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        &format!("[settings]\nhealth_check_interval = 1\n{TWO}"),
    );
    b.start();
    b.ten_ok(&["spawn", "web:evil"]);
    b.ten_ok(&["spawn", "web:victim"]);
    let own = b.socket("web:evil");
    let ten_sock = b.data_dir().join("ten.sock");
    let victim = b.socket("web:victim");

    // Its socket becomes a symlink to ten's control socket: an admin token for anyone?
    let link = format!("/symlink?path={}&to={}", own.display(), ten_sock.display());
    assert_eq!(tenant_does(&b, "web:evil", &link).0, 200);
    let (status, body) = front(&b, "web:evil", "POST", "/api/tokens");
    assert_ne!(status, 201, "minted a token through the symlink: {body}");
    assert!(!body.contains("ten_"), "{body}");
    assert!(
        b.serve_log().contains("ten serve itself"),
        "the refusal is logged"
    );

    // A symlink to the neighbour's socket: its traffic goes nowhere, not to the neighbour.
    // (The evil instance is restarted once its checks fail; plant the link again then.)
    let evil = b.wait_instance("web:evil", "restarted for failing its checks", |i| {
        i["restarts"] == 1 && i["state"] == "running"
    });
    let own = std::path::PathBuf::from(evil["socket"].as_str().unwrap());
    let link = format!("/symlink?path={}&to={}", own.display(), victim.display());
    assert_eq!(get_unix(&own, &link).unwrap().0, 200);
    let (status, body) = front(&b, "web:evil", "GET", "/");
    assert!(!body.contains("web:victim"), "{status} {body}");
    assert_ne!(status, 200);
    // The victim is untouched.
    assert_eq!(
        front(&b, "web:victim", "GET", "/").1,
        "hello from web:victim\n"
    );
}

#[test]
fn no_tenant_can_join_the_front_doors_port() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, TWO);
    b.start();
    b.ten_ok(&["spawn", "web:evil"]);
    let addr = b.http_addr();
    let port = addr.rsplit(':').next().unwrap();
    let (status, body) = tenant_does(&b, "web:evil", &format!("/reuseport?port={port}"));
    assert_ne!(
        status, 200,
        "a tenant joined ten's listening socket: {body}"
    );
    for _ in 0..30 {
        let (_, body) = front(&b, "web:evil", "GET", "/");
        assert!(!body.contains("stolen"));
    }
    // Nor its IPv6 side, where clients of the same name would arrive.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED (IPv6 part): this host has no IPv6 loopback");
        return;
    }
    let (status, body) = tenant_does(&b, "web:evil", &format!("/bind6?port={port}"));
    assert_ne!(
        status, 200,
        "a tenant took the front door's port on IPv6: {body}"
    );
    let v6 = format!("[::1]:{port}");
    let mut r = request(&v6, "evil.web.tenement.test", "GET", "/", &[], None).unwrap();
    assert_eq!(
        r.text().unwrap(),
        "hello from web:evil\n",
        "ten serve answers on IPv6 too"
    );
}

#[test]
fn socket_templates_that_collide_are_refused() {
    let b = Building::new(
        TEN,
        r#"
[service.shop]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"

[service.shop-eu]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
"#,
    );
    let out = b.ten(&["config", "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("service.shop-eu.socket: shop:eu-a and shop-eu:a would share the socket"),
        "{err}"
    );
}

#[test]
fn a_shared_socket_directory_is_sticky_and_squatters_get_nothing() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:evil"]);
    b.ten_ok(&["spawn", "web:victim"]);
    let shared = b.path().join("s");
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o1733);
    let victim = b.socket("web:victim");

    // Unlink the neighbour's socket and bind its own there: the sticky bit says no.
    let (status, _) = tenant_does(
        &b,
        "web:evil",
        &format!("/unlink?path={}", victim.display()),
    );
    assert_ne!(status, 200, "unlinked a neighbour's socket");
    assert_eq!(
        front(&b, "web:victim", "GET", "/").1,
        "hello from web:victim\n"
    );

    // Squat the path of an instance that has not started yet.
    let future = shared.join("web-later.sock");
    let (status, _) = tenant_does(&b, "web:evil", &format!("/squat?path={}", future.display()));
    assert_eq!(
        status, 200,
        "creating entries in the shared directory is allowed"
    );
    b.ten_ok(&["spawn", "web:later"]);
    for _ in 0..20 {
        let (_, body) = front(&b, "web:later", "GET", "/");
        assert_eq!(body, "hello from web:later\n", "a squatter answered");
    }
}

#[test]
fn unsafe_socket_directories_are_refused_with_the_reason() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/open/{name}-{id}.sock"

[service.api]
command = "{fixture}"
socket = "{dir}/theirs/{name}-{id}.sock"
"#,
    );
    let open = b.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = b.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(4_000_100), Some(4_000_100)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    b.start();
    let out = b.ten(&["spawn", "web:a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unsafe socket directory") && err.contains("no sticky bit"),
        "{err}"
    );
    let out = b.ten(&["spawn", "api:a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned by uid 4000100"), "{err}");
}

#[test]
fn a_namespace_tenant_cannot_write_the_host() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
storage_quota_mb = 20
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:evil"]);
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let escape = b.path().join("escape");
    for target in [
        "/proc/sys/kernel/core_pattern".to_string(),
        "/proc/sysrq-trigger".to_string(),
        "/sys/kernel/mm/ksm/run".to_string(),
        "/etc/tenement-escape".to_string(),
        escape.display().to_string(),
    ] {
        let (status, body) = tenant_does(&b, "web:evil", &format!("/put?path={target}"));
        assert_ne!(status, 200, "wrote {target}: {body}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        pattern
    );
    assert!(!escape.exists() && !std::path::Path::new("/etc/tenement-escape").exists());
    // /tmp and /dev/shm are its own, and its quota bounds them: 50 MB do not fit in 20.
    for dir in ["/tmp", "/dev/shm"] {
        let (status, _) = tenant_does(&b, "web:evil", &format!("/put?path={dir}/big&kb=51200"));
        assert_ne!(status, 200, "50 MB written to {dir} past a 20 MB quota");
    }
    assert!(!std::path::Path::new("/tmp/big").exists());
    // Its own data directory is writable.
    let home = b.instance("web:evil").unwrap()["data_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = tenant_does(&b, "web:evil", &format!("/put?path={home}/mine&kb=1"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_project_under_root_runs_at_the_default_isolation() {
    if !root() {
        return;
    }
    let home = std::path::Path::new("/root");
    if std::fs::metadata(home)
        .map(|m| m.mode() & 0o077 != 0)
        .unwrap_or(true)
    {
        eprintln!("SKIPPED: /root is missing or not closed (mode 0700), nothing to show");
        return;
    }
    let project = tempfile::Builder::new()
        .prefix("ten-quickstart-")
        .tempdir_in(home)
        .unwrap();
    let dir = project.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/app.py");
    std::fs::copy(app, dir.join("app.py")).unwrap();
    // The README's "your own service", as a first try would write it.
    std::fs::write(
        dir.join("tenement.toml"),
        "[service.api]\ncommand = \"python3 app.py\"\nhealth = \"/health\"\n",
    )
    .unwrap();
    let mut b = Building::with_config_file(TEN, &dir.join("tenement.toml"));
    b.start();
    b.ten_ok(&["spawn", "api", "--id", "prod"]);
    let (status, body) = get_unix(&b.socket("api:prod"), "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let i = b.instance("api:prod").unwrap();
    assert_eq!(i["isolation"], "namespace");
}

#[test]
fn an_app_its_user_cannot_read_fails_at_spawn_naming_file_uid_and_fix() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.api]
command = "/bin/cat secret.txt"
"#,
    );
    let secret = b.path().join("secret.txt");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    b.start();
    let out = b.ten(&["spawn", "api:prod"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "the app runs as uid ",
        "cannot read",
        "secret.txt",
        "chmod o+r",
        "user = \"root\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn a_namespace_tenant_cannot_reach_the_hosts_abstract_sockets() {
    if !root() {
        return;
    }
    // Landlock's scoping of abstract sockets came with Linux 6.12.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (6, 12) {
        eprintln!(
            "SKIPPED: Landlock scoping needs Linux 6.12, this is {}",
            release.trim()
        );
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tenement-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _host_service = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let mut b = Building::new(TEN, TWO);
    b.start();
    b.ten_ok(&["spawn", "web:evil"]);
    let (status, body) = tenant_does(&b, "web:evil", &format!("/connect?abstract={name}"));
    assert_ne!(
        status, 200,
        "a tenant reached a host abstract socket: {body}"
    );
    // The same socket is reachable from the host.
    assert!(std::os::unix::net::UnixStream::connect_addr(&addr).is_ok());
}

#[test]
fn process_level_runs_as_the_server_user_unless_user_is_set() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.plain]
command = "{fixture}"
isolation = "process"

[service.nobody]
command = "{fixture}"
isolation = "process"
user = "nobody"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "plain:a"]);
    b.ten_ok(&["spawn", "nobody:a"]);
    assert_eq!(b.uid_of("plain:a"), 0);
    assert_eq!(b.uid_of("nobody:a"), 65534);
    // Its own data directory is its own, reached through data_dir (0711).
    let home = b.instance("nobody:a").unwrap()["data_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(std::fs::metadata(&home).unwrap().uid(), 65534);
    let (status, body) = tenant_does(&b, "nobody:a", &format!("/put?path={home}/mine&kb=1"));
    assert_eq!(status, 200, "{body}");
    // Through the front door too (its socket's peer is told by its cgroup).
    assert_eq!(front(&b, "nobody:a", "GET", "/").1, "hello from nobody:a\n");
}

#[test]
fn a_data_dir_someone_else_prepared_is_refused() {
    if !root() {
        return;
    }
    let b = Building::new(TEN, TWO);
    let data = b.data_dir();
    std::fs::create_dir(&data).unwrap();
    // A local user's directory, with a state store of theirs already in it.
    std::os::unix::fs::chown(&data, Some(4_000_123), Some(4_000_123)).unwrap();
    let out = b.ten(&["serve", "--port", "0", "--bind", "127.0.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unsafe data_dir") && err.contains("owned by uid 4000123"),
        "{err}"
    );
    std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = b.ten(&["serve", "--port", "0", "--bind", "127.0.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lets others write"), "{err}");
}

#[test]
fn an_instance_never_gets_a_uid_a_host_process_runs_as() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, TWO);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let uid_of = |key: &str| {
        let (_, status) = tenant_does(&b, key, "/read?path=/proc/self/status");
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        line.split_whitespace()
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let next = uid_of("web:a") + 1;
    // A local process already runs as the uid the next instance would get.
    use std::os::unix::process::CommandExt;
    let mut squatter = std::process::Command::new("sleep")
        .arg("60")
        .uid(next)
        .gid(next)
        .spawn()
        .unwrap();
    b.ten_ok(&["spawn", "web:b"]);
    let got = b.uid_of("web:b");
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_ne!(
        got, next,
        "web:b shares its uid with a process it does not own"
    );
}

#[test]
fn a_root_tenant_taking_a_neighbours_uid_still_gets_none_of_its_traffic() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/s/{id}.sock"

[service.rsh]
command = "{fixture}"
socket = "{dir}/s/{id}.r.sock"
user = "root"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:victim"]);
    b.ten_ok(&["spawn", "rsh:evil"]);
    let uid = b.uid_of("web:victim");
    let victim = b.socket("web:victim");
    let (status, body) = tenant_does(
        &b,
        "rsh:evil",
        &format!("/squat?path={}&uid={uid}", victim.display()),
    );
    assert_eq!(status, 200, "root may do this much: {body}");
    for _ in 0..10 {
        let (_, body) = front(&b, "web:victim", "GET", "/");
        assert_ne!(
            body, "squatter",
            "a root tenant with the victim's uid got its traffic"
        );
    }
}
