//! sniroute: a TLS front door that routes connections by the ClientHello's SNI and ALPN without
//! decrypting, and splices bytes to the chosen backend.
//!
//! Architecture (→ what a module may use). A connection's life reads top to bottom in `proxy/`,
//! one file per phase (see `proxy/mod.rs`).
//!
//! ```text
//! main.rs         parse args, cli::run, print one error line                 → cli
//! cli             clap types; run / check / explain / peek / demo            → all
//! demo            in-process TLS backends and certificates for `demo`        → config, server
//! quic_demo       (feature `quic-demo`) an HTTP/3 backend to try QUIC with   → demo
//! name            ServerName, NamePattern, IP literals                       → –
//! hello/          records → handshake (assembler fed (offset, bytes)) →
//!                 parse (ClientHello, ECH) → ja4 (transport a parameter)     → name
//! http            port 80: the HTTP/1.x request head (httparse), vetted       → name
//! quic/           Initial packets: headers, keys (rustls), frames, CRYPTO
//!                 reassembly into the ClientHello; no sockets                → hello
//! config/         routes.toml: raw serde mirror → listen, limits, route,
//!                 pool (backend/backends, balance, health); include (tenant
//!                 files, on every core), reload (which ones changed)         → name, terminate
//! outcome         Outcome, Side: how a connection ended                      → –
//! log             the log's writer thread: batched, bounded, never blocks    → –
//! metrics         series names, descriptions, per-route handles              → outcome, log
//! route/          RouteTable::lookup(sni, alpn) -> Decision; set, index (the
//!                 compact routes), patch (a reload of a few tenant files);
//!                 pool: members, balancers, health and ejection state (time
//!                 passed in)                                                 → config, hello, name, metrics
//! proxy_protocol  PROXY v1/v2 decode and encode, CIDR ranges                 → –
//! terminate       PEM loading, rustls configs per terminate route            → –
//! proxy/          context, accept, connection (sniff → connect (failover) →
//!                 relay, or tls), splice, alert, access_log; pools (health
//!                 checks, host-name resolution, off the path); quic (flows)  → hello, route, config, metrics,
//!                                                                              proxy_protocol, terminate
//! admin           the metrics address: GET /metrics, /healthz, /readyz       → metrics, proxy
//! watch           the config file and its symlink chain                      → –
//! server          bind, live table, reload, loops refused, drain             → proxy, config, admin, watch,
//!                                                                              workers
//! workers         thread-per-core: one current-thread runtime per worker     → –
//! fuzzing         (feature `testing`) the fuzz oracles                       → hello, config, route
//! ```
//!
//! `name`, `hello`, `http`, `quic`, `config`, `route`, `proxy_protocol` and `terminate` do no
//! socket I/O and never
//! import tokio (`config` and `terminate` read files): they are what the
//! unit tests, proptests and fuzz targets exercise directly. Test tooling (`fuzzing`,
//! `hello::synth`) is compiled only with the `testing` feature, which the tests, the benchmark
//! and the fuzz crate turn on.

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
pub mod http;
pub mod log;
pub mod metrics;
pub mod name;
pub mod outcome;
pub mod proxy;
pub mod proxy_protocol;
pub mod quic;
#[cfg(feature = "quic-demo")]
pub mod quic_demo;
pub mod route;
pub mod server;
pub mod terminate;
pub mod watch;
pub mod workers;
