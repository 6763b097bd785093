//! `hearth-bench-cluster`: what running several nodes on one PostgreSQL
//! costs and gives, in one process on this machine:
//!
//! - the create + destroy rate of one node against two (clients spread over
//!   the nodes; creates placed by free capacity), with the fake VM driver,
//!   so that the figure is Hearth's control plane (store, placement,
//!   forwarding), not VM boot;
//! - the exec rate (`true`, one sandbox per client) of one node against
//!   two, clients spread over the nodes (fake VMs);
//! - the round trip of `true` through the node that runs the sandbox
//!   against through the other node (forwarded), with real VMs under
//!   `--qemu` (default: fake VMs).
//!
//! ```sh
//! scripts/postgres.sh
//! cargo build -p hearth-guest      # the fake driver runs it
//! cargo run --release -p hearth-bench --bin hearth-bench-cluster
//! cargo run --release -p hearth-bench --bin hearth-bench-cluster -- --qemu --execs 100
//! ```

use hearth_bench::{call, millis as ms, percentile};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use hearth_sandbox::HearthHome;
use hearth_server::ids::RandomIds;
use hearth_server::{Capacity, Server, ServerOptions, ServerParts};
use hearth_store::testing::TestDatabase;
use hearth_store::SystemClock;
use hearth_vm::fake::FakeDriver;
use hearth_vm::qemu::QemuDriver;
use hearth_vm::Driver;

#[derive(Debug, Parser)]
#[command(about = "Cluster figures: create rate with one node and two, forwarded exec latency")]
struct Args {
    /// Concurrent clients creating and destroying sandboxes.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long each create-rate run lasts, seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Exec round trips per path.
    #[arg(long, default_value_t = 300)]
    execs: usize,
    /// Real VMs (QEMU) for the exec latency, from the default image.
    #[arg(long)]
    qemu: bool,
}

struct Node {
    server: Server,
    url: String,
}

async fn start_node(
    dir: &Path,
    db: &TestDatabase,
    id: &str,
    driver: Arc<dyn Driver>,
    images: &Path,
) -> Result<Node> {
    let home = HearthHome::new(dir.join(id), images);
    let mut options = ServerOptions::new(home);
    options.listen = "127.0.0.1:0".parse()?;
    options.database = db.url.clone();
    options.node_id = Some(id.into());
    options.token_file = Some(dir.join("token"));
    options.capacity = Capacity {
        max_sandboxes: 64,
        memory_bytes: 64 << 30,
        vcpus: 256,
        ..Capacity::from_host()
    };
    let parts = ServerParts {
        driver,
        clock: SystemClock::shared(),
        ids: Arc::new(RandomIds),
        store: None,
    };
    let server = Server::start(options, parts).await?;
    let url = format!("http://{}", server.addr());
    Ok(Node { server, url })
}

/// Clients create and destroy sandboxes for `seconds`, spread over
/// `urls`; returns (lives, create latencies).
async fn create_rate(urls: &[String], token: &str, args: &Args) -> Result<(usize, Vec<Duration>)> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let url = urls[c % urls.len()].clone();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let sandbox = call(
                    &http,
                    &token,
                    reqwest::Method::POST,
                    format!("{url}/v1/sandboxes"),
                    Some(json!({"memory": "256M"})),
                )
                .await?;
                times.push(started.elapsed());
                let id = sandbox["id"].as_str().context("an id")?;
                call(
                    &http,
                    &token,
                    reqwest::Method::DELETE,
                    format!("{url}/v1/sandboxes/{id}"),
                    None,
                )
                .await?;
            }
            anyhow::Ok(times)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok((all.len(), all))
}

/// Clients each exec `true` in a sandbox of their own, for `seconds`,
/// spread over `urls`; returns execs per second.
async fn exec_rate(urls: &[String], token: &str, args: &Args) -> Result<f64> {
    let http = reqwest::Client::new();
    let mut sandboxes = Vec::new();
    for c in 0..args.clients {
        let url = urls[c % urls.len()].clone();
        let sandbox = call(
            &http,
            token,
            reqwest::Method::POST,
            format!("{url}/v1/sandboxes"),
            Some(json!({"memory": "256M"})),
        )
        .await?;
        sandboxes.push((url, sandbox["id"].as_str().context("an id")?.to_string()));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (url, id) in sandboxes.clone() {
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                call(
                    &http,
                    &token,
                    reqwest::Method::POST,
                    format!("{url}/v1/sandboxes/{id}/exec?wait=true"),
                    Some(json!({"argv": ["true"]})),
                )
                .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    for (url, id) in sandboxes {
        call(
            &http,
            token,
            reqwest::Method::DELETE,
            format!("{url}/v1/sandboxes/{id}"),
            None,
        )
        .await?;
    }
    Ok(total as f64 / args.seconds as f64)
}

/// Round trips of `true`, alternating between `direct` and `forwarded` so
/// that both see the same machine load; (direct, forwarded) sorted.
async fn exec_latency(
    direct: &str,
    forwarded: &str,
    id: &str,
    token: &str,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let http = reqwest::Client::new();
    let mut times = (Vec::new(), Vec::new());
    for i in 0..n + 10 {
        for (url, out) in [(direct, &mut times.0), (forwarded, &mut times.1)] {
            let started = Instant::now();
            let result = call(
                &http,
                token,
                reqwest::Method::POST,
                format!("{url}/v1/sandboxes/{id}/exec?wait=true"),
                Some(json!({"argv": ["true"]})),
            )
            .await?;
            if result["exit"]["code"] != 0 {
                bail!("true failed: {result}");
            }
            // The first few warm the connections up.
            if i >= 10 {
                out.push(started.elapsed());
            }
        }
    }
    times.0.sort();
    times.1.sort();
    Ok(times)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("hb").tempdir_in("/tmp")?;
    let fake_images = dir.path().join("images");
    hearth_image::write_placeholder(&fake_images, "default")?;
    let fake: Arc<dyn Driver> = Arc::new(FakeDriver::locate()?);

    // Create rate: one node, then two.
    for nodes in [1usize, 2] {
        let db = TestDatabase::postgres().await;
        let mut started = Vec::new();
        for n in 0..nodes {
            started.push(
                start_node(
                    dir.path(),
                    &db,
                    &format!("nd-r{nodes}-{n}"),
                    fake.clone(),
                    &fake_images,
                )
                .await?,
            );
        }
        let token = std::fs::read_to_string(dir.path().join("token"))?
            .trim()
            .to_string();
        let urls: Vec<String> = started.iter().map(|n| n.url.clone()).collect();
        let (lives, times) = create_rate(&urls, &token, &args).await?;
        println!(
            "create+destroy, {nodes} node(s), {} clients, fake VMs: {:.1} sandboxes/s; create p50 {:.1} ms, p99 {:.1} ms",
            args.clients,
            lives as f64 / args.seconds as f64,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
        );
        let rate = exec_rate(&urls, &token, &args).await?;
        println!(
            "exec `true`, {nodes} node(s), {} clients, fake VMs: {rate:.0} execs/s",
            args.clients
        );
        for node in started {
            node.server.shutdown().await?;
        }
    }

    // Exec round trip, direct and forwarded.
    let db = TestDatabase::postgres().await;
    let (driver, images, what): (Arc<dyn Driver>, std::path::PathBuf, &str) = if args.qemu {
        (
            Arc::new(QemuDriver::locate()?),
            HearthHome::from_env().images_dir().to_path_buf(),
            "real VMs (TCG)",
        )
    } else {
        (fake, fake_images, "fake VMs")
    };
    let a = start_node(dir.path(), &db, "nd-a", driver.clone(), &images).await?;
    let b = start_node(dir.path(), &db, "nd-b", driver, &images).await?;
    let token = std::fs::read_to_string(dir.path().join("token"))?
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let sandbox = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{}/v1/sandboxes", a.url),
        Some(json!({"node": "nd-a", "memory": "256M"})),
    )
    .await?;
    let id = sandbox["id"].as_str().context("an id")?.to_string();
    let (direct, forwarded) = exec_latency(&a.url, &b.url, &id, &token, args.execs).await?;
    println!(
        "exec `true`, {what}: through the owner p50 {:.2} ms p99 {:.2} ms; through the other node p50 {:.2} ms p99 {:.2} ms (+{:.2} ms at p50)",
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99)),
        ms(percentile(&forwarded, 0.5)),
        ms(percentile(&forwarded, 0.99)),
        ms(percentile(&forwarded, 0.5)) - ms(percentile(&direct, 0.5)),
    );
    a.server.shutdown().await?;
    b.server.shutdown().await?;
    Ok(())
}
