//! Two nodes on one PostgreSQL database (fake VMs): any node answers any
//! request, passing those about a sandbox to the node that runs it, and
//! creates are placed where there is room.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;
use hearth_server::ids::SequentialIds;
use hearth_server::{Capacity, Server, ServerOptions, ServerParts};
use hearth_store::testing::TestDatabase;
use hearth_store::SystemClock;
use hearth_vm::fake::FakeDriver;

struct Node {
    server: Server,
    url: String,
}

async fn node(dir: &Path, db: &TestDatabase, id: &str, max_sandboxes: u32) -> Node {
    let home = HearthHome::new(dir.join(id), dir.join("images"));
    let mut options = ServerOptions::new(home);
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.database = db.url.clone();
    options.node_id = Some(id.into());
    options.token_file = Some(dir.join("token"));
    options.lease_ttl = Duration::from_secs(3);
    options.runs.poll = Duration::from_millis(100);
    options.runs.program_dir =
        hearth_server::runs::ProgramDir::PerRun(dir.join(id).join("vm").display().to_string());
    options.capacity = Capacity {
        max_sandboxes,
        memory_bytes: 8 << 30,
        vcpus: 16,
        ..Capacity::from_host()
    };
    let parts = ServerParts {
        driver: Arc::new(FakeDriver::locate().expect("cargo build -p hearth-guest")),
        clock: SystemClock::shared(),
        ids: Arc::new(SequentialIds::new(id)),
        store: None,
    };
    let server = Server::start(options, parts).await.unwrap();
    let url = format!("http://{}", server.addr());
    Node { server, url }
}

struct Client {
    http: reqwest::Client,
    token: String,
}

impl Client {
    fn request(&self, node: &Node, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", node.url))
            .bearer_auth(&self.token)
    }

    async fn call(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(node, method, path);
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

    async fn get(&self, node: &Node, path: &str) -> (StatusCode, Value) {
        self.call(node, reqwest::Method::GET, path, None).await
    }

    async fn post(&self, node: &Node, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(node, reqwest::Method::POST, path, Some(body))
            .await
    }
}

/// (event id, name, data) of a server-sent event stream, until it ends or
/// `stop` says so.
async fn read_sse(
    response: reqwest::Response,
    mut stop: impl FnMut(&str) -> bool,
) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let mut stream = sse_stream::SseByteStream::new(response.bytes_stream());
    while let Some(Ok(event)) = stream.next().await {
        let Some(data) = event.data.filter(|d| !d.is_empty()) else {
            continue;
        };
        let name = event.event.unwrap_or_default();
        let done = stop(&name);
        out.push((
            event.id.unwrap_or_default(),
            name,
            serde_json::from_str(&data).unwrap_or(Value::String(data)),
        ));
        if done {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_a_sandbox_on_another_and_creates_go_where_there_is_room() {
    let db = TestDatabase::postgres().await;
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    hearth_image::write_placeholder(&dir.path().join("images"), "default").unwrap();
    let a = node(dir.path(), &db, "nd-a", 1).await;
    let b = node(dir.path(), &db, "nd-b", 1).await;
    let client = Client {
        http: reqwest::Client::new(),
        token: std::fs::read_to_string(dir.path().join("token"))
            .unwrap()
            .trim()
            .to_string(),
    };

    // Both nodes see both nodes.
    let (status, nodes) = client.get(&b, "/v1/nodes").await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n["state"] == "alive"));
    assert_eq!(
        nodes.iter().find(|n| n["this_node"] == true).unwrap()["id"],
        "nd-b"
    );

    // Created on A through B.
    let (status, sandbox) = client
        .post(
            &b,
            "/v1/sandboxes",
            json!({"node": "nd-a", "timeout": "5m"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    assert_eq!(sandbox["node_id"], "nd-a");
    let id = sandbox["id"].as_str().unwrap().to_string();
    assert!(sandbox["expires_ms"].as_u64().is_some(), "{sandbox}");

    // Exec through B.
    let (status, out) = client
        .post(
            &b,
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["sh", "-c", "echo from-a"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "from-a\n");

    // A streamed exec through B, cut after two lines and resumed through
    // B from the last event id: nothing lost, nothing twice.
    let response = client
        .request(
            &b,
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
        )
        .json(&json!({"argv": ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let exec_id = response.headers()["x-hearth-exec-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut lines = 0;
    let first = read_sse(response, |name| {
        if name == "stdout" {
            lines += 1;
        }
        lines == 2
    })
    .await;
    let last_id = first.last().unwrap().0.clone();
    let rest = read_sse(
        client
            .request(
                &b,
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/execs/{exec_id}/events"),
            )
            .header("Last-Event-ID", &last_id)
            .send()
            .await
            .unwrap(),
        |name| name == "exit",
    )
    .await;
    let text: String = first
        .iter()
        .chain(rest.iter())
        .filter(|(_, name, _)| name == "stdout")
        .map(|(_, _, data)| data["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(rest.last().unwrap().1, "exit");

    // Files through B, both ways.
    let file = format!(
        "/v1/sandboxes/{id}/files?path={}/up.txt",
        dir.path().display()
    );
    let put = client
        .request(&b, reqwest::Method::PUT, &file)
        .body(vec![b'x'; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap()
    );
    let got = client
        .request(&b, reqwest::Method::GET, &file)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 300_000);

    // A is full: a create anywhere is placed on B; then nobody has room.
    let (status, second) = client.post(&a, "/v1/sandboxes", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["node_id"], "nd-b");
    let (status, refused) = client.post(&a, "/v1/sandboxes", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    // Each node's limit is named, whether the node was left out by its
    // last reported load or refused when asked.
    assert!(
        message.contains("nd-a: ") && message.contains("nd-b: ") && message.contains("sandboxes"),
        "{message}"
    );
    let (status, bad) = client
        .post(&a, "/v1/sandboxes", json!({"node": "nd-zz"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["field"], "node");

    // Listings on either node show every node's sandboxes.
    for n in [&a, &b] {
        let (_, list) = client.get(n, "/v1/sandboxes").await;
        let owners: Vec<&str> = list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(owners.len(), 2, "{list}");
        assert!(owners.contains(&"nd-a") && owners.contains(&"nd-b"));
    }
    let (_, only_b) = client.get(&a, "/v1/sandboxes?node=nd-b").await;
    assert_eq!(only_b["sandboxes"].as_array().unwrap().len(), 1);

    // The log, followed live through B, ends with the destroy done
    // through B.
    let follow = client
        .request(
            &b,
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/events"),
        )
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_sse(follow, |_| false));
    let (status, ended) = client
        .call(
            &b,
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["state"], "stopped");
    let events = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the event stream ends after the sandbox's end")
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"sandbox.creating"));
    assert_eq!(kinds.last(), Some(&"sandbox.stopped"));
    assert!(kinds.contains(&"file.written") && kinds.contains(&"exec.finished"));
    assert!(
        events.iter().all(|(_, _, e)| e["node_id"] == "nd-a"),
        "A recorded them all"
    );

    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

/// A node whose lease was taken over while it still runs (stalled, or cut
/// off from the database): its next heartbeat finds out, it kills the VMs
/// it ran under the lost lease, takes a new lease, and every write it
/// tries about them is refused by the fencing check and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_finds_its_lease_taken_kills_its_vms_and_cannot_write() {
    let db = TestDatabase::postgres().await;
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    hearth_image::write_placeholder(&dir.path().join("images"), "default").unwrap();
    let a = node(dir.path(), &db, "nd-a", 4).await;
    let client = Client {
        http: reqwest::Client::new(),
        token: std::fs::read_to_string(dir.path().join("token"))
            .unwrap()
            .trim()
            .to_string(),
    };
    let (status, sandbox) = client.post(&a, "/v1/sandboxes", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_string();
    // A renews its lease at least once while the sandbox runs (the lease
    // the sandbox was created under is then an older copy of it).
    let created_under = a.server.node().lease();
    let renewed = std::time::Instant::now() + Duration::from_secs(30);
    while a.server.node().lease().expires_ms == created_under.expires_ms {
        assert!(
            std::time::Instant::now() < renewed,
            "A never renewed its lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another node (here: the test, through the store) expires A's lease,
    // as it would after watching A silent for a TTL.
    let store = hearth_store::Store::open(&db.url, SystemClock::shared())
        .await
        .unwrap();
    let record = store.node("nd-a").await.unwrap().unwrap();
    store
        .expire_node(&record, "nd-watcher", Duration::from_secs(3))
        .await
        .unwrap()
        .expect("expired");

    // A finds out at its next heartbeat (TTL/3 = 1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.server.node().lease().epoch == record.epoch && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.server.node().lease().epoch, record.epoch + 1);
    let (_, sandbox) = loop {
        let got = client.get(&a, &format!("/v1/sandboxes/{id}")).await;
        if got.1["state"] == "lost" || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sandbox["state"], "lost", "{sandbox}");
    let message = sandbox["end_message"].as_str().unwrap();
    assert!(message.contains("lost its lease"), "{message}");
    // The VM is killed before the loss is recorded; its entry goes when
    // its monitor has seen it die.
    while a.server.manager().live(&id).is_some() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.server.manager().live(&id).is_none(), "its VM is gone");

    // A's attempt to record the VM's end under the lost lease was refused
    // and recorded.
    let events = store.events(None, 0, 1000).await.unwrap();
    let fenced: Vec<_> = events.iter().filter(|e| e.kind == "node.fenced").collect();
    let attempted: Vec<&str> = fenced
        .iter()
        .filter(|e| e.data["fenced_node"] == "nd-a")
        .map(|e| e.data["attempted"].as_str().unwrap())
        .collect();
    assert!(attempted.contains(&"heartbeat"), "{attempted:?}");
    assert!(attempted.contains(&"sandbox.stopped"), "{attempted:?}");
    let kinds: Vec<String> = store
        .events(Some(&id), 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("sandbox.lost"),
        "nothing follows the loss: {kinds:?}"
    );
    store.close().await;
    a.server.shutdown().await.unwrap();
}

/// A run is cancelled through a node that does not run it: the request is
/// passed to the node that does, which kills the VM at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_through_any_node() {
    let db = TestDatabase::postgres().await;
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    hearth_image::write_placeholder(&dir.path().join("images"), "default").unwrap();
    let a = node(dir.path(), &db, "nd-a", 4).await;
    let b = node(dir.path(), &db, "nd-b", 4).await;
    let client = Client {
        http: reqwest::Client::new(),
        token: std::fs::read_to_string(dir.path().join("token"))
            .unwrap()
            .trim()
            .to_string(),
    };
    use base64::Engine as _;
    let program =
        base64::engine::general_purpose::STANDARD.encode("import time\ntime.sleep(120)\n");
    let (status, run) = client
        .post(
            &a,
            "/v1/runs",
            json!({"program": {"files": {"main.py": program}, "entry": "main.py"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let (_, run) = client.get(&a, &format!("/v1/runs/{id}")).await;
        if run["state"] == "running" {
            break run["node_id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (other, owner_node) = if owner == "nd-a" { (&b, &a) } else { (&a, &b) };
    let (status, run) = client
        .post(
            other,
            &format!("/v1/runs/{id}/cancel"),
            json!({"by": "ops"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "cancelled");
    assert_eq!(run["cancelled_by"], "ops");
    // The owner killed the VM.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = client.get(owner_node, "/v1/sandboxes?state=running").await;
        if list["sandboxes"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}
