//! Starting a server over the store of one that died: the unfinished
//! sandboxes of its previous run become `lost` at once, those of another
//! node that went silent become `lost` once its lease is seen expired, and
//! one home holds one server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hearth_sandbox::HearthHome;
use hearth_server::{Server, ServerError, ServerOptions, ServerParts};
use hearth_store::event::{SandboxCreating, SandboxEnded, SandboxRunning};
use hearth_store::{
    DatabaseUrl, EventPayload, Lease, NewSandbox, NodeCapacity, NodeSpec, SandboxState, Store,
    SystemClock, Transition,
};
use serde_json::Value;

fn options(home: &HearthHome) -> ServerOptions {
    let mut options = ServerOptions::new(home.clone());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.lease_ttl = Duration::from_secs(1);
    options
}

async fn start(home: &HearthHome) -> Result<Server, ServerError> {
    Server::start(options(home), ServerParts::standard().unwrap()).await
}

async fn node(store: &Store, id: &str, home: &HearthHome) -> Lease {
    let spec = NodeSpec {
        id: id.into(),
        url: "http://127.0.0.1:1".into(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .into(),
        home: home.root().display().to_string(),
        capacity: NodeCapacity::default(),
    };
    let (record, _) = store
        .register_node(&spec, Duration::from_secs(600))
        .await
        .unwrap();
    record.lease().unwrap()
}

async fn sandbox(store: &Store, lease: &Lease, id: &str, state: SandboxState) {
    let new = NewSandbox {
        id: id.into(),
        image: "default".into(),
        vcpus: 1,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        timeout_ms: None,
        labels: BTreeMap::new(),
        created_ms: 1,
    };
    store
        .insert_sandbox(&new, lease, SandboxCreating::default())
        .await
        .unwrap();
    let payload = match state {
        SandboxState::Creating => return,
        SandboxState::Running => EventPayload::SandboxRunning(SandboxRunning {
            accelerator: "tcg".into(),
            accelerator_reason: String::new(),
            boot_ms: 1,
            guest: serde_json::from_value(serde_json::json!({
                "protocol_version": 1, "agent_version": "", "kernel_release": "",
                "vcpus": 1, "mem_total_bytes": 1, "workload_memory_limit_bytes": 1,
                "disk_total_bytes": 1, "boot_ms": 1
            }))
            .unwrap(),
        }),
        SandboxState::Stopped => EventPayload::SandboxStopped(SandboxEnded::default()),
        other => panic!("not used: {other}"),
    };
    let change = Transition {
        state: Some(state),
        ..Transition::default()
    };
    store
        .transition(id, lease, &change, payload)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_sandboxes_are_recorded_lost_and_one_home_holds_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
    std::fs::create_dir_all(home.root()).unwrap();
    std::fs::write(home.root().join("node-id"), "nd-old\n").unwrap();
    {
        // What a server killed with SIGKILL leaves (this home's node,
        // nd-old): one running sandbox, one still booting, one that had
        // ended. And a node elsewhere that stopped heartbeating, with a
        // running sandbox.
        let url = DatabaseUrl::Sqlite(home.root().join("hearth.db"));
        let store = Store::open(&url, SystemClock::shared()).await.unwrap();
        let old = node(&store, "nd-old", &home).await;
        sandbox(&store, &old, "sb-running", SandboxState::Running).await;
        sandbox(&store, &old, "sb-booting", SandboxState::Creating).await;
        sandbox(&store, &old, "sb-ended", SandboxState::Stopped).await;
        let other = HearthHome::new(dir.path().join("other"), dir.path().join("images"));
        let silent = node(&store, "nd-silent", &other).await;
        sandbox(&store, &silent, "sb-elsewhere", SandboxState::Running).await;
        store.close().await;
    }

    let server = start(&home).await.unwrap();
    assert_eq!(server.node().id(), "nd-old");
    assert_eq!(server.node().lease().epoch, 2);
    let second = start(&home).await;
    assert!(
        matches!(second, Err(ServerError::HomeInUse { .. })),
        "a second server started"
    );

    let token = std::fs::read_to_string(home.root().join("token")).unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http
            .get(format!("http://{}{path}", server.addr()))
            .bearer_auth(token.trim());
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    // This node's previous run: lost as soon as the server is up.
    for id in ["sb-running", "sb-booting"] {
        let record = get(format!("/v1/sandboxes/{id}")).await;
        assert_eq!(record["state"], "lost", "{record}");
        assert_eq!(record["end_reason"], "lost", "{record}");
        let message = record["end_message"].as_str().unwrap();
        assert!(message.contains("node nd-old (lease epoch 1)"), "{message}");
        let events = get(format!("/v1/sandboxes/{id}/events")).await;
        let last = events["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "sandbox.lost");
        assert_eq!(last["data"]["node_id"], "nd-old");
        assert_eq!(last["node_id"], "nd-old");
    }
    let ended = get("/v1/sandboxes/sb-ended".into()).await;
    assert_eq!(
        ended["state"], "stopped",
        "an ended sandbox is left as it was"
    );
    // The silent node: lost once this node has watched it silent for a
    // lease TTL (1 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let record = get("/v1/sandboxes/sb-elsewhere".into()).await;
        if record["state"] == "lost" || Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["state"], "lost", "{record}");
    let message = record["end_message"].as_str().unwrap();
    assert!(message.contains("node nd-silent"), "{message}");
    let events = get("/v1/events?limit=1000".into()).await;
    let expired: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "node.expired")
        .collect();
    assert_eq!(expired.len(), 1, "{events}");
    assert_eq!(expired[0]["data"]["expired_node"], "nd-silent");
    assert_eq!(expired[0]["node_id"], "nd-old");

    let metrics = http
        .get(format!("http://{}/metrics", server.addr()))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hearth_sandboxes{state=\"lost\"} 3"),
        "{metrics}"
    );

    server.shutdown().await.unwrap();
    assert!(!home.root().join("server.json").exists());
    // The home is free again, and the node took a new lease.
    let again = start(&home).await.unwrap();
    assert_eq!(again.node().lease().epoch, 3);
    again.shutdown().await.unwrap();
}
