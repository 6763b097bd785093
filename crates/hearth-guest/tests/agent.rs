//! Integration tests: the agent in host mode (no cgroups, no PID 1) served
//! over a real HTTP/2 connection on a socketpair.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_guest::body::{self, BodySender, ResponseBody};
use hearth_guest::{Agent, AgentOptions};
use hearth_proto::routes;
use hearth_proto::{
    ErrorBody, ErrorCode, ExecRequest, ExecStarted, ExitReason, ExitReport, FileStat, FileType,
    Frame, FrameDecoder, FrameKind, GuestInfo, Hello, Usage, WriteResult, PROTOCOL_VERSION,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

struct Client {
    sender: SendRequest<ResponseBody>,
    _agent: Agent,
    /// The agent's side of the connection; ends when the connection closes.
    serving: Option<JoinHandle<Result<(), hyper::Error>>>,
}

async fn connect() -> Client {
    Client::over(Agent::start(AgentOptions::default()).expect("agent starts")).await
}

impl Client {
    /// A fresh HTTP/2 connection to `agent`.
    async fn over(agent: Agent) -> Client {
        let (server_end, client_end) = UnixStream::pair().unwrap();
        let serving = agent.clone();
        let serving = tokio::spawn(async move { serving.serve_connection(server_end).await });
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_end))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        Client {
            sender,
            _agent: agent,
            serving: Some(serving),
        }
    }

    /// Wait (bounded) until the agent has finished serving this connection.
    async fn served(&mut self) {
        let serving = self.serving.take().expect("connection served once");
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the agent closes the connection")
            .expect("serving task")
            .expect("the connection ends cleanly");
    }

    /// Hang up and wait (bounded) until the agent has noticed.
    async fn close(self) {
        let Client {
            sender, serving, ..
        } = self;
        drop(sender);
        let serving = serving.expect("connection served once");
        let _ = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the agent notices the hang-up");
    }
}

fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn empty_body() -> ResponseBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

impl Client {
    async fn send(&mut self, method: Method, uri: &str, body: ResponseBody) -> Response<Incoming> {
        self.sender.ready().await.expect("connection alive");
        let request = Request::builder()
            .method(method)
            .uri(format!("http://guest{uri}"))
            .body(body)
            .unwrap();
        self.sender.send_request(request).await.expect("response")
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: Method,
        uri: &str,
        body: ResponseBody,
    ) -> (StatusCode, T) {
        let response = self.send(method, uri, body).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    async fn error(
        &mut self,
        method: Method,
        uri: &str,
        body: ResponseBody,
    ) -> (StatusCode, ErrorBody) {
        let response = self.send(method, uri, body).await;
        let status = response.status();
        let header = response
            .headers()
            .get(routes::ERROR_CODE_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let error: ErrorBody = serde_json::from_slice(&bytes).expect("error body");
        let expected = serde_json::to_value(error.code).unwrap();
        assert_eq!(header.as_deref(), expected.as_str(), "error code header");
        (status, error)
    }

    /// Start an exec whose request body is streamed through the returned
    /// sender (the Request frame is already queued).
    async fn exec_streaming(&mut self, request: &ExecRequest) -> (BodySender, FrameReader) {
        let (tx, request_body) = body::channel(16);
        tx.send(Ok(Frame::json(FrameKind::Request, request).encode()))
            .await
            .unwrap();
        let response = self.send(Method::POST, routes::EXEC, request_body).await;
        assert_eq!(response.status(), StatusCode::OK);
        (tx, FrameReader::new(response.into_body()))
    }

    /// Run an exec to the end with `stdin` (if any) sent at once.
    async fn exec(&mut self, request: ExecRequest, stdin: Option<&[u8]>) -> Outcome {
        let mut wire = Frame::json(FrameKind::Request, &request).encode().to_vec();
        if let Some(stdin) = stdin {
            for chunk in stdin.chunks(100_000) {
                wire.extend_from_slice(&Frame::new(FrameKind::Stdin, chunk.to_vec()).encode());
            }
            wire.extend_from_slice(&Frame::new(FrameKind::StdinEof, Bytes::new()).encode());
        }
        self.exec_raw(wire).await
    }

    async fn exec_raw(&mut self, wire: Vec<u8>) -> Outcome {
        let response = self.send(Method::POST, routes::EXEC, full_body(wire)).await;
        assert_eq!(response.status(), StatusCode::OK);
        FrameReader::new(response.into_body()).outcome().await
    }
}

struct FrameReader {
    body: Incoming,
    decoder: FrameDecoder,
}

#[derive(Debug, Default)]
struct Outcome {
    started: Option<ExecStarted>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<ExitReport>,
    error: Option<ErrorBody>,
}

impl FrameReader {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            decoder: FrameDecoder::default(),
        }
    }

    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("valid frames from guest") {
                return Some(frame);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => panic!("exec body failed: {e}"),
                None => {
                    self.decoder
                        .finish()
                        .expect("body ends on a frame boundary");
                    return None;
                }
            }
        }
    }

    async fn outcome(mut self) -> Outcome {
        let mut outcome = Outcome::default();
        while let Some(frame) = self.next().await {
            assert!(
                outcome.exit.is_none() && outcome.error.is_none(),
                "frame after the last one"
            );
            match frame.kind {
                FrameKind::Started => outcome.started = Some(frame.parse_json().unwrap()),
                FrameKind::Stdout => outcome.stdout.extend_from_slice(&frame.payload),
                FrameKind::Stderr => outcome.stderr.extend_from_slice(&frame.payload),
                FrameKind::Exit => outcome.exit = Some(frame.parse_json().unwrap()),
                FrameKind::Error => outcome.error = Some(frame.parse_json().unwrap()),
                other => panic!("unexpected {other:?} frame from guest"),
            }
        }
        outcome
    }
}

impl Outcome {
    fn exit(&self) -> &ExitReport {
        self.exit
            .as_ref()
            .unwrap_or_else(|| panic!("no Exit frame: {self:?}"))
    }
}

fn request(id: &str, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        id: id.to_owned(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        cwd: Some("/".into()),
        timeout_ms: None,
        stdin: false,
    }
}

fn sh(id: &str, script: &str) -> ExecRequest {
    request(id, &["sh", "-c", script])
}

/// Whether `pid` is gone (or a zombie nobody reaped: dead all the same).
fn process_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn query(path: &str) -> String {
    serde_urlencoded::to_string([("path", path)]).unwrap()
}

#[tokio::test]
async fn hello_describes_the_guest_and_checks_the_version() {
    let mut client = connect().await;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        unix_time_ms: 1_700_000_000_000,
        hostname: "sandbox-1".into(),
        pids_max: 100,
        agent_reserve_mib: 0,
        privileged: false,
    };
    let body = full_body(serde_json::to_vec(&hello).unwrap());
    let (status, info): (_, GuestInfo) = client.json(Method::POST, routes::HELLO, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert!(info.mem_total_bytes > 0 && info.vcpus > 0);
    // Idempotent.
    let body = full_body(serde_json::to_vec(&hello).unwrap());
    let (status, _): (_, GuestInfo) = client.json(Method::POST, routes::HELLO, body).await;
    assert_eq!(status, StatusCode::OK);

    let bad = Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        ..hello
    };
    let body = full_body(serde_json::to_vec(&bad).unwrap());
    let (status, error) = client.error(Method::POST, routes::HELLO, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error.code, ErrorCode::VersionMismatch);

    let (status, error) = client
        .error(Method::POST, routes::HELLO, full_body("{not json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error.code, ErrorCode::InvalidArgument);

    let (status, usage): (_, Usage) = client.json(Method::GET, routes::USAGE, empty_body()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(usage.mem_total_bytes > 0);
}

#[tokio::test]
async fn exit_codes_and_missing_commands() {
    let mut client = connect().await;
    let outcome = client.exec(sh("e1", "exit 7"), None).await;
    assert!(outcome.started.is_some());
    assert_eq!(outcome.exit().reason, ExitReason::Exited);
    assert_eq!(outcome.exit().code, 7);

    let outcome = client
        .exec(request("e2", &["definitely-not-a-command-hearth"]), None)
        .await;
    let exit = outcome.exit();
    assert_eq!(exit.reason, ExitReason::SpawnFailed);
    assert_eq!(exit.code, 127);
    assert!(exit
        .message
        .as_deref()
        .unwrap()
        .contains("command not found: definitely-not-a-command-hearth"));

    let mut missing_cwd = request("e3", &["true"]);
    missing_cwd.cwd = Some("/definitely/not/here".into());
    let outcome = client.exec(missing_cwd, None).await;
    assert_eq!(outcome.exit().reason, ExitReason::SpawnFailed);
    assert_eq!(outcome.exit().code, 126);
    assert!(outcome
        .exit()
        .message
        .as_deref()
        .unwrap()
        .contains("/definitely/not/here"));

    let outcome = client.exec(sh("e4", "kill -SEGV $$"), None).await;
    assert_eq!(outcome.exit().reason, ExitReason::Signaled);
    assert_eq!(outcome.exit().code, 128 + 11);
}

#[tokio::test]
async fn stdin_round_trip_is_binary_safe() {
    let mut client = connect().await;
    let input: Vec<u8> = (0..=255u8).cycle().take(256 * 1000).collect();
    let mut cat = request("cat", &["cat"]);
    cat.stdin = true;
    let outcome = client.exec(cat, Some(&input)).await;
    assert_eq!(outcome.exit().code, 0);
    assert_eq!(outcome.stdout, input);
    assert_eq!(outcome.exit().stdout_bytes, input.len() as u64);

    // All 256 byte values produced by the process itself.
    let script = "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done";
    let outcome = client.exec(sh("bytes", script), None).await;
    assert_eq!(
        outcome.exit().code,
        0,
        "{:?}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert_eq!(outcome.stdout, (0..=255u8).collect::<Vec<_>>());
}

#[tokio::test]
async fn env_cwd_and_stderr() {
    let mut client = connect().await;
    let dir = tempfile::tempdir().unwrap();
    let mut req = sh("env", "pwd; echo \"$FOO $HOME $LANG\"; echo oops >&2");
    req.cwd = Some(dir.path().to_str().unwrap().to_owned());
    req.env.insert("FOO".into(), "bar".into());
    let outcome = client.exec(req, None).await;
    assert_eq!(outcome.exit().code, 0);
    let stdout = String::from_utf8(outcome.stdout.clone()).unwrap();
    assert_eq!(
        stdout,
        format!("{}\nbar /root C.UTF-8\n", dir.path().display())
    );
    assert_eq!(outcome.stderr, b"oops\n");
    assert_eq!(outcome.exit().stderr_bytes, 5);
}

#[tokio::test]
async fn large_output_streams() {
    let mut client = connect().await;
    let outcome = client
        .exec(
            request("big", &["head", "-c", "20000000", "/dev/zero"]),
            None,
        )
        .await;
    assert_eq!(outcome.exit().code, 0);
    assert_eq!(outcome.stdout.len(), 20_000_000);
    assert_eq!(outcome.exit().stdout_bytes, 20_000_000);
}

#[tokio::test]
async fn timeout_kills_the_process_tree() {
    let mut client = connect().await;
    // The shell waits for a child that would outlive any test timeout, so
    // the exec ends at all only because the timeout killed the tree.
    let mut req = sh("slow", "sleep 3600 & echo $!; wait");
    req.timeout_ms = Some(300);
    let outcome = client.exec(req, None).await;
    let exit = outcome.exit();
    assert_eq!(exit.reason, ExitReason::TimedOut);
    assert_eq!(exit.code, 137);
    let child: u32 = String::from_utf8_lossy(&outcome.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_dead(child).await,
        "background child {child} survived the timeout"
    );
}

#[tokio::test]
async fn kill_by_id() {
    let mut client = connect().await;
    let (_stdin, mut reader) = client
        .exec_streaming(&request("victim", &["sleep", "60"]))
        .await;
    let first = reader.next().await.unwrap();
    assert_eq!(first.kind, FrameKind::Started);
    let kill = serde_json::to_vec(&hearth_proto::KillRequest {
        id: "victim".into(),
    })
    .unwrap();
    let response = client
        .send(Method::POST, routes::EXEC_KILL, full_body(kill))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let outcome = reader.outcome().await;
    assert_eq!(outcome.exit().reason, ExitReason::Killed);

    let kill = serde_json::to_vec(&hearth_proto::KillRequest {
        id: "nobody".into(),
    })
    .unwrap();
    let (status, error) = client
        .error(Method::POST, routes::EXEC_KILL, full_body(kill))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn concurrent_execs_do_not_block_each_other() {
    let client = connect().await;
    // Opening a FIFO blocks until its other end is opened too: each command
    // can only finish if the other one runs at the same time. Run one after
    // the other, the first would block until its timeout.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("meet");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = fifo.display();
    let run = |id: &str, script: String| {
        let mut client = Client {
            sender: client.sender.clone(),
            _agent: client._agent.clone(),
            serving: None,
        };
        let mut req = sh(id, &script);
        req.timeout_ms = Some(30_000);
        async move { client.exec(req, None).await }
    };
    let (writer, reader) = tokio::join!(
        run("c1", format!("echo hello > {fifo}; echo wrote")),
        run("c2", format!("read line < {fifo}; echo \"read $line\"")),
    );
    for outcome in [&writer, &reader] {
        assert_eq!(
            (outcome.exit().reason, outcome.exit().code),
            (ExitReason::Exited, 0),
            "{outcome:?}"
        );
    }
    assert_eq!(writer.stdout, b"wrote\n");
    assert_eq!(reader.stdout, b"read hello\n");
}

#[tokio::test]
async fn a_dropped_stream_kills_the_process() {
    let mut client = connect().await;
    let (stdin, mut reader) = client
        .exec_streaming(&sh("dropped", "echo $$; exec sleep 60"))
        .await;
    let started: ExecStarted = reader.next().await.unwrap().parse_json().unwrap();
    drop(stdin);
    drop(reader);
    assert!(
        wait_dead(started.pid).await,
        "process {} survived",
        started.pid
    );
}

#[tokio::test]
async fn a_stalled_stdin_reader_does_not_block_the_exec() {
    let mut client = connect().await;
    let mut req = sh("stall", "sleep 1; echo finished");
    req.stdin = true;
    let (stdin, reader) = client.exec_streaming(&req).await;
    // Far more stdin than a pipe holds; the process never reads it.
    let feeder = tokio::spawn(async move {
        for _ in 0..64 {
            let frame = Frame::new(FrameKind::Stdin, vec![b'x'; 64 * 1024]).encode();
            if stdin.send(Ok(frame)).await.is_err() {
                break;
            }
        }
        stdin
    });
    let outcome = reader.outcome().await;
    assert_eq!(outcome.exit().code, 0);
    assert_eq!(outcome.stdout, b"finished\n");
    feeder.abort();
}

#[tokio::test]
async fn malformed_exec_bodies_get_an_error_and_the_server_keeps_serving() {
    let mut client = connect().await;
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (b"\xff\xfe garbage".to_vec(), ErrorCode::InvalidArgument),
        (vec![1, 0xff, 0xff, 0xff, 0xff], ErrorCode::TooLarge),
        (
            Frame::new(FrameKind::Stdin, b"hi".to_vec())
                .encode()
                .to_vec(),
            ErrorCode::InvalidArgument,
        ),
        (
            Frame::new(FrameKind::Request, b"{\"not\": \"a request\"}".to_vec())
                .encode()
                .to_vec(),
            ErrorCode::InvalidArgument,
        ),
        (Vec::new(), ErrorCode::InvalidArgument),
        (
            Frame::json(FrameKind::Request, &request("empty", &[]))
                .encode()
                .to_vec(),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (wire, code) in cases {
        let outcome = client.exec_raw(wire.clone()).await;
        let error = outcome
            .error
            .unwrap_or_else(|| panic!("no Error frame for {wire:?}"));
        assert_eq!(error.code, code, "{wire:?}: {}", error.message);
        assert!(outcome.exit.is_none());
    }
    // Garbage after a valid start kills the exec with an Error frame.
    let mut wire = Frame::json(FrameKind::Request, &request("g", &["sleep", "60"]))
        .encode()
        .to_vec();
    wire.extend_from_slice(b"\x42\0\0\0\0");
    let outcome = client.exec_raw(wire).await;
    assert!(outcome.started.is_some());
    assert_eq!(outcome.error.unwrap().code, ErrorCode::InvalidArgument);

    let outcome = client.exec(sh("after", "echo still here"), None).await;
    assert_eq!(outcome.stdout, b"still here\n");
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn files_round_trip_and_errors() {
    let mut client = connect().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();

    // mkdir -p, write, read back.
    let nested = format!("{root}/a/b/c");
    let uri = format!("{}?{}&parents=true", routes::FILES_MKDIR, query(&nested));
    let response = client.send(Method::POST, &uri, empty_body()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let uri = format!("{}?{}", routes::FILES_MKDIR, query(&nested));
    let (status, error) = client.error(Method::POST, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::CONFLICT, ErrorCode::AlreadyExists)
    );

    let data = pseudo_random(5 * 1024 * 1024);
    let file = format!("{nested}/data.bin");
    let uri = format!("{}?{}&mode=384", routes::FILES, query(&file));
    let (status, written): (_, WriteResult) = client
        .json(Method::PUT, &uri, full_body(data.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(written.bytes, data.len() as u64);
    let uri = format!("{}?{}", routes::FILES, query(&file));
    let response = client.send(Method::GET, &uri, empty_body()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read = response.into_body().collect().await.unwrap().to_bytes();
    assert!(read == data, "read back {} bytes, differ", read.len());

    // Write with parents into a fresh directory.
    let other = format!("{root}/x/y/z.txt");
    let uri = format!("{}?{}&parents=true", routes::FILES, query(&other));
    let (status, _): (_, WriteResult) = client.json(Method::PUT, &uri, full_body("hi")).await;
    assert_eq!(status, StatusCode::OK);

    // stat and list.
    let uri = format!("{}?{}", routes::FILES_STAT, query(&file));
    let (_, stat): (_, FileStat) = client.json(Method::GET, &uri, empty_body()).await;
    assert_eq!(stat.name, file);
    assert_eq!(stat.file_type, FileType::File);
    assert_eq!(stat.size, data.len() as u64);
    assert_eq!(stat.mode, 0o600);
    let uri = format!("{}?{}", routes::FILES_LIST, query(&root));
    let (_, entries): (_, Vec<FileStat>) = client.json(Method::GET, &uri, empty_body()).await;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "x"]);
    assert!(entries.iter().all(|e| e.file_type == FileType::Dir));

    // Reading a directory.
    let uri = format!("{}?{}", routes::FILES, query(&root));
    let (status, error) = client.error(Method::GET, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::IsADirectory)
    );

    // Remove: non-empty without recursive, then recursive.
    let uri = format!("{}?{}", routes::FILES, query(&format!("{root}/a")));
    let (status, error) = client.error(Method::DELETE, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::CONFLICT, ErrorCode::NotEmpty)
    );
    let uri = format!(
        "{}?{}&recursive=true",
        routes::FILES,
        query(&format!("{root}/a"))
    );
    let response = client.send(Method::DELETE, &uri, empty_body()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Not found, relative, NUL.
    let uri = format!("{}?{}", routes::FILES, query(&file));
    let (status, error) = client.error(Method::GET, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    assert!(error.message.contains(&file), "{}", error.message);
    let uri = format!("{}?path=relative%2Fpath", routes::FILES_STAT);
    let (status, error) = client.error(Method::GET, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument)
    );
    let uri = format!("{}?path=%2Ftmp%2Fa%00b", routes::FILES_STAT);
    let (status, error) = client.error(Method::GET, &uri, empty_body()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument)
    );
    let (status, _) = client.error(Method::GET, "/v1/nope", empty_body()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn serve_unix_binary_answers_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hearth-guest"))
        .arg("serve-unix")
        .arg(&socket)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The agent logs when it listens.
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.starts_with("hearth-guest: serving on") {
                return;
            }
        }
        panic!("the agent exited before it listened");
    })
    .await
    .expect("the agent listens");
    // Keep reading its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });

    let stream = UnixStream::connect(&socket).await.unwrap();
    let stream = hearth_proto::handshake::host(stream, "t1").await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("http://guest{}", routes::SHUTDOWN))
        .body(empty_body())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the agent exits after answering the shutdown")
        .unwrap();
    assert!(status.success(), "agent exited with {status}");
    assert!(!socket.exists(), "the agent left its socket behind");
}

#[tokio::test]
async fn shutdown_answers_lets_running_execs_report_and_closes_connections() {
    let agent = Agent::start(AgentOptions::default()).expect("agent starts");
    let mut client = Client::over(agent.clone()).await;
    let (_stdin, mut running) = client
        .exec_streaming(&request("running", &["sleep", "3600"]))
        .await;
    assert_eq!(running.next().await.unwrap().kind, FrameKind::Started);

    let response = client
        .send(Method::POST, routes::SHUTDOWN, empty_body())
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // What the binary does next: kill the workloads and wait for the
    // connections to close, which they do once everything is written.
    let finishing = tokio::spawn({
        let agent = agent.clone();
        async move { agent.finish_shutdown().await }
    });
    let outcome = running.outcome().await;
    assert_eq!(outcome.exit().reason, ExitReason::Killed, "{outcome:?}");
    client.served().await;
    assert!(
        finishing.await.unwrap(),
        "finish_shutdown gave up although the connection closed"
    );
}

#[tokio::test]
async fn processes_survive_a_reconnect() {
    let agent = Agent::start(AgentOptions::default()).expect("agent starts");
    let mut first = Client::over(agent.clone()).await;
    let outcome = first
        .exec(sh("bg", "sleep 30 >/dev/null 2>&1 & echo $!"), None)
        .await;
    assert_eq!(outcome.exit().code, 0);
    let pid: u32 = String::from_utf8_lossy(&outcome.stdout)
        .trim()
        .parse()
        .unwrap();
    // The first connection is over (and its execs killed) before the next.
    first.close().await;

    let mut second = Client::over(agent).await;
    let outcome = second
        .exec(sh("check", &format!("kill -0 {pid} && kill {pid}")), None)
        .await;
    assert_eq!(
        outcome.exit().code,
        0,
        "background process {pid} did not survive"
    );
}
