//! The library API exactly as the README documents it, then what it must refuse.

use slum::{Error, Server, SlumDb, Tenant};

#[tokio::test]
async fn the_documented_library_calls_work_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slum.db");
    {
        let db = SlumDb::init(&path).await.unwrap();
        db.add_server(&Server {
            id: "east".into(),
            url: "http://east.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        db.add_tenant(&Tenant {
            domain: "customer.example.com".into(),
            server_id: "east".into(),
            process: "api".into(),
            instance_id: "prod".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A new process of slum finds it all again.
    let db = SlumDb::init(&path).await.unwrap();
    let servers = db.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].url, "http://east.example.com");
    let t = db.tenant("customer.example.com").await.unwrap();
    assert_eq!(
        (
            t.server_id.as_str(),
            t.process.as_str(),
            t.instance_id.as_str()
        ),
        ("east", "api", "prod")
    );
    assert!(t.created_ms > 0);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = SlumDb::init(dir.path().join("slum.db")).await.unwrap();
    let east = Server {
        id: "east".into(),
        url: "http://east.example.com".into(),
        ..Default::default()
    };
    db.add_server(&east).await.unwrap();
    assert!(matches!(
        db.add_server(&east).await,
        Err(Error::ServerExists(_))
    ));
    let bad_url = Server {
        id: "west".into(),
        url: "east.example.com".into(),
        ..Default::default()
    };
    assert!(matches!(
        db.add_server(&bad_url).await,
        Err(Error::Invalid { field: "url", .. })
    ));
    let tenant = |domain: &str, server: &str| Tenant {
        domain: domain.into(),
        server_id: server.into(),
        process: "api".into(),
        instance_id: "prod".into(),
        ..Default::default()
    };
    assert!(matches!(
        db.add_tenant(&tenant("a.example.com", "nowhere")).await,
        Err(Error::UnknownServer(_))
    ));
    db.add_tenant(&tenant("a.example.com", "east"))
        .await
        .unwrap();
    assert!(matches!(
        db.add_tenant(&tenant("a.example.com", "east")).await,
        Err(Error::DomainTaken(..))
    ));
    for bad in [
        "",
        "UPPER.example.com",
        "nodot",
        "a..b.com",
        "-a.example.com",
        "a b.example.com",
    ] {
        assert!(
            matches!(
                db.add_tenant(&tenant(bad, "east")).await,
                Err(Error::Invalid {
                    field: "domain",
                    ..
                })
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        db.remove_server("east").await,
        Err(Error::ServerInUse(_, 1))
    ));
    assert!(matches!(
        db.move_tenant("a.example.com", "nowhere").await,
        Err(Error::UnknownServer(_))
    ));
    assert_eq!(db.tenants().await.unwrap().len(), 1);
    assert_eq!(db.tenant("a.example.com").await.unwrap().server_id, "east");

    db.add_server(&Server {
        id: "west".into(),
        url: "http://west.example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        db.move_tenant("a.example.com", "west")
            .await
            .unwrap()
            .server_id,
        "west"
    );
    db.remove_tenant("a.example.com").await.unwrap();
    assert!(matches!(
        db.remove_tenant("a.example.com").await,
        Err(Error::UnknownTenant(_))
    ));
    db.remove_server("east").await.unwrap();
    assert!(matches!(
        db.server("east").await,
        Err(Error::UnknownServer(_))
    ));
}
