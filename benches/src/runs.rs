//! `hearth-bench-runs`: what a journaled step costs, through the run
//! endpoint protocol over loopback HTTP, the way Restate's SDK reaches its
//! server.
//!
//! A real `hearth serve` (in this process) runs each run's program in a
//! fake VM (the real guest agent on the host, so the tunnel is real and
//! listens on the host's loopback); the program only publishes its
//! `HEARTH_RUN_URL`, and this process stands in for it: it fetches the
//! run's context first, as `hearth_run.context()` does (on a keep-alive
//! connection its steps reuse; the clock starts after it), then makes each
//! step either as `hearth_run` makes a repeatable step past the journal's end
//! (run first, then one `POST /steps` with its result) or as it makes an
//! unsafe one (`POST /steps`, then its result: two requests), and
//! completing the run. Every step is committed durably before its answer
//! (SQLite `synchronous=FULL`, PostgreSQL's default `fsync`).
//!
//! Prints, for SQLite and PostgreSQL:
//! - the endpoint's round trip for a call that writes nothing;
//! - for each way of making a step: step latency p50/p99 and the 10-step
//!   run p50/p99, runs one at a time; steps per second with 16 runs of 10
//!   steps at once;
//! - crash to resume: from a killed VM to the program running again in a
//!   fresh one (relaunch backoff set to 0; fake VMs, so this is Hearth's
//!   control plane, not a VM boot).
//!
//! ```sh
//! scripts/postgres.sh
//! cargo build -p hearth-guest      # the fake driver runs it
//! cargo run --release -p hearth-bench --bin hearth-bench-runs
//! ```

use hearth_bench::{millis as ms, percentile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use hearth_engine::{Program, RunSpec};
use hearth_sandbox::HearthHome;
use hearth_server::ids::RandomIds;
use hearth_server::runs::{ProgramDir, StartRun};
use hearth_server::{Capacity, Server, ServerOptions, ServerParts};
use hearth_store::testing::TestDatabase;
use hearth_store::{DatabaseUrl, SystemClock};
use hearth_vm::fake::FakeDriver;

#[derive(Debug, Parser)]
#[command(about = "Journaled step latency and throughput through the run endpoint")]
struct Args {
    /// Steps per run.
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Runs measured one at a time.
    #[arg(long, default_value_t = 40)]
    runs: usize,
    /// Runs at once for the throughput figure.
    #[arg(long, default_value_t = 16)]
    concurrent: usize,
    /// Rounds of concurrent runs.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// VM kills for the crash-to-resume figure.
    #[arg(long, default_value_t = 10)]
    crashes: usize,
    /// Only this backend (sqlite or postgres).
    #[arg(long)]
    backend: Option<String>,
}

/// How a step is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Run first and record with one request, as `hearth_run` does for a
    /// repeatable step past the journal's end.
    RunFirst,
    /// Ask, then report: two requests, as for an unsafe step.
    AskFirst,
}

impl Mode {
    fn effect(self) -> &'static str {
        match self {
            Mode::RunFirst => "idempotent",
            Mode::AskFirst => "unsafe",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::RunFirst => "1 request/step (idempotent)",
            Mode::AskFirst => "2 requests/step (unsafe)",
        }
    }
}

/// The program: publish the endpoint's URL, then wait to be completed.
const PROGRAM: &str = r#"
import os, time
path = os.environ["URL_FILE"]
with open(path + ".tmp", "w") as f:
    f.write(os.environ["HEARTH_RUN_URL"])
os.rename(path + ".tmp", path)
time.sleep(3600)
"#;

struct Bench {
    server: Server,
    dir: PathBuf,
    driver: FakeDriver,
    http: reqwest::Client,
}

impl Bench {
    async fn start(dir: &Path, database: DatabaseUrl) -> Result<Bench> {
        let home = HearthHome::new(dir.join("home"), dir.join("images"));
        hearth_image::write_placeholder(home.images_dir(), "default")?;
        let driver =
            FakeDriver::locate().context("build the guest agent: cargo build -p hearth-guest")?;
        let mut options = ServerOptions::new(home);
        options.listen = "127.0.0.1:0".parse()?;
        options.database = database;
        options.capacity = Capacity {
            max_sandboxes: 64,
            memory_bytes: 64 << 30,
            vcpus: 256,
            ..Capacity::from_host()
        };
        options.runs.max_active = 64;
        options.runs.poll = Duration::from_millis(20);
        options.runs.program_dir = ProgramDir::PerRun(dir.join("vm").display().to_string());
        let parts = ServerParts {
            driver: Arc::new(driver.clone()),
            clock: SystemClock::shared(),
            ids: Arc::new(RandomIds),
            store: None,
        };
        let server = Server::start(options, parts).await?;
        Ok(Bench {
            server,
            dir: dir.to_path_buf(),
            driver,
            http: reqwest::Client::new(),
        })
    }

    /// Start a run; returns its id and the file its URL will appear in.
    async fn start_run(&self, n: usize) -> Result<(String, PathBuf)> {
        let url_file = self.dir.join(format!("run-{n}.url"));
        let _ = std::fs::remove_file(&url_file);
        let spec = RunSpec {
            restart_backoff_ms: 0,
            env: BTreeMap::from([("URL_FILE".to_string(), url_file.display().to_string())]),
            ..RunSpec::default()
        };
        let run = self
            .server
            .runs()
            .start(StartRun {
                program: Program {
                    files: BTreeMap::from([("main.py".to_string(), PROGRAM.as_bytes().to_vec())]),
                    entry: "main.py".into(),
                },
                input: Value::Null,
                name: None,
                spec,
                deadline_ms: None,
            })
            .await?;
        Ok((run.id, url_file))
    }

    async fn post(&self, url: String, body: Value) -> Result<Value> {
        let response = self.http.post(&url).json(&body).send().await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            bail!("{url}: {status} {value}");
        }
        Ok(value)
    }

    /// Make `steps` steps on the endpoint at `url`; each step's latency.
    async fn steps(&self, url: &str, steps: u64, mode: Mode) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(steps as usize);
        for seq in 0..steps {
            let started = Instant::now();
            let ask = json!({"seq": seq, "name": "work", "args": [seq], "effect": mode.effect()});
            let mut answer = match mode {
                Mode::RunFirst => {
                    let mut ran = ask;
                    ran["attempt"] = json!(1);
                    ran["result"] = json!({"n": seq});
                    self.post(format!("{url}/steps"), ran).await?
                }
                Mode::AskFirst => self.post(format!("{url}/steps"), ask).await?,
            };
            if answer["action"] == "execute" {
                answer = self
                    .post(
                        format!("{url}/steps/{seq}/result"),
                        json!({"attempt": 1, "result": {"n": seq}}),
                    )
                    .await?;
            }
            match answer["action"].as_str() {
                // A relaunched program replays what was recorded.
                Some("done") | Some("replay") => times.push(started.elapsed()),
                _ => bail!("step {seq}: {answer}"),
            }
        }
        Ok(times)
    }

    /// What `hearth_run.context()` does first: fetch the run's context (on
    /// the connection its steps then reuse).
    async fn context(&self, url: &str) -> Result<()> {
        self.http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(())
    }

    async fn complete(&self, url: &str) -> Result<()> {
        self.post(format!("{url}/complete"), json!({"output": "ok"}))
            .await?;
        Ok(())
    }
}

/// Wait for `path` to hold a URL other than `not`.
async fn read_url(path: &Path, not: Option<&str>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(url) = std::fs::read_to_string(path) {
            if Some(url.as_str()) != not {
                return Ok(url);
            }
        }
        if Instant::now() > deadline {
            bail!("no run URL appeared in {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs one at a time: step and run latency.
async fn sequential(
    name: &str,
    bench: &Bench,
    args: &Args,
    mode: Mode,
    first: usize,
) -> Result<()> {
    let mut step_times = Vec::new();
    let mut run_times = Vec::new();
    for n in 0..args.runs {
        let (_, url_file) = bench.start_run(first + n).await?;
        let url = read_url(&url_file, None).await?;
        bench.context(&url).await?;
        let started = Instant::now();
        step_times.extend(bench.steps(&url, args.steps, mode).await?);
        run_times.push(started.elapsed());
        bench.complete(&url).await?;
    }
    step_times.sort();
    run_times.sort();
    let total: Duration = step_times.iter().sum();
    println!(
        "{name:<8} {:<28} sequential: step p50 {:.2} ms p99 {:.2} ms; {}-step run p50 {:.2} ms p99 {:.2} ms; {:.0} steps/s",
        mode.label(),
        ms(percentile(&step_times, 0.5)),
        ms(percentile(&step_times, 0.99)),
        args.steps,
        ms(percentile(&run_times, 0.5)),
        ms(percentile(&run_times, 0.99)),
        step_times.len() as f64 / total.as_secs_f64(),
    );
    Ok(())
}

/// Many runs at once: steps per second.
async fn concurrent(
    name: &str,
    bench: &Arc<Bench>,
    args: &Args,
    mode: Mode,
    first: usize,
) -> Result<()> {
    let mut rates = Vec::new();
    for round in 0..args.rounds {
        let mut urls = Vec::new();
        for c in 0..args.concurrent {
            let (_, url_file) = bench.start_run(first + round * 1000 + c).await?;
            urls.push(url_file);
        }
        let mut ready = Vec::new();
        for file in &urls {
            let url = read_url(file, None).await?;
            bench.context(&url).await?;
            ready.push(url);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for url in ready.clone() {
            let bench = bench.clone();
            let steps = args.steps;
            tasks.push(tokio::spawn(
                async move { bench.steps(&url, steps, mode).await },
            ));
        }
        let mut count = 0;
        for task in tasks {
            count += task.await??.len();
        }
        rates.push(count as f64 / started.elapsed().as_secs_f64());
        for url in ready {
            bench.complete(&url).await?;
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{name:<8} {:<28} {} runs x {} steps at once: {:.0} steps/s (median of {} rounds)",
        mode.label(),
        args.concurrent,
        args.steps,
        rates[rates.len() / 2],
        args.rounds
    );
    Ok(())
}

async fn backend(name: &str, args: &Args) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("hb").tempdir_in("/tmp")?;
    let db = match name {
        "postgres" => Some(TestDatabase::postgres().await),
        _ => None,
    };
    let database = match &db {
        Some(db) => db.url.clone(),
        None => DatabaseUrl::Sqlite(dir.path().join("hearth.db")),
    };
    let bench = Arc::new(Bench::start(dir.path(), database).await?);

    // The transport alone: a call that writes nothing.
    let mut trips = Vec::new();
    {
        let (_, url_file) = bench.start_run(0).await?;
        let url = read_url(&url_file, None).await?;
        for _ in 0..args.runs as u64 * args.steps {
            let started = Instant::now();
            let response = bench.http.get(&url).send().await?;
            response.error_for_status()?.bytes().await?;
            trips.push(started.elapsed());
        }
        bench.complete(&url).await?;
    }
    trips.sort();
    println!(
        "{name:<8} endpoint round trip that writes nothing (GET context): p50 {:.2} ms p99 {:.2} ms",
        ms(percentile(&trips, 0.5)),
        ms(percentile(&trips, 0.99)),
    );
    // The transport's ceiling: the same call from `concurrent` programs at
    // once, as many as the steps of the throughput figure.
    {
        let mut urls = Vec::new();
        for c in 0..args.concurrent {
            let (_, url_file) = bench.start_run(500 + c).await?;
            urls.push(read_url(&url_file, None).await?);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for url in urls.clone() {
            let bench = bench.clone();
            let calls = args.steps * args.rounds as u64;
            tasks.push(tokio::spawn(async move {
                for _ in 0..calls {
                    bench
                        .http
                        .get(&url)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                }
                anyhow::Ok(calls)
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await??;
        }
        println!(
            "{name:<8} endpoint calls that write nothing, {} programs at once: {:.0} calls/s",
            args.concurrent,
            calls as f64 / started.elapsed().as_secs_f64()
        );
        for url in urls {
            bench.complete(&url).await?;
        }
    }
    for (m, mode) in [Mode::RunFirst, Mode::AskFirst].into_iter().enumerate() {
        sequential(name, &bench, args, mode, 1_000 * (m + 1)).await?;
        concurrent(name, &bench, args, mode, 10_000 * (m + 1)).await?;
    }

    // Crash to resume.
    let mut resumes = Vec::new();
    for n in 0..args.crashes {
        let (id, url_file) = bench.start_run(100_000 + n).await?;
        let url = read_url(&url_file, None).await?;
        bench.steps(&url, 3, Mode::RunFirst).await?;
        let run = bench.server.runs().get(&id).await?;
        let sandbox = run.sandbox_id.context("a running run has a sandbox")?;
        let killed = Instant::now();
        if !bench.driver.kill(&sandbox) {
            bail!("the VM {sandbox} was not running");
        }
        let again = read_url(&url_file, Some(&url)).await?;
        resumes.push(killed.elapsed());
        // It replays its three steps and goes on.
        bench.steps(&again, 3, Mode::RunFirst).await?;
        bench.complete(&again).await?;
    }
    resumes.sort();
    println!(
        "{name:<8} crash to resume (fake VMs, no backoff): p50 {:.1} ms p99 {:.1} ms",
        ms(percentile(&resumes, 0.5)),
        ms(percentile(&resumes, 0.99)),
    );
    let bench = Arc::try_unwrap(bench).map_err(|_| anyhow::anyhow!("the bench is still shared"))?;
    bench.server.shutdown().await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let backends: Vec<&str> = match args.backend.as_deref() {
        Some(b) => vec![b],
        None => vec!["sqlite", "postgres"],
    };
    for name in backends {
        backend(name, &args).await?;
    }
    Ok(())
}
