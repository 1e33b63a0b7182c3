use super::*;

fn line(key: &str, ts_ms: u64, stream: Stream, text: &str) -> Arc<LogLine> {
    Arc::new(LogLine {
        instance: Arc::new(key.parse().unwrap()),
        ts_ms,
        stream,
        text: text.into(),
    })
}

fn store(dir: &Path) -> LogStore {
    LogStore::open(
        &dir.join("logs.db"),
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
        },
    )
    .unwrap()
}

fn flushed(s: &LogStore, n: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while s.written() < n {
        assert!(Instant::now() < until, "writer did not flush");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn query_by_instance_service_stream_time_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let now = crate::logs::now_ms();
    s.push(line(
        "api:prod",
        now - 3000,
        Stream::Stdout,
        "GET /users 200",
    ));
    s.push(line(
        "api:prod",
        now - 2000,
        Stream::Stderr,
        "panic: connection refused",
    ));
    s.push(line(
        "api:staging",
        now - 1000,
        Stream::Stdout,
        "GET /users 500",
    ));
    s.push(line("web:a", now, Stream::Stdout, "hello \"quoted\" world"));
    flushed(&s, 4);
    let q = |f: fn(&mut LogQuery)| {
        let mut q = LogQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        s.query(&q)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(|_| {}).len(), 4);
    assert_eq!(
        q(|q| q.instance = Some("api:prod".parse().unwrap())),
        ["panic: connection refused", "GET /users 200"],
        "newest first"
    );
    assert_eq!(q(|q| q.service = Some("api".into())).len(), 3);
    assert_eq!(
        q(|q| q.stream = Some(Stream::Stderr)),
        ["panic: connection refused"]
    );
    assert_eq!(
        q(|q| q.search = Some("users".into())),
        ["GET /users 500", "GET /users 200"]
    );
    assert_eq!(
        q(|q| q.search = Some("connection refused".into())),
        ["panic: connection refused"]
    );
    assert_eq!(
        q(|q| q.search = Some("\"quoted\" world".into())).len(),
        1,
        "quotes are literal"
    );
    assert_eq!(
        q(|q| q.search = Some("users OR hello".into())).len(),
        0,
        "no query syntax: a phrase"
    );
    assert_eq!(
        q(|q| q.since_ms = Some(crate::logs::now_ms() - 1500)).len(),
        2
    );
    assert_eq!(
        q(|q| q.ids = Some(vec!["prod".into()])).len(),
        2,
        "a tenant's view by id"
    );
    assert_eq!(q(|q| q.ids = Some(vec![])).len(), 0);
    assert_eq!(q(|q| q.limit = 1), ["hello \"quoted\" world"]);
}

#[test]
fn lines_survive_reopen_and_retention_deletes_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::logs::now_ms();
    {
        let s = store(dir.path());
        s.push(line(
            "api:prod",
            now - 10 * 86_400_000,
            Stream::Stdout,
            "ancient",
        ));
        s.push(line("api:prod", now, Stream::Stdout, "fresh"));
        flushed(&s, 2);
        s.close();
    }
    let s = store(dir.path());
    let all = |s: &LogStore| {
        s.query(&LogQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .len()
    };
    assert_eq!(all(&s), 2);
    let conn = Connection::open(dir.path().join("logs.db")).unwrap();
    retain(
        &conn,
        Retention {
            max_age: Duration::from_secs(86_400),
            max_bytes: 1 << 30,
        },
    )
    .unwrap();
    let texts: Vec<String> = s
        .query(&LogQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["fresh"]);
    let hits = s
        .query(&LogQuery {
            limit: 10,
            search: Some("ancient".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(hits.is_empty(), "the index forgot it too");
}

#[test]
fn a_flood_drops_its_own_oldest_lines_not_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let now = crate::logs::now_ms();
    // Hold the writer off by pushing faster than it can drain in one go.
    for i in 0..(PENDING_PER_INSTANCE + 5_000) {
        s.push(line("noisy:a", now, Stream::Stdout, &format!("flood {i}")));
    }
    s.push(line("quiet:a", now, Stream::Stdout, "important"));
    s.close();
    let quiet = s
        .query(&LogQuery {
            limit: 10,
            instance: Some("quiet:a".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(quiet.len(), 1);
    let written = s.written();
    assert_eq!(written + s.dropped(), (PENDING_PER_INSTANCE + 5_001) as u64);
}

#[test]
fn a_query_waits_for_its_own_instance_not_for_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let now = crate::logs::now_ms();
    {
        // Queued at once, as if the writer had been busy meanwhile: it finds both backlogs.
        let mut pending = s.shared.pending.lock().unwrap();
        for i in 0..PENDING_PER_INSTANCE {
            pending.add(line("noisy:a", now, Stream::Stdout, &format!("flood {i}")));
        }
        pending.add(line("quiet:a", now, Stream::Stdout, "important"));
    }
    let quiet: InstanceKey = "quiet:a".parse().unwrap();
    // (A flush waits at most 1 s: on a loaded machine a slice may take longer. Polled.)
    let until = Instant::now() + Duration::from_secs(30);
    let written = loop {
        s.flush(|k| *k == quiet);
        let query = LogQuery {
            limit: 10,
            instance: Some(quiet.clone()),
            ..Default::default()
        };
        if let [line] = &s.query(&query).unwrap()[..] {
            break line.id.expect("a stored line has its row");
        }
        assert!(Instant::now() < until, "the quiet line is never written");
    };
    // Written a slice at a time: the quiet line went in with the flood's first slice, not after
    // its whole backlog. (Row ids count lines in the order they were written.)
    assert!(written <= BATCH_PER_INSTANCE as i64 + 1, "row {written}");
    s.close();
    assert_eq!(s.written(), PENDING_PER_INSTANCE as u64 + 1);
}

#[test]
fn the_size_cap_bounds_the_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let now = crate::logs::now_ms();
    let text = "x".repeat(200);
    for i in 0..20_000 {
        s.push(line(
            "api:prod",
            now,
            Stream::Stdout,
            &format!("{i} {text}"),
        ));
    }
    s.close();
    drop(s); // the last connection: everything is checkpointed into the file
    let db = dir.path().join("logs.db");
    let before = std::fs::metadata(&db).unwrap().len();
    assert!(before > 3 << 20, "{before}");
    let conn = Connection::open(&db).unwrap();
    let cap = 1 << 20;
    retain(
        &conn,
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: cap,
        },
    )
    .unwrap();
    drop(conn);
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(after <= 2 * cap, "{before} -> {after}");
}

#[test]
fn a_flood_of_long_lines_is_bounded_in_bytes_not_only_in_lines() {
    let mut p = Pending {
        queues: HashMap::new(),
        total: 0,
    };
    let long = "x".repeat(16 * 1024);
    let mut dropped = 0;
    for i in 0..2_000 {
        dropped += p.add(line("web:flood", i, Stream::Stdout, &long));
    }
    p.add(line("web:quiet", 0, Stream::Stdout, "hello"));
    let flood = &p.queues[&Arc::new("web:flood".parse().unwrap())];
    assert!(flood.bytes <= PENDING_BYTES_PER_INSTANCE, "{}", flood.bytes);
    assert_eq!(flood.bytes, flood.lines.len() * long.len());
    assert_eq!(dropped as usize + flood.lines.len(), 2_000);
    assert_eq!(
        p.total,
        flood.lines.len() + 1,
        "the quiet instance's line is kept"
    );
}
