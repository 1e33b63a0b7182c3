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
    let cli = |args: &[&str]| {
        let out = Command::new(SLUM)
            .args(["--url", &slum.url, "--token", admin.trim()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
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
