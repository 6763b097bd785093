//! Regression tests for hostile file requests (issue 11), against the real
//! `hearth-guest serve-unix` binary, which runs the same runtime as PID 1
//! (two workers, `MAX_BLOCKING_THREADS` blocking threads): a request that
//! parks a thread for good would exhaust it here as in a VM.
//!
//! No test asserts on timing: waits are bounded generously and the
//! assertions are about outcomes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use hearth_guest::body::ResponseBody;
use hearth_proto::{routes, ErrorBody, ErrorCode, ExitReport, Frame, FrameDecoder, FrameKind};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

/// Longest wait for any one answer; far above what any takes.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `hearth-guest serve-unix` process and one HTTP/2 connection to it.
struct ServedAgent {
    child: tokio::process::Child,
    sender: SendRequest<ResponseBody>,
    dir: tempfile::TempDir,
}

impl ServedAgent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hearth-guest"))
            .arg("serve-unix")
            .arg(&socket)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = log.next_line().await.unwrap() {
                if line.starts_with("hearth-guest: serving on") {
                    return;
                }
            }
            panic!("the agent exited before it listened");
        })
        .await
        .expect("the agent listens");
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        let sender = connect(&socket).await;
        Self { child, sender, dir }
    }

    /// Another HTTP/2 connection to the agent, with flow-control windows of
    /// its own.
    async fn connection(&self) -> SendRequest<ResponseBody> {
        connect(&self.path("agent.sock")).await
    }

    /// A scratch directory that goes with the agent.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Send a request; the answer's head, bounded by [`PATIENCE`].
    async fn send(&self, method: Method, uri: &str, body: ResponseBody) -> Response<Incoming> {
        self.send_with(Request::builder().method(method), uri, body)
            .await
    }

    async fn send_with(
        &self,
        builder: http::request::Builder,
        uri: &str,
        body: ResponseBody,
    ) -> Response<Incoming> {
        let mut sender = self.sender.clone();
        let request = builder
            .uri(format!("http://guest{uri}"))
            .body(body)
            .unwrap();
        tokio::time::timeout(PATIENCE, async {
            sender.ready().await.expect("connection alive");
            sender.send_request(request).await.expect("response")
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {uri} within {PATIENCE:?}"))
    }

    /// Send a request that must fail; its status and error body.
    async fn error(
        &self,
        method: Method,
        uri: &str,
        body: ResponseBody,
    ) -> (StatusCode, ErrorBody) {
        let response = self.send(method, uri, body).await;
        let status = response.status();
        assert!(!status.is_success(), "{uri} answered {status}");
        let bytes = collect(response).await;
        let error: ErrorBody = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        (status, error)
    }

    /// Run `sh -c script` to the end; its stdout and exit report.
    async fn sh(&self, id: &str, script: &str) -> (Vec<u8>, ExitReport) {
        let request = hearth_proto::ExecRequest {
            id: id.to_owned(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: Default::default(),
            cwd: Some("/".into()),
            timeout_ms: Some(30_000),
            stdin: false,
        };
        let wire = Frame::json(FrameKind::Request, &request).encode();
        let response = self.send(Method::POST, routes::EXEC, full(wire)).await;
        assert_eq!(response.status(), StatusCode::OK, "exec {id}");
        let bytes = collect(response).await;
        let mut decoder = FrameDecoder::default();
        decoder.push(&bytes);
        let (mut stdout, mut exit) = (Vec::new(), None);
        while let Some(frame) = decoder.next_frame().unwrap() {
            match frame.kind {
                FrameKind::Stdout => stdout.extend_from_slice(&frame.payload),
                FrameKind::Exit => exit = Some(frame.parse_json().unwrap()),
                FrameKind::Error => {
                    panic!("exec {id} failed: {:?}", frame.parse_json::<ErrorBody>())
                }
                _ => {}
            }
        }
        (stdout, exit.expect("an Exit frame"))
    }

    /// Ask the agent to shut down and wait until it has exited.
    async fn shutdown(mut self) {
        let response = self.send(Method::POST, routes::SHUTDOWN, empty()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the agent exits after a shutdown")
            .unwrap();
        assert!(status.success(), "agent exited with {status}");
    }
}

async fn connect(socket: &Path) -> SendRequest<ResponseBody> {
    let stream = UnixStream::connect(socket).await.unwrap();
    let stream = hearth_proto::handshake::host(stream, "t1").await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

async fn collect(response: Response<Incoming>) -> Bytes {
    tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body ends")
        .expect("the body is intact")
        .to_bytes()
}

fn files_uri(route: &str, path: &Path) -> String {
    let query = serde_urlencoded::to_string([("path", path.to_str().unwrap())]).unwrap();
    format!("{route}?{query}")
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Issue 11, item 2: downloading a FIFO opened it before checking its type,
/// and the open blocked a thread for good; 64 of them wedged every file call
/// and exec. Now a hundred are refused, saying what the path is, and the
/// agent still runs commands.
#[tokio::test]
async fn fifo_downloads_are_refused_and_do_not_exhaust_the_agent() {
    let agent = ServedAgent::start().await;
    let fifo = agent.path("fifo");
    mkfifo(&fifo);
    let link = agent.path("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();

    // In batches that stay below the agent's bound on file requests: each
    // batch would have wedged its threads for good.
    let mut answers = Vec::new();
    for batch in 0..10 {
        let downloads = (0..10).map(|i| {
            let uri = files_uri(routes::FILES, if i % 2 == 0 { &fifo } else { &link });
            let agent = &agent;
            async move { agent.error(Method::GET, &uri, empty()).await }
        });
        answers.extend(futures_util::future::join_all(downloads).await);
        assert_eq!(answers.len(), (batch + 1) * 10);
    }
    for (status, error) in answers {
        assert_eq!(
            (status, error.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument)
        );
        assert!(
            error.message.contains("is a FIFO") && error.message.contains("only regular files"),
            "{}",
            error.message
        );
    }

    let (stdout, exit) = agent.sh("after-fifos", "echo still here").await;
    assert_eq!((exit.code, stdout.as_slice()), (0, &b"still here\n"[..]));
    agent.shutdown().await;
}

/// Uploads never open a FIFO, device or socket for writing (nor one behind
/// a symbolic link); they are refused, and left as they were.
#[tokio::test]
async fn uploads_to_special_files_are_refused() {
    let agent = ServedAgent::start().await;
    let fifo = agent.path("fifo");
    mkfifo(&fifo);
    let link = agent.path("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let socket_path = agent.path("agent.sock");
    let cases = [
        (fifo.clone(), "is a FIFO"),
        (link.clone(), "is a FIFO (through a symbolic link)"),
        (PathBuf::from("/dev/null"), "is a character device"),
        (socket_path, "is a socket"),
    ];
    for (path, what) in &cases {
        let uri = files_uri(routes::FILES, path);
        let (status, error) = agent.error(Method::PUT, &uri, full("data")).await;
        assert_eq!(
            (status, error.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(what) && error.message.contains("only regular files"),
            "{}: {}",
            path.display(),
            error.message
        );
    }
    // Downloads of a device are refused the same way, before any open.
    let (_, error) = agent
        .error(
            Method::GET,
            &files_uri(routes::FILES, Path::new("/dev/zero")),
            empty(),
        )
        .await;
    assert!(
        error.message.contains("is a character device"),
        "{}",
        error.message
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    agent.shutdown().await;
}

/// Each kind of request is bounded on its own: with every file slot held
/// by downloads the host does not read, the next file call is answered
/// `busy` (503) saying so, commands still run, and file calls work again
/// once the downloads are gone.
#[tokio::test]
async fn a_full_kind_answers_busy_and_the_others_still_work() {
    let agent = ServedAgent::start().await;
    let big = agent.path("big");
    // Sparse: many times what HTTP/2 windows and the agent's channel hold,
    // so each download stays in flight while nobody reads it.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let uri = files_uri(routes::FILES, &big);
    // On a connection of their own, so that their unread bytes do not use
    // up the flow-control window of the one the checks use.
    let mut downloads = agent.connection().await;
    let mut stalled = Vec::new();
    for _ in 0..hearth_proto::limits::MAX_CONCURRENT_FILE_OPS {
        let request = Request::get(format!("http://guest{uri}"))
            .body(empty())
            .unwrap();
        downloads.ready().await.unwrap();
        let response = tokio::time::timeout(PATIENCE, downloads.send_request(request))
            .await
            .expect("a download starts")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        stalled.push(response);
    }

    let stat = files_uri(routes::FILES_STAT, &big);
    let (status, error) = agent.error(Method::GET, &stat, empty()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy)
    );
    let expected = format!(
        "busy with {} concurrent file operations",
        hearth_proto::limits::MAX_CONCURRENT_FILE_OPS
    );
    assert!(
        error.message.contains(&expected) && error.message.contains("retry later"),
        "{}",
        error.message
    );
    let (stdout, exit) = agent.sh("while-files-are-full", "echo exec works").await;
    assert_eq!((exit.code, stdout.as_slice()), (0, &b"exec works\n"[..]));

    // Hanging up on the downloads frees their slots.
    drop(stalled);
    drop(downloads);
    let freed = tokio::time::timeout(PATIENCE, async {
        loop {
            let response = agent.send(Method::GET, &stat, empty()).await;
            if response.status() == StatusCode::OK {
                return;
            }
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "file slots were not freed after the host hung up"
    );
    agent.shutdown().await;
}

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Wait (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen within {PATIENCE:?}");
}

/// Issue 11, item 9: an upload that broke off (refused by the server, the
/// client gone) had already truncated the old file and left a partial one.
/// Now the old file is untouched while the upload runs and after it broke
/// off, and its temporary file is gone; a finished upload replaces it
/// whole, through a symbolic link, keeping its mode.
#[tokio::test]
async fn uploads_are_atomic() {
    let agent = ServedAgent::start().await;
    let files = agent.path("files");
    std::fs::create_dir(&files).unwrap();
    let target = files.join("config");
    std::fs::write(&target, b"old contents").unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let uri = files_uri(routes::FILES, &target);

    // Half an upload, then the body breaks (the host resets the stream).
    let (tx, body) = hearth_guest::body::channel(4);
    tx.send(Ok(Bytes::from_static(b"new contents, first half")))
        .await
        .unwrap();
    let mut sender = agent.sender.clone();
    sender.ready().await.unwrap();
    let request = Request::put(format!("http://guest{uri}"))
        .body(body)
        .unwrap();
    let answer = tokio::spawn(sender.send_request(request));
    eventually("the upload's temporary file appears", || {
        entries(&files).len() == 2
    })
    .await;
    assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
    tx.send(Err(std::io::Error::other("the client went away")))
        .await
        .unwrap();
    drop(tx);
    let _ = tokio::time::timeout(PATIENCE, answer).await;
    eventually("the temporary file is removed", || {
        entries(&files) == ["config"]
    })
    .await;
    assert_eq!(std::fs::read(&target).unwrap(), b"old contents");

    // A whole upload through a link replaces the file and keeps its mode.
    let link = files.join("link");
    std::os::unix::fs::symlink("config", &link).unwrap();
    let response = agent
        .send(
            Method::PUT,
            &files_uri(routes::FILES, &link),
            full("new contents"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(entries(&files), ["config", "link"]);
    agent.shutdown().await;
}

/// The rest of a download: its bytes, and the error trailers that ended it
/// (code, message), if any.
async fn download(response: Response<Incoming>) -> (u64, Option<(String, String)>) {
    let mut body = response.into_body();
    let mut bytes = 0;
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("the download moves")
            .map(|frame| frame.expect("the download is not reset"));
        let Some(frame) = frame else {
            return (bytes, None);
        };
        match frame.into_data() {
            Ok(data) => bytes += data.len() as u64,
            Err(frame) => {
                let trailers = frame.into_trailers().expect("data or trailers");
                let text = |name: &str| trailers[name].to_str().unwrap().to_owned();
                return (
                    bytes,
                    Some((
                        text(routes::ERROR_CODE_HEADER),
                        text(routes::ERROR_MESSAGE_TRAILER),
                    )),
                );
            }
        }
    }
}

/// Issue 11, item 9: downloads had no size or time limit, and files in
/// /proc report size 0 (/proc/kmsg never ends). A file that reports more
/// than the limit is refused at once; one that turns out longer, or takes
/// longer than the time limit (here: a host that stops reading), ends with
/// an error naming the limit, in trailers when the host asks for them and
/// as a reset stream otherwise.
#[tokio::test]
async fn downloads_end_at_their_size_and_time_limits() {
    let agent = ServedAgent::start().await;
    let trailers = || {
        Request::builder()
            .method(Method::GET)
            .header("te", "trailers")
    };

    // Reports its size: refused before any byte.
    let big = agent.path("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let uri = format!("{}&max_bytes=1048576", files_uri(routes::FILES, &big));
    let (status, error) = agent.error(Method::GET, &uri, empty()).await;
    assert_eq!(
        (status, error.code),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge)
    );
    assert!(
        error
            .message
            .contains("more than the download limit of 1048576 bytes"),
        "{}",
        error.message
    );

    // Reports size 0, like every file in /proc: stopped at the limit.
    let maps = Path::new("/proc/self/maps");
    let uri = format!("{}&max_bytes=10", files_uri(routes::FILES, maps));
    let response = agent.send_with(trailers(), &uri, empty()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (bytes, error) = download(response).await;
    let (code, message) = error.expect("the download ends with an error");
    assert_eq!(code, "too_large");
    assert!(message.contains("size limit of 10 bytes"), "{message}");
    assert!(bytes <= 10, "{bytes} bytes sent past a 10-byte limit");
    // Without te: trailers, the stream is reset, never ended cleanly: after
    // its head, or before it when the limit is passed first.
    let mut sender = agent.sender.clone();
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://guest{uri}"))
        .body(empty())
        .unwrap();
    let broken = tokio::time::timeout(PATIENCE, async {
        sender.ready().await.expect("connection alive");
        match sender.send_request(request).await {
            Err(reset) => Err(reset),
            Ok(response) => response.into_body().collect().await.map(|_| ()),
        }
    })
    .await
    .expect("the download ends");
    assert!(broken.is_err(), "a download past its limit ended cleanly");

    // A host that stops reading: the time limit ends the download.
    let uri = format!("{}&timeout_ms=500", files_uri(routes::FILES, &big));
    let response = agent.send_with(trailers(), &uri, empty()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Not a timing assertion: only makes sure the limit has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (bytes, error) = download(response).await;
    let (code, message) = error.expect("the download ends with an error");
    assert_eq!(code, "timed_out");
    assert!(message.contains("time limit of 500 ms"), "{message}");
    assert!(bytes < 1 << 30, "the whole file was sent");

    // The agent is fine afterwards, and its file slots are free.
    let (stdout, _) = agent.sh("after-downloads", "echo ok").await;
    assert_eq!(stdout, b"ok\n");
    agent.shutdown().await;
}
