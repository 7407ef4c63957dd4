//! The serde mirror of routes.toml: every table refuses unknown keys, and values a later check
//! may reject keep their span so the error can name the line.
//!
//! A pool's `backends` are kept as TOML values: each is a string or a table, parsed by
//! `pool.rs` so a fault names the entry.

use serde::Deserialize;
use toml::{Spanned, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub include: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub listen: Vec<Spanned<RawListen>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    pub default: Option<Spanned<RawDefault>>,
}

/// A tenant file named by `include`: `[[route]]` tables and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub address: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub proxy_protocol: Option<RawListenProxy>,
    pub reuse_port: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenProxy {
    pub trusted: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub client_hello: Option<Spanned<String>>,
    pub connect: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub drain: Option<Spanned<String>>,
    pub proxy_header: Option<Spanned<String>>,
    pub quic_idle: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_connections: Option<Spanned<i64>>,
    pub max_client_hello: Option<Spanned<i64>>,
    pub max_pending_per_ip: Option<Spanned<i64>>,
    pub max_pending_hello_bytes: Option<Spanned<i64>>,
    pub max_quic_flows: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub sni: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub backend: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<Value>>>>,
    pub balance: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub terminate: Option<Spanned<RawTerminate>>,
    pub backend_tls: Option<Spanned<RawBackendTls>>,
    pub http: Option<Spanned<String>>,
    pub http_backend: Option<Spanned<String>>,
}

/// `[default]`: a route's target keys without `sni`, `name` or `alpn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefault {
    pub backend: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<Value>>>>,
    pub balance: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub terminate: Option<Spanned<RawTerminate>>,
    pub backend_tls: Option<Spanned<RawBackendTls>>,
    pub http: Option<Spanned<String>>,
    pub http_backend: Option<Spanned<String>>,
}

/// `terminate = { cert, key, alpn, client_ca }`: sniroute completes the handshake itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTerminate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub client_ca: Option<Spanned<String>>,
}

/// `health = { check, interval, timeout, rise, fall, server_name, ca }`: active checks of a
/// route's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub check: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub server_name: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

/// `backend_tls = { ca, server_name, alpn_to_backend }`: a terminate route re-encrypts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    pub ca: Spanned<String>,
    pub server_name: Option<Spanned<String>>,
    pub alpn_to_backend: Option<bool>,
}
