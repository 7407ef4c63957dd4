use std::path::Path;
use std::sync::Arc;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("routes.toml"), text)
}

fn error_line(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

const LISTEN: &str = "[[listen]]\naddress = \"127.0.0.1:8443\"\n";

#[test]
fn a_minimal_config_gets_the_defaults() {
    let config = parse(&format!(
        "{LISTEN}[[route]]\nsni = \"A.example.com.\"\nbackend = \"127.0.0.1:9001\"\n"
    ))
    .unwrap();
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.routes[0].name, "a.example.com");
    assert_eq!(config.routes[0].line, 3);
    assert!(config.default.is_none());
}

#[test]
fn faults_name_file_line_column_and_key() {
    let route = format!("{LISTEN}[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:1\"\n");
    let cases = [
        (format!("{route}alpn = 3\n"), "routes.toml:6:8: route[0].alpn: expected a list, found integer `3`"),
        (format!("{route}alpn = [\"h2\", 3]\n"), "routes.toml:6:15: route[0].alpn[1]: expected a string, found integer `3`"),
        (format!("{route}alpn = []\n"), "routes.toml:6:8: route[0].alpn: expected at least one protocol"),
        (format!("{route}alpn = [\"\"]\n"), "routes.toml:6:9: route[0].alpn[0]: expected a protocol name of 1 to 255 bytes"),
        (format!("{LISTEN}[[route]]\nsni = \"a.test\"\n"), "routes.toml:3:1: route[0]: missing key `backend`"),
        (format!("{LISTEN}[[route]]\nbackend = \"127.0.0.1:1\"\n"), "routes.toml:3:1: route[0]: missing key `sni`"),
        (format!("{LISTEN}[timeouts]\nidle = 5\n"), "routes.toml:4:8: timeouts.idle: expected a string, found integer `5`"),
        (format!("{LISTEN}[timeouts]\nidle = \"soon\"\n"), "routes.toml:4:8: timeouts.idle: expected a duration like \"10s\" or \"500ms\", found \"soon\""),
        (format!("{LISTEN}[timeouts]\nconnect = \"0s\"\n"), "routes.toml:4:11: timeouts.connect: expected a duration above zero"),
        (format!("{LISTEN}[limits]\nmax_client_hello = 100\n"), "routes.toml:4:20: limits.max_client_hello: expected 512 to 16777216, found 100"),
        (format!("{LISTEN}[metrics]\naddress = \"localhost:9100\"\n"), "routes.toml:4:11: metrics.address: expected an address like 127.0.0.1:8443 or [::1]:8443, found \"localhost:9100\""),
        (format!("{route}proxy_protocol = \"v3\"\n"), "routes.toml:6:18: route[0].proxy_protocol: expected \"v1\" or \"v2\", found \"v3\""),
        (format!("{LISTEN}proxy_protocol = {{ trusted = [\"10.0.0.0/8\", \"10.0.0.0/40\"] }}\n"), "routes.toml:3:45: listen[0].proxy_protocol.trusted[1]: expected a prefix length of 0 to 32, found \"40\""),
        (format!("{LISTEN}proxy_protocol = {{ trust = [] }}\n"), "routes.toml:3:20: listen[0].proxy_protocol.trust: unknown key `trust`, expected `trusted`"),
        (format!("{LISTEN}[limits]\nmax_pending_per_ip = -1\n"), "routes.toml:4:22: limits.max_pending_per_ip: expected 0 to 1000000, found -1"),
        (format!("{LISTEN}[[route]]\nsni = \"a.test\nbackend = \"127.0.0.1:1\"\n"), "routes.toml:4:14: invalid basic string, expected `\"`"),
        (format!("{route}[[route]]\nsni = \"A.test.\"\nbackend = \"127.0.0.1:2\"\n"), "routes.toml:7:7: route[1].sni: same name as route[0] (line 3)"),
        (format!("{route}sni = \"*.a.test\"\n"), "routes.toml:6:1: duplicate key"),
        (format!("{route}bogus = 1\n"), "routes.toml:6:1: route[0].bogus: unknown key `bogus`, expected one of `sni`, `name`, `alpn`, `backend`, `backends`, `balance`, `health`, `proxy_protocol`, `terminate`, `backend_tls`, `http`, `http_backend`"),
        (format!("{LISTEN}[[route]]\nsni = \"a.*.test\"\nbackend = \"127.0.0.1:1\"\n"), "routes.toml:4:7: route[0].sni: \"a.*.test\": a wildcard must be the whole first label, as in *.example.com"),
        (format!("{LISTEN}[[route]]\nsni = \"a.test\"\nbackend = \"nowhere\"\n"), "routes.toml:5:11: route[0].backend: expected host:port, found \"nowhere\""),
        ("[[listen]]\naddress = \"localhost\"\n".to_owned(), "routes.toml:2:11: listen[0].address: expected an address like 127.0.0.1:8443 or [::1]:8443, found \"localhost\""),
        (format!("{LISTEN}[[listen]]\naddress = \"127.0.0.1:8443\"\n"), "routes.toml:4:11: listen[1].address: same address as listen[0]"),
        ("[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:1\"\n".to_owned(), "routes.toml:1:1: listen: expected at least one [[listen]] table"),
    ];
    for (text, expected) in cases {
        assert_eq!(error_line(&text), expected, "{text}");
    }
}

#[test]
fn overlapping_alpn_for_one_name_is_refused_at_the_later_route() {
    let text = format!(
        "{LISTEN}[[route]]\nsni = \"api.test\"\nalpn = [\"h2\"]\nbackend = \"127.0.0.1:1\"\n\
         [[route]]\nsni = \"api.test\"\nbackend = \"127.0.0.1:2\"\n\
         [[route]]\nsni = \"api.test\"\nalpn = [\"http/1.1\", \"h2\"]\nbackend = \"127.0.0.1:3\"\n"
    );
    assert_eq!(
        error_line(&text),
        "routes.toml:11:7: route[2].sni: same name and overlapping alpn as route[0] (line 3)"
    );
}

/// A quic listener may share a TCP listener's address; what UDP can't carry is refused.
#[test]
fn quic_listeners_share_tcp_addresses_and_refuse_what_udp_cant_carry() {
    let quic = format!("{LISTEN}[[listen]]\naddress = \"127.0.0.1:8443\"\nprotocol = \"quic\"\n");
    let config = parse(&quic).unwrap();
    assert_eq!(config.listeners[1].protocol, Protocol::Quic);
    let cases = [
        (format!("{LISTEN}[[listen]]\naddress = \"127.0.0.1:8443\"\nprotocol = \"http\"\n"), "routes.toml:4:11: listen[1].address: same address as listen[0]"),
        (format!("{quic}[[listen]]\naddress = \"0.0.0.0:8443\"\nprotocol = \"quic\"\n"), "routes.toml:7:11: listen[2].address: 127.0.0.1:8443 overlaps listen[1]"),
        (format!("{LISTEN}protocol = \"quic\"\nreuse_port = true\n"), "routes.toml:2:11: listen[0].reuse_port: not on a quic listener: the kernel would split a client whose port changes from its flow"),
        (format!("{LISTEN}protocol = \"quic\"\nproxy_protocol = {{ trusted = [\"10.0.0.0/8\"] }}\n"), "routes.toml:4:31: listen[0].proxy_protocol: a quic listener takes no PROXY header (UDP datagrams carry none)"),
        (format!("{LISTEN}protocol = \"udp\"\n"), "routes.toml:3:12: listen[0].protocol: expected \"tls\", \"http\" or \"quic\", found \"udp\""),
        (format!("{LISTEN}[timeouts]\nquic_idle = \"0s\"\n"), "routes.toml:4:13: timeouts.quic_idle: expected a duration above zero"),
        (format!("{LISTEN}[limits]\nmax_quic_flows = 0\n"), "routes.toml:4:18: limits.max_quic_flows: expected 1 to 1000000, found 0"),
    ];
    for (text, expected) in cases {
        assert_eq!(error_line(&text), expected, "{text}");
    }
}

/// Every fault in a pool's keys is one line at the value at fault.
#[test]
fn pool_faults_are_located() {
    let route = format!("{LISTEN}[[route]]\nsni = \"a.test\"\n");
    let cases = [
        (format!("{route}backend = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n"), "routes.toml:6:12: route[0].backends: give `backend` or `backends`, not both"),
        (format!("{route}backends = []\n"), "routes.toml:5:12: route[0].backends: expected 1 to 256 backends, found 0"),
        (format!("{route}backends = [\"127.0.0.1:1\", 7]\n"), "routes.toml:5:28: route[0].backends[1]: expected \"host:port\" or { address, weight }, found integer"),
        (format!("{route}backends = [\"127.0.0.1:1\", {{ address = \"127.0.0.1:2\", weight = 0 }}]\n"), "routes.toml:5:28: route[0].backends[1]: expected a weight of 1 to 100, found 0"),
        (format!("{route}backends = [{{ address = \"127.0.0.1:2\", wieght = 2 }}]\n"), "routes.toml:5:13: route[0].backends[0]: unknown key `wieght`, expected `address` or `weight`"),
        (format!("{route}backends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n"), "routes.toml:5:28: route[0].backends[1]: 127.0.0.1:1 is already backends[0]"),
        (format!("{route}backends = [\"nowhere\"]\n"), "routes.toml:5:13: route[0].backends[0]: expected host:port, found \"nowhere\""),
        (format!("{route}backend = \"127.0.0.1:1\"\nbalance = \"random\"\n"), "routes.toml:6:11: route[0].balance: expected \"round_robin\", \"least_connections\" or \"client_hash\", found \"random\""),
        (format!("{route}backend = \"127.0.0.1:1\"\nhealth = {{ check = \"http\" }}\n"), "routes.toml:6:20: route[0].health.check: expected \"tcp\" or \"tls\", found \"http\""),
        (format!("{route}backend = \"127.0.0.1:1\"\nhealth = {{ interval = \"1s\", timeout = \"2s\" }}\n"), "routes.toml:6:39: route[0].health.timeout: expected at most the interval"),
        (format!("{route}backend = \"127.0.0.1:1\"\nhealth = {{ rise = 0 }}\n"), "routes.toml:6:19: route[0].health.rise: expected 1 to 100, found 0"),
        (format!("{route}backend = \"127.0.0.1:1\"\nhealth = {{ ca = \"ca.pem\" }}\n"), "routes.toml:6:17: route[0].health.ca: needs check = \"tls\""),
        (format!("{route}backend = \"127.0.0.1:1\"\nhealth = {{ check = \"tls\", ca = \"missing.pem\" }}\n"), "routes.toml:6:32: route[0].health.ca: missing.pem: cannot read: No such file or directory (os error 2)"),
    ];
    for (text, expected) in cases {
        assert_eq!(error_line(&text), expected, "{text}");
    }
}

/// A pool's settings, and `check`'s view of them.
#[test]
fn pools_parse_with_their_defaults() {
    let text = format!(
        "{LISTEN}[[route]]\nsni = \"a.test\"\nbackends = [\"127.0.0.1:1\", {{ address = \"app.internal:443\", weight = 3 }}]\n\
         balance = \"client_hash\"\nhealth = {{ check = \"tls\" }}\n\
         [[route]]\nsni = \"*.b.test\"\nbackend = \"127.0.0.1:2\"\nhealth = {{ interval = \"1s\", fall = 1 }}\n"
    );
    let config = parse(&text).unwrap();
    let pools: Vec<(String, Option<String>)> = config
        .routes
        .iter()
        .map(|route| (route.target.pool.to_string(), route.target.pool.settings()))
        .collect();
    assert_eq!(
        pools,
        [
            (
                "127.0.0.1:1, app.internal:443 (weight 3)".to_owned(),
                Some(
                    "client_hash; health tls offering a.test every 5s, timeout 2s, rise 2, fall 3"
                        .to_owned()
                )
            ),
            (
                "127.0.0.1:2".to_owned(),
                Some("health tcp every 1s, timeout 1s, rise 2, fall 1".to_owned())
            ),
        ]
    );
}

/// A terminate route's files are found next to routes.toml when relative; faults in its keys
/// and files are located like any other, and the PEM file is named.
#[test]
fn terminate_tables_are_checked_and_their_files_read_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::demo::Pki::new().unwrap();
    let (cert, key) = pki.issue_pem(&["admin.test".to_owned()]).unwrap();
    std::fs::write(dir.path().join("admin.pem"), cert).unwrap();
    std::fs::write(dir.path().join("admin.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let file = dir.path().join("routes.toml");
    let route = format!("{LISTEN}[[route]]\nsni = \"admin.test\"\nbackend = \"127.0.0.1:1\"\n");
    let terminate = "terminate = { cert = \"admin.pem\", key = \"admin.key\", alpn = [\"h2\"] }\n";
    let config = Config::parse(&file, &format!("{route}{terminate}")).unwrap();
    let tls = config.routes[0].target.terminate.as_ref().unwrap();
    assert_eq!(tls.files.cert, dir.path().join("admin.pem"));
    assert_eq!(tls.server.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(tls.backend_tls.is_none());

    let at = |text: String| {
        Config::parse(&file, &text)
            .unwrap_err()
            .to_string()
            .replace(&format!("{}/", dir.path().display()), "")
    };
    let cases = [
        (
            format!("{route}terminate = {{ cert = \"admin.pem\" }}\n"),
            "routes.toml:6:13: route[0].terminate: missing key `key`",
        ),
        (
            format!("{route}terminate = {{ cert = \"admin.pem\", key = \"admin.key\", pem = 1 }}\n"),
            "routes.toml:6:54: route[0].terminate.pem: unknown key `pem`, expected one of `cert`, `key`, `alpn`, `client_ca`",
        ),
        (
            format!("{route}terminate = {{ cert = \"admin.key\", key = \"admin.key\" }}\n"),
            "routes.toml:6:22: route[0].terminate.cert: admin.key: expected a PEM certificate, found none",
        ),
        (
            format!("{route}terminate = {{ cert = \"admin.pem\", key = \"admin.key\", client_ca = \"absent.pem\" }}\n"),
            "routes.toml:6:66: route[0].terminate.client_ca: absent.pem: cannot read: No such file or directory (os error 2)",
        ),
        (
            format!("{route}backend_tls = {{ ca = \"ca.pem\" }}\n"),
            "routes.toml:6:15: route[0].backend_tls: needs `terminate` (passthrough traffic stays the client's TLS end to end)",
        ),
        (
            format!("{route}{terminate}backend_tls = {{ ca = \"admin.key\" }}\n"),
            "routes.toml:7:22: route[0].backend_tls.ca: admin.key: expected a PEM certificate, found none",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(at(text.clone()), expected, "{text}");
    }
}

#[test]
fn route_names_default_to_the_pattern_and_alpn_and_must_be_unique() {
    let text = format!(
        "{LISTEN}[[route]]\nsni = \"*.Tenants.test\"\nbackend = \"backend.internal:443\"\n\
         [[route]]\nsni = \"api.test\"\nalpn = [\"h2\", \"http/1.1\"]\nbackend = \"[::1]:9003\"\n\
         [default]\nbackend = \"127.0.0.1:9000\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.routes[0].name, "*.tenants.test");
    assert_eq!(
        config.routes[0].target.pool.to_string(),
        "backend.internal:443"
    );
    assert_eq!(config.routes[1].name, "api.test/h2,http/1.1");
    assert_eq!(config.routes[1].target.pool.to_string(), "[::1]:9003");
    assert_eq!(config.default.unwrap().name, DEFAULT_ROUTE_NAME);

    let twice = format!(
        "{LISTEN}[[route]]\nsni = \"a.test\"\nname = \"app\"\nbackend = \"127.0.0.1:1\"\n\
         [[route]]\nsni = \"b.test\"\nname = \"app\"\nbackend = \"127.0.0.1:2\"\n"
    );
    assert_eq!(
        error_line(&twice),
        "routes.toml:9:8: route[1].name: same name \"app\" as route[0] (line 3)"
    );
    let reserved = format!(
        "{LISTEN}[[route]]\nsni = \"a.test\"\nname = \"none\"\nbackend = \"127.0.0.1:1\"\n"
    );
    assert_eq!(
        error_line(&reserved),
        "routes.toml:5:8: route[0].name: \"none\" is reserved"
    );
}

#[test]
fn an_unreadable_file_is_named() {
    let error = load(Path::new("/nonexistent/routes.toml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/nonexistent/routes.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn the_repository_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    load(&path).unwrap();
}

/// `include`: tenant files in name order after routes.toml's routes, hidden and non-matching
/// files left out; faults name the tenant file and its line, overlaps are found across files,
/// and a tenant file holds routes only.
#[test]
fn tenant_files_are_routes_whose_faults_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("routes.d");
    std::fs::create_dir(&tenants).unwrap();
    let tenant = |name: &str, text: &str| std::fs::write(tenants.join(name), text).unwrap();
    tenant(
        "b.toml",
        "[[route]]\nsni = \"b.test\"\nbackend = \"127.0.0.1:2\"\n",
    );
    tenant(
        "a.toml",
        "[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:1\"\n",
    );
    tenant(".a.toml.swp", "not toml");
    tenant("notes.txt", "not toml");
    let main = dir.path().join("routes.toml");
    std::fs::write(
        &main,
        format!("include = [\"routes.d/*.toml\"]\n{LISTEN}[[route]]\nsni = \"main.test\"\nbackend = \"127.0.0.1:3\"\n"),
    )
    .unwrap();
    let config = load(&main).unwrap();
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["main.test", "a.test", "b.test"]);
    assert_eq!(config.routes[0].place(), "line 4");
    assert_eq!(
        config.routes[1].place(),
        format!("{} line 1", tenants.join("a.toml").display())
    );
    assert_eq!(config.include_dirs, std::slice::from_ref(&tenants));

    let refused = |text: &str| {
        tenant("c.toml", text);
        load(&main).unwrap_err().to_string()
    };
    let c = tenants.join("c.toml").display().to_string();
    assert_eq!(
        refused("\n[[route]]\nsni = \"main.test\"\nbackend = \"127.0.0.1:4\"\n"),
        format!(
            "{c}:3:7: route[0].sni: same name as route[0] ({} line 4)",
            main.display()
        )
    );
    assert_eq!(
        refused("[[route]]\nsni = \"c.test\"\nbackend = \"nowhere\"\n"),
        format!("{c}:3:11: route[0].backend: expected host:port, found \"nowhere\"")
    );
    assert_eq!(
        refused("[[listen]]\naddress = \"127.0.0.1:1\"\n"),
        format!("{c}:1:3: listen: unknown key `listen`, expected `route`")
    );
    std::fs::remove_file(tenants.join("c.toml")).unwrap();

    std::fs::write(&main, format!("include = [\"missing/*.toml\"]\n{LISTEN}")).unwrap();
    let error = load(&main).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "{}:1:12: include[0]: cannot read directory",
            main.display()
        )),
        "{error}"
    );
}

/// Routes that write the same target share one (`Arc`), within a file and across tenant files
/// read on different threads; a different key, or a health check that sends the route's own
/// name, keeps them apart.
#[test]
fn routes_that_write_one_target_share_it() {
    let route = |sni: &str, rest: &str| {
        format!("[[route]]\nsni = \"{sni}\"\nbackend = \"127.0.0.1:9\"\n{rest}\n")
    };
    let config = parse(&format!(
        "{LISTEN}{}{}{}{}{}",
        route("a.test", ""),
        route("b.test", ""),
        route("c.test", "proxy_protocol = \"v2\""),
        route("d.test", "health = { check = \"tls\" }"),
        route("e.test", "health = { check = \"tls\" }"),
    ))
    .unwrap();
    let same = |a: usize, b: usize| Arc::ptr_eq(&config.routes[a].target, &config.routes[b].target);
    assert!(same(0, 1));
    assert!(!same(0, 2));
    assert!(!same(3, 4), "each TLS check offers its own route's name");
    let tcp = parse(&format!(
        "{LISTEN}{}{}",
        route("f.test", "health = { check = \"tcp\" }"),
        route("g.test", "health = { check = \"tcp\" }"),
    ))
    .unwrap();
    assert!(Arc::ptr_eq(&tcp.routes[0].target, &tcp.routes[1].target));

    // Enough tenant files for every core to read some; the first fault in file order wins.
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("routes.d");
    std::fs::create_dir(&tenants).unwrap();
    for file in 0..64 {
        let text: String = (0..4)
            .map(|index| route(&format!("t{file}-{index}.test"), ""))
            .collect();
        std::fs::write(tenants.join(format!("t{file:02}.toml")), text).unwrap();
    }
    let main = dir.path().join("routes.toml");
    std::fs::write(&main, format!("include = [\"routes.d/*.toml\"]\n{LISTEN}")).unwrap();
    let config = load(&main).unwrap();
    assert_eq!(config.routes.len(), 256);
    assert_eq!(config.routes[255].name, "t63-3.test");
    assert!(config
        .routes
        .iter()
        .all(|route| Arc::ptr_eq(&route.target, &config.routes[0].target)));
    for file in [60, 5] {
        std::fs::write(
            tenants.join(format!("t{file:02}.toml")),
            "[[route]]\nsni = 1\n",
        )
        .unwrap();
    }
    let error = load(&main).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:2:7:", tenants.join("t05.toml").display())),
        "{error}"
    );
}

/// Past 10,000 routes the overlap checks run on every core, each on a share of the names: the
/// fault reported is still the first in file order, whichever share finds it.
#[test]
fn the_first_fault_is_reported_however_the_checks_are_shared() {
    // A route taking n5.test's name (a tie) at `tie`, one named "n7.test" at `named`.
    let routes = |tie: usize, named: usize| {
        let mut text = LISTEN.to_owned();
        for index in 0..12_000 {
            let sni = match index == tie {
                true => "n5.test".to_owned(),
                false => format!("n{index}.test"),
            };
            let name = match index == named {
                true => "name = \"n7.test\"\n",
                false => "",
            };
            text.push_str(&format!(
                "[[route]]\nsni = \"{sni}\"\n{name}backend = \"127.0.0.1:9\"\n"
            ));
        }
        text
    };
    let error = error_line(&routes(11_000, 11_500));
    assert!(
        error.contains("route[11000].sni: same name as route[5] (line "),
        "{error}"
    );
    let error = error_line(&routes(11_500, 11_000));
    assert!(
        error.contains("route[11000].name: same name \"n7.test\" as route[7] (line "),
        "{error}"
    );
}
