//! Measures the HTTP API: exec round trip through `hearth serve` versus the
//! library, the server's memory, and how many sandboxes the host holds at
//! once. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo build --release -p hearth -p hearth-bench
//! target/release/hearth-bench-api --execs 200 --capacity 64
//! ```

use hearth_bench::{ms, percentile, rss_mib, ServeProcess as Server};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::json;

use hearth_sandbox::{ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::qemu::QemuDriver;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// The hearth binary to serve with.
    #[arg(long, default_value = "target/release/hearth")]
    hearth: PathBuf,
    /// Exec round trips to measure on each path.
    #[arg(long, default_value_t = 200)]
    execs: usize,
    /// Also boot up to this many 256 MiB sandboxes at once (0 skips it).
    #[arg(long, default_value_t = 0)]
    capacity: usize,
    /// Extra arguments for `hearth serve` (e.g. `--serve-arg=--vcpu-budget=256`).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Total RSS of the QEMU processes serving sandboxes under `home`, MiB.
fn qemu_rss_mib(home: &std::path::Path) -> (usize, f64) {
    let needle = home.display().to_string();
    let mut count = 0;
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            count += 1;
            total += rss_mib(pid);
        }
    }
    (count, total)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = std::env::temp_dir().join(format!("hearth-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let images = HearthHome::from_env().images_dir().to_path_buf();
    let result = run(&args, &scratch, &images).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run(args: &Args, scratch: &std::path::Path, images: &std::path::Path) -> Result<()> {
    let server_home = scratch.join("server");
    let server = Server::start(&args.hearth, &server_home, images, &args.serve_args)?;
    let pid = server.child.id();
    println!("server RSS at start: {:.1} MiB", rss_mib(pid));

    // Exec round trip: through the API and through the library, alternated
    // so that machine noise hits both alike.
    let (status, created) = server
        .post("/v1/sandboxes", json!({"memory": "256M"}))
        .await?;
    if status != 201 {
        bail!("create failed: {created}");
    }
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let lib_home = HearthHome::new(scratch.join("lib"), images);
    let driver = QemuDriver::locate()?;
    let sandbox = Sandbox::create(
        &lib_home,
        &driver,
        SandboxOptions {
            memory: hearth_proto::ByteSize::mib(256),
            ..SandboxOptions::default()
        },
    )
    .await?;
    let mut api = Vec::new();
    let mut lib = Vec::new();
    let exec_path = format!("/v1/sandboxes/{id}/exec?wait=true");
    for _ in 0..args.execs {
        let start = Instant::now();
        let (status, result) = server.post(&exec_path, json!({"argv": ["true"]})).await?;
        if status != 200 || result["exit"]["code"] != 0 {
            bail!("exec through the API failed: {result}");
        }
        api.push(start.elapsed());
        let start = Instant::now();
        let output = sandbox.run(ExecOptions::new(["true"]), None).await?;
        if output.report.code != 0 {
            bail!("exec through the library failed");
        }
        lib.push(start.elapsed());
    }
    api.sort();
    lib.sort();
    println!(
        "exec round trip of `true` ({} each): API p50 {} p99 {}; library p50 {} p99 {}; API overhead at p50 {}",
        args.execs,
        ms(percentile(&api, 0.5)),
        ms(percentile(&api, 0.99)),
        ms(percentile(&lib, 0.5)),
        ms(percentile(&lib, 0.99)),
        ms(percentile(&api, 0.5).saturating_sub(percentile(&lib, 0.5))),
    );
    println!(
        "server RSS with one sandbox after {} execs: {:.1} MiB",
        args.execs,
        rss_mib(pid)
    );
    sandbox.destroy().await;

    if args.capacity > 0 {
        capacity(args, &server, &server_home).await?;
    }
    Ok(())
}

/// Boot 256 MiB sandboxes one after another until the server refuses, one
/// fails, or `--capacity` are up; then check they all answer.
async fn capacity(args: &Args, server: &Server, home: &std::path::Path) -> Result<()> {
    let pid = server.child.id();
    let available_before = mem_available_mib();
    let mut ids = Vec::new();
    let started = Instant::now();
    let mut stop_reason = format!("reached --capacity {}", args.capacity);
    // One is already running.
    while ids.len() + 1 < args.capacity {
        let begin = Instant::now();
        let (status, body) = server
            .post("/v1/sandboxes", json!({"memory": "256M", "timeout": "1h"}))
            .await?;
        if status != 201 {
            stop_reason = format!("create answered {status}: {}", body["error"]["message"]);
            break;
        }
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
        if ids.len() % 8 == 0 {
            let (vms, qemu) = qemu_rss_mib(home);
            println!(
                "  {} sandboxes: last boot {:.1} s, QEMU RSS {:.0} MiB over {vms} VMs, host MemAvailable {:.0} MiB",
                ids.len() + 1,
                begin.elapsed().as_secs_f64(),
                qemu,
                mem_available_mib()
            );
        }
    }
    let (vms, qemu) = qemu_rss_mib(home);
    println!(
        "capacity: {} sandboxes of 256 MiB running at once after {:.0} s ({stop_reason}); QEMU RSS {:.0} MiB total ({:.0} MiB per VM); host MemAvailable {:.0} → {:.0} MiB; server RSS {:.1} MiB",
        vms,
        started.elapsed().as_secs_f64(),
        qemu,
        qemu / vms.max(1) as f64,
        available_before,
        mem_available_mib(),
        rss_mib(pid)
    );
    let mut rounds = Vec::new();
    for id in &ids {
        let start = Instant::now();
        let (status, result) = server
            .post(
                &format!("/v1/sandboxes/{id}/exec?wait=true"),
                json!({"argv": ["true"]}),
            )
            .await?;
        if status != 200 {
            bail!("sandbox {id} did not answer: {result}");
        }
        rounds.push(start.elapsed());
    }
    rounds.sort();
    if !rounds.is_empty() {
        println!(
            "exec `true` in each of them while all run: p50 {} p99 {}",
            ms(percentile(&rounds, 0.5)),
            ms(percentile(&rounds, 0.99))
        );
    }
    let start = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        while qemu_rss_mib(home).0 > 0 && start.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "SIGTERM destroyed them all in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
