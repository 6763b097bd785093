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
//! Last, server kill to resume: a real `hearth serve` (the binary, found
//! next to this one or at `--hearth`) runs `--runs-per-kill` runs that each
//! recorded a step and then wait; the server is killed with -9 and started
//! again on the same home at once, and the figure is the time from the kill
//! to each run's next step starting in a fresh VM (the restart, the runs'
//! claim by the new lease, a boot and the replay; default settings).
//!
//! ```sh
//! cargo build --release -p hearth -p hearth-bench
//! target/release/hearth-bench-runs-vm --steps 50 --crashes 5 --server-kills 3
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
    /// Server kills for the server-kill-to-resume figure.
    #[arg(long, default_value_t = 3)]
    server_kills: usize,
    /// Runs in flight at each server kill.
    #[arg(long, default_value_t = 2)]
    runs_per_kill: usize,
    /// The `hearth` binary (default: next to this one).
    #[arg(long)]
    hearth: Option<std::path::PathBuf>,
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
    let home = HearthHome::new(dir.path(), images.clone());
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

    if args.server_kills > 0 {
        server_kills(&args, &images).await?;
    }
    Ok(())
}

/// A `hearth serve` process on `home`.
struct Serve {
    child: std::process::Child,
    url: String,
    token: String,
}

impl Serve {
    fn start(
        bin: &std::path::Path,
        home: &std::path::Path,
        images: &std::path::Path,
    ) -> Result<Serve> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("HEARTH_HOME", home)
            .env("HEARTH_IMAGES", images)
            .env_remove("HEARTH_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("hearth: listening on ") else {
            let _ = child.kill();
            bail!("the server printed {line:?} instead of its address");
        };
        let token = std::fs::read_to_string(home.join("token"))?
            .trim()
            .to_string();
        Ok(Serve {
            child,
            url: url.to_string(),
            token,
        })
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        hearth_bench::call(http, &self.token, method, url, body).await
    }
}

/// The start time of attempt 1 of step `seq` of run `id`, once recorded.
async fn step_started(
    serve: &Serve,
    http: &reqwest::Client,
    id: &str,
    seq: usize,
) -> Result<Option<u64>> {
    let run = serve
        .call(http, reqwest::Method::GET, &format!("/v1/runs/{id}"), None)
        .await?;
    Ok(run["steps"]
        .get(seq)
        .and_then(|s| s["attempts"].get(0))
        .and_then(|a| a["started_ms"].as_u64()))
}

/// Server kill to resume, with the real binary.
async fn server_kills(args: &Args, images: &std::path::Path) -> Result<()> {
    let bin = match &args.hearth {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .join("hearth"),
    };
    if !bin.exists() {
        bail!(
            "no hearth binary at {}: build it (cargo build --release -p hearth) or pass --hearth",
            bin.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("hbk").tempdir_in("/tmp")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut serve = Serve::start(&bin, dir.path(), images)?;
    let mut resumes = Vec::new();
    let mut restarts = Vec::new();
    for _ in 0..args.server_kills {
        let mut ids = Vec::new();
        for _ in 0..args.runs_per_kill {
            use base64::Engine as _;
            let source = base64::engine::general_purpose::STANDARD.encode(CRASHING);
            let body = json!({
                "program": {"files": {"main.py": source}, "entry": "main.py"},
                "memory_mib": 256,
            });
            let run = serve
                .call(&http, reqwest::Method::POST, "/v1/runs", Some(body))
                .await?;
            ids.push(run["id"].as_str().context("a run id")?.to_string());
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        for id in &ids {
            while step_started(&serve, &http, id, 0).await?.is_none() {
                if Instant::now() > deadline {
                    bail!("run {id} never recorded its first step");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = now_ms();
        let started = Instant::now();
        serve.child.kill()?;
        serve.child.wait()?;
        serve = Serve::start(&bin, dir.path(), images)?;
        restarts.push(started.elapsed());
        for id in &ids {
            let resumed = loop {
                if let Some(at) = step_started(&serve, &http, id, 1).await? {
                    break at;
                }
                if Instant::now() > deadline {
                    bail!("run {id} did not resume after the restart");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            resumes.push(Duration::from_millis(resumed.saturating_sub(killed)));
        }
    }
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    // The VMs go with the server that ran them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vmms(dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    resumes.sort();
    restarts.sort();
    println!(
        "server kill to resume (-9, restarted at once; {} runs over {} kills): p50 {}, p99 {} (the restart to listening: p50 {})",
        resumes.len(),
        args.server_kills,
        ms(percentile(&resumes, 0.5)),
        ms(percentile(&resumes, 0.99)),
        ms(percentile(&restarts, 0.5)),
    );
    Ok(())
}
