//! A port-80 connection (SPEC "Port 80"): the request head instead of a hello, routed by its
//! Host with the same table, then a `308` to https without dialling anything, or the bytes
//! forwarded unchanged to the route's port-80 backends and copied both ways as for TLS. ACME
//! http-01 requests are always forwarded, so backends that hold their own keys can renew them.
//!
//! Every refusal is a short plaintext response and a close: `400` (malformed or ambiguous),
//! `431` (too large), `408` (not complete in time), `421` (a Host no route takes; `404` without
//! any Host), `502` (no backend reachable), `504` (none answered in time), `503` (over a limit,
//! out of descriptors, or shutting down).

use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::access_log::AccessLog;
use super::connect::Dial;
use super::connection::{proxy_header, reach, replay_to, Ending, Next};
use super::context::{ListenerContext, Shared};
use super::sniff::{ClientStream, SniffError};
use super::{alert, Live, Outcome, Side};
use crate::config::HttpMode;
use crate::hello::Alpn;
use crate::proxy_protocol::Tlvs;

/// Reads the head, routes it, and redirects, refuses, or connects the backend for the relay.
pub(super) async fn head_and_route<'a, 's>(
    client: &mut ClientStream<'s>,
    live: &'a Live,
    listener: &ListenerContext,
    shared: &'s Shared,
    log: &mut AccessLog<'a>,
) -> Next<'s> {
    let sniffed = client.sniff_head(live, listener, shared).await;
    log.client = client.origin().source;
    let (mut head, replay) = match sniffed {
        Ok(sniffed) => sniffed,
        Err(error) => {
            let ending = match error {
                SniffError::HelloTimeout => Ending::new(Outcome::HeadTimeout, Side::Client),
                error => error.into(),
            };
            let status = match error {
                SniffError::Head(error) => Some(error.status()),
                SniffError::HelloTimeout => Some((408, "Request Timeout")),
                SniffError::PendingLimit | SniffError::HelloBudget | SniffError::Drained => {
                    Some((503, "Service Unavailable"))
                }
                _ => None,
            };
            match status {
                Some((code, reason)) => respond(&mut client.socket, code, reason, None).await,
                None => alert::close(&mut client.socket, None).await,
            }
            return Next::Done(ending);
        }
    };
    let named = head.host.is_some();
    log.host(head.host.take());
    let decision = live.table.lookup(log.offer().0, &Alpn::default());
    log.metrics = decision.metrics;
    let (Some(route), Some(pool)) = (decision.route, decision.http_pool) else {
        drop(replay);
        let (code, reason) = match named {
            true => (421, "Misdirected Request"),
            false => (404, "Not Found"),
        };
        respond(&mut client.socket, code, reason, None).await;
        return Next::Done(Ending::new(Outcome::NoRoute, Side::Client));
    };
    log.route = Some(route);
    let target = &**route.target();
    if target.http.mode == HttpMode::Redirect && !head.is_acme() {
        drop(replay);
        if head.authority.is_empty() {
            // HTTP/1.0 without a Host, taken by [default]: there is no URL to send it to.
            respond(&mut client.socket, 400, "Bad Request", None).await;
            return Next::Done(Ending::new(Outcome::BadRequest, Side::Client));
        }
        let path = match &*head.target {
            "*" => "/",
            path => path,
        };
        let location = format!("https://{}{path}", head.authority);
        respond(
            &mut client.socket,
            308,
            "Permanent Redirect",
            Some(&location),
        )
        .await;
        return Next::Done(Ending::new(Outcome::Redirected, Side::Internal));
    }
    let tlvs = Tlvs {
        authority: log.offer().0.map(|name| name.as_str()),
        alpn: None,
        ssl: None,
    };
    let header = proxy_header(target, client.origin(), &client.socket, tlvs);
    let dial = Dial {
        header: header.as_deref(),
        replay: None,
    };
    let failed = match reach(live, pool, dial, log).await {
        Ok(connected) => {
            let mut backend = connected.stream;
            match replay_to(&mut backend, replay, live).await {
                Ok(written) => {
                    log.bytes.to_backend.fetch_add(written, Ordering::Relaxed);
                    return Next::Relay {
                        backend,
                        _noted: None,
                        _open: connected.member.open(),
                    };
                }
                Err(ending) => ending,
            }
        }
        Err(ending) => {
            drop(replay);
            ending
        }
    };
    let (code, reason) = match failed.outcome {
        Outcome::ConnectTimeout => (504, "Gateway Timeout"),
        Outcome::InternalError => (503, "Service Unavailable"),
        _ => (502, "Bad Gateway"),
    };
    respond(&mut client.socket, code, reason, None).await;
    Next::Done(failed)
}

/// A short plaintext response, then a lingering close.
async fn respond(socket: &mut TcpStream, code: u16, reason: &str, location: Option<&str>) {
    let body = format!("{code} {reason}\n");
    let location = location.map_or_else(String::new, |to| format!("location: {to}\r\n"));
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n{location}\r\n{body}",
        body.len()
    );
    alert::close_with(socket, response.as_bytes()).await;
}
