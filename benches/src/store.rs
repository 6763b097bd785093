//! `hearth-bench-store`: how long one sandbox state change with its event
//! takes in the store, on SQLite and on PostgreSQL, alone and with several
//! writers at once (the event counter serializes event commits on
//! PostgreSQL: this measures what that costs); and how long one journal
//! write takes (a step's start and outcome with their events), alone and
//! committed in batches as the run engine's group commit does.
//!
//! ```sh
//! scripts/postgres.sh                       # a local PostgreSQL
//! cargo run --release -p hearth-bench --bin hearth-bench-store -- --changes 2000
//! ```

use hearth_bench::{millis as ms, percentile};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use hearth_engine::{Attempt, AttemptOutcome, Effect, RunState, StepRecord, StepState};
use hearth_store::event::RunRunning;
use hearth_store::event::{SandboxCreating, SandboxEnded, SandboxStopping, StopRequester};
use hearth_store::testing::TestDatabase;
use hearth_store::{
    EventPayload, Lease, NewRun, NewSandbox, NodeCapacity, NodeSpec, RunChange, RunWriter,
    SandboxState, StepWrite, Store, SystemClock, Transition,
};

#[derive(Debug, Parser)]
#[command(about = "Store latency: one sandbox state change with its event")]
struct Args {
    /// State changes to time per backend (each sandbox makes three).
    #[arg(long, default_value_t = 1500)]
    changes: usize,
    /// Concurrent writers for the throughput run.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Only this backend (`sqlite` or `postgres`).
    #[arg(long)]
    backend: Option<String>,
}

async fn lease(store: &Store) -> Result<Lease> {
    let spec = NodeSpec {
        id: "nd-bench".into(),
        url: "http://127.0.0.1:1".into(),
        hostname: "bench".into(),
        home: "/bench".into(),
        capacity: NodeCapacity::default(),
    };
    let (node, _) = store
        .register_node(&spec, Duration::from_secs(3600))
        .await?;
    node.lease().context("a fresh lease")
}

/// Insert a sandbox and take it through stopping to stopped, timing each
/// of the three state changes.
async fn life(store: &Store, lease: &Lease, id: &str, times: &mut Vec<Duration>) -> Result<()> {
    let new = NewSandbox {
        id: id.into(),
        image: "default".into(),
        vcpus: 1,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        timeout_ms: None,
        labels: Default::default(),
        created_ms: 0,
    };
    let started = Instant::now();
    store
        .insert_sandbox(&new, lease, SandboxCreating::default())
        .await?;
    times.push(started.elapsed());
    let steps = [
        (
            SandboxState::Stopping,
            EventPayload::SandboxStopping(SandboxStopping {
                requested_by: StopRequester::Api,
            }),
        ),
        (
            SandboxState::Stopped,
            EventPayload::SandboxStopped(SandboxEnded::default()),
        ),
    ];
    for (state, payload) in steps {
        let change = Transition {
            state: Some(state),
            ..Transition::default()
        };
        let started = Instant::now();
        store
            .transition(id, lease, &change, payload)
            .await?
            .context("the change is allowed")?;
        times.push(started.elapsed());
    }
    Ok(())
}

async fn bench(backend: &str, args: &Args) -> Result<()> {
    let db = TestDatabase::of(backend).await;
    let store = Store::open(&db.url, SystemClock::shared()).await?;
    let lease = lease(&store).await?;
    // Warm up connections and caches.
    let mut warm = Vec::new();
    for i in 0..20 {
        life(&store, &lease, &format!("sb-warm-{i}"), &mut warm).await?;
    }
    let mut times = Vec::new();
    let lives = args.changes.div_ceil(3);
    for i in 0..lives {
        life(&store, &lease, &format!("sb-one-{i}"), &mut times).await?;
    }
    times.sort();
    println!(
        "{backend:8} one writer:  {} changes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
    );

    // Several writers at once: on PostgreSQL each through its own pool
    // (like separate nodes), on SQLite through the one store a server
    // holds (one process per file).
    let started = Instant::now();
    let mut tasks = Vec::new();
    let all = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    for w in 0..args.writers {
        let store = if backend == "sqlite" {
            store.clone()
        } else {
            Store::open(&db.url, SystemClock::shared()).await?
        };
        let lease = lease.clone();
        let all = all.clone();
        let per_writer = lives / args.writers.max(1);
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for i in 0..per_writer {
                life(&store, &lease, &format!("sb-many-{w}-{i}"), &mut times).await?;
            }
            all.lock().await.extend(times);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let mut times = std::mem::take(&mut *all.lock().await);
    times.sort();
    println!(
        "{backend:8} {} writers: {} changes in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        args.writers,
        times.len(),
        elapsed.as_secs_f64(),
        times.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
    );
    journal(backend, &store, &lease, args).await?;
    store.close().await;
    Ok(())
}

/// Create run `id`, claimed by `lease` and running.
async fn running_run(store: &Store, lease: &Lease, id: &str) -> Result<()> {
    let program = store.put_blob(b"print(1)\n").await?;
    store
        .insert_run(&NewRun {
            id: id.into(),
            name: None,
            program,
            spec: serde_json::json!({}),
            input: serde_json::Value::Null,
            parent: None,
            deadline_ms: None,
        })
        .await?;
    store.claim_runs(lease, 1, Some(id)).await?;
    let change = RunChange {
        state: Some(RunState::Running),
        launched: true,
        ..RunChange::default()
    };
    let payload = EventPayload::RunRunning(RunRunning {
        launch: 1,
        sandbox_id: format!("sb-{id}"),
    });
    store
        .change_run(id, RunWriter::Owner(lease), &change, payload)
        .await?
        .context("pending -> running")?;
    Ok(())
}

/// Step `seq` as it is when its attempt starts and when it succeeded.
fn step_records(seq: u64) -> [StepRecord; 2] {
    let mut started = StepRecord {
        seq,
        name: "work".into(),
        args_digest: format!("sha256:{seq:064}"),
        effect: Effect::Idempotent,
        state: StepState::Started,
        result: None,
        error: None,
        attempts: vec![Attempt {
            number: 1,
            started_ms: 1,
            ended_ms: None,
            outcome: AttemptOutcome::InFlight,
        }],
        retry_at_ms: None,
        checkpoint: None,
    };
    let mut done = started.clone();
    done.state = StepState::Succeeded;
    done.result = Some(serde_json::json!({"n": seq, "text": "a short result"}));
    done.attempts[0].ended_ms = Some(2);
    done.attempts[0].outcome = AttemptOutcome::Succeeded;
    started.result = None;
    [started, done]
}

/// One journal write alone, then batches of `writers` runs' writes.
async fn journal(backend: &str, store: &Store, lease: &Lease, args: &Args) -> Result<()> {
    let runs = args.writers.max(1);
    for r in 0..runs {
        running_run(store, lease, &format!("run-bench-{r}")).await?;
    }
    let write = |r: usize, seq: u64| StepWrite {
        run_id: format!("run-bench-{r}"),
        lease: lease.clone(),
        launch: 1,
        steps: step_records(seq).to_vec(),
    };
    let mut times = Vec::new();
    for seq in 0..args.changes as u64 {
        let started = Instant::now();
        for outcome in store.put_step_batch(&[write(0, seq)]).await? {
            outcome?;
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{backend:8} journal write (one step's start and outcome, 2 events): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
    );
    let mut times = Vec::new();
    let first = args.changes as u64;
    for seq in first..first + (args.changes / runs) as u64 {
        let batch: Vec<StepWrite> = (0..runs).map(|r| write(r, seq)).collect();
        let started = Instant::now();
        for outcome in store.put_step_batch(&batch).await? {
            outcome?;
        }
        times.push(started.elapsed());
    }
    times.sort();
    let p50 = percentile(&times, 0.50);
    println!(
        "{backend:8} journal batch of {runs} runs' writes: p50 {:.2} ms, p99 {:.2} ms = {:.0} steps/s at p50",
        ms(p50),
        ms(percentile(&times, 0.99)),
        runs as f64 / p50.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("store: time of one sandbox state change with its event (insert, stopping, stopped)");
    for backend in ["sqlite", "postgres"] {
        if args.backend.as_deref().is_some_and(|b| b != backend) {
            continue;
        }
        bench(backend, &args).await?;
    }
    Ok(())
}
