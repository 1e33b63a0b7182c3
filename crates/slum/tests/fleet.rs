//! A fleet on a LAN of its own: placement by capacity, any server answering any tenant,
//! failover with fencing, slum stopped, a restart within the lease.

mod common;

use common::fleet::Fleet;
use common::http;
use test_support::{SOON, wait_for};

#[test]
fn tenants_are_placed_by_capacity_and_answer_through_every_server() {
    let Some(fleet) = Fleet::start(61, &[("small", 512), ("big", 8192)]) else {
        return;
    };
    // Placed by free capacity: the server offering more memory takes it, and runs it
    // before `slum tenant add` returns.
    let (ok, said) = fleet.slum(&["tenant", "add", "shop.customer.org", "app:prod"]);
    assert!(ok, "{said}");
    assert!(said.contains("on big"), "{said}");
    assert!(fleet.runs("big", "app:prod") && !fleet.runs("small", "app:prod"));
    assert_eq!(
        fleet.tenant("shop.customer.org").unwrap()["status"],
        "running"
    );

    // Every server answers the tenant's domain: the owner itself, the other one hop away,
    // with the owner's name for the instance and the client's address forwarded.
    for via in ["small", "big"] {
        assert_eq!(
            fleet.answered_by(via, "shop.customer.org").as_deref(),
            Some("big")
        );
    }
    let (status, headers) = fleet.get("small", "Shop.Customer.Org", "/headers").unwrap();
    assert_eq!(status, 200, "{headers}");
    assert!(
        headers.contains("host: prod.app.tenement.test"),
        "{headers}"
    );
    assert!(headers.contains("host=\"shop.customer.org\""), "{headers}");
    let client = &fleet.hosts[0].host_ip; // this host, as the LAN sees it
    assert!(
        headers.contains(&format!("x-forwarded-for: {client}, {}", fleet.hosts[0].ip)),
        "{headers}"
    );

    // A request for the tenant's instance by its own name at a server it is not placed on
    // (what a peer with a stale table would send) starts no second copy there.
    let (status, said) = fleet.get("small", "prod.app.tenement.test", "/").unwrap();
    assert_eq!(status, 421, "{said}");
    assert!(!fleet.runs("small", "app:prod"));

    // Named placement; then a move: started there, stopped here, routed there everywhere.
    let (ok, said) = fleet.slum(&[
        "tenant",
        "add",
        "blog.customer.org",
        "app:blog",
        "--server",
        "small",
    ]);
    assert!(ok && said.contains("on small"), "{said}");
    let (ok, said) = fleet.slum(&["tenant", "move", "shop.customer.org", "--to", "small"]);
    assert!(ok, "{said}");
    assert!(fleet.runs("small", "app:prod"));
    wait_for("the old copy to stop", SOON, || {
        (!fleet.runs("big", "app:prod")).then_some(())
    });
    for via in ["small", "big"] {
        assert_eq!(
            fleet.answered_by(via, "shop.customer.org").as_deref(),
            Some("small")
        );
    }

    // Bad input: clear errors, nothing half-done.
    let (ok, said) = fleet.slum(&["tenant", "add", "bad.customer.org", "nosuch:prod"]);
    assert!(!ok && said.contains("could not start"), "{said}");
    assert!(said.contains("nosuch"), "{said}");
    assert!(fleet.tenant("bad.customer.org").is_none());
    let (ok, said) = fleet.slum(&["tenant", "add", "shop.customer.org", "app:other"]);
    assert!(!ok && said.contains("taken"), "{said}");
    let (ok, said) = fleet.slum(&[
        "tenant",
        "add",
        "x.customer.org",
        "app:prod",
        "--server",
        "small",
    ]);
    assert!(!ok && said.contains("has a tenant on app:prod"), "{said}");
    let (ok, said) = fleet.slum(&["tenant", "move", "shop.customer.org", "--to", "nowhere"]);
    assert!(!ok && said.contains("no server"), "{said}");
    let (ok, said) = fleet.slum(&["server", "rm", "small"]);
    assert!(!ok && said.contains("still has 2 tenant"), "{said}");
    for (_, b) in &fleet.servers {
        assert!(b.instance("nosuch:prod").is_none());
    }

    // Removed: stopped on its server, and no server routes the name any more.
    let (ok, said) = fleet.slum(&["tenant", "rm", "shop.customer.org"]);
    assert!(ok, "{said}");
    wait_for("the tenant to stop", SOON, || {
        (!fleet.runs("small", "app:prod")).then_some(())
    });
    for via in ["small", "big"] {
        // (A name that routes nowhere is tenement's own, as any unknown host is.)
        wait_for("the name to be gone", SOON, || {
            fleet
                .answered_by(via, "shop.customer.org")
                .is_none()
                .then_some(())
        });
    }

    // A tenant's name is never an address nor a server's own name (where a server's API is
    // answered, or another tenant's instance: a hijack, or a hop that hops again).
    for (domain, why) in [
        ("10.61.0.2", "not a lowercase host name"),
        ("tenement.test", "routing domain"),
        ("prod.app.tenement.test", "routing domain"),
    ] {
        let (ok, said) = fleet.slum(&["tenant", "add", domain, "app:x1"]);
        assert!(!ok && said.contains(why), "{domain}: {said}");
    }
    // The join token cannot point the fleet at this host's own services, cloud metadata, or a
    // URL with more than an address in it.
    let join = fleet.slum.token("slum.db.join-token");
    for url in [
        "http://127.0.0.1:9100",
        "http://169.254.169.254",
        "http://[::1]:80",
        "http://user:pw@10.61.0.9:80",
        "http://10.61.0.9:80/path",
    ] {
        let body =
            format!(r#"{{"id":"rogue","url":"{url}","domain":"rogue.test","capacity":{{}}}}"#);
        let (status, said) = http(&fleet.slum.url, "POST", "/api/join", &join, &body);
        assert_eq!(status, 400, "{url}: {said}");
    }
    // What servers prove themselves with is not in slum's files as such; the files are 0600.
    let probe = r#"{"id":"probe","url":"http://10.61.0.9:80","domain":"probe.test","capacity":{}}"#;
    let (status, said) = http(&fleet.slum.url, "POST", "/api/join", &join, probe);
    assert_eq!(status, 200, "{said}");
    let answer: serde_json::Value = serde_json::from_str(&said).unwrap();
    let secret = answer["secret"].as_str().unwrap();
    for name in ["slum.db", "slum.db-wal"] {
        let path = fleet.slum.dir.path().join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{name} holds a secret"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{name}: {mode:o}");
    }
}

#[test]
fn a_cut_off_server_is_replaced_and_fenced_and_never_runs_a_second_copy() {
    let Some(fleet) = Fleet::start(62, &[("east", 4096), ("west", 4096)]) else {
        return;
    };
    // A server takes over another's tenants only once it has been up a full lease.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    fleet.place("shop.customer.org", "app:prod", "east");
    assert_eq!(
        fleet.answered_by("west", "shop.customer.org").as_deref(),
        Some("east")
    );

    fleet.host("east").link(false);
    // Answered by west's own copy within the goal (measured in bench/slum.py).
    wait_for("the tenant to answer from west", SOON, || {
        (fleet.answered_by("west", "shop.customer.org")? == "west").then_some(())
    });
    let t = fleet.tenant("shop.customer.org").unwrap();
    assert_eq!(
        (t["server_id"].as_str(), t["status"].as_str()),
        (Some("west"), Some("running"))
    );
    assert_eq!(fleet.slum.state_of("east").unwrap()["state"], "down");
    // East lost its lease while cut off: its copy is put to sleep (no process left).
    wait_for("east's copy to be fenced", SOON, || {
        fleet
            .server("east")
            .tenant_processes()
            .is_empty()
            .then_some(())
    });

    // The link comes back: east never serves its old copy again, and stops it.
    fleet.host("east").link(true);
    let east = fleet.server("east");
    wait_for("east to stop the moved tenant", SOON, || {
        match fleet.get("east", "shop.customer.org", "/env") {
            Some((200, env)) => {
                assert!(
                    !env.contains(&*east.path().to_string_lossy()),
                    "east served its old copy"
                );
                (!fleet.runs("east", "app:prod")).then_some(())
            }
            _ => None,
        }
    });
    assert_eq!(
        fleet.answered_by("east", "shop.customer.org").as_deref(),
        Some("west")
    );
    assert!(east.tenant_processes().is_empty());
    assert!(!fleet.server("west").tenant_processes().is_empty());
    wait_for("east to be up again", SOON, || {
        fleet.slum.state_of("east").filter(|s| s["state"] == "up")
    });
}

#[test]
fn traffic_flows_with_slum_stopped_and_a_restart_within_the_lease_changes_nothing() {
    let Some(mut fleet) = Fleet::start(63, &[("east", 4096), ("west", 4096)]) else {
        return;
    };
    fleet.place("shop.customer.org", "app:prod", "east");
    let epoch = fleet.tenant("shop.customer.org").unwrap()["epoch"].clone();

    // east crashes and comes back within its lease: the tenant stays, same placement.
    let east = &mut fleet.servers[0].1;
    east.kill9();
    east.start_with(
        &[
            "--slum",
            &fleet.slum.url,
            "--slum-token",
            &fleet.slum.token("slum.db.join-token"),
            "--slum-id",
            "east",
        ],
        &[],
    );
    // (It came back on another port: the others learn it with its first heartbeat.)
    for via in ["east", "west"] {
        wait_for("the tenant to answer from east", SOON, || {
            (fleet.answered_by(via, "shop.customer.org")? == "east").then_some(())
        });
    }
    let t = fleet.tenant("shop.customer.org").unwrap();
    assert_eq!(
        (t["server_id"].as_str(), &t["epoch"]),
        (Some("east"), &epoch)
    );

    // slum stops: well past the lease, both servers still route the tenant (each has the
    // table; every peer says slum is gone, so nothing can have moved).
    drop(fleet.slum.serving.take());
    // Once every server's lease has ended (3 s) and they have told each other (a server whose
    // lease ends first refuses until its peers' have ended too: up to a heartbeat period),
    // traffic flows, and goes on flowing.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < until {
        for via in ["east", "west"] {
            assert_eq!(
                fleet.answered_by(via, "shop.customer.org").as_deref(),
                Some("east"),
                "through {via}, with slum stopped"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
