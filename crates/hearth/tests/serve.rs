//! End-to-end tests of `hearth serve`: the real binary, real HTTP, real
//! VMs, a real SQLite store.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

mod common;
use common::live_vmms;
use common::served::{parse_sse, temp_home, wait_no_vmms, Served};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn bad_requests_get_clear_json_errors_without_a_vm() {
    let home = temp_home();
    let mut server = Served::start(home.path(), &["--memory-budget", "100M"]);

    // Health needs no token; everything else does.
    let health: Value = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let response = server
        .http
        .get(format!("{}/v1/sandboxes", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = server
        .http
        .get(format!("{}/v1/sandboxes", server.url))
        .bearer_auth("hth_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Unknown sandbox.
    let (status, body) = server.get("/v1/sandboxes/sb-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sb-000000000000"));

    // Field-level 400s.
    for (request, field, needle) in [
        (json!({"memory": "12XB"}), "memory", "12XB"),
        (json!({"disk": "lots"}), "disk", "lots"),
        (json!({"timeout": -5}), "timeout", "positive"),
        (json!({"timeout": "soon"}), "timeout", "soon"),
        (json!({"vcpus": 0}), "vcpus", "vcpus"),
        (json!({"vcpus": -1}), "vcpus", "vcpus"),
        (json!({"memory": "16M"}), "memory", "memory"),
        (json!({"image": "no-such-image"}), "image", "no-such-image"),
        (json!({"labels": {"bad key": "x"}}), "labels", "bad key"),
        (json!({"memroy": "1G"}), "memroy", "memroy"),
    ] {
        let (status, body) = server.post("/v1/sandboxes", request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request} -> {body}");
        assert_eq!(
            body["error"]["code"], "invalid_argument",
            "{request} -> {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{request} -> {message}");
        if field != "memroy" {
            assert_eq!(body["error"]["field"], field, "{request} -> {body}");
        }
    }
    // Exec and file inputs are checked before the sandbox is looked up.
    let (status, body) = server
        .post("/v1/sandboxes/sb-x/exec", json!({"argv": []}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "argv");
    let (status, body) = server.get("/v1/sandboxes/sb-x/files?path=/a%00b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("NUL"),
        "{body}"
    );
    let (status, _) = server.get("/v1/sandboxes/sb-x/files?path=relative").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = server
        .post("/v1/sandboxes/sb-x/files/mkdir", json!({"path": ""}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server.get("/v1/sandboxes?state=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = server
        .post(
            "/v1/sandboxes/sb-x/exec?wait=true",
            json!({"argv": ["cat"], "stdin_open": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "stdin_open");
    // A refusal sent before the body was read closes the connection, and
    // says so, so that the client does not reuse it.
    let refused = server
        .req(
            reqwest::Method::PUT,
            "/v1/sandboxes/sb-x/files?path=relative.txt",
        )
        .body(vec![7u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["connection"], "close");
    assert_eq!(server.get("/v1/sandboxes").await.0, StatusCode::OK);

    // Bodies past the limit.
    let big = "x".repeat(9 << 20);
    let (status, body) = server
        .post(
            "/v1/sandboxes/sb-x/exec",
            json!({"argv": ["cat"], "stdin": big}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");

    // Admission: a 100 MiB budget cannot hold any sandbox.
    let (status, body) = server
        .post("/v1/sandboxes", json!({"memory": "256M"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "capacity_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory"),
        "{body}"
    );
    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("hearth_admission_refusals_total{limit=\"memory\"} 1"),
        "{metrics}"
    );
    // The refusal is in the server-wide event log.
    let (status, log) = server.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    // The server's own node joined first.
    assert_eq!(log["events"][0]["kind"], "node.joined", "{log}");
    let refusal = &log["events"][1];
    assert_eq!(refusal["kind"], "admission.refused", "{log}");
    assert_eq!(refusal["node_id"], log["events"][0]["node_id"], "{log}");
    assert_eq!(refusal["data"]["limit"], "memory", "{log}");
    assert_eq!(refusal["sandbox_id"], Value::Null, "{log}");

    // Unknown routes answer JSON too.
    let (status, body) = server.get("/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    // The OpenAPI document describes every route.
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for expected in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/files",
        "/v1/sandboxes/{id}/events",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }

    // Rotating the token locks out the old one at once.
    let old = server.token();
    let rotated = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["token", "rotate"])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    assert!(rotated.status.success());
    let new = String::from_utf8(rotated.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(old, new);
    let refused = server
        .http
        .get(format!("{}/v1/sandboxes", server.url))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/v1/sandboxes").await.0, StatusCode::OK);

    // A second server on the same home is refused with the reason.
    let second = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another hearth server"));

    assert!(server.signal("TERM").await.success());
    assert!(!home.path().join("server.json").exists());
}

#[tokio::test]
async fn sandboxes_run_execs_files_and_streams_through_the_api() {
    let home = temp_home();
    let mut server = Served::start(
        home.path(),
        &["--max-sandboxes", "3", "--detach-grace", "1s"],
    );
    let ids = futures_util::future::join_all((0..3).map(|i| {
        server.create(json!({"memory": "256M", "labels": {"group": "e2e", "n": i.to_string()}, "env": {"WHO": format!("sb{i}")}}))
    }))
    .await;

    // A fourth is refused by admission control, naming the limit.
    let (status, body) = server
        .post("/v1/sandboxes", json!({"memory": "256M"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-sandboxes 3"),
        "{body}"
    );

    // Ten concurrent execs across the three sandboxes, each with its own output.
    let runs = futures_util::future::join_all((0..10).map(|i| {
        let id = ids[i % 3].clone();
        let server = &server;
        async move {
            let script = format!("import os; print({i} * 3, os.environ['WHO'])");
            (i, server.run(&id, &["python3", "-c", &script]).await)
        }
    }))
    .await;
    for (i, result) in runs {
        assert_eq!(result["exit"]["code"], 0, "{result}");
        assert_eq!(
            result["stdout"],
            format!("{} sb{}\n", i * 3, i % 3),
            "{result}"
        );
    }

    let id = &ids[0];
    // Failure codes, stderr, stdin, cwd, base64.
    let result = server.run(id, &["sh", "-c", "echo oops >&2; exit 7"]).await;
    assert_eq!(result["exit"]["code"], 7);
    assert_eq!(result["stderr"], "oops\n");
    let (_, result) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["cat"], "stdin": "fed in"}),
        )
        .await;
    assert_eq!(result["stdout"], "fed in");
    let (_, result) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true&encoding=base64"),
            json!({"argv": ["printf", "\\377\\000"], "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(result["stdout"], "/wA=", "{result}");
    let (status, result) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["no-such-program"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["exit"]["code"], 127, "{result}");

    // Streamed exec: started, output, exit, with increasing ids.
    let response = server
        .req(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sh", "-c", "echo one; echo two >&2; exit 3"]}))
        .send()
        .await
        .unwrap();
    let streamed_exec = response.headers()["x-hearth-exec-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().await.unwrap();
    let events = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "{text}");
    assert_eq!(names.last(), Some(&"exit"), "{text}");
    assert_eq!(events.last().unwrap().2["code"], 3);
    assert_eq!(events[0].2["exec_id"], streamed_exec.as_str());
    // The exit reached the client only after the exec was recorded as ended.
    let (_, finished) = server
        .get(&format!("/v1/sandboxes/{id}/execs/{streamed_exec}"))
        .await;
    assert_eq!(finished["state"], "exited", "{finished}");
    assert_eq!(finished["exit"]["code"], 3, "{finished}");
    let ids_seen: Vec<u64> = events
        .iter()
        .map(|(id, _, _)| id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(ids_seen.windows(2).all(|w| w[0] < w[1]), "{ids_seen:?}");

    // A background exec's output can be replayed, and resumed after any id
    // with nothing missed and nothing repeated.
    let (status, exec) = server
        .post(&format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"], "background": true}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{exec}");
    let exec_id = exec["exec_id"].as_str().unwrap().to_string();
    let path = format!("/v1/sandboxes/{id}/execs/{exec_id}/events");
    let full = parse_sse(
        &server
            .req(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let stdout: String = full
        .iter()
        .filter(|(_, e, _)| e == "stdout")
        .map(|(_, _, d)| d["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "1\n2\n3\n4\n5\n");
    let cut = full[2].0.clone().unwrap();
    let rest = parse_sse(
        &server
            .req(reqwest::Method::GET, &path)
            .header("Last-Event-ID", &cut)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(rest, full[3..], "resuming after {cut}");

    // Interactive stdin on a background exec, then kill.
    let (_, cat) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"argv": ["cat"], "background": true, "stdin_open": true}),
        )
        .await;
    let cat_id = cat["exec_id"].as_str().unwrap();
    let wrote = server
        .req(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/execs/{cat_id}/stdin"),
        )
        .body("hello cat\n")
        .send()
        .await
        .unwrap();
    assert_eq!(wrote.status(), StatusCode::NO_CONTENT);
    // Follow its output until the echo arrives, then kill it; the same
    // stream reports the kill.
    let mut follow = server
        .req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/execs/{cat_id}/events"),
        )
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut text = String::new();
    while !text.contains("hello cat") {
        let chunk = follow.next().await.expect("stream open").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let (status, _) = server
        .post(
            &format!("/v1/sandboxes/{id}/execs/{cat_id}/kill"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    while let Some(chunk) = follow.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = parse_sse(&text);
    assert!(
        events
            .iter()
            .any(|(_, e, d)| e == "stdout" && d["data"] == "hello cat\n"),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap().2["reason"], "killed", "{events:?}");

    // A client that goes away mid-stream: the exec is killed after the
    // detach grace, not left running.
    let mut response = server
        .req(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"argv": ["sleep", "600"]}))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = response.next().await.unwrap().unwrap();
    let started = parse_sse(std::str::from_utf8(&first).unwrap());
    let sleeper = started[0].0.clone();
    assert!(sleeper.is_some());
    drop(response);
    let start = Instant::now();
    let abandoned = loop {
        let (_, list) = server.get(&format!("/v1/sandboxes/{id}/execs")).await;
        let sleep_exec = list["execs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["argv"][0] == "sleep")
            .cloned()
            .unwrap();
        if sleep_exec["state"] != "running" {
            break sleep_exec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the abandoned exec still runs: {sleep_exec}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(abandoned["exit"]["reason"], "killed", "{abandoned}");
    assert!(
        abandoned["exit"]["message"]
            .as_str()
            .unwrap()
            .contains("no client was attached"),
        "{abandoned}"
    );

    // Files: upload, download, list, stat, mkdir, remove.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let put = server
        .req(
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{id}/files?path=/root/data/blob.bin"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let got = server
        .req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/files?path=/root/data/blob.bin"),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
    let (_, list) = server
        .get(&format!("/v1/sandboxes/{id}/files/list?path=/root/data"))
        .await;
    assert_eq!(list["entries"][0]["name"], "blob.bin");
    assert_eq!(list["entries"][0]["size"], data.len());
    let (status, _) = server
        .post(
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            json!({"path": "/root/a/b"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .get(&format!("/v1/sandboxes/{id}/files?path=/root/a"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = server
        .get(&format!("/v1/sandboxes/{id}/files?path=/root/missing"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}/files?path=/root/a&recursive=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Timeout extension and listing by label and state.
    let (status, extended) = server
        .post(
            &format!("/v1/sandboxes/{id}/timeout"),
            json!({"timeout": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{extended}");
    assert_eq!(extended["limits"]["timeout_ms"], 3_600_000);
    let (_, listed) = server
        .get("/v1/sandboxes?label=group=e2e&label=n=1&state=running")
        .await;
    let listed = listed["sandboxes"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], ids[1].as_str());

    // Destroy one; its history is complete and its live stream, resumed
    // part-way, gives exactly the rest and ends.
    let (status, ended) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["state"], "stopped");
    assert_eq!(ended["end_reason"], "destroyed");
    let (status, body) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["true"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, history) = server.get(&format!("/v1/sandboxes/{id}/events")).await;
    let history = history["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "sandbox.creating",
        "sandbox.running",
        "exec.started",
        "exec.finished",
        "file.written",
        "file.read",
        "dir.created",
        "file.removed",
        "sandbox.timeout_set",
        "sandbox.stopping",
        "sandbox.stopped",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"sandbox.stopped"));
    let cut = history[3]["seq"].as_i64().unwrap();
    let streamed = server
        .req(reqwest::Method::GET, &format!("/v1/sandboxes/{id}/events"))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", cut.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let streamed: Vec<Value> = parse_sse(&streamed)
        .into_iter()
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(streamed, history[4..], "stream resumed after {cut}");

    // SIGTERM destroys the rest and leaves nothing running.
    assert!(server.signal("TERM").await.success());
    wait_no_vmms(home.path()).await;
    let server = Served::start(home.path(), &[]);
    for other in &ids[1..] {
        let (_, record) = server.get(&format!("/v1/sandboxes/{other}")).await;
        assert_eq!(record["state"], "stopped", "{record}");
        assert_eq!(record["end_reason"], "host_shutdown", "{record}");
    }
}

#[tokio::test]
async fn after_a_kill_9_the_next_server_reaps_the_vms_and_marks_them_lost() {
    let home = temp_home();
    let mut server = Served::start(home.path(), &[]);
    let id = server.create(json!({"memory": "256M"})).await;
    assert_eq!(server.run(&id, &["echo", "hi"]).await["stdout"], "hi\n");
    assert_eq!(live_vmms(home.path()).len(), 1);
    let status = server.signal("KILL").await;
    assert!(!status.success());
    drop(server);

    let server = Served::start(home.path(), &[]);
    wait_no_vmms(home.path()).await;
    let (_, record) = server.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(record["state"], "lost", "{record}");
    assert!(
        record["end_message"]
            .as_str()
            .unwrap()
            .contains("stopped without shutting it down"),
        "{record}"
    );
    let (_, events) = server.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert_eq!(
        events["events"].as_array().unwrap().last().unwrap()["kind"],
        "sandbox.lost"
    );
    let (status, _) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({"argv": ["true"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        std::fs::read_dir(home.path().join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // New sandboxes work, here driven by the CLI's client commands.
    let cli = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_HOME", home.path())
            .env_remove("HEARTH_URL")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let created = cli(
        &[
            "sandbox", "create", "--memory", "256M", "--label", "via=cli",
        ],
        b"",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let fresh = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(fresh.starts_with("sb-"), "{fresh}");
    let ran = cli(
        &[
            "sandbox",
            "exec",
            &fresh,
            "--",
            "sh",
            "-c",
            "cat; echo err >&2; exit 4",
        ],
        b"from stdin\n",
    );
    assert_eq!(ran.status.code(), Some(4));
    assert_eq!(ran.stdout, b"from stdin\n");
    assert_eq!(ran.stderr, b"err\n");
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert!(cli(
        &["sandbox", "cp", "-", &format!("{fresh}:/root/in.bin")],
        &binary
    )
    .status
    .success());
    let back = cli(
        &["sandbox", "cp", &format!("{fresh}:/root/in.bin"), "-"],
        b"",
    );
    assert!(back.status.success());
    assert_eq!(back.stdout, binary);
    let listed =
        String::from_utf8(cli(&["sandbox", "ls", "--label", "via=cli"], b"").stdout).unwrap();
    assert!(
        listed.contains(&fresh) && listed.contains("running"),
        "{listed}"
    );
    let listed_all = String::from_utf8(cli(&["sandbox", "ls", "--all"], b"").stdout).unwrap();
    assert!(
        listed_all.contains(&id) && listed_all.contains("lost"),
        "{listed_all}"
    );
    let logs = String::from_utf8(cli(&["sandbox", "logs", &fresh], b"").stdout).unwrap();
    assert!(
        logs.contains("exec.finished") && logs.contains("file.written"),
        "{logs}"
    );
    let removed = cli(&["sandbox", "rm", &fresh], b"");
    assert_eq!(
        String::from_utf8(removed.stdout).unwrap().trim(),
        format!("{fresh}: stopped")
    );
    let followed =
        String::from_utf8(cli(&["sandbox", "logs", "--follow", &fresh], b"").stdout).unwrap();
    assert!(
        followed.trim_end().ends_with("destroyed on request"),
        "{followed}"
    );
    let missing = cli(&["sandbox", "exec", "sb-000000000000", "--", "true"], b"");
    assert_eq!(missing.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no sandbox"),
        "{missing:?}"
    );
    drop(server);
    wait_no_vmms(home.path()).await;
}

/// A span as received: name, resource `service.name`, trace id.
type ReceivedSpan = (String, String, Vec<u8>);

/// A minimal OTLP/HTTP collector: decodes every trace export it receives
/// and keeps what [`ReceivedSpan`] holds.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use prost::Message;

    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request =
                    ExportTraceServiceRequest::decode(body).expect("a valid OTLP protobuf export");
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            sink.lock()
                                .unwrap()
                                .push((span.name, service.clone(), span.trace_id));
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    let (endpoint, spans) = otlp_receiver().await;
    let home = temp_home();
    let mut server = Served::start_with_env(
        home.path(),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let id = server.create(json!({"memory": "256M"})).await;
    assert_eq!(
        server.run(&id, &["echo", "traced"]).await["stdout"],
        "traced\n"
    );
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Shutdown flushes the batch exporter.
    assert!(server.signal("TERM").await.success());
    let spans = spans.lock().unwrap().clone();
    let names: Vec<&str> = spans.iter().map(|(name, _, _)| name.as_str()).collect();
    for expected in ["request", "sandbox", "exec", "exec_output"] {
        assert!(names.contains(&expected), "no {expected} span in {names:?}");
    }
    assert!(
        spans.iter().all(|(_, service, _)| service == "hearth"),
        "{spans:?}"
    );
    // The boot is part of the create request's trace.
    let boot = spans.iter().find(|(name, _, _)| name == "sandbox").unwrap();
    assert!(
        spans
            .iter()
            .any(|(name, _, trace)| name == "request" && *trace == boot.2),
        "the sandbox span is in no request's trace: {spans:?}"
    );
}
