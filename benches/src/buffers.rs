//! `hearth-bench-buffers`: the server's peak memory (VmHWM) under the loads
//! that grew it without bound before it had a buffer budget: many
//! concurrent `?wait=true` execs each printing megabytes, and many
//! concurrent uploads. Each load runs against a fresh `hearth serve`
//! process with real VMs, once with `--buffer-budget 0` (no budget, the
//! old behaviour) and once with the given budget. Prints figures; asserts
//! nothing.
//!
//! ```sh
//! cargo build --release -p hearth -p hearth-bench
//! target/release/hearth-bench-buffers --hearth target/release/hearth
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::json;

use hearth_bench::{peak_rss_mib, rss_mib, ServeProcess};
use hearth_sandbox::HearthHome;

#[derive(Debug, Parser)]
#[command(about = "Peak server memory under concurrent collected output and uploads")]
struct Args {
    /// The hearth binary to serve with.
    #[arg(long, default_value = "target/release/hearth")]
    hearth: PathBuf,
    /// Concurrent `?wait=true` execs.
    #[arg(long, default_value_t = 24)]
    execs: usize,
    /// Bytes each exec prints.
    #[arg(long, default_value_t = 15_000_000)]
    exec_bytes: u64,
    /// Print NUL bytes instead of text: each takes six bytes (`\u0000`) in
    /// the JSON answer.
    #[arg(long)]
    zeros: bool,
    /// Concurrent uploads (spread over two sandboxes).
    #[arg(long, default_value_t = 60)]
    uploads: usize,
    /// Bytes each upload sends.
    #[arg(long, default_value_t = 9_000_000)]
    upload_bytes: usize,
    /// The budget to compare with no budget.
    #[arg(long, default_value = "256M")]
    budget: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = std::env::temp_dir().join(format!("hearth-bench-buffers-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let images = HearthHome::from_env().images_dir().to_path_buf();
    let result = run(&args, &scratch, &images).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run(args: &Args, scratch: &Path, images: &Path) -> Result<()> {
    println!(
        "{} execs × {} MB of {} collected, {} uploads × {} MB; server peak RSS (VmHWM)",
        args.execs,
        args.exec_bytes / 1_000_000,
        if args.zeros { "NUL bytes" } else { "text" },
        args.uploads,
        args.upload_bytes / 1_000_000
    );
    for budget in ["0", args.budget.as_str()] {
        let label = if budget == "0" {
            "no budget".to_string()
        } else {
            format!("--buffer-budget {budget}")
        };
        for load in [Load::Execs, Load::Uploads] {
            // A fresh server per load: its peak RSS is that load's.
            let home = scratch.join(format!("{load:?}-{budget}"));
            let server = ServeProcess::start(
                &args.hearth,
                &home,
                images,
                &["--buffer-budget".into(), budget.into()],
            )?;
            let (ok, busy, took) = match load {
                Load::Execs => collected_output(&server, args).await?,
                Load::Uploads => uploads(&server, args).await?,
            };
            println!(
                "  {label:>24}: {load:?}: peak {:.0} MiB (after: {:.0} MiB), {ok} answered, {busy} refused 503, {:.1} s",
                peak_rss_mib(server.child.id()),
                rss_mib(server.child.id()),
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// What a measured server is put through.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Concurrent collected execs.
    Execs,
    /// Concurrent uploads.
    Uploads,
}

async fn sandbox(server: &ServeProcess) -> Result<String> {
    let (status, created) = server
        .post("/v1/sandboxes", json!({"memory": "512M", "disk": "2G"}))
        .await?;
    if status != 201 {
        bail!("create failed: {created}");
    }
    Ok(created["id"].as_str().unwrap_or_default().to_string())
}

/// Every exec at once, each reading its whole answer: (answered, refused
/// with 503, how long).
async fn collected_output(server: &ServeProcess, args: &Args) -> Result<(usize, usize, Duration)> {
    let id = sandbox(server).await?;
    let command = match args.zeros {
        true => format!("head -c {} /dev/zero", args.exec_bytes),
        false => format!("head -c {} /dev/zero | tr '\\0' a", args.exec_bytes),
    };
    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..args.execs {
        let command = command.clone();
        let request = server
            .http
            .post(format!("{}/v1/sandboxes/{id}/exec?wait=true", server.url))
            .bearer_auth(&server.token)
            .json(&json!({"argv": ["sh", "-c", command]}));
        calls.push(tokio::spawn(async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let _ = response.bytes().await?;
            anyhow::Ok(status)
        }));
    }
    count(calls, start).await
}

/// Every upload at once: (written, refused with 503, how long).
async fn uploads(server: &ServeProcess, args: &Args) -> Result<(usize, usize, Duration)> {
    let ids = [sandbox(server).await?, sandbox(server).await?];
    let data = bytes::Bytes::from(vec![0x5au8; args.upload_bytes]);
    let start = Instant::now();
    let mut calls = Vec::new();
    for n in 0..args.uploads {
        let id = &ids[n % 2];
        let request = server
            .http
            .put(format!(
                "{}/v1/sandboxes/{id}/files?path=/root/upload-{n}",
                server.url
            ))
            .bearer_auth(&server.token)
            .body(data.clone());
        calls.push(tokio::spawn(async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let _ = response.bytes().await?;
            anyhow::Ok(status)
        }));
    }
    count(calls, start).await
}

async fn count(
    calls: Vec<tokio::task::JoinHandle<Result<u16>>>,
    start: Instant,
) -> Result<(usize, usize, Duration)> {
    let (mut ok, mut busy) = (0, 0);
    for call in calls {
        match call.await?? {
            200 => ok += 1,
            503 => busy += 1,
            other => bail!("unexpected status {other}"),
        }
    }
    Ok((ok, busy, start.elapsed()))
}
