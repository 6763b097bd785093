//! One `hearth serve` process per test node, driven over real HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{images, live_vmms};

/// One `hearth serve` process on a temporary home.
pub struct Served {
    /// Where its token is (`--token-file`, else the home's).
    pub token_path: PathBuf,
    pub home: PathBuf,
    pub child: Option<Child>,
    pub url: String,
    pub http: reqwest::Client,
}

impl Served {
    pub fn start(home: &Path, args: &[&str]) -> Served {
        Self::start_with_env(home, args, &[])
    }

    pub fn start_with_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
        let token_path = args
            .iter()
            .position(|a| *a == "--token-file")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("HEARTH_HOME", home)
            .env("HEARTH_IMAGES", images())
            .env_remove("HEARTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server printed its address");
        let url = line
            .trim()
            .strip_prefix("hearth: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Served {
            token_path,
            home: home.to_path_buf(),
            child: Some(child),
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_path)
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token())
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.req(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn create(&self, body: Value) -> String {
        let (status, sandbox) = self.post("/v1/sandboxes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{sandbox}");
        assert_eq!(sandbox["state"], "running");
        sandbox["id"].as_str().unwrap().to_string()
    }

    pub async fn run(&self, id: &str, argv: &[&str]) -> Value {
        let (status, result) = self
            .post(
                &format!("/v1/sandboxes/{id}/exec?wait=true"),
                json!({"argv": argv}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        result
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub async fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the server did not exit after signal {signal}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn temp_home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hs")
        .tempdir_in("/tmp")
        .unwrap()
}

pub async fn wait_no_vmms(home: &Path) {
    let start = Instant::now();
    while !live_vmms(home).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "VMs left: {:?}",
            live_vmms(home)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server-sent events from a complete body: (id, event, data).
pub fn parse_sse(text: &str) -> Vec<(Option<String>, String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !data.is_empty() {
            events.push((id, event, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}
