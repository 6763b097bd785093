//! Several real `hearth serve` nodes on one real PostgreSQL, with real VMs:
//! any node answers for a sandbox on another; a node killed with SIGKILL
//! has its sandboxes recorded lost by another once its lease expires, and
//! none of its VMs survive; it comes back with a new lease and touches none
//! of its old sandboxes; a node that joins later sees everything.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::live_vmms;
use common::served::{parse_sse, temp_home, wait_no_vmms, Served};
use hearth_store::testing::TestDatabase;
use hearth_store::DatabaseUrl;

fn start_node(dir: &Path, db: &DatabaseUrl, id: &str) -> Served {
    let DatabaseUrl::Postgres(url) = db else {
        unreachable!("the cluster test runs on PostgreSQL")
    };
    let home = dir.join(id);
    std::fs::create_dir_all(&home).unwrap();
    let token = dir.join("token").display().to_string();
    Served::start_with_env(
        &home,
        &[
            "--node-id",
            id,
            "--token-file",
            &token,
            "--lease-ttl",
            "3s",
            "--vcpu-budget",
            "4",
        ],
        &[("HEARTH_DATABASE_URL", url.as_str())],
    )
}

/// Poll `path` on `node` until `done` holds (bounded).
async fn wait_for(node: &Served, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, value) = node.get(path).await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_postgres_forward_to_each_other_and_take_over_a_dead_one() {
    let db = TestDatabase::postgres().await;
    let dir = temp_home();
    let mut a = start_node(dir.path(), &db.url, "nd-a");
    let b = start_node(dir.path(), &db.url, "nd-b");

    // A sandbox on A, created through B.
    let (status, sandbox) = b
        .post("/v1/sandboxes", json!({"node": "nd-a", "memory": "256M"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    assert_eq!(sandbox["node_id"], "nd-a");
    let id = sandbox["id"].as_str().unwrap().to_string();
    assert_eq!(live_vmms(&dir.path().join("nd-a")).len(), 1);

    // Exec through B.
    let out = b.run(&id, &["sh", "-c", "uname -n"]).await;
    assert_eq!(
        out["stdout"].as_str().unwrap().trim(),
        id,
        "the VM's hostname is its id"
    );

    // A streamed exec through B, cut after its first line and resumed
    // through B: every line once.
    let response = b
        .req(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sh", "-c", "echo one; sleep 1; echo two; sleep 1; echo three"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let exec_id = response.headers()["x-hearth-exec-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("one") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    drop(body);
    let first = parse_sse(&seen);
    let last_id = first
        .iter()
        .rev()
        .find_map(|(id, _, _)| id.clone())
        .unwrap();
    let resumed = b
        .req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/execs/{exec_id}/events"),
        )
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stdout: String = first
        .into_iter()
        .chain(parse_sse(&resumed))
        .filter(|(_, name, _)| name == "stdout")
        .map(|(_, _, data)| data["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stdout, "one\ntwo\nthree\n");

    // Files through B, both ways.
    let path = format!("/v1/sandboxes/{id}/files?path=/root/data.bin");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let put = b
        .req(reqwest::Method::PUT, &path)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap()
    );
    let got = b
        .req(reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..], "the download differs from the upload");

    // Logs through B.
    let (_, events) = b.get(&format!("/v1/sandboxes/{id}/events")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "sandbox.running",
        "exec.finished",
        "file.written",
        "file.read",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    // kill -9 A: its VM dies with it, and once its lease expires B
    // records its sandbox lost, naming A.
    let status = a.signal("KILL").await;
    assert!(!status.success());
    wait_no_vmms(&dir.path().join("nd-a")).await;
    let record = wait_for(&b, &format!("/v1/sandboxes/{id}"), |r| r["state"] == "lost").await;
    assert_eq!(record["state"], "lost", "{record}");
    let message = record["end_message"].as_str().unwrap();
    assert!(message.contains("nd-a"), "{message}");
    let (_, events) = b.get(&format!("/v1/sandboxes/{id}/events")).await;
    let lost = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(lost["kind"], "sandbox.lost");
    assert_eq!(lost["data"]["node_id"], "nd-a");
    assert_eq!(lost["node_id"], "nd-b");
    let (_, nodes) = b.get("/v1/nodes").await;
    let node_a = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "nd-a")
        .unwrap()
        .clone();
    assert_eq!(node_a["state"], "expired", "{nodes}");

    // A comes back: a new lease, and it leaves its old sandbox alone.
    let a = start_node(dir.path(), &db.url, "nd-a");
    let (_, nodes) = a.get("/v1/nodes").await;
    let node_a = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "nd-a")
        .unwrap()
        .clone();
    assert_eq!(node_a["state"], "alive");
    assert_eq!(node_a["epoch"], 2);
    let (_, after) = a.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert_eq!(
        after, events,
        "the restarted node wrote nothing about its old sandbox"
    );

    // A third node sees every node and every sandbox.
    let c = start_node(dir.path(), &db.url, "nd-c");
    let (_, list) = c.get("/v1/sandboxes").await;
    let listed: Vec<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str()]);
    let (_, nodes) = c.get("/v1/nodes").await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 3, "{nodes}");

    for mut node in [a, b, c] {
        assert!(node.signal("TERM").await.success());
    }
    for node in ["nd-a", "nd-b", "nd-c"] {
        assert!(live_vmms(&dir.path().join(node)).is_empty());
    }
}
