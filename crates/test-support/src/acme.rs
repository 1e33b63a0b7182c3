//! Let's Encrypt's test CA, pebble, on loopback for the HTTPS tests: its own listener
//! certificate (made here with openssl, from a CA of the test's), `pebble-challtestsrv` as its
//! DNS (every name is 127.0.0.1), and the ports where it validates http-01 and tls-alpn-01:
//! the HTTP and HTTPS ports the test's `ten serve` will use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_for;

pub struct Pebble {
    dir: tempfile::TempDir,
    pub directory_url: String,
    /// The CA that signed pebble's own listener certificate: `ca_root` for ten.
    pub ca_root: PathBuf,
    /// Where pebble validates http-01 and tls-alpn-01: ten's http_port and https_port.
    pub http_port: u16,
    pub https_port: u16,
    management: u16,
    children: Vec<Child>,
}

/// A free loopback port (bound, read, released).
/// A port that is free now, below the kernel's ephemeral range (32768 and up by default), so
/// that no outbound connection of a test running alongside takes it before it is used.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + fastrand::u16(..12_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Pebble {
    /// Starts pebble (certificates valid `validity` seconds, if given), or says SKIPPED and
    /// returns `None` when this machine has no pebble.
    pub fn start_or_skip(validity: Option<u64>) -> Option<Pebble> {
        Self::start_with(validity, None)
    }

    /// As [`Pebble::start_or_skip`], resolving names through `dns` (a real DNS server, for
    /// DNS-01) instead of pebble-challtestsrv.
    pub fn start_with(validity: Option<u64>, dns: Option<std::net::SocketAddr>) -> Option<Pebble> {
        for tool in ["pebble", "pebble-challtestsrv", "openssl", "curl"] {
            if !on_path(tool) {
                eprintln!("SKIPPED: {tool} is not installed (scripts/test installs it)");
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (listen, management) = (free_port(), free_port());
        let (http_port, https_port) = (free_port(), free_port());
        make_listener_certificate(d);
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": d.join("pebble-cert.pem"),
            "privateKey": d.join("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(secs) = validity {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        std::fs::write(d.join("pebble.json"), config.to_string()).expect("pebble.json");
        let log = |name: &str| std::fs::File::create(d.join(name)).expect("log file");
        let mut children = Vec::new();
        let dns = match dns {
            Some(addr) => addr.to_string(),
            None => {
                let addr = format!("127.0.0.1:{}", free_port());
                let server = Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .args(["-dns01", &addr])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{}", free_port())])
                    .stdout(log("challtestsrv.log"))
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("pebble-challtestsrv");
                children.push(server);
                addr
            }
        };
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(d.join("pebble.json"))
            .args(["-dnsserver", &dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        children.push(pebble);
        let p = Pebble {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            ca_root: d.join("ca.pem"),
            http_port,
            https_port,
            management,
            children,
            dir,
        };
        wait_for("pebble to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).ok()
        });
        Some(p)
    }

    /// The `[settings.tls]` section for a ten serve using this CA.
    pub fn tls_section(&self, challenge: &str) -> String {
        format!(
            "[settings.tls]\nenabled = true\nacme_email = \"ops@{domain}\"\ndomain = \"{domain}\"\n\
             directory_url = \"{}\"\nca_root = \"{}\"\nhttp_port = {}\nhttps_port = {}\n\
             challenge = \"{challenge}\"\n",
            self.directory_url,
            self.ca_root.display(),
            self.http_port,
            self.https_port,
            domain = crate::DOMAIN,
        )
    }

    /// The root of the certificates pebble issues (made anew at each start), as a file for
    /// `curl --cacert`.
    pub fn issuer_root(&self) -> PathBuf {
        let path = self.dir.path().join("issuer-root.pem");
        let out = Command::new("curl")
            .args([
                "-sfk",
                &format!("https://127.0.0.1:{}/roots/0", self.management),
            ])
            .output()
            .expect("curl");
        assert!(out.status.success(), "pebble's root: {out:?}");
        std::fs::write(&path, &out.stdout).expect("root file");
        path
    }

    /// `curl` over HTTPS to `name` on the HTTPS port (resolved to loopback), trusting `root`
    /// (pebble's issuer: [`Pebble::issuer_root`]): the status, the HTTP version and the body;
    /// `None` if no TLS connection could be made.
    pub fn curl(
        &self,
        root: &Path,
        name: &str,
        path: &str,
        extra: &[&str],
    ) -> Option<(u16, String, String)> {
        let port = self.https_port;
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--cacert"])
            .arg(root)
            .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(format!("https://{name}:{port}{path}"))
            .output()
            .expect("curl");
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text.rsplit_once('\n')?;
        let (code, version) = last.split_once(' ')?;
        Some((code.parse().ok()?, version.to_owned(), body.to_owned()))
    }

    /// Orders pebble has taken.
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

/// A CA of the test's, and pebble's listener certificate from it (for `localhost` and
/// 127.0.0.1): a self-signed certificate cannot serve as its own root in rustls.
fn make_listener_certificate(d: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca-key.pem", "-out", "ca.pem"],
        ]
        .concat()
        .iter()
        .copied()
        .chain(["-days", "2", "-subj", "/CN=tenement test CA"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "pebble-key.pem", "-out", "pebble.csr"],
        ]
        .concat()
        .iter()
        .copied()
        .chain(["-subj", "/CN=localhost"])
        .collect::<Vec<_>>(),
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "pebble.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "pebble-cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
