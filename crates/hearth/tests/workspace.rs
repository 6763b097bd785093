//! Durable workspaces end to end (issue 9, test 9): the real `hearth`
//! binary and real QEMU VMs. A run with `--workspace durable` writes files
//! around its steps; its VM is killed; the relaunch boots on the files as
//! they stood at the last recorded step (those written after it are gone),
//! and a fork at step N boots on the files as of step N.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::served::{temp_home, wait_no_vmms, Served};
use common::{hearth, live_vmms};

/// Lists the workspace when each launch starts (not journaled), then
/// writes a file before each of three steps and one after the last. b.txt
/// is 6 MiB of random bytes, so its layer is stored in chunks; the step
/// records its digest, and a launch that starts with it checks it.
const PROGRAM: &str = r#"
import hashlib, os, time, hearth_run
def digest(path):
    try:
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    except FileNotFoundError:
        return None
ctx = hearth_run.context()
os.makedirs("/work/ws", exist_ok=True)
at_start = sorted(os.listdir("/work/ws"))
b_at_start = digest("/work/ws/b.txt")
ctx.step("start", lambda: "started")
open("/work/ws/a.txt", "w").write("a")
ctx.step("wrote-a", lambda: "a")
open("/work/ws/b.txt", "wb").write(os.urandom(6 << 20))
b = ctx.step("wrote-b", lambda: digest("/work/ws/b.txt"))
open("/work/ws/late.txt", "w").write("written after the last recorded step")
if ctx.launch == 1 and ctx.name != "fork":
    time.sleep(600)
ctx.complete({"launch": ctx.launch, "at_start": at_start, "b_intact": b_at_start in (None, b)})
"#;

/// Start `program` as a run with a durable workspace (and `more` options)
/// through the CLI; its id.
fn start_durable(served: &Served, program: &std::path::Path, more: &[&str]) -> String {
    let mut args = vec![
        "run",
        "start",
        program.to_str().unwrap(),
        "--workspace",
        "durable",
    ];
    args.extend_from_slice(more);
    let started = hearth(&served.home, &served.url, &args);
    assert!(started.status.success(), "{started:?}");
    String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaunch_and_a_fork_boot_on_the_files_of_their_last_step() {
    let home = temp_home();
    let program = home.path().join("files.py");
    std::fs::write(&program, PROGRAM).unwrap();
    let served = Served::start(home.path(), &[]);

    let id = start_durable(&served, &program, &["--name", "files"]);

    // Follows the run's logs live, and ends by itself with the run.
    let follower = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "logs", "-f", &id])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_URL", &served.url)
        .env_remove("HEARTH_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Three steps recorded, each with the files as it left them.
    let deadline = Instant::now() + Duration::from_secs(180);
    let steps = loop {
        let (_, run) = served.get(&format!("/v1/runs/{id}")).await;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        if steps.iter().filter(|s| s["state"] == "succeeded").count() >= 3 {
            break steps;
        }
        assert!(Instant::now() < deadline, "never reached 3 steps: {run:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let layers: Vec<&Value> = steps.iter().map(|s| &s["checkpoint"]).collect();
    assert!(layers.iter().all(|c| c["digest"].is_string()), "{steps:#?}");
    assert_eq!(
        layers[0]["parent"],
        Value::Null,
        "the first step froze the base"
    );
    assert_eq!(layers[1]["parent"], layers[0]["layer"], "{steps:#?}");

    // The VM dies after late.txt was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let vmms = live_vmms(home.path());
    assert_eq!(vmms.len(), 1, "one VM runs the program");
    Command::new("kill")
        .args(["-9", &vmms[0].to_string()])
        .status()
        .unwrap();
    let result = hearth(home.path(), &served.url, &["run", "result", &id, "--wait"]);
    assert!(result.status.success(), "{result:?}");
    let output: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(
        output,
        json!({"launch": 2, "at_start": ["a.txt", "b.txt"], "b_intact": true}),
        "the relaunch has the files of the last recorded step, not later ones"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(follower.wait_with_output()));
    let followed = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("run logs -f ends after the run does")
        .unwrap();
    assert!(followed.status.success(), "{followed:?}");
    let text = String::from_utf8_lossy(&followed.stdout);
    assert_eq!(
        text.matches("run.exited").count(),
        2,
        "both launches' ends: {text}"
    );
    assert!(text.contains("run.completed"), "{text}");

    // The timeline shows each step's files.
    let shown = hearth(home.path(), &served.url, &["run", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.matches("files: layer").count(), 3, "{shown}");

    // A fork that keeps the first two steps has the files as of step 2.
    let forked = hearth(
        home.path(),
        &served.url,
        &[
            "run",
            "fork",
            &id,
            "--at-step",
            "2",
            "--name",
            "fork",
            "--wait",
        ],
    );
    assert!(forked.status.success(), "{forked:?}");
    let output: Value = serde_json::from_slice(&forked.stdout).unwrap();
    assert_eq!(
        output,
        json!({"launch": 1, "at_start": ["a.txt"], "b_intact": true})
    );

    // Killed (-9) at any moment, the server leaves a launch's layers
    // behind; its next start removes them.
    drop(served);
    wait_no_vmms(home.path()).await;
    let stray = home.path().join("workspaces").join("run-x-1-00000000");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("x-1.qcow2"), b"left by a crash").unwrap();
    let served = Served::start(home.path(), &[]);
    wait_workspaces_removed(home.path()).await;
    drop(served);
    wait_no_vmms(home.path()).await;
}

/// An upgrade's check boots on the files a relaunch would see: the new
/// version names its first step after a file the first one wrote, so
/// without those files its replay would diverge and be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_checked_on_the_files_a_relaunch_would_see() {
    let home = temp_home();
    let version = |greeting: &str| {
        format!(
            r#"
import os, hearth_run
ctx = hearth_run.context()
os.makedirs("/work/ws", exist_ok=True)
seen = open("/work/ws/note.txt").read() if os.path.exists("/work/ws/note.txt") else ""
def note():
    open("/work/ws/note.txt", "w").write("kept")
    return "wrote"
# v2 knows the note is there: its first step is named after it.
first = "write-note" if "{greeting}" == "v1" or seen == "kept" else "no-note"
ctx.step(first, note)
ctx.wait_signal("go")
ctx.complete("{greeting} saw " + (seen or "nothing"))
"#
        )
    };
    let v1 = home.path().join("v1.py");
    std::fs::write(&v1, version("v1")).unwrap();
    let v2 = home.path().join("v2.py");
    std::fs::write(&v2, version("v2")).unwrap();
    let served = Served::start(home.path(), &[]);
    let id = start_durable(&served, &v1, &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, run) = served.get(&format!("/v1/runs/{id}")).await;
        if run["state"] == "waiting" {
            break;
        }
        assert!(Instant::now() < deadline, "never waited: {run:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // v2 replays only on the files step 0 left.
    let upgraded = hearth(
        home.path(),
        &served.url,
        &["run", "upgrade", &id, "--program", v2.to_str().unwrap()],
    );
    assert!(upgraded.status.success(), "{upgraded:?}");
    let (status, body) = served
        .post(&format!("/v1/runs/{id}/signals/go"), json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    let result = hearth(home.path(), &served.url, &["run", "result", &id, "--wait"]);
    assert!(result.status.success(), "{result:?}");
    let output: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(output, json!("v2 saw kept"));
    wait_no_vmms(home.path()).await;
    // The run's result is recorded before its last launch has cleaned up,
    // so the check's and the launches' directories go shortly after.
    wait_workspaces_removed(home.path()).await;
}

/// Wait (up to 30 s) until no launch's workspace layers are left in `home`.
async fn wait_workspaces_removed(home: &std::path::Path) {
    let left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(home.join("workspaces"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left().is_empty(),
        "workspace layers left behind: {:?}",
        left()
    );
}
