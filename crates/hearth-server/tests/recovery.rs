//! Starting a server over the store of one that died: its unfinished
//! sandboxes become `lost`, and one home holds one server.

use std::collections::BTreeMap;

use hearth_sandbox::HearthHome;
use hearth_server::{Server, ServerError, ServerOptions};
use hearth_store::{NewSandbox, SandboxState, Store, Transition};
use serde_json::{json, Value};

fn options(home: &HearthHome) -> ServerOptions {
    let mut options = ServerOptions::new(home.clone());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options
}

#[tokio::test]
async fn a_dead_servers_sandboxes_are_recorded_lost_and_one_home_holds_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
    std::fs::create_dir_all(home.root()).unwrap();
    {
        // What a server killed with SIGKILL leaves: one running sandbox,
        // one still booting, one that had ended.
        let store = Store::open(&home.root().join("hearth.db")).await.unwrap();
        for id in ["sb-running0000", "sb-booting0000", "sb-ended000000"] {
            let new = NewSandbox {
                id: id.into(),
                image: "default".into(),
                vcpus: 1,
                memory_bytes: 256 << 20,
                disk_bytes: 1 << 30,
                timeout_ms: None,
                labels: BTreeMap::new(),
                created_ms: 1,
                server_pid: 4_000_000,
            };
            store.insert_sandbox(&new, json!({})).await.unwrap();
        }
        let to = |state| Transition {
            state: Some(state),
            ..Transition::default()
        };
        store
            .transition(
                "sb-running0000",
                &to(SandboxState::Running),
                "sandbox.running",
                json!({}),
            )
            .await
            .unwrap();
        store
            .transition(
                "sb-ended000000",
                &to(SandboxState::Stopped),
                "sandbox.stopped",
                json!({}),
            )
            .await
            .unwrap();
        store.close().await;
    }

    let server = Server::start(options(&home)).await.unwrap();
    let second = Server::start(options(&home)).await;
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
    for id in ["sb-running0000", "sb-booting0000"] {
        let record = get(format!("/v1/sandboxes/{id}")).await;
        assert_eq!(record["state"], "lost", "{record}");
        assert_eq!(record["end_reason"], "lost", "{record}");
        let message = record["end_message"].as_str().unwrap();
        assert!(message.contains("pid 4000000"), "{message}");
        let events = get(format!("/v1/sandboxes/{id}/events")).await;
        assert_eq!(
            events["events"].as_array().unwrap().last().unwrap()["kind"],
            "sandbox.lost"
        );
    }
    let ended = get("/v1/sandboxes/sb-ended000000".into()).await;
    assert_eq!(
        ended["state"], "stopped",
        "an ended sandbox is left as it was"
    );
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
        metrics.contains("hearth_sandboxes{state=\"lost\"} 2"),
        "{metrics}"
    );

    server.shutdown().await.unwrap();
    assert!(!home.root().join("server.json").exists());
    // The home is free again.
    Server::start(options(&home))
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}
