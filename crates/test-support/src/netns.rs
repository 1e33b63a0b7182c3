//! Network namespaces joined to this one by a veth pair: another "host" on this machine,
//! with an address of its own that is not one of this host's.

use std::process::{Child, Command, Stdio};

/// A network namespace `name` whose end of a veth pair has `10.{subnet}.0.2/24`; this host's
/// end has `10.{subnet}.0.1`. Removed on drop (with every process still in it killed).
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ip: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl Netns {
    /// `None` (after printing SKIPPED and why) where namespaces cannot be made here.
    pub fn new(name: &str, subnet: u8) -> Option<Self> {
        let host_ip = format!("10.{subnet}.0.1");
        let host_end = format!("vh-{name}");
        let attach = || ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_end]);
        Self::make(name, host_ip.clone(), format!("10.{subnet}.0.2"), attach)
    }

    /// The namespace `name`, its end of a veth pair (`vn0`) at `ip`/24; `attach` puts this
    /// host's end (`vh-NAME`) somewhere (an address, a bridge) before it is set up.
    fn make(
        name: &str,
        host_ip: String,
        ip_addr: String,
        attach: impl FnOnce() -> Result<(), String>,
    ) -> Option<Self> {
        let host_end = format!("vh-{name}");
        let _ = ip(&["netns", "del", name]);
        let _ = ip(&["link", "del", &host_end]);
        let inside = format!("{ip_addr}/24");
        let made = ip(&["netns", "add", name])
            .and_then(|()| {
                ip(&[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "vn0", "netns", name,
                ])
            })
            .and_then(|()| attach())
            .and_then(|()| ip(&["link", "set", &host_end, "up"]))
            .and_then(|()| ip(&["-n", name, "addr", "add", &inside, "dev", "vn0"]))
            .and_then(|()| ip(&["-n", name, "link", "set", "vn0", "up"]))
            .and_then(|()| ip(&["-n", name, "link", "set", "lo", "up"]));
        match made {
            Ok(()) => Some(Self {
                name: name.to_owned(),
                host_ip,
                ip: ip_addr,
                children: Vec::new(),
            }),
            Err(e) => {
                eprintln!("SKIPPED: cannot make a network namespace: {e}");
                None
            }
        }
    }

    /// Starts `program args` inside the namespace; killed when the namespace goes.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }
}

/// A LAN on this machine: a bridge (`10.{subnet}.0.1/24` on this host) that network
/// namespaces join as hosts `10.{subnet}.0.{n}`, all reaching each other and this host.
/// Removed on drop (after its hosts).
pub struct Lan {
    pub bridge: String,
    pub subnet: u8,
    pub ip: String,
}

impl Lan {
    /// `None` (after printing SKIPPED and why) where bridges cannot be made here.
    pub fn new(bridge: &str, subnet: u8) -> Option<Self> {
        let lan = Lan {
            bridge: bridge.to_owned(),
            subnet,
            ip: format!("10.{subnet}.0.1"),
        };
        let _ = ip(&["link", "del", bridge]);
        let made = ip(&["link", "add", bridge, "type", "bridge"])
            .and_then(|()| ip(&["addr", "add", &format!("{}/24", lan.ip), "dev", bridge]))
            .and_then(|()| ip(&["link", "set", bridge, "up"]));
        match made {
            Ok(()) => Some(lan),
            Err(e) => {
                eprintln!("SKIPPED: cannot make a bridge: {e}");
                None
            }
        }
    }

    /// Host `n` (2..=254): a namespace `name` at `10.{subnet}.0.{n}` on this LAN.
    pub fn host(&self, name: &str, n: u8) -> Option<Netns> {
        let host_end = format!("vh-{name}");
        let attach = || ip(&["link", "set", &host_end, "master", &self.bridge]);
        Netns::make(
            name,
            self.ip.clone(),
            format!("10.{}.0.{n}", self.subnet),
            attach,
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Netns {
    /// Cuts (`false`) or restores (`true`) this namespace's link: nothing reaches it or
    /// leaves it while cut.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &format!("vh-{}", self.name), state]).expect("ip link set");
    }
}

impl Netns {
    /// The processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever else runs inside (started there by a test's server, or over its sshd) is
        // this test's too: the namespace's own pids, never a name.
        for pid in self.pids() {
            // SAFETY: kill(2) of a process inside the namespace this test made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = ip(&["link", "del", &format!("vh-{}", self.name)]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
