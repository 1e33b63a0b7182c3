//! slum.toml: the `local` operator starting the fleet's tenement servers, and what is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::SLUM;
use test_support::{SOON, wait_for};

fn fixture() -> PathBuf {
    test_support::fixture_bin(&PathBuf::from(SLUM).with_file_name("ten"))
}

/// A tenement.toml for server `id` under `dir`.
fn tenement_toml(dir: &Path, id: &str) -> String {
    let data = dir.join(format!("data-{id}"));
    let file = format!("tenement-{id}.toml");
    std::fs::write(
        dir.join(&file),
        format!(
            "[settings]\ndata_dir = \"{}\"\n\n[service.app]\ncommand = \"{}\"\nisolation = \"process\"\n",
            data.display(),
            fixture().display()
        ),
    )
    .unwrap();
    file
}

fn get(addr: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let within = std::time::Duration::from_secs(3);
    let mut r = test_support::http::request_within(addr, host, "GET", path, within).ok()?;
    Some((r.status, r.text().unwrap_or_default()))
}

/// `slum ARGS` as the admin: (success, stdout + stderr).
fn cli(url: &str, admin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(SLUM)
        .args(["--url", url, "--token", admin.trim()])
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        said + &String::from_utf8_lossy(&out.stderr),
    )
}

fn kill(pid: i32) {
    // SAFETY: kill(2) of a server this test had slum start (its pid from slum's pid file).
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Stops the servers slum started (their pid files), whatever the test's outcome.
struct Reap<'a>(&'a Path);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        for id in ["east", "west"] {
            let pid = std::fs::read_to_string(self.0.join(format!("ten-{id}.pid")));
            if let Some(pid) = pid.ok().and_then(|p| p.trim().parse().ok()) {
                kill(pid);
            }
        }
    }
}

#[test]
fn the_local_operator_starts_the_servers_of_slum_toml_and_they_outlive_slum() {
    let dir = test_support::project_dir();
    let _reap = Reap(dir.path());
    let (east, west) = (
        tenement_toml(dir.path(), "east"),
        tenement_toml(dir.path(), "west"),
    );
    let toml = dir.path().join("slum.toml");
    let args = r#"args = ["--bind", "127.0.0.1", "--port", "0", "--domain", "tenement.test"]"#;
    std::fs::write(
        &toml,
        format!(
            "[operators.here]\ntype = \"local\"\n\n[tenement.east]\noperator = \"here\"\nconfig = \"{east}\"\n{args}\n\n\
             [tenement.west]\noperator = \"here\"\nconfig = \"{west}\"\n{args}\n"
        ),
    )
    .unwrap();
    let db = dir.path().join("slum.db");
    let config = toml.to_string_lossy().into_owned();
    let slum = common::serve(&db, &["--config", &config]);
    let admin = std::fs::read_to_string(dir.path().join("slum.db.token")).unwrap();
    let cli = |args: &[&str]| cli(&slum.url, &admin, args);
    let servers = wait_for("both servers to join", SOON, || {
        let (_, said) = cli(&["servers"]);
        (said.lines().filter(|l| l.contains(" up ")).count() == 2).then_some(said)
    });
    let (ok, said) = cli(&["tenant", "add", "shop.customer.org", "app:prod"]);
    assert!(ok, "{said}");
    let addrs: Vec<String> = servers
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .last()?
                .strip_prefix("http://")
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(addrs.len(), 2, "{servers}");
    for addr in &addrs {
        let (status, _) = get(addr, "shop.customer.org", "/").unwrap();
        assert_eq!(status, 200);
    }

    // slum stops: the servers it started go on serving.
    drop(slum);
    std::thread::sleep(std::time::Duration::from_secs(1));
    for addr in &addrs {
        assert_eq!(get(addr, "shop.customer.org", "/").unwrap().0, 200);
    }
    for id in ["east", "west"] {
        let pid = std::fs::read_to_string(dir.path().join(format!("ten-{id}.pid"))).unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        assert!(test_support::alive(pid));
        kill(pid);
        wait_for("the server to stop", SOON, || {
            (!test_support::alive(pid)).then_some(())
        });
    }
}

#[test]
fn a_bad_slum_toml_is_refused_with_file_line_and_field() {
    let dir = test_support::project_dir();
    let east = tenement_toml(dir.path(), "east");
    let cases = [
        (
            "[operators.fly-prod]\ntype = \"fly\"\norg = \"my-org\"\nregion = \"iad\"\n".to_owned(),
            ":1:1: operators.fly-prod.type: \"fly\" is not built yet",
        ),
        (
            "[operators.h]\ntype = \"hetzner\"\nlocation = \"fsn1\"\n".to_owned(),
            "\"hetzner\" is not built yet",
        ),
        (
            format!("[operators.local]\ntype = \"local\"\n\n[tenement.east]\noperator = \"nope\"\nconfig = \"{east}\"\n"),
            ":5:12: tenement.east.operator: no [operators.nope]",
        ),
        (
            "[operators.local]\ntype = \"local\"\n\n[tenement.east]\noperator = \"local\"\nconfig = \"missing.toml\"\n".to_owned(),
            ":6:10: tenement.east.config:",
        ),
        ("[operators.local]\ntype = \"docker\"\n".to_owned(), ":2:8: unknown variant `docker`"),
        ("[operators.box]\ntype = \"ssh\"\nuser = \"root\"\n".to_owned(), "missing field `host`"),
        (
            format!("[operators.local]\ntype = \"local\"\n\n[tenement.east]\noperator = \"local\"\nconfig = \"{east}\"\nport = 1\n"),
            "unknown field `port`",
        ),
        (
            format!("[operators.local]\ntype = \"local\"\n\n[tenement.East]\noperator = \"local\"\nconfig = \"{east}\"\n"),
            "tenement.East: \"East\" is not a server id",
        ),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("slum-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(SLUM)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join(format!("slum-{i}.db")))
            .arg("--config")
            .arg(&path)
            .env_remove("SLUM_TOKEN")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(said.contains(want), "{toml}\nwant {want:?} in {said}");
        assert!(said.contains(&*path.to_string_lossy()), "{said}");
        assert!(
            out.stdout.is_empty(),
            "slum serve began serving: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_ssh_operator_installs_starts_and_upgrades_a_server_over_a_real_sshd() {
    if !test_support::root_or_skip("the ssh host is a network namespace") {
        return;
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        eprintln!("SKIPPED: no /usr/sbin/sshd (apt install openssh-server; scripts/test does)");
        return;
    }
    let dir = test_support::project_dir();
    let d = dir.path();
    let Some(lan) = test_support::netns::Lan::new("brs64", 64) else {
        return;
    };
    let Some(mut far) = lan.host("s64far", 2) else {
        return;
    };
    // A real sshd on the far host, with a key of its own and ours authorized.
    for key in ["host_key", "client_key"] {
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &d.join(key).to_string_lossy(),
            ],
        );
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "ListenAddress {}\nPort 22\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n",
            far.ip,
            d.join("host_key").display(),
            d.join("authorized_keys").display(),
            d.join("sshd.pid").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let (config, log) = (d.join("sshd_config"), d.join("sshd.log"));
    far.spawn(
        "/usr/sbin/sshd",
        &[
            "-D",
            "-E",
            &log.to_string_lossy(),
            "-f",
            &config.to_string_lossy(),
        ],
    );
    let ssh_at = format!("{}:22", far.ip);
    wait_for("sshd to listen", SOON, || {
        std::net::TcpStream::connect(&ssh_at).ok()
    });

    // The ten to install: this build's, without its debug sections (a smaller copy).
    let ten = PathBuf::from(SLUM).with_file_name("ten");
    let to_install = d.join("ten-to-install");
    run(
        "strip",
        &["-o", &to_install.to_string_lossy(), &ten.to_string_lossy()],
    );
    let remote = d.join("remote");
    let far_toml = tenement_toml(d, "far");
    std::fs::write(
        d.join("slum.toml"),
        format!(
            "[operators.box]\ntype = \"ssh\"\nhost = \"{ip}\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n\
             ten = \"{ten}\"\nroot = \"{root}\"\n\n[tenement.far]\noperator = \"box\"\nconfig = \"{far_toml}\"\n\
             args = [\"--bind\", \"{ip}\", \"--port\", \"8080\", \"--domain\", \"tenement.test\"]\n",
            ip = far.ip,
            key = d.join("client_key").display(),
            known = d.join("known_hosts").display(),
            ten = to_install.display(),
            root = remote.display(),
        ),
    )
    .unwrap();
    let db = d.join("slum.db");
    let slum = common::serve_on(
        &lan.ip,
        &db,
        &["--config", &d.join("slum.toml").to_string_lossy()],
    );
    let admin = std::fs::read_to_string(d.join("slum.db.token")).unwrap();
    let cli = |args: &[&str]| cli(&slum.url, &admin, args);
    let slow = std::time::Duration::from_secs(90); // copying ~80 MB and starting it
    wait_for("the far server to join", slow, || {
        cli(&["servers"])
            .1
            .lines()
            .any(|l| l.starts_with("far ") && l.contains(" up "))
            .then_some(())
    });
    // Installed as sent; the join token only in a 0600 file, never on a command line.
    assert_eq!(
        std::fs::read(remote.join("usr/local/bin/ten")).unwrap(),
        std::fs::read(&to_install).unwrap()
    );
    let env = remote.join("etc/tenement/far.env");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let join = std::fs::read_to_string(d.join("slum.db.join-token")).unwrap();
    assert!(std::fs::read_to_string(&env).unwrap().contains(join.trim()));
    let serving: i32 = std::fs::read_to_string(remote.join("run/tenement-far.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{serving}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(join.trim()));

    let (ok, said) = cli(&["tenant", "add", "shop.customer.org", "app:prod"]);
    assert!(ok && said.contains("on far"), "{said}");
    let front = format!("{}:8080", far.ip);
    let (status, tenant_pid) = get(&front, "shop.customer.org", "/pid").unwrap();
    assert_eq!(status, 200);

    // Upgrade: a changed ten is installed and replaces ten serve; the tenant is not bounced.
    let mut changed = std::fs::read(&to_install).unwrap();
    changed.extend_from_slice(b"\n# a newer build\n");
    std::fs::write(&to_install, &changed).unwrap();
    let (ok, said) = cli(&["server", "upgrade", "far"]);
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read(remote.join("usr/local/bin/ten")).unwrap(),
        changed
    );
    let after: i32 = std::fs::read_to_string(remote.join("run/tenement-far.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(after, serving, "{said}");
    wait_for("the upgraded server to serve", SOON, || {
        let (status, pid) = get(&front, "shop.customer.org", "/pid")?;
        (status == 200)
            .then_some(())
            .map(|()| assert_eq!(pid, tenant_pid, "the tenant was restarted"))
    });
    let (ok, said) = cli(&["server", "upgrade", "far"]);
    assert!(ok && said.contains("already"), "{said}");
    drop(far); // its processes (sshd, ten serve, the tenant) go with it
}
