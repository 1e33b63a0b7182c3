//! `ten config`, `ten config --check`, `ten init` and how the configuration file is found.

use std::process::Command;

use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn ten_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(TEN)
        .args(args)
        .current_dir(dir)
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn check_reports_every_problem_with_file_line_and_field() {
    let b = Building::new(
        TEN,
        r#"
[settings]
max_restarts = -1

[service.api]
command = "./api"
restart = "sometimes"
colour = "red"

[service.api.env]
SECRET = "${TENEMENT_TEST_SURELY_UNSET}"
"#,
    );
    let out = b.ten(&["config", "--check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = b.config_path().display().to_string();
    assert!(err.contains("invalid configuration (4 problems)"), "{err}");
    for want in [
        format!("{file}:4:16: settings.max_restarts: -1 is out of range"),
        format!("{file}:8:12: service.api.restart: expected one of"),
        format!("{file}:9:1: service.api.colour: unknown field `colour`"),
        "service.api.env.SECRET: environment variable TENEMENT_TEST_SURELY_UNSET is not set"
            .to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn config_prints_the_resolved_configuration() {
    let b = Building::new(TEN, "[service.api]\ncommand = \"./api\"\n");
    let out = b.ten_ok(&["config"]);
    for want in [
        "health_check_interval = 10",
        "max_restarts = 3",
        "[service.api]",
        "restart = \"on-failure\"",
        "isolation = \"namespace\"",
        "socket = \"{data_dir}/{id}/app.sock\"",
        "startup_timeout = 10",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let ok = b.ten_ok(&["config", "--check"]);
    assert!(ok.contains(": ok (1 service)"), "{ok}");
    let config = b.config_path().display().to_string();
    let moved = ten_in(
        b.path(),
        &["--config", &config, "config", "--data-dir", "/srv/else"],
    );
    let moved = String::from_utf8_lossy(&moved.stdout);
    assert!(moved.contains("data_dir = \"/srv/else\""), "{moved}");
}

#[test]
fn lookup_order_flag_then_env_then_nearest_parent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let nested = root.join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(
        root.join("tenement.toml"),
        "[service.parent]\ncommand = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("other.toml"),
        "[service.fromenv]\ncommand = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("flag.toml"),
        "[service.fromflag]\ncommand = \"x\"\n",
    )
    .unwrap();

    let out = ten_in(&nested, &["config"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[service.parent]"));

    let out = Command::new(TEN)
        .args(["config"])
        .current_dir(&nested)
        .env("TENEMENT_CONFIG", root.join("other.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[service.fromenv]"));

    let out = Command::new(TEN)
        .args(["config", "--config"])
        .arg(root.join("flag.toml"))
        .current_dir(&nested)
        .env("TENEMENT_CONFIG", root.join("other.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[service.fromflag]"));

    let empty = tempfile::tempdir().unwrap();
    let out = ten_in(empty.path(), &["config", "--check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tenement.toml"));
}

#[test]
fn init_writes_a_valid_starter_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = ten_in(dir.path(), &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = ten_in(dir.path(), &["config", "--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let again = ten_in(dir.path(), &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // --config names the file to write.
    ten_in(dir.path(), &["init", "--config", "other.toml"]);
    assert!(dir.path().join("other.toml").is_file());
}

#[test]
fn process_alias_runtime_alias_and_duplicates() {
    let b = Building::new(
        TEN,
        "[process.old]\ncommand = \"x\"\nruntime = \"process\"\n",
    );
    let out = b.ten_ok(&["config"]);
    assert!(
        out.contains("[service.old]") && out.contains("isolation = \"process\""),
        "{out}"
    );
    b.write_config("[process.api]\ncommand = \"x\"\n[service.api]\ncommand = \"y\"\n");
    let err = String::from_utf8_lossy(&b.ten(&["config", "--check"]).stderr).into_owned();
    assert!(
        err.contains("defined in both [service] and [process]"),
        "{err}"
    );
}

#[test]
fn a_socket_straight_in_data_dir_is_refused_where_data_dir_is_hidden() {
    let socket = "socket = \"{data_dir}/{name}-{id}.sock\"";
    let b = Building::new(TEN, &format!("[service.web]\ncommand = \"x\"\n{socket}\n"));
    let err = String::from_utf8_lossy(&b.ten(&["config", "--check"]).stderr).into_owned();
    assert!(
        err.contains("service.web.socket: directly in {data_dir}"),
        "{err}"
    );
    // With process isolation nothing is hidden: allowed.
    b.write_config(&format!(
        "[service.web]\ncommand = \"x\"\nisolation = \"process\"\n{socket}\n"
    ));
    b.ten_ok(&["config", "--check"]);
}

#[test]
fn serve_warns_of_an_isolation_level_this_machine_cannot_run() {
    let config = "[service.web]\ncommand = \"{fixture}\"\nisolation = \"firecracker\"\n";
    let mut b = Building::new(TEN, config);
    let check = b.ten(&["config", "--check"]);
    assert!(!check.status.success());
    b.start();
    wait_for("the isolation warning", SOON, || {
        b.serve_log()
            .contains("service.web: isolation `firecracker` is not available")
            .then_some(())
    });
}

#[test]
fn serve_takes_the_tls_flags() {
    // --tls --email --staging (and --domain, which the harness gives): HTTPS on https_port,
    // with Let's Encrypt's staging directory (not contacted until a handshake needs it).
    let https = test_support::acme::free_port();
    let mut b = Building::new(
        TEN,
        &format!(
            "[settings.tls]\nhttps_port = {https}\n\n[service.web]\ncommand = \"{{fixture}}\"\n"
        ),
    );
    b.start_with(&["--tls", "--email", "ops@example.com", "--staging"], &[]);
    let log = b.serve_log();
    assert!(log.contains(&format!("https=127.0.0.1:{https}")), "{log}");
    let (status, body) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/tls").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"enabled\":true"), "{body}");
    let (_, config) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/config").unwrap();
    assert!(
        config.contains("acme-staging-v02.api.letsencrypt.org"),
        "{config}"
    );
}

#[test]
fn a_client_writing_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let services: String = (0..600)
        .map(|i| format!("[service.s{i}]\ncommand = \"/bin/true\"\n"))
        .collect();
    std::fs::write(dir.path().join("tenement.toml"), services).unwrap();
    // `ten config | head -c 1`: far more than a pipe holds, and the reader goes away.
    let mut child = Command::new(TEN)
        .args(["config", "--config"])
        .arg(dir.path().join("tenement.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
