//! sniroute: a TLS front door that routes connections by the ClientHello's SNI and ALPN without
//! decrypting, and splices bytes to the chosen backend.
//!
//! Architecture (→ what a module may use):
//!
//! ```text
//! main.rs      parse args, cli::run, print one error line             → cli
//! cli          clap types; run / check / explain / peek / demo        → all
//! demo         in-process TLS backends and certificates for `demo`    → config, server
//! name         ServerName, NamePattern                                → –
//! hello        Peeker::feed -> Progress; record reassembly; alerts    → name
//! config       routes.toml: raw serde mirror → validated Config       → name, terminate
//! outcome      Outcome, Side: how a connection ended                  → –
//! log          the log's writer thread: batched, bounded, never blocks  → –
//! metrics      series names, per-route handles, GET /metrics           → outcome, log
//! route        RouteTable::lookup(sni, alpn) -> Decision              → config, hello, name, metrics
//! proxy_protocol  PROXY v1/v2 decode and encode, CIDR ranges            → –
//! terminate    PEM loading, rustls configs per terminate route         → –
//! proxy        listener, conn, handshake, splice, alert, access_log   → hello, route, config, metrics, proxy_protocol, terminate
//! server       bind, live table, reload, shutdown and drain           → proxy, config, metrics
//! ```
//!
//! `name`, `hello`, `config`, `route`, `proxy_protocol` and `terminate` do no socket I/O and never
//! import tokio (`config` and `terminate` read files): they are what the
//! unit tests, proptests and fuzz targets exercise directly.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod hello;
pub mod log;
pub mod metrics;
pub mod name;
pub mod outcome;
pub mod proxy;
pub mod proxy_protocol;
pub mod route;
pub mod server;
pub mod terminate;
pub mod watch;
