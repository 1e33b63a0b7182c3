//! Every example under `examples/` runs as documented.

use std::path::Path;

use test_support::{Building, get_unix};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

#[test]
fn hello_quick_start() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is not installed (scripts/test installs it)");
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/tenement.toml");
    let mut b = Building::with_config_file(TEN, &config.canonicalize().unwrap());
    b.start();
    let demo = b.wait_instance("hello:demo", "running", |i| i["state"] == "running");
    assert_eq!(demo["health"], "healthy");
    let socket = b.data_dir().join("sockets/hello-demo.sock");
    let (code, body) = get_unix(&socket, "/").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "hello, tenant demo from hello:demo\n")
    );
    b.ten_ok(&["spawn", "hello", "--id", "second"]);
    let (_, body) = get_unix(&b.data_dir().join("sockets/hello-second.sock"), "/").unwrap();
    assert_eq!(body, "hello, tenant second from hello:second\n");
}
