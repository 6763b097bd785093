//! PostgreSQL stopped under a running server (fake VMs, a PostgreSQL of the
//! test's own): requests that need the store get a clear 503, the
//! sandboxes keep running, nothing is lost or corrupted, and the server
//! recovers by itself when the database is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;
use hearth_server::ids::SequentialIds;
use hearth_server::{Server, ServerOptions, ServerParts};
use hearth_store::testing::PrivatePostgres;
use hearth_store::SystemClock;
use hearth_vm::fake::FakeDriver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503s_and_the_server_recovers_by_itself() {
    let pg = PrivatePostgres::start();
    let dir = tempfile::Builder::new()
        .prefix("hh")
        .tempdir_in("/tmp")
        .unwrap();
    let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
    hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
    let mut options = ServerOptions::new(home.clone());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.database = pg.url();
    options.lease_ttl = Duration::from_secs(3);
    let driver = FakeDriver::locate().expect("cargo build -p hearth-guest");
    let parts = ServerParts {
        driver: Arc::new(driver.clone()),
        clock: SystemClock::shared(),
        ids: Arc::new(SequentialIds::new("o")),
        store: None,
    };
    let server = Server::start(options, parts).await.unwrap();
    let url = format!("http://{}", server.addr());
    let token = std::fs::read_to_string(home.root().join("token")).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(token.trim());
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
            )
        }
    };
    let (status, first) = call(reqwest::Method::POST, "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");

    pg.stop();
    // What needs the store answers 503, saying why.
    let (status, body) = call(reqwest::Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the database is unavailable"),
        "{body}"
    );
    let (status, body) = call(reqwest::Method::POST, "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The running sandbox keeps working; liveness answers.
    let (status, out) = call(
        reqwest::Method::POST,
        "/v1/sandboxes/sb-o-1/exec?wait=true",
        Some(json!({"argv": ["echo", "still here"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "still here\n");
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // Back: the server recovers without a restart.
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let (status, list) = call(reqwest::Method::GET, "/v1/sandboxes", None).await;
        if status == StatusCode::OK || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sandboxes = list["sandboxes"]
        .as_array()
        .expect("the list answers again");
    assert_eq!(sandboxes.len(), 1, "{list}");
    assert_eq!(
        sandboxes[0]["state"], "running",
        "not recorded lost by mistake"
    );
    let (status, second) = call(reqwest::Method::POST, "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    // Still the same lease: nobody fenced this node.
    let (_, nodes) = call(reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(nodes["nodes"][0]["epoch"], 1, "{nodes}");
    assert_eq!(nodes["nodes"][0]["state"], "alive", "{nodes}");
    // The log is whole: the exec that ran during the outage is recorded,
    // in order, once the store is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let kinds = loop {
        let (_, events) = call(reqwest::Method::GET, "/v1/sandboxes/sb-o-1/events", None).await;
        let kinds: Vec<String> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        if kinds.len() >= 4 || Instant::now() > deadline {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        kinds,
        [
            "sandbox.creating",
            "sandbox.running",
            "exec.started",
            "exec.finished"
        ]
    );
    server.shutdown().await.unwrap();
    assert!(driver.running().is_empty());
    drop(pg);
}
