//! The WebAssembly guests of `crates/tenement-wasm/guests`, built from source for
//! `wasm32-wasip2` once per test binary (cargo serializes concurrent builds of one target
//! directory).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The built guest `name` (`handler`, `command`, `missing_import`), or `None` (after printing
/// SKIPPED and why) when this machine has no `wasm32-wasip2` standard library
/// (`rustup target add wasm32-wasip2`; scripts/test does).
pub fn guest(name: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(dir) => Some(dir.join(format!("{name}.wasm"))),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn build() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = root.join("target/wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(root.join("crates/tenement-wasm/guests/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("running cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("target may not be installed") {
            return Err("no wasm32-wasip2 target here (rustup target add wasm32-wasip2)".into());
        }
        panic!("building the wasm guests failed:\n{stderr}");
    }
    Ok(target_dir.join("wasm32-wasip2/release"))
}

/// A building whose `hello` service runs the handler guest (copied into the building), with
/// `extra` lines added to the service; `None` when the machine cannot build guests.
pub fn building(ten: &str, extra: &str) -> Option<crate::Building> {
    if !crate::root_or_skip("wasm instances run inside namespace walls") {
        return None;
    }
    let handler = guest("handler")?;
    let config = format!(
        r#"
[settings]
backoff_base_ms = 100

[service.hello]
command = "handler.wasm"
isolation = "wasm"
health = "/health"
startup_timeout = 60
{extra}
[service.hello.env]
GREETING = "hi there"
"#
    );
    let b = crate::Building::new(ten, &config);
    std::fs::copy(handler, b.path().join("handler.wasm")).unwrap();
    Some(b)
}
