//! `hearth-bench-net`: a sandbox's network on a real VM (issue 8's
//! figures). One VM with an allowlist network for `svc.test`, which the
//! host maps to 127.0.0.1 (loopback opened the way an operator would, as
//! the tests do); this process serves the destinations on 127.0.0.1 and
//! is the host side of the sandbox's egress, so its own memory is what an
//! open connection costs the host. Nothing connects anywhere but
//! 127.0.0.1 on the host.
//!
//! Every figure is measured by the same Python client (`net_probe.py`):
//! in the guest through the proxy (a raw `CONNECT`) and transparently (a
//! plain socket to the name, no proxy variables), and as baselines on the
//! host's own loopback and on the guest's own loopback (servers in the
//! guest), so TCG's cost and egress's cost can be told apart:
//!
//! - throughput of a large download, connect to last byte, MiB/s;
//! - connection set-up, sequential connections: the proxy's `200`, or
//!   `connect()` returning, and the server's first byte; p50/p99/mean/max;
//! - memory per open connection: this process's `VmRSS` (and the guest
//!   agent's, PID 1) with M connections held open against without.
//!
//! Every connection is audited; the records are counted against the
//! connections made. A bench, not a test: nothing is asserted on time.
//!
//! ```sh
//! cargo build --release -p hearth-bench --bin hearth-bench-net
//! HEARTH_IMAGES=~/.local/share/hearth/images target/release/hearth-bench-net
//! target/release/hearth-bench-net --quick     # smoke: small sizes, few connections
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use hearth_bench::{percentile, rss_mib};
use hearth_net::{
    Connector, EgressPolicy, HostsOverride, NetworkLimits, NetworkPolicy, SystemResolver,
};
use hearth_proto::EgressVia;
use hearth_sandbox::{
    EgressAudit, EgressConfig, ExecEvent, ExecOptions, HearthHome, Sandbox, SandboxOptions,
};
use hearth_vm::qemu::QemuDriver;

/// The client, run in the guest and on the host.
const PROBE: &str = include_str!("net_probe.py");

/// The test name the host maps to 127.0.0.1.
const NAME: &str = "svc.test";

/// Where the guest's proxy listens.
const GUEST_PROXY: &str = "127.0.0.1:3128";

#[derive(Debug, Parser)]
#[command(
    about = "Sandbox networking on a real VM: throughput, set-up latency, memory per connection"
)]
struct Args {
    /// Download size, MiB.
    #[arg(long, env = "HEARTH_BENCH_NET_MIB", default_value_t = 256)]
    mib: u64,
    /// Downloads per path (the median is the figure).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sequential connections timed per path.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Connections held open per path for the memory figure.
    #[arg(long, default_value_t = 200)]
    held: usize,
    /// Seconds to let memory settle before each reading.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Guest memory.
    #[arg(long, default_value = "512M")]
    memory: String,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// The host's Python, for the host-loopback baseline.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Smoke run: 8 MiB, one download, 20 connections, 20 held.
    #[arg(long)]
    quick: bool,
    /// Egress rate limit measured in the last phase, MiB/s (0 skips it).
    #[arg(long, default_value_t = 8)]
    rate_mib: u64,
}

/// Order statistics of a set of times, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    n: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

impl Summary {
    /// Nearest-rank quantiles (as every bench here), mean and max; all
    /// zero when empty.
    fn of(ms: &[f64]) -> Summary {
        let mut sorted: Vec<Duration> = ms
            .iter()
            .map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0))
            .collect();
        sorted.sort();
        let to_ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Summary {
            n: ms.len(),
            p50: to_ms(percentile(&sorted, 0.5)),
            p99: to_ms(percentile(&sorted, 0.99)),
            mean: if ms.is_empty() {
                0.0
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
            max: sorted.last().map(|d| to_ms(*d)).unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p99, self.mean, self.max, self.n
        )
    }
}

/// MiB/s of `bytes` in `seconds`.
fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / seconds
}

/// The median of `values` (the lower middle for an even count); zero
/// when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// Bytes per connection of a change in RSS (MiB) across `connections`.
fn bytes_per_connection(before_mib: f64, after_mib: f64, connections: usize) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    (after_mib - before_mib) * 1024.0 * 1024.0 / connections as f64
}

/// `VmRSS` in a `/proc/PID/status` text, MiB.
fn status_rss_mib(status: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// This process's `VmRSS`, MiB.
fn own_rss() -> f64 {
    rss_mib(std::process::id())
}

/// A server on 127.0.0.1 that answers `GET /N` with an N-byte body, then
/// closes.
async fn bulk_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tokio::time::timeout(Duration::from_secs(60), socket.read(&mut buf)).await
                    {
                        Ok(Ok(n @ 1..)) => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let Some(size) = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse::<u64>().ok())
                else {
                    return;
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                );
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Connections a server accepted, and how many it still has open.
#[derive(Debug, Default)]
struct Served {
    accepted: AtomicU64,
    open: AtomicU64,
}

/// A server on 127.0.0.1 that sends one byte at once, then closes (`hold`
/// false) or holds the connection until its client closes it (sees its
/// end).
async fn tiny_server(served: Arc<Served>, hold: bool) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            served.accepted.fetch_add(1, Ordering::Relaxed);
            served.open.fetch_add(1, Ordering::Relaxed);
            let served = served.clone();
            tokio::spawn(async move {
                if socket.write_all(b"x").await.is_ok() && hold {
                    let mut buf = [0u8; 64];
                    while let Ok(1..) = socket.read(&mut buf).await {}
                }
                served.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(port)
}

/// The last line of `stdout`, as JSON.
fn last_json(stdout: &str, what: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("{what}: no output"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: {line}"))
}

/// Run the probe in the guest with `args`, through the proxy when `proxy`
/// is given; its JSON.
async fn guest(
    sandbox: &Sandbox,
    args: &[String],
    proxy: Option<&str>,
    limit: Duration,
) -> Result<Value> {
    let mut argv = vec!["python3".to_string(), "-c".into(), PROBE.into()];
    argv.extend(args.iter().cloned());
    let mut options = ExecOptions::new(argv);
    options.timeout = Some(limit);
    if let Some(proxy) = proxy {
        options.env.insert("BENCH_PROXY_ADDR".into(), proxy.into());
    }
    let what = format!("guest probe {}", args.join(" "));
    let out = tokio::time::timeout(limit + Duration::from_secs(30), sandbox.run(options, None))
        .await
        .with_context(|| format!("{what}: no answer"))??;
    if out.report.code != 0 {
        bail!(
            "{what}: exit {} {}{}",
            out.report.code,
            out.stdout_text(),
            out.stderr_text()
        );
    }
    last_json(&out.stdout_text(), &what)
}

/// Run the probe on the host with `args` (the host-loopback baseline).
async fn host(python: &str, args: &[String], limit: Duration) -> Result<Value> {
    let mut command = tokio::process::Command::new(python);
    command
        .arg("-c")
        .arg(PROBE)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for key in [
        "BENCH_PROXY_ADDR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(key);
    }
    let what = format!("host probe {}", args.join(" "));
    let out = tokio::time::timeout(limit, command.output())
        .await
        .with_context(|| format!("{what}: timed out"))?
        .with_context(|| format!("{what}: starting {python}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    last_json(&String::from_utf8_lossy(&out.stdout), &what)
}

/// The guest agent's (PID 1) `VmRSS`, MiB, where an exec may read it.
async fn guest_agent_rss(sandbox: &Sandbox) -> Option<f64> {
    let run = sandbox.run(ExecOptions::new(["cat", "/proc/1/status"]), None);
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .ok()?
        .ok()?;
    status_rss_mib(&out.stdout_text())
}

/// Print how many connections of a probe's answer failed, and the first
/// few reasons.
fn errors(answer: &Value) {
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        let first: Vec<&str> = errors.iter().take(3).filter_map(Value::as_str).collect();
        println!(
            "  FAILED: {} connections (set-up limit 10 s), e.g. {}",
            errors.len(),
            first.join("; ")
        );
    }
}

/// `value[key]` as a list of numbers.
fn numbers(value: &Value, key: &str) -> Vec<f64> {
    value[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// MiB/s of each download in a probe's `get` answer (a list).
fn rates(downloads: &Value, expected: u64) -> Result<Vec<f64>> {
    let list = downloads.as_array().context("downloads: not a list")?;
    list.iter()
        .map(|d| {
            let bytes = d["bytes"].as_u64().unwrap_or(0);
            if bytes != expected {
                bail!("a download got {bytes} bytes of {expected}");
            }
            Ok(mib_per_s(bytes, d["seconds"].as_f64().unwrap_or(0.0)))
        })
        .collect()
}

/// Audit records by path and port, and connections the bench expects.
#[derive(Default)]
struct AuditBook {
    records: Arc<Mutex<Vec<EgressAudit>>>,
    expected: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

fn via_name(via: EgressVia) -> &'static str {
    match via {
        EgressVia::Proxy => "proxy",
        EgressVia::Transparent => "transparent",
    }
}

impl AuditBook {
    /// Expect `count` more allowed connections by `via` to `port`, and
    /// wait (bounded) for their records: connections are audited when
    /// they end. Prints the count.
    async fn expect(&self, via: &'static str, port: u16, count: u64) {
        let total = {
            let mut expected = self.expected.lock().unwrap();
            let entry = expected.entry((via, port)).or_default();
            *entry += count;
            *entry
        };
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(15);
        let (allowed, refused) = loop {
            let (allowed, refused) = self.count(via, port);
            if allowed + refused >= total || Instant::now() > deadline {
                break (allowed, refused);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let verdict = if allowed == total && refused == 0 {
            "match".to_string()
        } else {
            format!("MISMATCH after waiting {:.1} s", t0.elapsed().as_secs_f64())
        };
        println!(
            "  audit: {allowed} allowed + {refused} refused {via} records to port {port}, {total} connections made so far: {verdict}"
        );
    }

    fn count(&self, via: &str, port: u16) -> (u64, u64) {
        let records = self.records.lock().unwrap();
        let mine = records
            .iter()
            .filter(|r| via_name(r.via) == via && r.port == port);
        let allowed = mine.clone().filter(|r| r.allowed).count() as u64;
        (allowed, mine.count() as u64 - allowed)
    }

    fn summary(&self) -> String {
        let records = self.records.lock().unwrap();
        let expected: u64 = self.expected.lock().unwrap().values().sum();
        let allowed = records.iter().filter(|r| r.allowed).count();
        let refused: Vec<_> = records
            .iter()
            .filter(|r| !r.allowed)
            .map(|r| format!("{}:{} {:?}", r.host, r.port, r.reason))
            .collect();
        let down: u64 = records.iter().map(|r| r.bytes_down).sum();
        format!(
            "{} records ({allowed} allowed, {} refused{}), {expected} connections made; {:.1} MiB down in all",
            records.len(),
            refused.len(),
            if refused.is_empty() {
                String::new()
            } else {
                format!(": {}", refused.join("; "))
            },
            down as f64 / (1024.0 * 1024.0)
        )
    }
}

/// What the bench measures against.
struct Bench<'a> {
    args: &'a Args,
    sandbox: &'a Sandbox,
    proxy: String,
    bulk: u16,
    /// Sends a byte and closes: the set-up figure.
    one: u16,
    one_served: Arc<Served>,
    /// Sends a byte and holds: the memory figure.
    tiny: u16,
    tiny_served: Arc<Served>,
    audit: AuditBook,
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.3}×", value / base)
    } else {
        "n/a".into()
    }
}

impl Bench<'_> {
    /// Connections the one-byte server still has open: each should have
    /// ended when the guest's program closed its end.
    fn destination_open(&self) {
        println!(
            "  the destination still has {} of its {} connections open",
            self.tiny_served.open.load(Ordering::Relaxed),
            self.tiny_served.accepted.load(Ordering::Relaxed)
        );
    }

    fn s<T: ToString>(items: &[T]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }

    async fn latency(&self) -> Result<()> {
        let n = self.args.connections;
        let limit = Duration::from_secs(120 + 3 * n as u64);
        println!("\n== connection set-up, {n} sequential connections (time.perf_counter) ==");
        let dns = guest(self.sandbox, &Self::s(&["dns", NAME, "50"]), None, limit).await?;
        println!(
            "guest DNS stub: {NAME} -> {}; lookup {}",
            dns["addr"].as_str().unwrap_or("?"),
            Summary::of(&numbers(&dns, "ms"))
        );
        let host_lat = host(
            &self.args.python,
            &Self::s(&["lat", "127.0.0.1", &self.one.to_string(), &n.to_string()]),
            limit,
        )
        .await?;
        let host_first = Summary::of(&numbers(&host_lat, "first_ms"));
        println!(
            "host loopback:   connect() {} | first byte {}",
            Summary::of(&numbers(&host_lat, "setup_ms")),
            host_first
        );
        let local = guest(
            self.sandbox,
            &Self::s(&["local", "1048576", &n.to_string(), "1"]),
            None,
            limit,
        )
        .await?;
        let local_lat = &local[0]["lat"];
        let local_first = Summary::of(&numbers(local_lat, "first_ms"));
        println!(
            "guest loopback:  connect() {} | first byte {}",
            Summary::of(&numbers(local_lat, "setup_ms")),
            local_first
        );
        let one = self.one.to_string();
        for (label, via, proxy, setup) in [
            (
                "proxy:      ",
                "proxy",
                Some(self.proxy.as_str()),
                "CONNECT→200",
            ),
            ("transparent:", "transparent", None, "connect()"),
        ] {
            let before = self.one_served.accepted.load(Ordering::Relaxed);
            // A few first connections, not timed (the agent's and host's
            // first connection pays for lazily made state).
            guest(
                self.sandbox,
                &Self::s(&["lat", NAME, &one, "3"]),
                proxy,
                limit,
            )
            .await?;
            let lat = guest(
                self.sandbox,
                &Self::s(&["lat", NAME, &one, &n.to_string()]),
                proxy,
                limit,
            )
            .await?;
            let first = Summary::of(&numbers(&lat, "first_ms"));
            println!(
                "{label}    {setup} {} | first byte {}",
                Summary::of(&numbers(&lat, "setup_ms")),
                first
            );
            errors(&lat);
            println!(
                "  first byte p50 vs host loopback {}, vs guest loopback {}; the server accepted {}",
                ratio(first.p50, host_first.p50),
                ratio(first.p50, local_first.p50),
                self.one_served.accepted.load(Ordering::Relaxed) - before
            );
            self.audit.expect(via, self.one, n as u64 + 3).await;
        }
        Ok(())
    }

    async fn memory(&self) -> Result<()> {
        let m = self.args.held;
        let settle = Duration::from_secs_f64(self.args.settle);
        println!("\n== memory per open connection, {m} held at once ==");
        tokio::time::sleep(settle).await;
        for (label, via, proxy) in [
            ("proxy", "proxy", Some(self.proxy.as_str())),
            ("transparent", "transparent", None),
        ] {
            tokio::time::sleep(settle).await;
            let host_before = own_rss();
            let guest_before = guest_agent_rss(self.sandbox).await;
            let accepted_before = self.tiny_served.accepted.load(Ordering::Relaxed);
            let mut options = ExecOptions::new([
                "python3".to_string(),
                "-c".into(),
                PROBE.into(),
                "hold".into(),
                NAME.into(),
                self.tiny.to_string(),
                m.to_string(),
            ]);
            options.stdin = true;
            options.timeout = Some(Duration::from_secs(600));
            if let Some(proxy) = proxy {
                options.env.insert("BENCH_PROXY_ADDR".into(), proxy.into());
            }
            let mut execution = self.sandbox.exec(options).await?;
            let stdin = execution.take_stdin().context("the hold exec's stdin")?;
            let mut stdout = String::new();
            let mut stderr = String::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            let opened = loop {
                let event = tokio::time::timeout_at(deadline.into(), execution.next_event())
                    .await
                    .context("holding connections: timed out")??;
                match event {
                    Some(ExecEvent::Stdout(data)) => {
                        stdout.push_str(&String::from_utf8_lossy(&data));
                        if let Some(line) = stdout.lines().find(|l| l.contains("\"held\"")) {
                            break serde_json::from_str::<Value>(line)?;
                        }
                    }
                    Some(ExecEvent::Stderr(data)) => {
                        stderr.push_str(&String::from_utf8_lossy(&data))
                    }
                    Some(ExecEvent::Exit(report)) => {
                        bail!("the hold exec ended early ({report:?}): {stdout}{stderr}")
                    }
                    Some(ExecEvent::Started(_)) => {}
                    None => bail!("the hold exec's events ended: {stdout}{stderr}"),
                }
            };
            tokio::time::sleep(settle).await;
            let host_held = own_rss();
            let guest_held = guest_agent_rss(self.sandbox).await;
            let accepted = self.tiny_served.accepted.load(Ordering::Relaxed) - accepted_before;
            stdin.close();
            let exit = tokio::time::timeout(Duration::from_secs(120), async {
                while let Some(event) = execution.next_event().await? {
                    if let ExecEvent::Exit(report) = event {
                        return Ok::<_, hearth_sandbox::SandboxError>(Some(report));
                    }
                }
                Ok(None)
            })
            .await
            .context("closing the held connections: timed out")??;
            if exit.as_ref().map(|r| r.code) != Some(0) {
                bail!("the hold exec ended {exit:?}: {stderr}");
            }
            println!(
                "{label}: {} connections opened in {:.2} s (the server accepted {accepted})",
                opened["held"],
                opened["seconds"].as_f64().unwrap_or(0.0)
            );
            errors(&opened);
            println!(
                "  host (this process, the egress): VmRSS {host_before:.2} → {host_held:.2} MiB: {:.0} bytes per connection",
                bytes_per_connection(host_before, host_held, m)
            );
            match (guest_before, guest_held) {
                (Some(before), Some(held)) => println!(
                    "  guest agent (PID 1): VmRSS {before:.2} → {held:.2} MiB: {:.0} bytes per connection",
                    bytes_per_connection(before, held, m)
                ),
                _ => println!("  guest agent (PID 1): VmRSS not readable from an exec"),
            }
            self.audit.expect(via, self.tiny, m as u64).await;
            self.destination_open();
            tokio::time::sleep(settle).await;
            println!(
                "  after closing: host VmRSS {:.2} MiB, guest agent {}",
                own_rss(),
                guest_agent_rss(self.sandbox)
                    .await
                    .map(|r| format!("{r:.2} MiB"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        Ok(())
    }

    async fn throughput(&self) -> Result<()> {
        let size = self.args.mib << 20;
        let repeat = self.args.repeat.max(1);
        let limit = Duration::from_secs(300 + repeat as u64 * (self.args.mib + 10) * 2);
        println!(
            "\n== throughput: {} MiB downloads, connect to last byte, median of {repeat} (min–max) ==",
            self.args.mib
        );
        let show = |label: &str, rates: &[f64], base: Option<f64>| {
            let (lo, hi) = rates
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
            let m = median(rates);
            println!(
                "{label} {m:>8.1} MiB/s ({lo:.1}–{hi:.1}){}",
                base.map(|b| format!("; {} host loopback", ratio(m, b)))
                    .unwrap_or_default()
            );
            m
        };
        let get = |host: &str, port: u16| {
            Self::s(&[
                "get".to_string(),
                host.to_string(),
                port.to_string(),
                size.to_string(),
                repeat.to_string(),
            ])
        };
        let host_rates = rates(
            &host(&self.args.python, &get("127.0.0.1", self.bulk), limit).await?,
            size,
        )?;
        let base = show("host loopback:  ", &host_rates, None);
        let local = guest(
            self.sandbox,
            &Self::s(&["local", &size.to_string(), "1", &repeat.to_string()]),
            None,
            limit,
        )
        .await?;
        let local_gets: Vec<Value> = local
            .as_array()
            .map(|a| a.iter().map(|r| r["get"].clone()).collect())
            .unwrap_or_default();
        show(
            "guest loopback: ",
            &rates(&Value::Array(local_gets), size)?,
            Some(base),
        );
        for (label, via, proxy) in [
            ("proxy:          ", "proxy", Some(self.proxy.as_str())),
            ("transparent:    ", "transparent", None),
        ] {
            let answer = guest(self.sandbox, &get(NAME, self.bulk), proxy, limit).await?;
            show(label, &rates(&answer, size)?, Some(base));
            self.audit.expect(via, self.bulk, repeat as u64).await;
        }
        Ok(())
    }
}

/// Boot, measure, and destroy the VM whatever happened.
async fn run(args: &Args) -> Result<()> {
    let one_served = Arc::new(Served::default());
    let tiny_served = Arc::new(Served::default());
    let bulk = bulk_server().await?;
    let one = tiny_server(one_served.clone(), false).await?;
    let tiny = tiny_server(tiny_served.clone(), true).await?;

    let scratch = tempfile::Builder::new().prefix("hbn").tempdir_in("/tmp")?;
    let images = HearthHome::from_env().images_dir().to_path_buf();
    let home = HearthHome::new(scratch.path(), images.clone());
    let driver = QemuDriver::locate()?;
    let options = SandboxOptions {
        memory: args.memory.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        vcpus: args.vcpus,
        timeout: Some(Duration::from_secs(7200)),
        ..SandboxOptions::default()
    };
    options.validate()?;
    let started = Instant::now();
    // A create dropped by Ctrl-C kills its VM.
    let sandbox = tokio::select! {
        sandbox = Sandbox::create(&home, &driver, options) => sandbox?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted while the VM was booting"),
    };
    let boot = started.elapsed();
    let outcome = tokio::select! {
        outcome = measure(args, &sandbox, [bulk, one, tiny], [one_served, tiny_served], &images, &driver, boot) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let end = sandbox.destroy().await;
    println!("\nVM destroyed ({})", end.reason);
    drop(scratch);
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    sandbox: &Sandbox,
    [bulk, one, tiny]: [u16; 3],
    [one_served, tiny_served]: [Arc<Served>; 2],
    images: &std::path::Path,
    driver: &QemuDriver,
    boot: Duration,
) -> Result<()> {
    let info = sandbox.info();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let host_python = host(
        &args.python,
        &["dns".into(), "localhost".into(), "1".into()],
        Duration::from_secs(30),
    )
    .await
    .map(|_| "ok")
    .unwrap_or("unusable");
    println!("== machine ==");
    println!(
        "host: {} CPUs ({cpu}); accelerator {} ({}); {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        info.accel.accel,
        info.accel.reason,
        driver.version().unwrap_or_else(|_| "qemu ?".into())
    );
    println!(
        "guest: {} vCPU(s), {} memory, image {}, booted in {:.1} s; host python3: {host_python}",
        args.vcpus,
        args.memory,
        images.display(),
        boot.as_secs_f64()
    );
    let clock = guest(sandbox, &["clock".into()], None, Duration::from_secs(60)).await?;
    println!(
        "guest clock: clocksource {} (available: {}); perf_counter steps by {:.3} ms{}",
        clock["current_clocksource"].as_str().unwrap_or("?"),
        clock["available_clocksource"].as_str().unwrap_or("?"),
        clock["step_ms"].as_f64().unwrap_or(0.0),
        if clock["step_ms"].as_f64().unwrap_or(0.0) > 0.1 {
            ": guest times are quantized to that step (means stay unbiased; percentiles are multiples of it)"
        } else {
            ""
        }
    );
    println!(
        "command: HEARTH_IMAGES={} {}",
        images.display(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );

    let hosts = HostsOverride::parse(&format!("127.0.0.1 {NAME}\n"), Arc::new(SystemResolver))
        .map_err(|e| anyhow::anyhow!(e))?;
    let policy = NetworkPolicy::allowlist([
        format!("{NAME}:{bulk}"),
        format!("{NAME}:{one}"),
        format!("{NAME}:{tiny}"),
    ])?;
    // Only this host's 127.0.0.1 is opened, as `--egress-allow-cidr` would.
    let connector = Connector::new(
        policy,
        Arc::new(EgressPolicy::new(vec!["127.0.0.1/32".parse()?])),
        Arc::new(hosts),
    );
    let audit = AuditBook::default();
    let sink = audit.records.clone();
    let limits = NetworkLimits {
        max_connections: 4096,
        ..NetworkLimits::default()
    };
    let egress = sandbox
        .start_egress(
            EgressConfig::new(GUEST_PROXY, limits),
            connector.clone(),
            Arc::new(move |record| sink.lock().unwrap().push(record)),
        )
        .await?;
    if !egress.transparent() {
        bail!("this image's guest agent has no transparent path");
    }
    println!(
        "network: allow {NAME}:{bulk} (bulk), {NAME}:{one} (one byte, then closed), {NAME}:{tiny} (one byte, then held) -> 127.0.0.1; proxy at {} in the guest, transparent path on",
        egress.address()
    );
    let bench = Bench {
        args,
        sandbox,
        proxy: egress.address().to_string(),
        bulk,
        one,
        one_served,
        tiny,
        tiny_served,
        audit,
    };
    bench.latency().await?;
    bench.memory().await?;
    bench.throughput().await?;
    println!("\naudit: {}", bench.audit.summary());
    bench.destination_open();
    drop(egress);
    if args.rate_mib > 0 {
        rate_limit(args, sandbox, connector, bulk).await?;
    }
    Ok(())
}

/// The rate limit: the network started again with `--rate-mib`, and a
/// download of four seconds' worth through each path timed against what
/// the limit allows (the bucket lets one second's worth through at once,
/// so the rest takes three seconds).
async fn rate_limit(args: &Args, sandbox: &Sandbox, connector: Connector, bulk: u16) -> Result<()> {
    let rate = args.rate_mib << 20;
    let size = 4 * rate;
    println!(
        "\n== rate limit: {} MiB/s, {} MiB downloads (one second's burst, then the rate) ==",
        args.rate_mib,
        size >> 20
    );
    let limits = NetworkLimits {
        rate: Some(rate),
        max_connections: 4096,
        ..NetworkLimits::default()
    };
    // The guest ends the previous network once it sees its stream close.
    let deadline = Instant::now() + Duration::from_secs(30);
    let egress = loop {
        match sandbox
            .start_egress(
                EgressConfig::new(GUEST_PROXY, limits),
                connector.clone(),
                Arc::new(|_| {}),
            )
            .await
        {
            Ok(egress) => break egress,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let expected = (size - rate) as f64 / rate as f64;
    let proxy = egress.address().to_string();
    for (label, via_proxy) in [
        ("proxy:      ", Some(proxy.as_str())),
        ("transparent:", None),
    ] {
        let answer = guest(
            sandbox,
            &[
                "get".to_string(),
                NAME.to_string(),
                bulk.to_string(),
                size.to_string(),
                "1".to_string(),
            ],
            via_proxy,
            Duration::from_secs(120),
        )
        .await?;
        let seconds = answer[0]["seconds"].as_f64().unwrap_or(0.0);
        let bytes = answer[0]["bytes"].as_u64().unwrap_or(0);
        if bytes != size {
            bail!("the rate-limited download got {bytes} bytes of {size}");
        }
        let after_burst = (size - rate) as f64 / (1u64 << 20) as f64 / seconds;
        println!(
            "{label} {seconds:.2} s (the limit allows {expected:.2} s): {:+.1} %; {after_burst:.2} MiB/s after the burst against {} MiB/s",
            (seconds - expected) / expected * 100.0,
            args.rate_mib
        );
    }
    drop(egress);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.mib = args.mib.min(8);
        args.repeat = 1;
        args.connections = args.connections.min(20);
        args.held = args.held.min(20);
        args.settle = args.settle.min(1.0);
        args.rate_mib = args.rate_mib.min(2);
    }
    run(&args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_computed_from_the_probe_answers() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((s.n, s.p50, s.p99, s.mean, s.max), (5, 3.0, 5.0, 3.0, 5.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        let s = Summary::of(&hundred);
        assert!(
            (s.p50 - 51.0).abs() < 1e-9 && (s.p99 - 99.0).abs() < 1e-9,
            "{s:?}"
        );
        assert_eq!(Summary::of(&[]).max, 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.0);
        assert!((mib_per_s(256 << 20, 2.0) - 128.0).abs() < 1e-9);
        assert_eq!(mib_per_s(1, 0.0), 0.0);
        assert_eq!(bytes_per_connection(10.0, 11.0, 256), 4096.0);
        assert_eq!(status_rss_mib("Name:\tx\nVmRSS:\t    2048 kB\n"), Some(2.0));
        let answer = serde_json::json!([{"bytes": 1048576, "seconds": 0.5}]);
        assert_eq!(rates(&answer, 1 << 20).unwrap(), vec![2.0]);
        assert!(rates(&answer, 2 << 20).is_err());
        assert!(last_json("noise\n{\"a\": 1}\n\n", "t").unwrap()["a"] == 1);
    }
}
