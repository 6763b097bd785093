//! Durable runs end to end: the real `hearth` binary, real QEMU VMs (the
//! `hearth_run` module from the image, the run endpoint through the guest
//! agent's tunnel), real tools calling a payments ledger on 127.0.0.1, and
//! the CLI. A VM is killed after a recorded tool call, then the whole
//! server is killed with -9 and restarted: each run completes and the
//! ledger saw every charge exactly once.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::served::{temp_home, wait_no_vmms, Served};
use common::{hearth, live_vmms};

type Ledger = Arc<Mutex<(Vec<(String, u64)>, HashMap<String, Value>)>>;

async fn charge(
    axum::extract::State(ledger): axum::extract::State<Ledger>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let amount = body["amount"].as_u64().unwrap_or_default();
    let mut state = ledger.lock().unwrap();
    state.0.push((key.clone(), amount));
    let answer = state
        .1
        .entry(key.clone())
        .or_insert_with(|| json!({"charged": amount, "key": key}))
        .clone();
    axum::Json(answer)
}

async fn start_ledger() -> (Ledger, String) {
    let ledger = Ledger::default();
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(charge))
        .with_state(ledger.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (ledger, format!("http://{addr}"))
}

const PROGRAM: &str = r#"
import time, hearth_run
ctx = hearth_run.context()
results = []
for amount in range(1, 6):
    results.append(ctx.tool("charge", amount=amount)["body"]["charged"])
    if amount == 3 and ctx.launch == 1 and ctx.name != "fork":
        time.sleep(120)
ctx.complete({"charged": results, "launch": ctx.launch})
"#;

/// Wait until run `id` has `n` succeeded steps.
async fn wait_steps(served: &Served, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, run) = served.get(&format!("/v1/runs/{id}")).await;
        let done = run["steps"]
            .as_array()
            .map(|s| s.iter().filter(|s| s["state"] == "succeeded").count())
            .unwrap_or(0);
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {n} steps: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn charges_of(ledger: &Ledger) -> Vec<(String, u64)> {
    ledger.lock().unwrap().0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_resume_in_fresh_vms_after_a_vm_kill_and_a_server_kill() {
    let (ledger, ledger_url) = start_ledger().await;
    let home = temp_home();
    let tools = home.path().join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            "[[tool]]\nname = \"charge\"\nurl = \"{ledger_url}/charges\"\nidempotent = false\n\
             [tool.params]\namount = {{ type = \"integer\", required = true }}\n"
        ),
    )
    .unwrap();
    let program = home.path().join("charges.py");
    std::fs::write(&program, PROGRAM).unwrap();
    let tools_arg = tools.display().to_string();
    let args = [
        "--tools",
        tools_arg.as_str(),
        "--egress-allow-cidr",
        "127.0.0.0/8",
        "--lease-ttl",
        "3s",
    ];
    let served = Served::start(home.path(), &args);

    // 1. The VM is killed after the third charge is recorded.
    let started = hearth(
        home.path(),
        &served.url,
        &[
            "run",
            "start",
            program.to_str().unwrap(),
            "--name",
            "vm-kill",
        ],
    );
    assert!(started.status.success(), "{started:?}");
    let id = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    wait_steps(&served, &id, 3).await;
    let vmms = live_vmms(home.path());
    assert_eq!(vmms.len(), 1, "one VM runs the program");
    Command::new("kill")
        .args(["-9", &vmms[0].to_string()])
        .status()
        .unwrap();
    let result = hearth(home.path(), &served.url, &["run", "result", &id, "--wait"]);
    assert!(result.status.success(), "{result:?}");
    let output: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(output, json!({"charged": [1, 2, 3, 4, 5], "launch": 2}));
    let amounts: Vec<u64> = charges_of(&ledger).iter().map(|(_, a)| *a).collect();
    assert_eq!(amounts, [1, 2, 3, 4, 5], "each charge exactly once");
    let shown = hearth(home.path(), &served.url, &["run", "show", &id]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains("tool:charge") && shown.contains("hk_"),
        "{shown}"
    );
    assert!(shown.contains("relaunch (crashed)"), "{shown}");
    let logs = hearth(home.path(), &served.url, &["run", "logs", &id]);
    assert!(logs.status.success());

    // 2. The server is killed (-9) after the third charge of another run,
    //    and restarted on the same home: the run resumes and completes.
    let before = charges_of(&ledger).len();
    let started = hearth(
        home.path(),
        &served.url,
        &[
            "run",
            "start",
            program.to_str().unwrap(),
            "--name",
            "server-kill",
        ],
    );
    assert!(started.status.success(), "{started:?}");
    let id = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    wait_steps(&served, &id, 3).await;
    let mut served = served;
    served.signal("KILL").await;
    wait_no_vmms(home.path()).await;
    let served = Served::start(home.path(), &args);
    let result = hearth(home.path(), &served.url, &["run", "result", &id, "--wait"]);
    assert!(result.status.success(), "{result:?}");
    let output: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(output["charged"], json!([1, 2, 3, 4, 5]));
    let amounts: Vec<u64> = charges_of(&ledger)[before..]
        .iter()
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(amounts, [1, 2, 3, 4, 5], "each charge exactly once");

    // A fork that keeps the whole journal replays every charge in a fresh
    // VM without making one.
    let charged = charges_of(&ledger).len();
    let forked = hearth(
        home.path(),
        &served.url,
        &[
            "run",
            "fork",
            &id,
            "--at-step",
            "5",
            "--name",
            "fork",
            "--wait",
        ],
    );
    assert!(forked.status.success(), "{forked:?}");
    let output: Value = serde_json::from_slice(&forked.stdout).unwrap();
    assert_eq!(output["charged"], json!([1, 2, 3, 4, 5]));
    assert_eq!(
        charges_of(&ledger).len(),
        charged,
        "the fork charged nothing"
    );
    let refused = hearth(
        home.path(),
        &served.url,
        &["run", "fork", &id, "--at-step", "99"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fork at step"),
        "{refused:?}"
    );

    // A run that failed says so in its exit code.
    let bad = home.path().join("bad.py");
    std::fs::write(&bad, "raise SystemExit(3)\n").unwrap();
    let started = hearth(
        home.path(),
        &served.url,
        &[
            "run",
            "start",
            bad.to_str().unwrap(),
            "--max-restarts",
            "0",
            "--wait",
        ],
    );
    assert_eq!(started.status.code(), Some(1), "{started:?}");
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(stderr.contains("restarts_exhausted"), "{stderr}");
    drop(served);
    wait_no_vmms(home.path()).await;
}

/// Two nodes on one PostgreSQL: the node running a run is killed (-9); once
/// its lease expires the other node claims the run and finishes it from
/// its journal, and the ledger saw every charge once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_finishes_the_run_of_a_killed_node() {
    let db = hearth_store::testing::TestDatabase::postgres().await;
    let hearth_store::DatabaseUrl::Postgres(db_url) = &db.url else {
        unreachable!("a PostgreSQL test database")
    };
    let (ledger, ledger_url) = start_ledger().await;
    let dir = temp_home();
    let tools = dir.path().join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            "[[tool]]\nname = \"charge\"\nurl = \"{ledger_url}/charges\"\nidempotent = false\n\
             [tool.params]\namount = {{ type = \"integer\", required = true }}\n"
        ),
    )
    .unwrap();
    let token = dir.path().join("token").display().to_string();
    let tools_arg = tools.display().to_string();
    let start = |id: &str| {
        let home = dir.path().join(id);
        std::fs::create_dir_all(&home).unwrap();
        Served::start_with_env(
            &home,
            &[
                "--node-id",
                id,
                "--token-file",
                &token,
                "--lease-ttl",
                "3s",
                "--tools",
                &tools_arg,
                "--egress-allow-cidr",
                "127.0.0.0/8",
            ],
            &[("HEARTH_DATABASE_URL", db_url.as_str())],
        )
    };
    let mut nodes = vec![start("nd-a"), start("nd-b")];
    let program = dir.path().join("charges.py");
    std::fs::write(&program, PROGRAM).unwrap();
    let started = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "start", program.to_str().unwrap()])
        .env("HEARTH_URL", &nodes[0].url)
        .env("HEARTH_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let id = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    wait_steps(&nodes[0], &id, 3).await;
    let (_, run) = nodes[0].get(&format!("/v1/runs/{id}")).await;
    let owner = run["node_id"].as_str().unwrap().to_string();
    let (dead, alive) = if owner == "nd-a" { (0, 1) } else { (1, 0) };
    nodes[dead].signal("KILL").await;
    wait_no_vmms(&dir.path().join(&owner)).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let run = loop {
        let (_, run) = nodes[alive].get(&format!("/v1/runs/{id}")).await;
        if run["state"] == "completed" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run never completed: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let survivor = if owner == "nd-a" { "nd-b" } else { "nd-a" };
    assert_eq!(
        run["node_id"],
        Value::Null,
        "an ended run belongs to no node"
    );
    assert_eq!(run["output"]["charged"], json!([1, 2, 3, 4, 5]));
    let (_, events) = nodes[alive].get(&format!("/v1/runs/{id}/events")).await;
    let claims: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "run.claimed")
        .collect();
    assert_eq!(claims.last().unwrap()["node_id"], survivor, "{claims:?}");
    assert_eq!(
        claims.last().unwrap()["data"]["previous_node"],
        json!(owner)
    );
    let amounts: Vec<u64> = charges_of(&ledger).iter().map(|(_, a)| *a).collect();
    assert_eq!(amounts, [1, 2, 3, 4, 5], "each charge exactly once");
    drop(nodes);
    wait_no_vmms(dir.path()).await;
}

/// Bad CLI input gets a clear error before anything is sent.
#[test]
fn run_start_refuses_bad_input() {
    let home = temp_home();
    let out = hearth(
        home.path(),
        "http://127.0.0.1:9",
        &["run", "start", "/nonexistent.py"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.py"));
    let program = home.path().join("p.py");
    std::fs::write(&program, "print(1)").unwrap();
    let out = hearth(
        home.path(),
        "http://127.0.0.1:9",
        &["run", "start", program.to_str().unwrap(), "--input", "{bad"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input is not valid JSON"));
}
