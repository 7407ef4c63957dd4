//! The binary as an operator meets it: exit codes, the one-line errors, the outputs of check,
//! explain and peek, and a real run (readiness line, JSON access log, SIGTERM).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::*;

fn sniroute(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn example() -> String {
    format!("{}/routes.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_bad_config_is_one_line_naming_file_line_key_and_fault_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:1\"\nalpn = 3\n",
    );
    let expected = format!(
        "{}:6:8: route[0].alpn: expected a list, found integer `3`\n",
        path.display()
    );
    for args in [
        vec!["--config", path.to_str().unwrap()],
        vec!["check", "--config", path.to_str().unwrap()],
    ] {
        let output = sniroute(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(text(&output.stderr), expected, "{args:?}");
        assert_eq!(text(&output.stdout), "");
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let output = sniroute(&["check", "--config", "/nonexistent/routes.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "/nonexistent/routes.toml: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn an_address_that_cannot_be_bound_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[[listen]]\naddress = \"{address}\"\n"),
    );
    let output = sniroute(&["--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:2:11: listen[0].address: cannot bind {address}: Address already in use (os error 98)\n",
            path.display()
        )
    );
}

#[test]
fn check_prints_the_resolved_route_table_in_match_order() {
    let output = sniroute(&["check", "--config", &example()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let expected = format!(
        "{}: ok
listen    127.0.0.1:8443
timeouts  client_hello 10s, connect 5s, idle 1h, drain 30s, proxy_header 5s
limits    max_connections 50000, max_client_hello 65536, max_pending_per_ip 64, max_pending_hello_bytes 67108864
routes, in the order they match:
  line  name              sni               alpn  backend         tls
  24    alpha.demo.test   alpha.demo.test   -     127.0.0.1:9001  passthrough
  33    beta.demo.test    beta.demo.test    -     127.0.0.1:9002  passthrough
  29    *.beta.demo.test  *.beta.demo.test  -     127.0.0.1:9002  passthrough
no [default]: hellos without a name or with an unknown one get an unrecognized_name alert
",
        example()
    );
    assert_eq!(text(&output.stdout), expected);
}

#[test]
fn explain_says_which_route_and_why() {
    let output = sniroute(&[
        "explain",
        "--config",
        &example(),
        "--sni",
        "WWW.Beta.demo.test.",
        "--alpn",
        "h2",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        text(&output.stdout),
        "sni      www.beta.demo.test\nalpn     h2\nroute    *.beta.demo.test (line 29)\nbackend  127.0.0.1:9002\ntls      passthrough\nwhy      the longest matching wildcard\n"
    );
    let output = sniroute(&["explain", "--config", &example(), "--sni", "nobody.test"]);
    assert_eq!(
        text(&output.stdout),
        "sni      nobody.test\nalpn     (none)\nroute    none\nwhy      no route matches the name, and there is no [default]: the client gets an unrecognized_name alert\n"
    );
    let output = sniroute(&["explain", "--config", &example(), "--sni", "bad name"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "--sni \"bad name\": byte 0x20 not allowed in a DNS name\n"
    );
}

#[test]
fn peek_prints_what_the_peeker_sees() {
    let capture = format!(
        "{}/tests/data/hello/openssl-s_client.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = sniroute(&["peek", &capture]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "server name           openssl.capture.test");
    assert_eq!(lines[1], "alpn                  h2,http/1.1");
    assert_eq!(
        lines[2],
        "ja4                   t13d3111h2_e8f1e7e78f70_1f22a2ca17c4"
    );
    assert_eq!(lines[3], "ech                   none");
    assert_eq!(lines[4], "records               1 (344 bytes)");
    assert!(
        lines[7].starts_with("supported versions    0x0304"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("two-names.bin");
    std::fs::write(
        &bad,
        sniroute::hello::synth::ClientHelloBuilder::new()
            .server_name("a.test")
            .server_name("b.test")
            .record(),
    )
    .unwrap();
    let output = sniroute(&["peek", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}: rejected: two host names in server_name (alert illegal_parameter (47))\n",
            bad.display()
        )
    );
}

#[tokio::test]
async fn the_binary_routes_logs_json_and_drains_on_sigterm() {
    let backend = tls_backend("alpha", &["alpha.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"alpha.test\"\nbackend = \"{backend}\"\n"),
    );
    let mut binary = Binary::start(&config, &["--log-format", "json", "--workers", "2"]).await;
    let address = binary.wait_for_address("listening").await;

    let exchange = tls_exchange(address, "alpha.test", &["h2", "http/1.1"], Shape::PLAIN).await;
    assert_eq!(exchange.answer.unwrap(), "alpha: sni=alpha.test alpn=-");

    let line = binary.wait_for_line("sniroute::access").await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["sni"], "alpha.test");
    assert_eq!(record["alpn"], "h2,http/1.1");
    assert_eq!(record["route"], "alpha.test");
    assert_eq!(record["backend.addr"], backend.to_string());
    assert_eq!(record["outcome"], "ok");
    assert!(record["bytes.to_backend"].as_u64().unwrap() as usize > exchange.hello_len);
    assert!(record["bytes.to_client"].as_u64().unwrap() > 0);
    assert!(record["client.addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(record["duration_ms"].is_u64());
    let ja4 = record["ja4"].as_str().unwrap();
    assert!(ja4.starts_with("t13d") && ja4.len() == 36, "{ja4}");
    assert_eq!(record["ech"], "none");
    assert_eq!(record["cause"], "-");

    // The README's access-log field table lists exactly these fields, in the order of its
    // example line.
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|key| !["timestamp", "level", "target", "message"].contains(key))
        .collect();
    let (table, example) = readme_access_log();
    assert_eq!(
        table, example,
        "the README's field table and example line differ"
    );
    fields.sort_unstable();
    let mut documented = table.clone();
    documented.sort_unstable();
    assert_eq!(
        fields, documented,
        "the README's field table and a real line differ"
    );

    assert_eq!(binary.terminate().await, Some(0));
}

/// The README's access-log section: the fields of its table, and the keys of its example line,
/// in order.
fn readme_access_log() -> (Vec<String>, Vec<String>) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## Access log").unwrap()..];
    let section = &section[..section[3..].find("\n## ").unwrap()];
    let table = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once('`'))
        .map(|(field, _)| field.to_owned())
        .collect();
    let example = section
        .lines()
        .find(|line| line.contains("INFO sniroute::access"))
        .unwrap();
    let example = example
        .split(' ')
        .filter_map(|word| word.split_once('='))
        .map(|(key, _)| key.to_owned())
        .collect();
    (table, example)
}

/// A backend that is one of the proxy's own listeners would loop every hello through it until
/// descriptors ran out: refused by `check` and at start-up, at the backend's line.
#[test]
fn a_backend_that_is_one_of_the_proxys_own_listeners_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (listen, backend) in [
        ("127.0.0.1:31443", "127.0.0.1:31443"),
        ("0.0.0.0:31443", "127.0.0.2:31443"),
        ("[::]:31443", "127.0.0.1:31443"),
    ] {
        let path = write_config(
            dir.path(),
            &format!("[[listen]]\naddress = \"{listen}\"\n[default]\nbackend = \"{backend}\"\n"),
        );
        let expected = format!(
            "{}:4:11: default.backend: {backend} is this proxy's own listen[0] ({listen}): a routing loop\n",
            path.display()
        );
        for args in [
            vec!["check", "--config", path.to_str().unwrap()],
            vec!["--config", path.to_str().unwrap()],
        ] {
            let output = sniroute(&args);
            assert_eq!(output.status.code(), Some(1), "{args:?}");
            assert_eq!(text(&output.stderr), expected, "{args:?}");
        }
    }
}

/// On a port-80 listener, a route's port-80 side (its backends' hosts on port 80, or
/// `http_backend`) leading back to the proxy is a loop too, found by `check`; so is a tenant
/// file's backend, named with the tenant file and its own route index.
#[test]
fn port_80_and_tenant_file_loops_are_refused_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[listen]]\naddress = \"127.0.0.1:31443\"\n[[listen]]\naddress = \"0.0.0.0:31080\"\nprotocol = \"http\"\n\
         [[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:9001\"\nhttp_backend = \"127.0.0.1:31080\"\n",
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:9:16: route[0].http_backend: 127.0.0.1:31080 is this proxy's own listen[1] (0.0.0.0:31080): a routing loop\n",
            path.display()
        )
    );

    let path = write_config(
        dir.path(),
        "[[listen]]\naddress = \"127.0.0.1:31443\"\n[[listen]]\naddress = \"0.0.0.0:80\"\nprotocol = \"http\"\n\
         [[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:9001\"\n",
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:8:11: route[0].backend: 127.0.0.1:80 is this proxy's own listen[1] (0.0.0.0:80): a routing loop (its port-80 side: the backend's host with port 80; set http_backend)\n",
            path.display()
        )
    );

    let tenants = dir.path().join("routes.d");
    std::fs::create_dir(&tenants).unwrap();
    std::fs::write(
        tenants.join("a.toml"),
        "[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:9001\"\n\
         [[route]]\nsni = \"b.test\"\nbackend = \"127.0.0.1:31443\"\n",
    )
    .unwrap();
    let path = write_config(
        dir.path(),
        "include = [\"routes.d/*.toml\"]\n[[listen]]\naddress = \"127.0.0.1:31443\"\n",
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:6:11: route[1].backend: 127.0.0.1:31443 is this proxy's own listen[0] (127.0.0.1:31443): a routing loop\n",
            tenants.join("a.toml").display()
        )
    );
}

#[test]
fn overlapping_listeners_are_refused_by_check_not_found_at_bind() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[listen]]\naddress = \"0.0.0.0:31444\"\n[[listen]]\naddress = \"127.0.0.1:31444\"\n",
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:4:11: listen[1].address: 0.0.0.0:31444 overlaps listen[0]\n",
            path.display()
        )
    );
}

#[test]
fn an_ip_address_route_is_refused_and_explain_answers_as_the_proxy_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"192.0.2.7\"\nbackend = \"127.0.0.1:1\"\n",
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:4:7: route[0].sni: an IP address is not a server name: clients that connect by IP send none (route them with [default])\n",
            path.display()
        )
    );
    for ip in ["192.0.2.7", "::1"] {
        let output = sniroute(&["explain", "--config", &example(), "--sni", ip]);
        assert_eq!(output.status.code(), Some(0), "{ip}");
        assert!(
            text(&output.stdout)
                .starts_with("sni      (none: an IP address in server_name is read as no name)\n"),
            "{ip}: {}",
            text(&output.stdout)
        );
    }
}

#[test]
fn bad_command_line_values_are_one_line() {
    for (args, expected) in [
        (
            vec!["--workers", "100000", "check"],
            "invalid value '100000' for '--workers <N>': 100000 is not in 1..=1024\n",
        ),
        (
            vec!["--workers", "0", "check"],
            "invalid value '0' for '--workers <N>': 0 is not in 1..=1024\n",
        ),
    ] {
        let output = sniroute(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&output.stderr), expected, "{args:?}");
    }
}

/// A 5 MB value is quoted as its first characters and its size, not echoed whole.
#[test]
fn a_huge_value_is_cut_in_the_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "a".repeat(5_000_000);
    let path = write_config(
        dir.path(),
        &format!("[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"{huge}\"\nbackend = \"127.0.0.1:1\"\n{huge} = 1\n"),
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let line = text(&output.stderr);
    assert_eq!(line.lines().count(), 1);
    assert!(line.len() < 1000, "{} bytes", line.len());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"{huge}\"\nbackend = \"127.0.0.1:1\"\n"),
    );
    let output = sniroute(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(
        text(&output.stderr),
        format!(
            "{}:4:7: route[0].sni: \"{}…\" (5000000 bytes): name longer than 255 bytes\n",
            path.display(),
            "a".repeat(64)
        )
    );
}

/// `peek` stops at the first bytes that settle the verdict, or at the limit: an endless input
/// gets an answer.
#[test]
fn peek_answers_an_endless_input() {
    let output = sniroute(&["peek", "/dev/zero"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "/dev/zero: rejected: not tls (closed without an alert)\n"
    );
    // An endless stream of one-byte handshake records: refused at the limit.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("records");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut out = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            let mut record = vec![22, 3, 1, 0, 4, 1, 0, 0xff, 0xff];
            while out.write_all(&record).is_ok() {
                record = vec![22, 3, 3, 0, 1, 0];
            }
        })
    };
    let output = sniroute(&["peek", fifo.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("rejected: client hello over 65536 bytes"),
        "{}",
        text(&output.stderr)
    );
    writer.join().unwrap();
}

/// Failures say why: the rule a hello broke, the backend address tried and the OS error.
#[tokio::test]
async fn failures_are_logged_with_the_address_tried_and_a_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"down.test\"\nbackend = \"{refused}\"\n"),
    );
    let mut binary = Binary::start(&config, &["--log-format", "json"]).await;
    let address = binary.wait_for_address("listening").await;

    let hello = sniroute::hello::synth::ClientHelloBuilder::new()
        .server_name("down.test")
        .record();
    assert_eq!(send_raw(address, &hello).await, alert(80));
    let record: serde_json::Value =
        serde_json::from_str(&binary.wait_for_line("sniroute::access").await).unwrap();
    assert_eq!(record["outcome"], "backend_unreachable");
    assert_eq!(record["backend.addr"], refused.to_string());
    assert_eq!(record["cause"], "Connection refused (os error 111)");

    let two_names = sniroute::hello::synth::ClientHelloBuilder::new()
        .server_name("a.test")
        .server_name("b.test")
        .record();
    send_raw(address, &two_names).await;
    let record: serde_json::Value =
        serde_json::from_str(&binary.wait_for_line("sniroute::access").await).unwrap();
    assert_eq!(record["outcome"], "bad_hello");
    assert_eq!(record["cause"], "two host names in server_name");
    assert_eq!(binary.terminate().await, Some(0));
}

/// The log's writer blocks in a write to a stderr nobody reads; SIGTERM still ends the process
/// (the lines left are given up after a short deadline), instead of waiting forever.
#[tokio::test]
async fn sigterm_ends_the_process_even_when_nobody_reads_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[[listen]]\naddress = \"127.0.0.1:0\"\n");
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let address: std::net::SocketAddr = loop {
        use tokio::io::AsyncBufReadExt;
        line.clear();
        guard(stderr.read_line(&mut line)).await.unwrap();
        if let Some(address) = line.split("address=").nth(1) {
            break address.trim().parse().unwrap();
        }
    };
    // From here nobody reads stderr: a few thousand access lines fill the pipe.
    for _ in 0..3000 {
        send_raw(address, b"GET / HTTP/1.0\r\n\r\n").await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = guard(child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    drop(stderr);
}
