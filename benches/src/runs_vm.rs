//! `hearth-bench-runs-vm`: durable runs end to end in real VMs. A server in
//! this process (SQLite, durable commits, the QEMU driver) runs a Python
//! program with the image's `hearth_run` module that times its own steps
//! inside the VM: per-step latency and 10-step runs as the program sees
//! them, with an ephemeral and with a durable workspace (which checkpoints
//! the VM's disk at every step's end). Then crash to resume: the VM is
//! killed after a recorded step, and the figure is the time from the kill
//! to the relaunched program's next step starting (relaunch backoff 0: a
//! fresh VM's boot and the replay).
//!
//! ```sh
//! cargo run --release -p hearth-bench --bin hearth-bench-runs-vm -- --steps 50 --crashes 5
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use hearth_bench::{ms, percentile};
use hearth_engine::{Program, RunSpec, RunState, WorkspaceMode};
use hearth_sandbox::HearthHome;
use hearth_server::runs::StartRun;
use hearth_server::{Server, ServerOptions, ServerParts};

#[derive(Debug, Parser)]
#[command(about = "Journaled steps and crash to resume in real VMs")]
struct Args {
    /// Steps the program times (in runs of 10).
    #[arg(long, default_value_t = 50)]
    steps: u64,
    /// VM kills for the crash-to-resume figure.
    #[arg(long, default_value_t = 5)]
    crashes: usize,
}

/// Times `steps` journaled steps from inside the VM.
const TIMED: &str = r#"
import time, hearth_run
ctx = hearth_run.context()
lat, tens = [], []
for r in range(ctx.input["steps"] // 10):
    start = time.perf_counter()
    for i in range(10):
        t = time.perf_counter()
        ctx.step("work", lambda n: n, r * 10 + i)
        lat.append((time.perf_counter() - t) * 1000)
    tens.append((time.perf_counter() - start) * 1000)
ctx.complete({"lat": lat, "tens": tens})
"#;

/// One recorded step; the first launch then waits to be killed.
const CRASHING: &str = r#"
import time, hearth_run
ctx = hearth_run.context()
ctx.step("before", lambda: 1)
if ctx.launch == 1:
    time.sleep(3600)
ctx.step("after", lambda: 2)
ctx.complete(ctx.launch)
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn start(
    server: &Server,
    source: &str,
    input: Value,
    workspace: WorkspaceMode,
) -> Result<String> {
    let run = server
        .runs()
        .start(StartRun {
            program: Program {
                files: BTreeMap::from([("main.py".to_string(), source.as_bytes().to_vec())]),
                entry: "main.py".into(),
            },
            input,
            name: None,
            spec: RunSpec {
                memory_mib: 256,
                restart_backoff_ms: 0,
                workspace,
                ..RunSpec::default()
            },
            deadline_ms: None,
        })
        .await?;
    Ok(run.id)
}

async fn finished(server: &Server, id: &str) -> Result<Value> {
    let run = server.runs().wait(id, Duration::from_secs(600)).await?;
    if run.state != RunState::Completed {
        bail!("run {id} ended {}: {:?}", run.state, run.error);
    }
    Ok(run.output.unwrap_or(Value::Null))
}

fn durations(values: &Value) -> Vec<Duration> {
    let mut all: Vec<Duration> = values
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// QEMU processes whose command line names `home`.
fn vmms(home: &std::path::Path) -> Vec<u32> {
    let needle = home.display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| {
                            let c = String::from_utf8_lossy(&c);
                            c.contains("qemu-system") && c.contains(&needle)
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("hbv").tempdir_in("/tmp")?;
    let images = HearthHome::from_env().images_dir().to_path_buf();
    let home = HearthHome::new(dir.path(), images);
    let mut options = ServerOptions::new(home);
    options.listen = "127.0.0.1:0".parse()?;
    options.runs.poll = Duration::from_millis(20);
    let server = Server::start(options, ServerParts::standard()?).await?;

    for workspace in [WorkspaceMode::Ephemeral, WorkspaceMode::Durable] {
        let id = start(
            &server,
            TIMED,
            json!({"steps": args.steps.max(10)}),
            workspace,
        )
        .await?;
        let output = finished(&server, &id).await?;
        let (lat, tens) = (durations(&output["lat"]), durations(&output["tens"]));
        println!(
            "inside the VM, {workspace:?} workspace: step p50 {}, p99 {}; 10-step run p50 {}, p99 {} ({} steps)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&tens, 0.5)),
            ms(percentile(&tens, 0.99)),
            lat.len()
        );
    }

    let mut resumes = Vec::new();
    for _ in 0..args.crashes {
        let id = start(&server, CRASHING, Value::Null, WorkspaceMode::Ephemeral).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let steps = server.runs().steps(&id).await?;
            if steps.first().is_some_and(|s| s.state.is_final()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("run {id} never recorded its first step");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids = vmms(dir.path());
        let [pid] = pids[..] else {
            bail!("expected one VM, found {pids:?}");
        };
        let killed = now_ms();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .context("kill")?;
        finished(&server, &id).await?;
        let steps = server.runs().steps(&id).await?;
        let resumed = steps
            .get(1)
            .and_then(|s| s.attempts.first())
            .map(|a| a.started_ms)
            .context("the resumed step")?;
        resumes.push(Duration::from_millis(resumed.saturating_sub(killed)));
    }
    resumes.sort();
    println!(
        "crash to resume (VM killed → the relaunched program's next step, {} kills): p50 {}, p99 {}",
        resumes.len(),
        ms(percentile(&resumes, 0.5)),
        ms(percentile(&resumes, 0.99))
    );
    server.shutdown().await?;
    Ok(())
}
