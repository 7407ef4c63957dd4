//! The pools' background work, off every connection's path: active health checks, and the
//! resolution of backend host names (SPEC "Behaviour on the wire").
//!
//! Each table's work runs on tracked tasks until the table is replaced (a reload starts the new
//! table's and stops the old one's; members that stay keep their health, which lives in the
//! member) or the server stops.
//!
//! Host names are resolved with hickory-resolver, reading the system's resolv.conf and hosts
//! file as getaddrinfo would, because it returns each answer's TTL: a name is resolved again
//! when its answer expires (clamped to [`MIN_REFRESH`]..[`MAX_REFRESH`]). Where the system
//! config can't be read, the system resolver (getaddrinfo, on tokio's blocking pool) is used
//! and names are resolved every [`FALLBACK_REFRESH`]. A failed resolution keeps the last good
//! addresses, is logged and counted, and is retried after [`MIN_REFRESH`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Check, Health};
use crate::metrics as series;
use crate::name::ServerName;
use crate::route::{Change, Member, Pool, RouteTable};

/// The shortest time an answer is kept, whatever its TTL; also the retry after a failure.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The longest time an answer is kept, whatever its TTL.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How often names are resolved again when the resolver gives no TTL.
pub const FALLBACK_REFRESH: Duration = Duration::from_secs(30);
/// One resolution's limit.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A resolution's answer: the addresses, and how long they may be kept; or why there is none.
pub type Answer = Result<(Vec<SocketAddr>, Duration), String>;

/// Resolves backend host names: the system's DNS, or a test's script.
pub trait Resolve: Send + Sync {
    /// `host`'s addresses with `port`, and how long they may be kept.
    fn resolve<'a>(
        &'a self,
        host: &'a ServerName,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;
}

/// The resolver background work uses; cheap to clone.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Resolve>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Resolver")
    }
}

impl Resolver {
    /// The system's DNS config (resolv.conf, hosts file), or getaddrinfo where it can't be read.
    pub fn system() -> Self {
        let built = TokioResolver::builder_tokio().and_then(|builder| builder.build());
        match built {
            Ok(resolver) => Self(Arc::new(SystemDns(Some(resolver)))),
            Err(error) => {
                tracing::warn!(%error, "can't read the system's DNS config: backend host names are resolved with getaddrinfo, every 30s");
                Self(Arc::new(SystemDns(None)))
            }
        }
    }

    /// Resolves with `resolve` instead.
    pub fn with(resolve: impl Resolve + 'static) -> Self {
        Self(Arc::new(resolve))
    }
}

/// hickory-resolver on the system's config, or getaddrinfo without one.
struct SystemDns(Option<TokioResolver>);

impl Resolve for SystemDns {
    fn resolve<'a>(
        &'a self,
        host: &'a ServerName,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
        Box::pin(async move {
            let Some(resolver) = &self.0 else {
                let addresses = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|error| error.to_string())?;
                return Ok((addresses.collect(), FALLBACK_REFRESH));
            };
            // A final dot: the name as written, not tried under resolv.conf's search domains
            // first.
            let lookup = resolver
                .lookup_ip(format!("{}.", host.as_str()))
                .await
                .map_err(|error| error.to_string())?;
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            let addresses = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            Ok((addresses, ttl))
        })
    }
}

/// How long an answer with this TTL is kept.
pub fn refresh_after(ttl: Duration) -> Duration {
    ttl.clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Resolves, once, every host name of `table` that has no addresses yet (a new route, or the
/// first start), all at once and within `limit`: so a table doesn't start serving with pools
/// that are empty only because nobody asked yet.
pub async fn resolve_new(table: &RouteTable, resolver: &Resolver, limit: Duration) {
    let mut lookups = JoinSet::new();
    for pool in table.pools() {
        for (index, host, port) in pool.hosts() {
            if pool.is_resolved(index) {
                continue;
            }
            let (pool, host, resolver) = (pool.clone(), host.clone(), resolver.clone());
            lookups.spawn(async move {
                resolve_into(&pool, index, &host, port, &resolver).await;
            });
        }
    }
    let _ = timeout(limit, async {
        while lookups.join_next().await.is_some() {}
    })
    .await;
}

/// Starts `table`'s background work on `tracker`; it runs until the returned token is
/// cancelled.
pub fn start(table: &RouteTable, resolver: &Resolver, tracker: &TaskTracker) -> CancellationToken {
    let stop = CancellationToken::new();
    for pool in table.pools() {
        if let Some(health) = pool.health() {
            tracker.spawn(checks(pool.clone(), health.clone(), stop.clone()));
        }
        for (index, host, port) in pool.hosts() {
            let (pool, host, resolver, stop) =
                (pool.clone(), host.clone(), resolver.clone(), stop.clone());
            tracker.spawn(async move {
                stop.run_until_cancelled(resolutions(pool, index, host, port, resolver))
                    .await;
            });
        }
    }
    stop
}

/// Keeps host entry `index` of `pool` resolved.
async fn resolutions(
    pool: Arc<Pool>,
    index: usize,
    host: ServerName,
    port: u16,
    resolver: Resolver,
) {
    loop {
        let wait = resolve_into(&pool, index, &host, port, &resolver).await;
        tokio::time::sleep(wait).await;
    }
}

/// Resolves host entry `index` of `pool` once; returns when to do it again.
async fn resolve_into(
    pool: &Pool,
    index: usize,
    host: &ServerName,
    port: u16,
    resolver: &Resolver,
) -> Duration {
    let count = |result: &'static str| {
        metrics::counter!(series::BACKEND_RESOLUTIONS, "route" => pool.route().to_owned(), "host" => format!("{host}:{port}"), "result" => result)
            .increment(1);
    };
    let resolved = match timeout(RESOLVE_TIMEOUT, resolver.0.resolve(host, port)).await {
        Ok(Ok((addresses, _))) if addresses.is_empty() => Err("no addresses".to_owned()),
        Ok(resolved) => resolved,
        Err(_elapsed) => Err("no answer in time".to_owned()),
    };
    match resolved {
        Ok((addresses, ttl)) => {
            count("ok");
            let shown = addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            if pool.set_resolved(index, addresses) {
                tracing::info!(route = pool.route(), host = %host, addresses = %shown, "backend host name resolved");
            }
            refresh_after(ttl)
        }
        Err(error) => {
            count("failed");
            tracing::warn!(route = pool.route(), host = %host, %error, "can't resolve a backend host name; its last addresses stay");
            MIN_REFRESH
        }
    }
}

/// Checks every member of `pool` each interval (jittered), feeding the results to the members.
async fn checks(pool: Arc<Pool>, health: Health, stop: CancellationToken) {
    // Spread the pools' checks over the interval, and over time each pool's.
    let mut seed = (Arc::as_ptr(&pool) as u64) ^ super::ticks();
    let mut jitter = move |span: Duration| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        span.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64)
    };
    let mut wait = jitter(health.interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let mut running = JoinSet::new();
        for member in pool.members().iter() {
            let (member, check) = (member.clone(), health.check.clone());
            running.spawn(async move {
                let passed = timeout(health.timeout, check_once(member.address, &check))
                    .await
                    .unwrap_or(false);
                (member, passed)
            });
        }
        while let Some(done) = tokio::select! {
            () = stop.cancelled() => return,
            done = running.join_next() => done,
        } {
            let Ok((member, passed)) = done else { continue };
            member.handles().checked(passed);
            note(&member, member.checked(passed, health.rise, health.fall));
        }
        wait = health.interval + jitter(health.interval / 10);
    }
}

/// One check of the backend at `address`.
async fn check_once(address: SocketAddr, check: &Check) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    match check {
        Check::Tcp => true,
        Check::Tls {
            server_name,
            client,
        } => {
            let name = server_name
                .clone()
                .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(ip(address.ip())));
            tokio_rustls::TlsConnector::from(client.clone())
                .connect(name, stream)
                .await
                .is_ok()
        }
    }
}

fn ip(ip: IpAddr) -> rustls::pki_types::IpAddr {
    rustls::pki_types::IpAddr::from(ip)
}

/// Logs a check's change of a member's state.
fn note(member: &Member, change: Option<Change>) {
    match change {
        Some(Change::Down(_)) => tracing::warn!(
            route = member.route(),
            backend.addr = %member.address,
            "backend failed its health checks: out of rotation"
        ),
        Some(Change::Up) => tracing::info!(
            route = member.route(),
            backend.addr = %member.address,
            "backend passed its health checks: back in rotation"
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::config::{self, Backend, Balance};

    /// Answers in turn, the last one again and again, counting the calls.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Answer>>,
        calls: AtomicUsize,
    }

    struct Scripted(Arc<Script>);

    impl Resolve for Scripted {
        fn resolve<'a>(
            &'a self,
            _host: &'a ServerName,
            _port: u16,
        ) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
            self.0.calls.fetch_add(1, Ordering::Relaxed);
            let mut answers = self.0.answers.lock().unwrap();
            let answer = match answers.len() {
                1 => answers[0].clone(),
                _ => answers.pop_front().unwrap(),
            };
            Box::pin(async move { answer })
        }
    }

    /// Lets the resolution task run what is due.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A host name's members follow its answers, each kept for its TTL within bounds; a failed
    /// resolution keeps the last good addresses and is retried soon.
    #[tokio::test(start_paused = true)]
    async fn a_host_name_follows_its_answers_and_keeps_the_last_good_one() {
        let address = |last: u8| SocketAddr::from(([10, 0, 0, last], 443));
        let script = Arc::new(Script::default());
        script.answers.lock().unwrap().extend([
            Ok((vec![address(1)], Duration::from_secs(1))),
            Ok((vec![address(2), address(3)], Duration::from_secs(30))),
            Err("SERVFAIL".to_owned()),
            Ok((vec![address(4)], Duration::from_secs(86_400))),
        ]);
        let host = ServerName::parse(b"app.internal").unwrap();
        let config = config::Pool {
            members: vec![config::Member {
                backend: Backend::Host(host.clone(), 443),
                weight: 1,
                position: (1, 1),
            }],
            balance: Balance::RoundRobin,
            health: None,
        };
        let pool = Arc::new(Pool::new("r", &config, None));
        let members =
            || -> Vec<SocketAddr> { pool.members().iter().map(|member| member.address).collect() };
        let calls = || script.calls.load(Ordering::Relaxed);
        let resolver = Resolver::with(Scripted(script.clone()));
        let task = tokio::spawn(resolutions(pool.clone(), 0, host, 443, resolver));

        settle().await;
        assert_eq!((calls(), members()), (1, vec![address(1)]));
        // A 1 s TTL is kept for the shortest time, 5 s.
        tokio::time::advance(MIN_REFRESH - Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(calls(), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        assert_eq!((calls(), members()), (2, vec![address(2), address(3)]));
        // After its 30 s, a failure: the last good addresses stay, and it is tried again soon.
        tokio::time::advance(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!((calls(), members()), (3, vec![address(2), address(3)]));
        tokio::time::advance(MIN_REFRESH).await;
        settle().await;
        assert_eq!((calls(), members()), (4, vec![address(4)]));
        // A day's TTL is kept an hour at most.
        tokio::time::advance(MAX_REFRESH - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(calls(), 4);
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(calls(), 5);
        task.abort();
    }

    /// An answer is kept for its TTL, within bounds: a zero TTL doesn't make a busy loop, a TTL
    /// of days doesn't pin a stale address.
    #[test]
    fn answers_are_kept_for_their_ttl_within_bounds() {
        assert_eq!(refresh_after(Duration::ZERO), MIN_REFRESH);
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(refresh_after(Duration::from_secs(86_400)), MAX_REFRESH);
    }
}
