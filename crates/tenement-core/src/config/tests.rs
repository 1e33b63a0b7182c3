use std::path::Path;

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "SECRET_KEY").then(|| "hunter2".into())
}

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(src, Path::new("/etc/ten/tenement.toml"), &env)
}

fn errors(src: &str) -> Vec<String> {
    parse(src)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn defaults() {
    let c = parse("[service.api]\ncommand = \"./api\"\n").unwrap();
    let s = &c.settings;
    assert_eq!(s.data_dir, Path::new("/var/lib/tenement"));
    assert_eq!(
        (
            s.health_check_interval,
            s.max_restarts,
            s.restart_window,
            s.backoff_base_ms,
            s.backoff_max_ms
        ),
        (10, 3, 300, 1000, 60_000)
    );
    assert!(!s.tls.enabled);
    assert_eq!(s.tls.cache_dir, Path::new("/var/lib/tenement/acme"));
    assert_eq!((s.tls.https_port, s.tls.http_port), (443, 80));
    let api = &c.services[&"api".parse().unwrap()];
    assert_eq!(api.socket.as_str(), "{data_dir}/{id}/app.sock");
    assert_eq!(
        api.workdir,
        Path::new("/etc/ten"),
        "workdir defaults to the config's directory"
    );
    assert_eq!(api.startup_timeout, 10);
    assert_eq!(api.idle_timeout, 0);
    assert_eq!(api.restart, RestartPolicy::OnFailure);
    assert_eq!(api.isolation, Isolation::Namespace);
    assert_eq!(api.stop_timeout, 10);
    assert_eq!(
        (api.memory_limit_mb, api.cpu_shares, api.storage_quota_mb),
        (None, None, None)
    );
    assert!(!api.storage_persist);
    assert!(api.health.is_none() && api.args.is_empty() && api.env.is_empty());
}

#[test]
fn complete_example_from_the_reference() {
    let src = r#"
[settings]
data_dir = "/var/lib/myapp"
health_check_interval = 10
max_restarts = 3
restart_window = 300

[settings.tls]
enabled = true
acme_email = "admin@example.com"
domain = "example.com"

[service.api]
command = "uv run python app.py"
args = ["--port", "{port}"]
workdir = "app"
health = "/health"
idle_timeout = 300
restart = "on-failure"
isolation = "namespace"
memory_limit_mb = 256
cpu_shares = 100
storage_quota_mb = 100

[service.api.env]
DATABASE_PATH = "{data_dir}/{id}/app.db"
LOG_LEVEL = "info"
SECRET_KEY = "${SECRET_KEY}"

[process.worker]
command = "./worker"
runtime = "process"
memory_limit_mb = 512
cpu_shares = 200

[instances]
worker = ["default"]
api = ["prod", "staging"]

[routing]
default = "api"
[routing.subdomain]
"admin" = "worker"
[routing.path]
"/api" = "api"
"#;
    let c = parse(src).unwrap();
    assert_eq!(c.settings.tls.cache_dir, Path::new("/var/lib/myapp/acme"));
    let api = &c.services[&"api".parse().unwrap()];
    assert_eq!(api.workdir, Path::new("/etc/ten/app"));
    assert_eq!(api.env["SECRET_KEY"].as_str(), "hunter2");
    assert_eq!(api.env["DATABASE_PATH"].as_str(), "{data_dir}/{id}/app.db");
    let worker = &c.services[&"worker".parse().unwrap()];
    assert_eq!(worker.isolation, Isolation::Process);
    let keys: Vec<String> = c.instances.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        ["worker:default", "api:prod", "api:staging"],
        "file order"
    );
    assert_eq!(c.routing.default.as_ref().unwrap().as_str(), "api");
    assert_eq!(c.routing.path["/api"].as_str(), "api");
    assert_eq!(c.routing.subdomain["admin"].as_str(), "worker");
}

#[test]
fn every_problem_at_once_with_file_line_column_and_field() {
    let src = r#"[settings]
max_restarts = "three"
colour = "blue"

[service.api]
command = "./api"
restart = "sometimes"
cpu_shares = 0
health = "health"

[service.web]
args = [1]
"#;
    let errs = errors(src);
    let want = [
        "/etc/ten/tenement.toml:2:17: settings.max_restarts: expected an integer, found string",
        "/etc/ten/tenement.toml:3:1: settings.colour: unknown field `colour`",
        "/etc/ten/tenement.toml:7:12: service.api.restart: expected one of \"always\", \"on-failure\", \"never\", found \"sometimes\"",
        "/etc/ten/tenement.toml:8:14: service.api.cpu_shares: 0 is out of range (1 to 10000)",
        "/etc/ten/tenement.toml:9:11: service.api.health: \"health\" must be an HTTP path",
        "service.web.command: missing required field `command`",
        "/etc/ten/tenement.toml:12:9: service.web.args[0]: expected a string, found integer",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for w in want {
        assert!(
            errs.iter().any(|e| e.contains(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
}

#[test]
fn env_scalars_and_the_instance_variables() {
    let src = r#"
[service.api]
command = "sh -c 'exec app --port ${PORT}'"
args = ["--socket", "${SOCKET_PATH}"]
[service.api.env]
WORKERS = 4
RATIO = 0.5
DEBUG = false
ME = "${SERVICE_NAME}:${INSTANCE_ID}"
"#;
    // `PORT` set for `ten` itself must not leak into the instance's command.
    let c = Config::parse(src, Path::new("/t.toml"), &|k| {
        (k == "PORT").then(|| "8080".into())
    })
    .unwrap();
    let api = &c.services[&"api".parse().unwrap()];
    assert_eq!(api.command.as_str(), "sh -c 'exec app --port {port}'");
    assert_eq!(api.args[1].as_str(), "{socket}");
    let env: Vec<(&str, &str)> = api
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("DEBUG", "false"),
            ("ME", "{name}:{id}"),
            ("RATIO", "0.5"),
            ("WORKERS", "4")
        ]
    );
}

#[test]
fn rejected_configs() {
    let table = [
        (
            "[service.api]\ncommand = \"x\"\n[process.api]\ncommand = \"y\"\n",
            "defined in both [service] and [process]",
        ),
        ("[service.API]\ncommand = \"x\"\n", "invalid service name"),
        (
            "[service.api]\ncommand = \"x\"\nisolation = \"process\"\nruntime = \"process\"\n",
            "give only one",
        ),
        (
            "[service.api]\ncommand = \"x\"\nisolation = \"docker\"\n",
            "expected one of \"process\"",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[service.api.env]\nK = \"${NOPE}\"\n",
            "service.api.env.K: environment variable NOPE is not set",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[service.api.env]\nK = [1]\n",
            "service.api.env.K: expected a string, number or boolean, found array",
        ),
        (
            "[service.api]\ncommand = \"x {nope}\"\n",
            "unknown placeholder {nope}",
        ),
        (
            "[service.api]\ncommand = \"x\"\nsocket = \"/tmp/api.sock\"\n",
            "must contain {id}",
        ),
        (
            "[service.api]\ncommand = \"x\"\nsocket = \"rel/{id}.sock\"\n",
            "must be an absolute path",
        ),
        ("[service.api]\ncommand = \"  \"\n", "must not be empty"),
        (
            "[service.shop]\ncommand = \"x\"\nsocket = \"/s/{name}-{id}.sock\"\n[service.shop-eu]\ncommand = \"x\"\nsocket = \"/s/{name}-{id}.sock\"\n",
            ":6:11: service.shop-eu.socket: shop:eu-a and shop-eu:a would share the socket /s/shop-eu-a.sock",
        ),
        (
            "[service.api]\ncommand = \"x\"\nuser = \"no body\"\n",
            "service.api.user: \"no body\" is not a user name",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[instances]\nweb = [\"prod\"]\n",
            "instances.web: unknown service `web`",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[instances]\napi = [\"..\"]\n",
            "invalid instance id \"..\"",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[instances]\napi = [\"a\", \"a\"]\n",
            "listed twice",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[routing]\ndefault = \"web\"\n",
            "routing.default: unknown service `web`",
        ),
        (
            "[service.api]\ncommand = \"x\"\n[routing.path]\n\"api\" = \"api\"\n",
            "must start with '/'",
        ),
        (
            "[settings]\nbackoff_base_ms = 5000\nbackoff_max_ms = 1000\n",
            "must be at least backoff_base_ms",
        ),
        (
            "[settings.tls]\nenabled = true\n",
            "settings.tls.acme_email: required when TLS is enabled",
        ),
        ("[settings.tls]\nhttps_port = 70000\n", "out of range"),
        ("[settings]\nhealth_check_interval = 0\n", "out of range"),
        (
            "[settings]\nhealth_check_interval = 1.5\n",
            "expected an integer, found float",
        ),
        ("[bogus]\n", "unknown field `bogus`"),
        ("[service.api\n", "TOML syntax error"),
        ("[service]\napi = 3\n", "service.api: expected a table"),
    ];
    for (src, want) in table {
        let errs = errors(src).join("\n");
        assert!(
            errs.contains(want),
            "for {src:?}\nwant {want:?}\ngot {errs}"
        );
    }
}

#[test]
fn syntax_error_has_a_line() {
    let e = parse("[settings]\nmax_restarts = = 3\n").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].line, 2, "{}", e);
}

#[test]
fn settings_slum() {
    let c = parse(
        "[settings.slum]\nurl = \"http://10.0.0.1:7400\"\ntoken = \"${SECRET_KEY}\"\nid = \"east\"\n\
         advertise = \"http://10.0.0.2:8080\"\nmemory_mb = 2048\n",
    )
    .unwrap();
    let slum = c.settings.slum.unwrap();
    assert_eq!(slum.url.as_deref(), Some("http://10.0.0.1:7400"));
    assert_eq!(slum.token.as_deref(), Some("hunter2"));
    assert_eq!(
        (slum.id.as_deref(), slum.memory_mb),
        (Some("east"), Some(2048))
    );
    assert!(parse("").unwrap().settings.slum.is_none());
    // The token never shows in the configuration the API serves.
    let shown = serde_json::to_string(
        &parse("[settings.slum]\ntoken = \"t0ps3cret\"\n")
            .unwrap()
            .settings,
    )
    .unwrap();
    assert!(!shown.contains("t0ps3cret"), "{shown}");
    for (src, want) in [
        (
            "[settings.slum]\nurl = \"https://s:1\"\n",
            "settings.slum.url",
        ),
        ("[settings.slum]\nid = \"East Coast\"\n", "settings.slum.id"),
        (
            "[settings.slum]\nadvertise = \"10.0.0.2:8080\"\n",
            "settings.slum.advertise",
        ),
        (
            "[settings.slum]\nmemory_mb = 0\n",
            "settings.slum.memory_mb",
        ),
        (
            "[settings.slum]\nurl = \"http://s:1\"\nlease = 3\n",
            "3:1: settings.slum.lease",
        ),
    ] {
        let said = errors(src).join("\n");
        let line = if want.starts_with("3:") { "" } else { ":2:" };
        assert!(said.contains(want) && said.contains(line), "{src}: {said}");
    }
}
