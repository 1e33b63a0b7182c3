//! The dashboard end to end in headless Chromium (dashboard/tests/e2e.mjs, playwright-core
//! driving Debian's /usr/bin/chromium) against a real `ten serve`. Screenshots of every view
//! are kept under target/dashboard-screenshots/.

use std::path::Path;
use std::process::Command;

use test_support::Building;

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 1

[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.sleepy]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
idle_timeout = 1
isolation = "process"
"#;

#[test]
fn dashboard_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let dashboard = root.join("dashboard");
    let chromium = Path::new("/usr/bin/chromium");
    if !dashboard.join("node_modules/playwright-core").exists()
        || !chromium.exists()
        || Command::new("node").arg("-v").output().is_err()
    {
        eprintln!(
            "SKIPPED: needs node, dashboard/node_modules (npm ci) and /usr/bin/chromium; scripts/test installs them"
        );
        return;
    }
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:alice"]);
    b.ten_ok(&["spawn", "sleepy:bob"]);
    b.ten_ok(&["spawn", "web:carol"]);
    let admin = b.ten_ok(&["token-gen"]).trim().to_owned();
    let tenant = b
        .ten_ok(&["token-gen", "--tenant", "alice"])
        .trim()
        .to_owned();
    let shots = root.join("target/dashboard-screenshots");
    let out = Command::new("node")
        .arg("tests/e2e.mjs")
        .current_dir(&dashboard)
        .env("URL", format!("http://{}", b.http_addr()))
        .env("ADMIN_TOKEN", &admin)
        .env("TENANT_TOKEN", &tenant)
        .env("SHOTS", &shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "e2e failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shot in [
        "instances",
        "confirm-stop",
        "logs",
        "overview",
        "instances-375",
        "tenant",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
}
