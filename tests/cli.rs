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
timeouts  client_hello 10s, connect 5s, idle 1h, drain 30s
limits    max_connections 50000, max_client_hello 65536, max_pending_per_ip 64
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
    assert_eq!(lines[2], "records               1 (344 bytes)");
    assert!(
        lines[5].starts_with("supported versions    0x0304"),
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

    assert_eq!(binary.terminate().await, Some(0));
}
