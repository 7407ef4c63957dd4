//! Try QUIC routing with a browser (README "QUIC"): an HTTP/3 backend for `quic.demo.test` on
//! UDP 127.0.0.1:9443, and sniroute with a quic listener on UDP 127.0.0.1:8443 routing that name
//! to it. Prints the Chromium command to try; the access log follows on stderr.
//!
//! ```sh
//! cargo run --release --example quic-demo
//! ```

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// The routes sniroute runs with: a quic listener, and one route to the HTTP/3 backend.
const CONFIG: &str = r#"[[listen]]
address = "127.0.0.1:8443"
protocol = "quic"

[timeouts]
quic_idle = "5s"

[[route]]
sni = "quic.demo.test"
backend = "127.0.0.1:9443"
"#;

fn main() -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The backend runs on a runtime of its own, beside the proxy's.
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = sniroute::demo::Pki::new()?;
    let backend = runtime.block_on(async {
        sniroute::quic_demo::H3Backend::start(&pki, "127.0.0.1:9443".parse()?, "quic.demo.test")
            .context("the HTTP/3 backend: cannot bind UDP 127.0.0.1:9443")
    })?;
    let config = std::env::temp_dir().join("sniroute-quic-demo.toml");
    std::fs::write(&config, CONFIG)?;
    // Chromium refuses to run as root with its sandbox on (as in a container).
    let sandbox = match rustix::process::geteuid().is_root() {
        true => "--no-sandbox ",
        false => "",
    };
    println!(
        "sniroute quic demo: the proxy listens on UDP 127.0.0.1:8443, an HTTP/3 backend on UDP \
         {}.\nIn another terminal:\n\n  chromium --headless=new {sandbox}--enable-quic \
         --origin-to-force-quic-on=quic.demo.test:8443 \
         --host-resolver-rules='MAP quic.demo.test 127.0.0.1' \
         --ignore-certificate-errors-spki-list={} --user-data-dir=/tmp/sniroute-quic-demo-chromium \
         --dump-dom https://quic.demo.test:8443/\n\nCtrl-C stops it. The access log follows on \
         stderr.\n",
        backend.address, backend.spki
    );
    let args = sniroute::cli::Args::parse_from([
        "sniroute".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let code = sniroute::cli::run(args)?;
    drop(backend);
    Ok(code)
}
