//! A real BIND 9 (`named`, Debian's bind9) on loopback, primary for one zone that takes
//! TSIG-signed dynamic updates (RFC 2136): the DNS provider of the DNS-01 tests. Every name in
//! the zone resolves to 127.0.0.1 (`*` and `*.SERVICE` records).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::acme::free_port;
use crate::wait_for;

pub struct Bind {
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub key_name: String,
    /// Base64, as tsig-keygen prints it.
    pub key_secret: String,
    child: Child,
}

impl Bind {
    /// `named` for `zone`, with `*.{service}` records for `services`; or SKIPPED and `None`
    /// where bind9 is not installed.
    pub fn start_or_skip(zone: &str, services: &[&str]) -> Option<Bind> {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let keygen = ["/usr/sbin/tsig-keygen", "/usr/bin/tsig-keygen"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let (Some(named), Some(keygen)) = (named, keygen) else {
            eprintln!(
                "SKIPPED: bind9 (named, tsig-keygen) is not installed (scripts/test installs it)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let key = Command::new(keygen)
            .args(["-a", "hmac-sha256", "tenement-test"])
            .output()
            .expect("tsig-keygen");
        let key = String::from_utf8_lossy(&key.stdout).into_owned();
        let key_secret = key
            .split("secret \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a secret from tsig-keygen")
            .to_owned();
        let port = free_port();
        let mut records = String::from("@ IN A 127.0.0.1\n* IN A 127.0.0.1\n");
        for s in services {
            // (`*.s` makes `s` a name of its own, which `*` then no longer covers.)
            records.push_str(&format!("{s} IN A 127.0.0.1\n*.{s} IN A 127.0.0.1\n"));
        }
        std::fs::write(
            d.join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 3600 600 86400 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}"
            ),
        )
        .expect("zone file");
        std::fs::write(
            d.join("named.conf"),
            format!(
                "{key}\noptions {{\n  directory \"{dir}\";\n  pid-file \"{dir}/named.pid\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n  allow-query {{ any; }};\n}};\ncontrols {{ }};\nzone \"{zone}\" {{\n  type primary;\n  file \"{dir}/zone.db\";\n  allow-update {{ key \"tenement-test\"; }};\n}};\n",
                dir = d.display()
            ),
        )
        .expect("named.conf");
        let log = std::fs::File::create(d.join("named.log")).expect("log");
        let child = Command::new(named)
            .args(["-g", "-u", "root", "-c"])
            .arg(d.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("named");
        let b = Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            key_name: "tenement-test".into(),
            key_secret,
            child,
            dir,
        };
        wait_for("named to listen", Duration::from_secs(30), || {
            b.log().contains("running").then_some(())
        });
        Some(b)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
