//! Multi-tenant scale (issue "a million names"): one exact route per name, the same names and
//! backends given to sniroute (tenant files of 1,000 routes, `include`) and to nginx (a `map`
//! with `hostnames` in `stream`), for each size asked (`--scale 100000,1000000`):
//!
//! 1. loading: `sniroute check` against `nginx -t`, wall time and peak RSS (GNU time), medians
//!    of 5 runs of each in turn;
//! 2. steady RSS of a running instance (nginx: its worker, which holds the map too), once it has
//!    settled: jemalloc's background thread hands freed pages back over about ten seconds;
//! 3. how long a reload takes when one tenant file changed (from the signal to the reload
//!    counted, which waits for the file watcher's own reload of the change), and sniroute's RSS
//!    after 10 full reloads (routes.toml changed each time), settled likewise;
//! 4. a lookup in the loaded table, in this process, ns per lookup, and the table's bytes per
//!    route by part.
//!
//! Names are `t{i}.scale.test`, backends 1,000 addresses in 10.0.0.0/16 (a million routes to a
//! thousand backends).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sniroute::hello::Alpn;
use sniroute::route::{Footprint, RouteTable};

use super::{children, installed, number, sniroute_binary, stat, Bench};

/// Routes per tenant file.
const PER_FILE: usize = 1000;
/// Reloads before the "after reloads" RSS.
const RELOADS: usize = 10;

/// The scale section for each size in `sizes`.
pub(super) fn section(bench: &Bench, sizes: &[usize]) -> anyhow::Result<String> {
    let mut out = String::from(
        "| routes | figure | sniroute | nginx (`map … { hostnames; }`) |\n| ---: | --- | ---: | ---: |\n",
    );
    for &size in sizes {
        eprintln!("scale: {size} routes");
        let dir = bench.root.join(format!("scale-{size}"));
        fs::create_dir_all(&dir)?;
        let (sniroute_config, nginx_config) = write_configs(&dir, size)?;
        let mut row = |figure: &str, ours: String, theirs: String| {
            let _ = writeln!(
                out,
                "| {} | {figure} | {ours} | {theirs} |",
                number(size as f64)
            );
        };

        // Loading takes a second or two at a million, and this machine's speed drifts by more
        // than the difference: 5 runs of each, in turn, and the medians.
        let nginx = installed("nginx");
        let mut check = Vec::new();
        let mut nginx_check = Vec::new();
        for _ in 0..LOAD_RUNS {
            check.push(timed(
                Command::new(sniroute_binary()?)
                    .args(["check", "--config"])
                    .arg(&sniroute_config),
            )?);
            if nginx {
                nginx_check.push(timed(nginx_command(&dir, &nginx_config).arg("-t"))?);
            }
        }
        let (check, nginx_check) = (
            medians(check),
            (!nginx_check.is_empty()).then(|| medians(nginx_check)),
        );
        row(
            "load (`check` / `nginx -t`): s, peak RSS MB",
            format!("{:.2} s, {} MB", check.0, number(check.1)),
            nginx_check.map_or("–".into(), |(s, mb)| {
                format!("{s:.2} s, {} MB", number(mb))
            }),
        );

        let mut running = Running::start(&dir, &sniroute_config)?;
        let steady = running.settled_rss_mb()?;
        let nginx_rss = match nginx {
            true => Some(nginx_worker_rss(&dir, &nginx_config)?),
            false => None,
        };
        row(
            "running RSS MB (nginx: a worker)",
            number(steady),
            nginx_rss.map_or("–".into(), number),
        );

        // The files were written just before the start, too close to it for their times to be
        // trusted: the first reload reads them all again (README "Multi-tenant scale"), as a
        // deployment's would. It is not the one measured.
        running.reload()?;
        // One tenant file changed: one route's backend moves.
        let file = dir.join("routes.d/t0000.toml");
        let text = fs::read_to_string(&file)?.replacen("10.0.0.1:443", "10.0.0.2:443", 1);
        fs::write(&file, text)?;
        let one_file = running.reload()?;
        // A full reload each time: routes.toml itself changes (a comment), so everything is read.
        let mut full = Vec::new();
        let main = fs::read_to_string(&sniroute_config)?;
        for reload in 0..RELOADS {
            fs::write(&sniroute_config, format!("{main}# reload {reload}\n"))?;
            full.push(running.reload()?);
        }
        full.sort();
        let after = running.settled_rss_mb()?;
        row(
            "reload after one tenant file changed, ms",
            number(one_file.as_secs_f64() * 1e3),
            "–".into(),
        );
        row(
            &format!("RSS MB after {RELOADS} full reloads (median reload ms)"),
            format!(
                "{} ({})",
                number(after),
                number(full[RELOADS / 2].as_secs_f64() * 1e3)
            ),
            "–".into(),
        );
        drop(running);

        let (lookup, build, footprint) = lookup_ns(&sniroute_config, size)?;
        row(
            "lookup ns (in process; table built in s)",
            format!("{} ({:.2} s)", number(lookup), build),
            "–".into(),
        );
        let total: usize = footprint.iter().map(|(_, bytes)| bytes).sum();
        let parts: Vec<String> = footprint
            .iter()
            .map(|(part, bytes)| format!("{part} {:.1}", *bytes as f64 / size as f64))
            .collect();
        row(
            "table bytes per route",
            format!("{:.1} ({})", total as f64 / size as f64, parts.join(", ")),
            "–".into(),
        );
    }
    Ok(out)
}

/// Writes routes.toml (a listener on a free port, `[metrics]`, `include`) and `size` routes in
/// tenant files under `dir/routes.d`, and nginx.conf with the same names and backends.
fn write_configs(
    dir: &Path,
    size: usize,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    tenant_files(dir, size)?;
    let mut map = String::with_capacity(size * 40);
    for index in 0..size {
        writeln!(map, "        {} {};", name(index), backend(index))?;
    }
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let routes = dir.join("routes.toml");
    fs::write(
        &routes,
        format!(
            "include = [\"routes.d/*.toml\"]\n\n[[listen]]\naddress = \"{listen}\"\n\n\
             [metrics]\naddress = \"{metrics}\"\n"
        ),
    )?;
    let modules = ["/usr/share/nginx/modules", "/usr/lib/nginx/modules"]
        .into_iter()
        .find(|path| Path::new(path).exists());
    if let Some(modules) = modules {
        let _ = std::os::unix::fs::symlink(modules, dir.join("modules"));
    }
    let nginx_listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let nginx = dir.join("nginx.conf");
    fs::write(
        &nginx,
        format!(
            "include /etc/nginx/modules-enabled/*.conf;\nworker_processes 1;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{\n    worker_connections 1024;\n}}\n\
             stream {{\n    map_hash_max_size 4194304;\n    map_hash_bucket_size 128;\n\
             map $ssl_preread_server_name $backend {{\n        hostnames;\n{map}    }}\n\
             server {{\n        listen {nginx_listen};\n        ssl_preread on;\n        \
             proxy_pass $backend;\n    }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Ok((routes, nginx))
}

/// `size` routes, one per name, in tenant files of [`PER_FILE`] under `dir/routes.d`.
pub(super) fn tenant_files(dir: &Path, size: usize) -> anyhow::Result<()> {
    let tenants = dir.join("routes.d");
    let _ = fs::remove_dir_all(&tenants);
    fs::create_dir_all(&tenants)?;
    for file in 0..size.div_ceil(PER_FILE) {
        let mut text = String::with_capacity(PER_FILE * 60);
        for index in file * PER_FILE..((file + 1) * PER_FILE).min(size) {
            let (name, backend) = (name(index), backend(index));
            writeln!(
                text,
                "[[route]]\nsni = \"{name}\"\nbackend = \"{backend}\"\n"
            )?;
        }
        fs::write(tenants.join(format!("t{file:04}.toml")), text)?;
    }
    Ok(())
}

fn name(index: usize) -> String {
    format!("t{index}.scale.test")
}

fn backend(index: usize) -> String {
    let member = index % 1000;
    format!("10.0.{}.{}:443", member / 250, member % 250 + 1)
}

fn nginx_command(dir: &Path, config: &Path) -> Command {
    let mut command = Command::new("nginx");
    command.arg("-p").arg(dir).arg("-c").arg(config);
    command
}

/// Runs of each load, `check` and `nginx -t` in turn.
const LOAD_RUNS: usize = 5;

/// The median seconds and the median peak RSS of some runs.
fn medians(runs: Vec<(f64, f64)>) -> (f64, f64) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    (
        median(runs.iter().map(|run| run.0).collect()),
        median(runs.iter().map(|run| run.1).collect()),
    )
}

/// Runs `command` to its end under GNU time: seconds, peak RSS in MB.
fn timed(command: &mut Command) -> anyhow::Result<(f64, f64)> {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%e %M"])
        .arg(command.get_program())
        .args(command.get_args());
    let output = timed
        .stdout(Stdio::null())
        .output()
        .context("GNU time (/usr/bin/time) is needed for the scale figures")?;
    let last = String::from_utf8_lossy(&output.stderr);
    let line = last.lines().last().unwrap_or_default().to_owned();
    let mut fields = line.split_whitespace();
    let (Some(seconds), Some(kilobytes)) = (fields.next(), fields.next()) else {
        bail!("no timing from {line:?}");
    };
    if !output.status.success() {
        bail!("{:?} failed: {last}", command.get_program());
    }
    Ok((seconds.parse()?, kilobytes.parse::<f64>()? / 1024.0))
}

/// A running sniroute with the scale config.
struct Running {
    child: std::process::Child,
    metrics: std::net::SocketAddr,
}

impl Running {
    fn start(dir: &Path, config: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(config)?;
        let metrics = text
            .lines()
            .skip_while(|line| *line != "[metrics]")
            .find_map(|line| line.strip_prefix("address = \""))
            .and_then(|rest| rest.trim_end_matches('"').parse().ok())
            .context("the metrics address")?;
        let child = Command::new(sniroute_binary()?)
            .args(["--workers", "2", "--config"])
            .arg(config)
            .env("SNIROUTE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("sniroute.log"))?)
            .spawn()?;
        let running = Self { child, metrics };
        let deadline = Instant::now() + Duration::from_secs(600);
        while running.reloads().is_err() {
            if Instant::now() > deadline {
                bail!("sniroute did not start within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    /// `sniroute_config_reloads_total{result="ok"}`.
    fn reloads(&self) -> anyhow::Result<u64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.metrics)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n")?;
        let mut page = String::new();
        stream.read_to_string(&mut page)?;
        let line = page
            .lines()
            .find(|line| line.starts_with("sniroute_config_reloads_total{result=\"ok\"}"))
            .context("no reload counter")?;
        Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
    }

    /// SIGHUP, and the time until the reload is reported applied.
    fn reload(&mut self) -> anyhow::Result<Duration> {
        let before = self.reloads()?;
        let start = Instant::now();
        super::signal_hup(self.child.id());
        while self.reloads()? == before {
            if start.elapsed() > Duration::from_secs(600) {
                bail!("no reload within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(start.elapsed())
    }

    /// RSS once it no longer falls: read each second, for at least 15 s (jemalloc's decay
    /// takes 10) and until four readings in a row are within 1 MB, for at most a minute.
    fn settled_rss_mb(&self) -> anyhow::Result<f64> {
        let mut last = rss_mb(self.child.id())?;
        let mut steady = 0;
        for second in 1..=60 {
            std::thread::sleep(Duration::from_secs(1));
            let now = rss_mb(self.child.id())?;
            steady = match now > last - 1.0 {
                true => steady + 1,
                false => 0,
            };
            last = now;
            if steady >= 3 && second >= 15 {
                break;
            }
        }
        Ok(last)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid`, MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kilobytes: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kilobytes / 1024.0)
}

/// Starts nginx on the scale config, waits for its worker, and returns the worker's RSS (MB).
fn nginx_worker_rss(dir: &Path, config: &Path) -> anyhow::Result<f64> {
    let mut child = nginx_command(dir, config)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let worker = loop {
        // A worker exists once the master has loaded the config and forked.
        let workers: Vec<u32> = children(child.id())
            .into_iter()
            .filter(|&pid| stat(pid).is_some())
            .collect();
        if let Some(&worker) = workers.first() {
            break worker;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("nginx did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss = rss_mb(worker);
    let _ = child.kill();
    let _ = child.wait();
    rss
}

/// ns per lookup in the table built from `config` in this process, the build's seconds, and the
/// table's bytes by part.
fn lookup_ns(config: &Path, size: usize) -> anyhow::Result<(f64, f64, Footprint)> {
    let start = Instant::now();
    let loaded = sniroute::config::load(config)?;
    let table = RouteTable::new(&loaded, None);
    let build = start.elapsed().as_secs_f64();
    let names: Vec<sniroute::name::ServerName> = (0..10_000)
        .map(|index| sniroute::name::ServerName::parse(name(index * 7919 % size).as_bytes()))
        .collect::<Result<_, _>>()?;
    let offer = Alpn::default();
    // The median of 5 tries of 100 rounds: on a VM the first pass over fresh memory, or one
    // after another process's churn, can take several times as long.
    let rounds = 100;
    let mut tries: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..rounds {
                for name in &names {
                    std::hint::black_box(table.lookup(Some(std::hint::black_box(name)), &offer));
                }
            }
            start.elapsed().as_secs_f64() * 1e9 / (rounds * names.len()) as f64
        })
        .collect();
    tries.sort_by(f64::total_cmp);
    let ns = tries[2];
    Ok((ns, build, table.footprint()))
}
