//! Durable runs against the fake VM driver (the real guest agent on the
//! host): real programs (python3 with the `hearth_run` module) talk to the
//! engine through the real tunnel; their "VMs" are killed at chosen
//! moments, and the runs must resume from their journals without repeating
//! a completed step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;
use hearth_server::ids::SequentialIds;
use hearth_server::runs::ProgramDir;
use hearth_server::{Server, ServerOptions, ServerParts};
use hearth_store::SystemClock;
use hearth_vm::fake::FakeDriver;

struct Harness {
    dir: tempfile::TempDir,
    home: HearthHome,
    driver: FakeDriver,
    server: Option<Server>,
    url: String,
    http: reqwest::Client,
}

/// The directory holding `hearth_run.py`, for the programs' PYTHONPATH (a
/// fake VM has the host's python3, without the image's module).
fn hearth_run_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/hearth-run")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

impl Harness {
    async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut ServerOptions)) -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("hh")
            .tempdir_in("/tmp")
            .unwrap();
        let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
        hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
        let driver = FakeDriver::locate().expect(
            "the fake driver runs hearth-guest: build it with `cargo build -p hearth-guest`",
        );
        let mut options = ServerOptions::new(home.clone());
        options.listen = "127.0.0.1:0".parse().unwrap();
        options.lease_ttl = Duration::from_secs(2);
        options.runs.hold = Duration::from_millis(1500);
        options.runs.poll = Duration::from_millis(100);
        options.runs.program_dir = ProgramDir::PerRun(dir.path().join("vm").display().to_string());
        tweak(&mut options);
        let parts = ServerParts {
            driver: Arc::new(driver.clone()),
            clock: SystemClock::shared(),
            ids: Arc::new(SequentialIds::new("t")),
            store: None,
        };
        let server = Server::start(options, parts).await.unwrap();
        let url = format!("http://{}", server.addr());
        Harness {
            dir,
            home,
            driver,
            server: Some(server),
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.home.root().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A scratch directory on the host that programs (fake VMs share the
    /// host's filesystem) and the test both see.
    fn shared(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("shared").join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Start `source` as a run with `input`; returns its id.
    async fn start(&self, source: &str, input: Value) -> String {
        let (status, run) = self
            .call(
                reqwest::Method::POST,
                "/v1/runs",
                Some(self.start_body(source, input)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run["id"].as_str().unwrap().to_string()
    }

    fn start_body(&self, source: &str, input: Value) -> Value {
        self.files_body(&[("main.py", source)], input)
    }

    fn files_body(&self, files: &[(&str, &str)], input: Value) -> Value {
        let files: serde_json::Map<String, Value> = files
            .iter()
            .map(|(name, source)| {
                let encoded = base64::engine::general_purpose::STANDARD.encode(source);
                (name.to_string(), Value::String(encoded))
            })
            .collect();
        json!({
            "program": {"files": files, "entry": "main.py"},
            "input": input,
            "env": {"PYTHONPATH": hearth_run_dir()},
            "max_restarts": 3,
        })
    }

    /// Start a run from `body`; returns its id.
    async fn start_with(&self, body: Value) -> String {
        let (status, run) = self
            .call(reqwest::Method::POST, "/v1/runs", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run["id"].as_str().unwrap().to_string()
    }

    async fn run(&self, id: &str) -> Value {
        let (status, run) = self
            .call(reqwest::Method::GET, &format!("/v1/runs/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        run
    }

    /// Wait until run `id` is in `state`.
    async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.run(id).await;
            if run["state"] == state {
                return run;
            }
            if Instant::now() > deadline {
                let (_, logs) = self
                    .call(reqwest::Method::GET, &format!("/v1/runs/{id}/logs"), None)
                    .await;
                panic!("run {id} never became {state}: {run:#}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `path` exists.
    async fn wait_file(&self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill the "VM" of run `id`'s current launch.
    async fn kill_vm(&self, id: &str) {
        let run = self.wait_state(id, "running").await;
        let sandbox = run["sandbox_id"].as_str().unwrap().to_string();
        assert!(self.driver.kill(&sandbox), "the VM {sandbox} was running");
    }

    /// Wait until run `id` has `count` events of `kind`; every event kind.
    async fn wait_events(&self, id: &str, kind: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, events) = self
                .call(reqwest::Method::GET, &format!("/v1/runs/{id}/events"), None)
                .await;
            let kinds: Vec<String> = events["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string())
                .collect();
            if kinds.iter().filter(|k| *k == kind).count() >= count {
                return kinds;
            }
            assert!(Instant::now() < deadline, "{kinds:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follow run `id`'s events live (SSE), resuming after `last`; the
    /// task ends with the stream and returns the events' JSON.
    fn follow(&self, id: &str, last: Option<i64>) -> tokio::task::JoinHandle<Vec<Value>> {
        let mut request = self
            .http
            .get(format!("{}/v1/runs/{id}/events", self.url))
            .bearer_auth(self.token())
            .header("Accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut stream = sse_stream::SseByteStream::new(response.bytes_stream());
            let mut events = Vec::new();
            while let Some(Ok(event)) = stream.next().await {
                if let Some(data) = event.data.filter(|d| !d.is_empty()) {
                    let value: Value = serde_json::from_str(&data).unwrap();
                    assert_eq!(event.id, Some(value["seq"].to_string()));
                    assert_eq!(event.event.as_deref(), value["kind"].as_str());
                    events.push(value);
                }
            }
            events
        })
    }

    /// Wait until no fake VM runs.
    async fn wait_no_vm(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.driver.running().is_empty() {
            assert!(
                Instant::now() < deadline,
                "VMs still run: {:?}",
                self.driver.running()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        assert!(
            self.driver.running().is_empty(),
            "no fake VM is left: {:?}",
            self.driver.running()
        );
    }
}

const CHARGES: &str = r#"
import os, sys, time, hearth_run

ctx = hearth_run.context()
shared = ctx.input["shared"]

def charge(i):
    with open(os.path.join(shared, "ledger"), "a") as f:
        f.write(f"charge {i} launch {ctx.launch}\n")
    return {"charged": i}

results = []
for i in range(5):
    results.append(ctx.step("charge", charge, i))
    if i == 2 and ctx.launch == 1:
        open(os.path.join(shared, "after-3"), "w").close()
        time.sleep(60)
ctx.complete({"results": results, "launch": ctx.launch})
"#;

/// A program makes 5 charges; its VM is killed after the third is
/// recorded; the run resumes in a fresh VM and each charge happened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_vm_resumes_without_repeating_a_recorded_step() {
    let h = Harness::new().await;
    let shared = h.shared("charges");
    let id = h
        .start(CHARGES, json!({"shared": shared.display().to_string()}))
        .await;
    h.wait_file(&shared.join("after-3")).await;
    h.kill_vm(&id).await;
    let run = h.wait_state(&id, "completed").await;
    let ledger = std::fs::read_to_string(shared.join("ledger")).unwrap();
    let lines: Vec<_> = ledger.lines().collect();
    assert_eq!(
        lines,
        [
            "charge 0 launch 1",
            "charge 1 launch 1",
            "charge 2 launch 1",
            "charge 3 launch 2",
            "charge 4 launch 2",
        ],
        "every charge exactly once"
    );
    assert_eq!(run["launches"], 2);
    assert_eq!(run["restarts"], 1);
    let output = &run["output"];
    assert_eq!(output["launch"], 2);
    assert_eq!(output["results"][0], json!({"charged": 0}));
    // The journal shows five succeeded steps with one attempt each, and the
    // same idempotency key shape.
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    for step in steps {
        assert_eq!(step["state"], "succeeded", "{step}");
        assert_eq!(step["attempts"].as_array().unwrap().len(), 1, "{step}");
        assert!(step["idempotency_key"].as_str().unwrap().starts_with("hk_"));
    }
    // The events tell the story: a crash, a relaunch, the completion, and
    // each launch's end (the last recorded once its VM is gone).
    let kinds = h.wait_events(&id, "run.exited", 2).await;
    let crash = kinds.iter().position(|k| k == "run.pending").unwrap();
    assert!(
        kinds[..crash].contains(&"run.exited".to_string()),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().unwrap(), "run.exited", "{kinds:?}");
    assert!(kinds.contains(&"run.completed".to_string()), "{kinds:?}");
    let (_, logs) = h
        .call(reqwest::Method::GET, &format!("/v1/runs/{id}/logs"), None)
        .await;
    assert!(logs.as_str().unwrap().contains("run.completed"), "{logs}");
    h.stop().await;
}

/// A sleep past the hold threshold releases the VM: no sandbox runs while
/// the run waits, and it completes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sleep_holds_no_vm() {
    let h = Harness::new().await;
    let program = r#"
import hearth_run
ctx = hearth_run.context()
before = ctx.now()
ctx.sleep(3)
after = ctx.now()
ctx.complete({"slept": after - before, "launch": ctx.launch})
"#;
    let id = h.start(program, json!(null)).await;
    let run = h.wait_state(&id, "waiting").await;
    assert_eq!(run["waiting_for"]["reason"], "sleep");
    assert!(run["wake_ms"].as_u64().is_some());
    // No VM while it waits.
    h.wait_no_vm().await;
    let (_, sandboxes) = h
        .call(reqwest::Method::GET, "/v1/sandboxes?state=running", None)
        .await;
    assert_eq!(sandboxes["sandboxes"].as_array().unwrap().len(), 0);
    let run = h.wait_state(&id, "completed").await;
    let slept = run["output"]["slept"].as_f64().unwrap();
    assert!(slept >= 3.0, "slept {slept} s");
    assert_eq!(run["output"]["launch"], 2, "relaunched after the sleep");
    h.stop().await;
}

/// A run waiting for a signal holds no VM; the signal resumes it with its
/// payload. A signal to an ended run is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_resumes_a_waiting_run_with_its_payload() {
    let h = Harness::new().await;
    let program = r#"
import hearth_run
ctx = hearth_run.context()
data = ctx.wait_signal("approve")
ctx.complete({"approved": data})
"#;
    let id = h.start(program, json!(null)).await;
    let run = h.wait_state(&id, "waiting").await;
    assert_eq!(run["waiting_for"]["on"], "approve");
    h.wait_no_vm().await;
    // Followed live from here, the run's events end with its completion.
    let (_, history) = h
        .call(reqwest::Method::GET, &format!("/v1/runs/{id}/events"), None)
        .await;
    let last_seen = history["events"].as_array().unwrap().last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    let follow = h.follow(&id, Some(last_seen));
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/signals/approve"),
            Some(json!({"data": {"by": "ana"}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(run["output"], json!({"approved": {"by": "ana"}}));
    let live = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("the stream ends after the run's end")
        .unwrap();
    let kinds: Vec<&str> = live.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // (The first launch's `run.exited` may come after the run waits.)
    let signalled = kinds.iter().position(|k| *k == "run.signalled");
    let relaunched = kinds.iter().position(|k| *k == "run.running");
    assert!(
        signalled.is_some() && signalled < relaunched,
        "signalled, then relaunched: {kinds:?}"
    );
    // The stream carries the run's end, then its last launch's exit.
    let completed = kinds.iter().position(|k| *k == "run.completed");
    assert!(completed.is_some(), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run.exited"), "{kinds:?}");
    assert_eq!(live.last().unwrap()["data"]["launch"], 2, "{kinds:?}");
    assert!(live
        .iter()
        .all(|e| e["run_id"] == id.as_str() && e["seq"].as_i64().unwrap() > last_seen));
    // A stream opened after the end sends the rest of the history and ends.
    let replay = tokio::time::timeout(Duration::from_secs(30), h.follow(&id, Some(last_seen)))
        .await
        .expect("a stream of an ended run ends")
        .unwrap();
    assert_eq!(replay, live);
    // Resumed after its very last event, the stream ends at once rather
    // than wait out the grace for a launch's exit (10 s) it never saw.
    let last = live.last().unwrap()["seq"].as_i64().unwrap();
    let after_end = tokio::time::timeout(Duration::from_secs(5), h.follow(&id, Some(last)))
        .await
        .expect("a stream resumed after the end ends without waiting")
        .unwrap();
    assert!(after_end.is_empty(), "{after_end:?}");
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/signals/approve"),
            Some(json!({"data": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("ended"));
    h.stop().await;
}

/// A repeatable step run before it is asked for is recorded with one
/// request (its start and outcome, both as events); sent again, the
/// recorded outcome wins; an unsafe step may not be sent that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_run_first_is_recorded_with_one_request() {
    let h = Harness::new().await;
    let program = r#"
import json, os, urllib.request, urllib.error, hearth_run
url = os.environ["HEARTH_RUN_URL"]
def post(body):
    request = urllib.request.Request(url + "/steps", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return [e.code, json.load(e)["error"].get("field")]
step = {"seq": 0, "name": "a", "args": [1], "attempt": 1}
answers = [
    post(dict(step, effect="unsafe", result=1)),
    post(dict(step, result={"x": 1})),
    post(dict(step, result={"x": 2})),
]
hearth_run.context().complete(answers)
"#;
    let id = h.start(program, json!(null)).await;
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(
        run["output"],
        json!([
            [400, "effect"],
            {"action": "done", "outcome": {"status": "succeeded", "result": {"x": 1}}},
            {"action": "replay", "outcome": {"status": "succeeded", "result": {"x": 1}}},
        ])
    );
    let (_, detail) = h
        .call(reqwest::Method::GET, &format!("/v1/runs/{id}"), None)
        .await;
    let steps = detail["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0]["attempts"].as_array().unwrap().len(), 1);
    let kinds = h.wait_events(&id, "run.completed", 1).await;
    let step_kinds: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("step."))
        .collect();
    assert_eq!(step_kinds, ["step.started", "step.succeeded"]);
    h.stop().await;
}

/// A run that failed is forked from just before its failing step: the
/// fork replays the steps before it without running them, runs the rest
/// afresh, and completes. Forks past the journal or of unknown runs are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_forked_before_its_failing_step_replays_and_goes_on() {
    let h = Harness::new().await;
    let shared = h.shared("fork");
    let broken = shared.join("broken");
    std::fs::write(&broken, "").unwrap();
    let program = r#"
import os, hearth_run
ctx = hearth_run.context()
shared = ctx.input["shared"]
def work(i):
    with open(os.path.join(shared, "log"), "a") as f:
        f.write(f"{ctx.run_id} {i}\n")
    if i == 2 and os.path.exists(os.path.join(shared, "broken")):
        raise hearth_run.NonRetryable("the service is broken")
    return i * 10
ctx.complete([ctx.step("work", work, i) for i in range(4)])
"#;
    let mut body = h.start_body(program, json!({"shared": shared}));
    body["max_restarts"] = json!(0);
    let id = h.start_with(body).await;
    let failed = h.wait_state(&id, "failed").await;
    let states: Vec<&str> = failed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "succeeded", "failed"]);

    // Refused: past the journal, and an unknown run.
    let (status, error) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/fork"),
            Some(json!({"at_step": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("has 3 steps"), "{message}");
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            "/v1/runs/run-nope/fork",
            Some(json!({"at_step": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Fixed; forked just before the failing step.
    std::fs::remove_file(&broken).unwrap();
    let (status, fork) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/fork"),
            Some(json!({"at_step": 2, "name": "retry-after-fix"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fork}");
    let fork_id = fork["id"].as_str().unwrap().to_string();
    assert_ne!(fork_id, id);
    assert_eq!(fork["name"], "retry-after-fix");
    let done = h.wait_state(&fork_id, "completed").await;
    assert_eq!(done["output"], json!([0, 10, 20, 30]));
    let log = std::fs::read_to_string(shared.join("log")).unwrap();
    let by_fork: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&fork_id))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        by_fork,
        ["2", "3"],
        "the fork ran only steps 2 and 3: {log}"
    );
    let kinds = h.wait_events(&fork_id, "run.completed", 1).await;
    assert_eq!(kinds.first().map(String::as_str), Some("run.created"));
    let (_, events) = h
        .call(
            reqwest::Method::GET,
            &format!("/v1/runs/{fork_id}/events"),
            None,
        )
        .await;
    assert_eq!(
        events["events"][0]["data"]["forked_from"],
        json!({"run_id": id, "at_step": 2})
    );
    // The original is unchanged.
    assert_eq!(h.run(&id).await["state"], "failed");
    h.stop().await;
}

/// A program that takes another path on replay (here: it branches on a
/// file it did not record, as it would on random.random()) fails with a
/// non-determinism error naming both steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_diverges_on_replay_fails_naming_both_steps() {
    let h = Harness::new().await;
    let shared = h.shared("diverge");
    let program = r#"
import os, time, hearth_run
ctx = hearth_run.context()
flag = os.path.join(ctx.input["shared"], "flag")
branch = "left" if not os.path.exists(flag) else "right"
open(flag, "w").close()
ctx.step(branch, lambda: 1)
open(os.path.join(ctx.input["shared"], "stepped"), "w").close()
time.sleep(60)
"#;
    let id = h
        .start(program, json!({"shared": shared.display().to_string()}))
        .await;
    h.wait_file(&shared.join("stepped")).await;
    h.kill_vm(&id).await;
    let run = h.wait_state(&id, "failed").await;
    assert_eq!(run["error"]["code"], "non_determinism", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"left\"") && message.contains("\"right\""),
        "{message}"
    );
    h.stop().await;
}

/// An unsafe step cut off by a VM death stops the run for a decision;
/// each decision does what it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_step_with_an_unknown_outcome_waits_for_a_decision() {
    let h = Harness::new().await;
    let program = r#"
import os, time, hearth_run
ctx = hearth_run.context()
shared = ctx.input["shared"]
def send():
    with open(os.path.join(shared, "sent"), "a") as f:
        f.write(f"launch {ctx.launch}\n")
    if ctx.launch == 1:
        time.sleep(60)
    return "sent"
try:
    result = ctx.step("email", send, effect="unsafe")
except hearth_run.StepFailed as e:
    result = f"failed: {e.error['message']}"
ctx.complete({"result": result})
"#;
    for (decision, expected) in [
        (
            json!({"step": 0, "decision": "skip", "result": "skipped"}),
            json!("skipped"),
        ),
        (json!({"step": 0, "decision": "retry"}), json!("sent")),
        (
            json!({"step": 0, "decision": "fail", "message": "not sent"}),
            json!("failed: not sent"),
        ),
    ] {
        let shared = h.shared(decision["decision"].as_str().unwrap());
        let id = h
            .start(program, json!({"shared": shared.display().to_string()}))
            .await;
        h.wait_file(&shared.join("sent")).await;
        h.kill_vm(&id).await;
        let run = h.wait_state(&id, "needs_attention").await;
        assert_eq!(run["steps"][0]["state"], "indeterminate", "{run}");
        // Resolving a step that is not indeterminate is refused.
        let (status, body) = h
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{id}/resolve"),
                Some(json!({"step": 5, "decision": "retry"})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, body) = h
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{id}/resolve"),
                Some(decision.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let run = h.wait_state(&id, "completed").await;
        assert_eq!(run["output"]["result"], expected, "{decision}");
        let sent = std::fs::read_to_string(shared.join("sent")).unwrap();
        let times = sent.lines().count();
        let expected_times = if decision["decision"] == "retry" {
            2
        } else {
            1
        };
        assert_eq!(times, expected_times, "{decision}: {sent}");
    }
    h.stop().await;
}

/// Bad requests get clear errors and corrupt nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let h = Harness::new().await;
    // A program whose entry is not among its files.
    let mut body = h.start_body("print(1)", json!(null));
    body["program"]["entry"] = json!("nope.py");
    let (status, error) = h.call(reqwest::Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope.py"));
    // Malformed JSON input.
    let response = h
        .http
        .post(format!("{}/v1/runs", h.url))
        .bearer_auth(h.token())
        .header("content-type", "application/json")
        .body("{\"program\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Unknown run.
    let (status, _) = h
        .call(reqwest::Method::GET, "/v1/runs/run-nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The run endpoint serves only its own run.
    let program = r#"
import json, os, urllib.request, urllib.error, hearth_run
url = os.environ["HEARTH_RUN_URL"]
other = url.rsplit("/", 1)[0] + "/run-someone-else/"
try:
    urllib.request.urlopen(other)
    answer = "reached"
except urllib.error.HTTPError as e:
    answer = [e.code, json.load(e)["error"]["code"]]
try:
    urllib.request.urlopen(url.split("/v1/")[0] + "/v1/sandboxes")
except urllib.error.HTTPError as e:
    answer.append(e.code)
hearth_run.context().complete(answer)
"#;
    let id = h.start(program, json!(null)).await;
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(run["output"], json!([403, "other_run", 404]));
    h.stop().await;
}

/// The ledger: a payments stub on 127.0.0.1 that records every charge with
/// its idempotency key, answers a repeated key with the original answer
/// without charging again, and can hold the answer to one amount (a call
/// in flight when a VM dies).
#[derive(Default)]
struct LedgerState {
    /// Every request: (idempotency key, amount).
    requests: Vec<(String, u64)>,
    /// Charges made, by key.
    charges: std::collections::HashMap<String, Value>,
    /// Hold the first answer for this amount.
    hold: Option<u64>,
}

type Ledger = Arc<std::sync::Mutex<LedgerState>>;

async fn ledger_charge(
    axum::extract::State(ledger): axum::extract::State<Ledger>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let amount = body["amount"].as_u64().unwrap_or_default();
    let (answer, hold) = {
        let mut state = ledger.lock().unwrap();
        state.requests.push((key.clone(), amount));
        if let Some(answer) = state.charges.get(&key) {
            return axum::Json(answer.clone()).into_response();
        }
        let answer = json!({"charged": amount, "key": key});
        state.charges.insert(key, answer.clone());
        let hold = state.hold == Some(amount);
        if hold {
            state.hold = None;
        }
        (answer, hold)
    };
    if hold {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    axum::Json(answer).into_response()
}

async fn start_ledger() -> (Ledger, String) {
    let ledger = Ledger::default();
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(ledger_charge))
        .with_state(ledger.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (ledger, format!("http://{addr}"))
}

/// A server whose tools are `charge` (not idempotent) and `charge_idem`
/// (idempotent), both posting to the ledger; loopback is allowed, as an
/// operator would allow a private range.
async fn with_ledger() -> (Harness, Ledger) {
    let (ledger, url) = start_ledger().await;
    let config = format!(
        r#"
[[tool]]
name = "charge"
url = "{url}/charges"
idempotent = false
timeout = "60s"
[tool.params]
amount = {{ type = "integer", required = true }}

[[tool]]
name = "charge_idem"
url = "{url}/charges"
idempotent = true
timeout = "60s"
[tool.params]
amount = {{ type = "integer", required = true }}
"#
    );
    let registry = hearth_tools::ToolRegistry::from_str(&config).unwrap();
    let egress = hearth_tools::EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let gateway = hearth_tools::ToolGateway::new(registry, egress).unwrap();
    let h = Harness::with(|options| options.runs.tools = Arc::new(gateway)).await;
    (h, ledger)
}

const TOOL_CHARGES: &str = r#"
import os, time, hearth_run
ctx = hearth_run.context()
shared = ctx.input["shared"]
tool = ctx.input["tool"]
results = []
for amount in range(1, 6):
    if amount == 4:
        open(os.path.join(shared, "before-4"), "w").close()
    try:
        results.append(ctx.tool(tool, amount=amount))
    except hearth_run.ToolFailed as e:
        results.append({"failed": e.error["message"]})
    if amount == 3 and ctx.launch == 1 and ctx.input.get("kill_after_3"):
        open(os.path.join(shared, "after-3"), "w").close()
        time.sleep(60)
ctx.complete(results)
"#;

fn keys_once(ledger: &Ledger) -> Vec<(String, u64)> {
    ledger.lock().unwrap().requests.clone()
}

/// Five tool calls, the VM killed after the third is recorded: the run
/// completes and the ledger saw exactly five charges, each once, each
/// with its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_not_repeated_after_a_vm_death() {
    let (h, ledger) = with_ledger().await;
    let shared = h.shared("tools");
    let id = h
        .start(
            TOOL_CHARGES,
            json!({"shared": shared.display().to_string(), "tool": "charge", "kill_after_3": true}),
        )
        .await;
    h.wait_file(&shared.join("after-3")).await;
    h.kill_vm(&id).await;
    let run = h.wait_state(&id, "completed").await;
    let requests = keys_once(&ledger);
    let amounts: Vec<u64> = requests.iter().map(|(_, a)| *a).collect();
    assert_eq!(amounts, [1, 2, 3, 4, 5], "each charge once: {requests:?}");
    let keys: std::collections::BTreeSet<_> = requests.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 5, "a key per call");
    assert_eq!(run["output"][4]["body"]["charged"], 5, "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "tool:charge");
    assert_eq!(steps[0]["idempotency_key"], json!(requests[0].0));
    h.stop().await;
}

/// The VM dies while call 4 is in flight. An idempotent tool is called
/// again with the same key (the ledger deduplicates); a tool that is not
/// stops the run for a decision, never a silent second call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_the_vm_dies_is_retried_only_if_idempotent() {
    let (h, ledger) = with_ledger().await;

    // Idempotent: retried with the same key.
    ledger.lock().unwrap().hold = Some(4);
    let shared = h.shared("idem");
    let id = h
        .start(
            TOOL_CHARGES,
            json!({"shared": shared.display().to_string(), "tool": "charge_idem"}),
        )
        .await;
    wait_for_request(&ledger, 4, 0).await;
    h.kill_vm(&id).await;
    let run = h.wait_state(&id, "completed").await;
    let requests = keys_once(&ledger);
    let fours: Vec<_> = requests.iter().filter(|(_, a)| *a == 4).collect();
    assert_eq!(fours.len(), 2, "retried once: {requests:?}");
    assert_eq!(fours[0].0, fours[1].0, "with the same key");
    assert_eq!(ledger.lock().unwrap().charges.len(), 5, "charged once each");
    assert_eq!(run["steps"][3]["attempts"].as_array().unwrap().len(), 2);

    // Not idempotent: the run stops for a decision; each decision does
    // what it says.
    for decision in ["skip", "retry", "fail"] {
        let ledger_before = keys_once(&ledger).len();
        ledger.lock().unwrap().hold = Some(4);
        let shared = h.shared(&format!("unsafe-{decision}"));
        let id = h
            .start(
                TOOL_CHARGES,
                json!({"shared": shared.display().to_string(), "tool": "charge"}),
            )
            .await;
        wait_for_request(&ledger, 4, ledger_before).await;
        h.kill_vm(&id).await;
        let run = h.wait_state(&id, "needs_attention").await;
        assert_eq!(run["steps"][3]["state"], "indeterminate", "{run}");
        let body = match decision {
            "skip" => {
                json!({"step": 3, "decision": "skip", "result": {"charged": 4, "by": "hand"}})
            }
            "retry" => json!({"step": 3, "decision": "retry"}),
            _ => json!({"step": 3, "decision": "fail", "message": "refunded by hand"}),
        };
        let (status, answer) = h
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{id}/resolve"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let run = h.wait_state(&id, "completed").await;
        let requests = keys_once(&ledger)[ledger_before..].to_vec();
        let fours = requests.iter().filter(|(_, a)| *a == 4).count();
        match decision {
            "skip" => {
                assert_eq!(fours, 1, "not called again: {requests:?}");
                assert_eq!(run["output"][3], json!({"charged": 4, "by": "hand"}));
            }
            "retry" => {
                assert_eq!(fours, 2, "called again, with its key: {requests:?}");
                assert_eq!(run["output"][3]["body"]["charged"], 4);
            }
            _ => {
                assert_eq!(fours, 1, "not called again: {requests:?}");
                assert_eq!(run["output"][3], json!({"failed": "refunded by hand"}));
            }
        }
        assert_eq!(run["output"][4]["body"]["charged"], 5, "{run}");
    }
    h.stop().await;
}

/// An unknown tool and arguments that do not fit a tool's parameters are
/// refused with errors naming what was wrong; the program can go on, the
/// refused calls leave nothing in the journal, and the ledger saw nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_calls_are_refused_without_harming_the_run() {
    let (h, ledger) = with_ledger().await;
    let program = r#"
import hearth_run
ctx = hearth_run.context()
seen = []
for name, args in [("nope", {}), ("charge", {}), ("charge", {"amount": "ten"}),
                   ("charge", {"amount": 1, "extra": True})]:
    try:
        ctx.tool(name, **args)
        seen.append("called")
    except hearth_run.HearthRunError as e:
        seen.append([e.status, e.code, e.field, e.message])
seen.append(ctx.tool("charge", amount=7)["status"])
ctx.complete(seen)
"#;
    let id = h.start(program, json!(null)).await;
    let run = h.wait_state(&id, "completed").await;
    let seen = run["output"].as_array().unwrap();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0][0], 404, "{seen:?}");
    assert_eq!(seen[0][1], "not_found");
    let unknown = seen[0][3].as_str().unwrap();
    assert!(
        unknown.contains("nope") && unknown.contains("charge"),
        "names the tool and the tools there are: {unknown}"
    );
    for (refused, what) in seen[1..4].iter().zip(["amount", "amount", "extra"]) {
        assert_eq!(refused[0], 400, "{refused}");
        assert_eq!(refused[1], "invalid_argument", "{refused}");
        let text = format!("{} {}", refused[2], refused[3]);
        assert!(text.contains(what), "names {what}: {refused}");
    }
    assert_eq!(seen[4], 200, "the run goes on and charges once");
    let steps = h
        .call(reqwest::Method::GET, &format!("/v1/runs/{id}"), None)
        .await
        .1["steps"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(steps, 1, "only the good call is journaled");
    assert_eq!(keys_once(&ledger).len(), 1);
    h.stop().await;
}

/// Wait for a request for `amount` among the requests after the first
/// `after`.
async fn wait_for_request(ledger: &Ledger, amount: u64, after: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ledger.lock().unwrap().requests[after..]
        .iter()
        .any(|(_, a)| *a == amount)
    {
        assert!(Instant::now() < deadline, "no request for {amount}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PARENT: &str = r#"
import hearth_run
ctx = hearth_run.context()
children = [ctx.spawn("child.py", input={"n": n}, name=f"child-{n}") for n in range(3)]
results = []
for child in children:
    try:
        results.append(child.result())
    except hearth_run.ChildFailed as e:
        results.append({"failed": e.error["message"]})
ctx.complete(results)
"#;

const CHILD: &str = r#"
import hearth_run
ctx = hearth_run.context()
n = ctx.input["n"]
value = ctx.step("square", lambda: n * n)
if n == 1:
    raise SystemExit("child 1 fails on purpose")
ctx.complete({"n": n, "square": value})
"#;

/// A parent with three children running in parallel, one of which fails:
/// the parent sees that child's failure where it awaits it, and the
/// others' results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_awaits_its_children_and_sees_a_failure() {
    let h = Harness::new().await;
    let mut body = h.files_body(&[("main.py", PARENT), ("child.py", CHILD)], json!(null));
    body["max_restarts"] = json!(0);
    let id = h.start_with(body).await;
    let run = h.wait_state(&id, "completed").await;
    let output = run["output"].as_array().unwrap();
    assert_eq!(output[0], json!({"n": 0, "square": 0}));
    assert!(
        output[1]["failed"]
            .as_str()
            .unwrap()
            .contains("relaunches are used up"),
        "{output:?}"
    );
    assert_eq!(output[2], json!({"n": 2, "square": 4}));
    let (_, children) = h
        .call(reqwest::Method::GET, &format!("/v1/runs?parent={id}"), None)
        .await;
    let children = children["runs"].as_array().unwrap();
    assert_eq!(
        children.len(),
        3,
        "one child per spawn, even across relaunches"
    );
    // A fork cannot await another run's children; one that keeps their
    // results replays them.
    let (status, error) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/fork"),
            Some(json!({"at_step": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot await another run's child"),
        "{message}"
    );
    let (status, fork) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/fork"),
            Some(json!({"at_step": 6})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fork}");
    let forked = h
        .wait_state(fork["id"].as_str().unwrap(), "completed")
        .await;
    assert_eq!(forked["output"], run["output"]);
    h.stop().await;
}

/// Cancelling a parent cancels its children, and a run's VM is killed at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_children_and_kills_vms() {
    let h = Harness::new().await;
    let parent = r#"
import hearth_run
ctx = hearth_run.context()
kids = [ctx.spawn("child.py", input=n) for n in range(2)]
ctx.complete([k.result() for k in kids])
"#;
    let child = r#"
import time, hearth_run
ctx = hearth_run.context()
time.sleep(120)
"#;
    let id = h
        .start_with(h.files_body(&[("main.py", parent), ("child.py", child)], json!(null)))
        .await;
    // Wait for both children to run in their VMs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let children = loop {
        let (_, list) = h
            .call(
                reqwest::Method::GET,
                &format!("/v1/runs?parent={id}&state=running"),
                None,
            )
            .await;
        let running = list["runs"].as_array().unwrap().clone();
        if running.len() == 2 {
            break running;
        }
        assert!(Instant::now() < deadline, "children never ran: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, run) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(json!({"by": "test"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "cancelled");
    assert_eq!(run["cancelled_by"], "test");
    for child in &children {
        let child = h
            .wait_state(child["id"].as_str().unwrap(), "cancelled")
            .await;
        assert_eq!(child["cancelled_by"], json!(format!("parent {id}")));
    }
    h.wait_no_vm().await;
    // Cancelling again says it has ended.
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    h.stop().await;
}

/// A persisted file survives a VM death and is in place when the program
/// starts again; a file it did not persist is gone with the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_file_survives_a_vm_death() {
    let h = Harness::new().await;
    let shared = h.shared("persist");
    let program = r#"
import os, time, hearth_run
ctx = hearth_run.context()
state = os.path.join(os.getcwd(), "state.txt")
scratch = os.path.join(os.getcwd(), "scratch.txt")
if ctx.launch == 1:
    with open(state, "w") as f:
        f.write("model weights v1")
    with open(scratch, "w") as f:
        f.write("not persisted")
    ctx.persist(state)
    open(os.path.join(ctx.input["shared"], "persisted"), "w").close()
    time.sleep(60)
else:
    ctx.persist(state)
with open(state) as f:
    restored = f.read()
ctx.complete({"restored": restored, "scratch_left": os.path.exists(scratch), "launch": ctx.launch})
"#;
    let id = h
        .start(program, json!({"shared": shared.display().to_string()}))
        .await;
    h.wait_file(&shared.join("persisted")).await;
    h.kill_vm(&id).await;
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(
        run["output"],
        json!({"restored": "model weights v1", "scratch_left": false, "launch": 2})
    );
    h.stop().await;
}

/// A durable workspace needs VMs whose disks can be checkpointed: on the
/// fake driver the run fails before any VM starts, saying why; a bad
/// workspace value is refused at the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_workspace_on_a_driver_without_checkpoints_fails_clearly() {
    let h = Harness::new().await;
    let program = "import hearth_run\nhearth_run.context().complete(1)\n";
    let mut body = h.start_body(program, json!(null));
    body["workspace"] = json!("durable");
    let id = h.start_with(body).await;
    let run = h.wait_state(&id, "failed").await;
    assert_eq!(run["error"]["code"], "workspace", "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("needs the qemu VM driver"), "{message}");
    assert_eq!(run["launches"], 0, "{run}");

    let mut body = h.start_body(program, json!(null));
    body["workspace"] = json!("forever");
    let (status, answer) = h.call(reqwest::Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["field"], "workspace", "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("ephemeral or durable"));
    h.stop().await;
}

/// A run past its deadline fails cleanly, even while it waits with no VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fails_a_waiting_run() {
    let h = Harness::new().await;
    let program = r#"
import hearth_run
ctx = hearth_run.context()
ctx.wait_signal("never")
"#;
    let mut body = h.start_body(program, json!(null));
    body["deadline_seconds"] = json!(2);
    let id = h.start_with(body).await;
    h.wait_state(&id, "waiting").await;
    let run = h.wait_state(&id, "failed").await;
    assert_eq!(run["error"]["code"], "deadline", "{run}");
    h.stop().await;
}

/// A stub of what runs call over HTTP: 50 MB of text, and a scripted
/// OpenAI-compatible chat model (a paid API cannot be called from tests;
/// the client code is the real `http` tool).
async fn start_stub() -> String {
    async fn big() -> String {
        "x".repeat(50 << 20)
    }
    async fn chat(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        let turn = body["messages"].as_array().map_or(0, Vec::len);
        axum::Json(json!({
            "id": format!("chatcmpl-{turn}"),
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant",
                "content": format!("Reply number {turn}: the scripted model has read {turn} messages so far."),
            }}],
            "usage": {"prompt_tokens": turn * 12, "completion_tokens": 14, "total_tokens": turn * 12 + 14},
        }))
    }
    let app = axum::Router::new()
        .route("/big", axum::routing::get(big))
        .route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A 50 MB tool output works and the store grows by about 50 MB, not more;
/// a 100-turn conversation that resends its growing list of messages makes
/// the store grow linearly (the arguments are journaled as digests, each
/// reply once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_and_long_conversations_grow_the_store_linearly() {
    let stub = start_stub().await;
    let gateway = hearth_tools::ToolGateway::new(
        hearth_tools::ToolRegistry::default(),
        hearth_tools::EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
    )
    .unwrap();
    let h = Harness::with(|options| options.runs.tools = Arc::new(gateway)).await;
    let store = h.server.as_ref().unwrap().runs().store().clone();

    let big = r#"
import hearth_run
ctx = hearth_run.context()
page = ctx.tool("http", method="GET", url=ctx.input["url"] + "/big")
ctx.complete({"status": page["status"], "bytes": len(page["body"])})
"#;
    let before = store.size_bytes().await.unwrap();
    let id = h.start(big, json!({"url": stub})).await;
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(run["output"], json!({"status": 200, "bytes": 50 << 20}));
    let grown = store.size_bytes().await.unwrap() - before;
    println!("a 50 MiB tool output grew the store by {grown} bytes");
    assert!(grown >= 50 << 20, "{grown}");
    assert!(grown < (50 << 20) + (4 << 20), "stored once: {grown}");

    let chat = r#"
import json, hearth_run
ctx = hearth_run.context()
url = ctx.input["url"] + "/v1/chat/completions"
messages = [{"role": "system", "content": "You are a careful assistant. " * 20}]
for turn in range(100):
    if turn == 50:
        ctx.wait_signal("half")
    messages.append({"role": "user", "content": f"Question {turn}: what comes next?"})
    answer = ctx.tool("http", method="POST", url=url, json={"model": "scripted", "messages": messages})
    messages.append(json.loads(answer["body"])["choices"][0]["message"])
ctx.complete({"messages": len(messages)})
"#;
    let start = store.size_bytes().await.unwrap();
    let id = h.start(chat, json!({"url": stub})).await;
    h.wait_state(&id, "waiting").await;
    let half = store.size_bytes().await.unwrap();
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/signals/half"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(run["output"], json!({"messages": 201}));
    let end = store.size_bytes().await.unwrap();
    let first = half - start;
    let second = end - half;
    println!(
        "100-turn conversation: first 50 turns {first} bytes ({} per turn), last 50 turns {second} bytes ({} per turn)",
        first / 50,
        second / 50
    );
    // Linear: the second half, whose requests are twice as long, costs
    // about what the first did (quadratic growth would make it ~3x).
    assert!(second < first * 2, "first {first}, second {second}");
    assert!(end - start < 100 * 8192, "{}", end - start);
    h.stop().await;
}

/// Starting a new version of a program leaves a waiting run on its
/// original bytes; an upgrade that would diverge from the journal is
/// refused naming the first diverging step, and one that replays it is
/// taken and used from the next launch on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stay_on_their_program_and_upgrades_must_replay_the_journal() {
    let h = Harness::new().await;
    let version = |greeting: &str, first_step: &str| {
        format!(
            r#"
import hearth_run
ctx = hearth_run.context()
ctx.step("{first_step}", lambda: 1)
ctx.wait_signal("go")
ctx.complete("{greeting}")
"#
        )
    };
    let v1 = version("v1", "fetch");
    let id = h.start(&v1, json!(null)).await;
    let waiting = h.wait_state(&id, "waiting").await;
    // A new version started meanwhile runs its own bytes; the waiting run
    // keeps its own.
    let v2 = version("v2", "fetch");
    let other = h.start(&v2, json!(null)).await;
    let other_run = h.wait_state(&other, "waiting").await;
    assert_ne!(other_run["program"], waiting["program"]);

    // A version whose first step differs is refused, naming it.
    let diverging = version("v3", "download");
    let body = |source: &str| json!({"program": {"files": {"main.py": base64::engine::general_purpose::STANDARD.encode(source)}, "entry": "main.py"}});
    let (status, error) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/upgrade"),
            Some(body(&diverging)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"fetch\"") && message.contains("\"download\""),
        "{message}"
    );
    assert_eq!(h.run(&id).await["program"], waiting["program"], "unchanged");

    // A version that replays the journal is taken.
    let compatible = version("v4", "fetch");
    let (status, upgraded) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/upgrade"),
            Some(body(&compatible)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{upgraded}");
    assert_ne!(upgraded["program"], waiting["program"]);
    assert_eq!(upgraded["state"], "waiting");
    for run in [&id, &other] {
        let (status, _) = h
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{run}/signals/go"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(h.wait_state(&id, "completed").await["output"], "v4");
    assert_eq!(h.wait_state(&other, "completed").await["output"], "v2");
    // An ended run takes no upgrade.
    let (status, error) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/upgrade"),
            Some(body(&compatible)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "run_ended");
    h.stop().await;
}

/// A run with a network: each launch's programs reach its allowlist
/// through the proxy (and nothing else), every attempt is in the events
/// of the launch's sandbox, and a bad entry is refused when the run
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_launches_reach_its_allowlist_and_nothing_else() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n")
                .await;
        }
    });
    let hosts = hearth_net::HostsOverride::parse(
        "127.0.0.1 svc.test blocked.test\n",
        Arc::new(hearth_net::SystemResolver),
    )
    .unwrap();
    let h = Harness::with(|options| {
        options.network.egress = Arc::new(hearth_net::EgressPolicy::new(vec!["127.0.0.1/32"
            .parse()
            .unwrap()]));
        options.network.resolver = Arc::new(hosts);
    })
    .await;

    let mut body = h.start_body("print(1)", json!(null));
    body["network"] = json!({"mode": "allowlist", "allow": ["*bad"]});
    let (status, error) = h.call(reqwest::Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["field"], "network.allow", "{error}");

    let program = r#"
import sys, urllib.request, hearth_run
ctx = hearth_run.context()
def fetch(name):
    try:
        return urllib.request.urlopen(f"http://{name}:{ctx.input}/", timeout=20).read().decode().strip()
    except Exception as e:
        return f"refused {getattr(e, 'code', type(e).__name__)}"
ctx.complete([ctx.step("svc", fetch, "svc.test"), ctx.step("blocked", fetch, "blocked.test")])
"#;
    let mut body = h.start_body(program, json!(port));
    body["network"] =
        json!({"mode": "allowlist", "allow": [format!("svc.test:{port}")], "max_connections": 4});
    let id = h.start_with(body).await;
    let run = h.wait_state(&id, "completed").await;
    assert_eq!(run["output"], json!(["hi", "refused 403"]), "{run}");

    // The launch's sandbox recorded its network and both attempts.
    let (_, sandboxes) = h
        .call(
            reqwest::Method::GET,
            &format!("/v1/sandboxes?label=hearth.run={id}"),
            None,
        )
        .await;
    let sandbox = sandboxes["sandboxes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, events) = h
        .call(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{sandbox}/events"),
            None,
        )
        .await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(
        events[0]["data"]["network"]["max_connections"], 4,
        "{events:?}"
    );
    let verdicts: Vec<(String, bool)> = events
        .iter()
        .filter(|e| e["kind"] == "net.connection")
        .map(|e| {
            (
                e["data"]["host"].as_str().unwrap().to_string(),
                e["data"]["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        verdicts.contains(&("svc.test".into(), true)),
        "{verdicts:?}"
    );
    assert!(
        verdicts.contains(&("blocked.test".into(), false)),
        "{verdicts:?}"
    );
    h.stop().await;
}
