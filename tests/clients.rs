//! Real clients other than rustls: curl and `openssl s_client` through the proxy to real TLS
//! backends. `.ci/run` installs both; on a machine without them these tests say so and skip.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;

use sniroute::demo::TlsBackend;
use support::*;
use tokio::io::AsyncWriteExt;

struct Setup {
    proxy: Proxy,
    ca: tempfile::NamedTempFile,
    _certificates: tempfile::TempDir,
}

/// Two HTTP/1.1 TLS backends with their own certificates, one name each; a terminate route
/// for `admin.test` in front of a plaintext HTTP backend; and a CA file.
async fn setup() -> Setup {
    let mut addresses = Vec::new();
    for name in ["alpha", "beta"] {
        let names = vec![format!("{name}.test")];
        let config = pki().server_config(&names, &["http/1.1"]).unwrap();
        addresses.push(
            TlsBackend::start("127.0.0.1:0".parse().unwrap(), name, config)
                .await
                .unwrap()
                .address,
        );
    }
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(pki(), certificates.path(), "admin", &["admin.test"]);
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"alpha.test\"\nbackend = \"{}\"\n[[route]]\nsni = \"beta.test\"\nbackend = \"{}\"\n\
         [[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n\
         terminate = {{ cert = \"{cert}\", key = \"{key}\", alpn = [\"http/1.1\"] }}\n",
        addresses[0],
        addresses[1],
        http_backend("admin").await
    ))
    .await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), pki().ca_pem()).unwrap();
    Setup {
        proxy,
        ca,
        _certificates: certificates,
    }
}

async fn run(mut command: tokio::process::Command, stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let output = guard(child.wait_with_output()).await.unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn curl(setup: &Setup, name: &str) -> tokio::process::Command {
    let proxy: SocketAddr = setup.proxy.address;
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(setup.ca.path())
        .arg("--connect-to")
        .arg(format!("{name}:443:{proxy}"))
        .arg(format!("https://{name}/"));
    command
}

#[tokio::test]
async fn curl_reaches_the_backend_for_each_name_and_an_unknown_name_gets_an_alert() {
    if !installed("curl") {
        return;
    }
    let setup = setup().await;
    for name in ["alpha", "beta"] {
        let (code, stdout, stderr) = run(curl(&setup, &format!("{name}.test")), b"").await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, format!("{name}: sni={name}.test alpn=http/1.1\n"));
    }
    let (code, stdout, stderr) = run(curl(&setup, "admin.test"), b"").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout, "admin: GET / HTTP/1.1\n",
        "the terminate route's plaintext backend"
    );
    let (code, _, stderr) = run(curl(&setup, "unknown.test"), b"").await;
    assert_eq!(code, Some(35), "{stderr}");
    assert!(stderr.contains("unrecognized name"), "{stderr}");
    setup.proxy.shutdown().await;
}

fn s_client(setup: &Setup, name: &str, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("openssl");
    command
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(setup.proxy.address.to_string())
        .args(["-servername", name, "-verify_hostname", name, "-CAfile"])
        .arg(setup.ca.path())
        .args(extra);
    command
}

/// `-max_send_frag 512` (OpenSSL's smallest) cuts a ClientHello over 512 bytes into several
/// records; eight long ALPN protocols make the hello about 700 bytes.
#[tokio::test]
async fn openssl_s_client_reaches_the_right_backend_with_the_hello_in_one_or_many_records() {
    if !installed("openssl") {
        return;
    }
    let setup = setup().await;
    let mut alpn: Vec<String> = (0..8)
        .map(|i| format!("x-protocol-{i:02}-with-a-long-name-to-pad-the-hello"))
        .collect();
    alpn.push("http/1.1".to_owned());
    let alpn = alpn.join(",");
    let request = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
    for extra in [
        &["-alpn", &alpn][..],
        &["-alpn", &alpn, "-max_send_frag", "512"][..],
    ] {
        for name in ["alpha", "beta"] {
            let (_, stdout, stderr) =
                run(s_client(&setup, &format!("{name}.test"), extra), request).await;
            assert!(
                stdout.ends_with(&format!("{name}: sni={name}.test alpn=http/1.1\n")),
                "{extra:?}: {stdout} {stderr}"
            );
        }
    }
    setup.proxy.shutdown().await;
}

/// A terminate route: s_client verifies the proxy's own certificate for the name and its
/// request reaches the plaintext backend.
#[tokio::test]
async fn openssl_s_client_sees_the_proxys_certificate_on_a_terminate_route() {
    if !installed("openssl") {
        return;
    }
    let setup = setup().await;
    let command = s_client(&setup, "admin.test", &["-brief"]);
    let request = b"GET /from-openssl HTTP/1.1\r\nhost: admin.test\r\n\r\n";
    let (_, stdout, stderr) = run(command, request).await;
    assert!(
        stdout.ends_with("admin: GET /from-openssl HTTP/1.1\n"),
        "{stdout} {stderr}"
    );
    let output = stdout + &stderr;
    for line in ["Verification: OK", "Verified peername: admin.test"] {
        assert!(output.contains(line), "{line}: {output}");
    }
    setup.proxy.shutdown().await;
}
