//! `hearth sandbox create|ls|exec|cp|rm|logs`: clients of a running
//! `hearth serve`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use sse_stream::{Sse, SseByteStream};
use tokio::io::AsyncWriteExt;

use hearth_sandbox::HearthHome;

use crate::cli::{
    CpArgs, CreateArgs, ExecArgs, LogsArgs, LsArgs, RmArgs, SandboxCommand, ServerArgs,
};
use crate::exit;

/// Most stdin `exec` forwards: it travels base64 inside the JSON body.
const MAX_STDIN: usize = hearth_server::api::MAX_JSON_BODY / 4 * 3 - 64 * 1024;

/// A connection to the server.
pub(crate) struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(home: &HearthHome, args: &ServerArgs) -> Result<Api> {
        let url = match &args.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => std::fs::read_to_string(home.root().join(hearth_server::SERVER_FILE))
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .and_then(|v| v["url"].as_str().map(str::to_string))
                .unwrap_or_else(|| "http://127.0.0.1:7070".to_string()),
        };
        let token = match std::env::var("HEARTH_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let path = crate::serve::token_file(home);
                hearth_server::token::read_token(&path).with_context(|| {
                    format!("reading the API token {} (set HEARTH_TOKEN or HEARTH_TOKEN_FILE, or run this where the server's HEARTH_HOME is)", path.display())
                })?
            }
        };
        let mut http = reqwest::Client::builder();
        // A server whose certificate a private CA signed.
        if let Some(path) = std::env::var_os("HEARTH_CA_CERT").filter(|p| !p.is_empty()) {
            let path = std::path::PathBuf::from(path);
            let pem = std::fs::read(&path)
                .with_context(|| format!("reading HEARTH_CA_CERT {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("HEARTH_CA_CERT {} holds no PEM certificate", path.display())
            })? {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Api {
            url,
            token,
            http: http.build()?,
        })
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the hearth server at {} ({e}); is `hearth serve` running?",
                self.url
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["error"]["message"].as_str() {
            Some(message) => bail!("{message} ({status})"),
            None => bail!("the server answered {status}"),
        }
    }

    pub(crate) async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        Ok(self.send(request).await?.json().await?)
    }
}

/// Run a client command; the result is the exit code.
pub async fn run(home: &HearthHome, command: SandboxCommand) -> Result<i32> {
    match command {
        SandboxCommand::Run(_) => unreachable!("run needs no server"),
        SandboxCommand::Create(args) => create(home, args).await,
        SandboxCommand::Ls(args) => ls(home, args).await,
        SandboxCommand::Exec(args) => exec(home, args).await,
        SandboxCommand::Cp(args) => cp(home, args).await,
        SandboxCommand::Rm(args) => rm(home, args).await,
        SandboxCommand::Logs(args) => logs(home, args).await,
    }
}

async fn create(home: &HearthHome, args: CreateArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut body = json!({
        "image": args.image,
        "memory": args.memory.to_string(),
        "vcpus": args.vcpus,
        "disk": args.disk.to_string(),
        "timeout": args.timeout,
        "env": args.env.into_iter().collect::<BTreeMap<_, _>>(),
        "labels": args.labels.into_iter().collect::<BTreeMap<_, _>>(),
    });
    if args.privileged {
        // Sent only when asked for, so a server that predates the field
        // refuses it instead of creating a confined sandbox.
        body["privileged"] = json!(true);
    }
    if let Some(network) = network_body(&args.net, &args.net_limits) {
        body["network"] = network;
    }
    let sandbox = api
        .json(
            api.request(reqwest::Method::POST, "/v1/sandboxes")
                .json(&body),
        )
        .await?;
    println!("{}", sandbox["id"].as_str().unwrap_or_default());
    Ok(0)
}

pub(crate) fn age(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

async fn ls(home: &HearthHome, args: LsArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut query: Vec<(&str, String)> = Vec::new();
    match (&args.state, args.all) {
        (Some(state), _) => query.push(("state", state.clone())),
        (None, false) => query.push(("state", "creating,running,stopping".into())),
        (None, true) => {}
    }
    for label in &args.labels {
        query.push(("label", label.clone()));
    }
    let list = api
        .json(
            api.request(reqwest::Method::GET, "/v1/sandboxes")
                .query(&query),
        )
        .await?;
    println!(
        "{:<16} {:<10} {:<10} {:>6} {:>5} {:>6}  LABELS",
        "ID", "STATE", "IMAGE", "MEMORY", "VCPUS", "AGE"
    );
    for sb in list["sandboxes"].as_array().into_iter().flatten() {
        let labels: Vec<String> = sb["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        println!(
            "{:<16} {:<10} {:<10} {:>6} {:>5} {:>6}  {}",
            sb["id"].as_str().unwrap_or_default(),
            sb["state"].as_str().unwrap_or_default(),
            sb["image"].as_str().unwrap_or_default(),
            hearth_proto::ByteSize(sb["limits"]["memory_bytes"].as_u64().unwrap_or(0)).to_string(),
            sb["limits"]["vcpus"],
            age(sb["created_ms"].as_u64().unwrap_or(0)),
            labels.join(",")
        );
    }
    Ok(0)
}

/// The server-sent events of a response body, as (event name, data).
/// sse-stream keeps bytes until a whole line has arrived and then checks
/// the UTF-8, so a character split across network chunks decodes intact;
/// blocks without data (keep-alives, comments) are skipped.
pub(crate) fn sse_events<S, E>(body: S) -> impl Stream<Item = Result<(String, String)>>
where
    S: Stream<Item = std::result::Result<Bytes, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    SseByteStream::new(body).filter_map(|block| async move {
        match block {
            Ok(Sse {
                event,
                data: Some(data),
                ..
            }) if !data.is_empty() => Ok(Some((event.unwrap_or_else(|| "message".into()), data))),
            Ok(_) => Ok(None),
            Err(e) => Err(anyhow!("reading the server's event stream: {e}")),
        }
        .transpose()
    })
}

async fn exec(home: &HearthHome, args: ExecArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut body = json!({
        "argv": args.command,
        "env": args.env.into_iter().collect::<BTreeMap<_, _>>(),
        "cwd": args.workdir,
        "timeout": args.timeout,
    });
    if !args.no_stdin && !std::io::stdin().is_terminal() {
        let mut input = Vec::new();
        std::io::stdin()
            .take(MAX_STDIN as u64 + 1)
            .read_to_end(&mut input)?;
        if input.len() > MAX_STDIN {
            bail!("stdin is larger than {} MiB; copy it in with `hearth sandbox cp - {}:/path` and redirect from that file", MAX_STDIN >> 20, args.id);
        }
        body["stdin_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&input));
    }
    let path = format!("/v1/sandboxes/{}/exec?encoding=base64", args.id);
    let response = api
        .send(api.request(reqwest::Method::POST, &path).json(&body))
        .await?;
    let mut events = std::pin::pin!(sse_events(response.bytes_stream()));
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(event) = events.next().await {
        let (name, data) = event?;
        let value: Value = serde_json::from_str(&data)?;
        let decode = |v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        match name.as_str() {
            "stdout" => {
                stdout.write_all(&decode(&value)).await?;
                stdout.flush().await?;
            }
            "stderr" => {
                stderr.write_all(&decode(&value)).await?;
                stderr.flush().await?;
            }
            "exit" => {
                if let Some(message) = value["message"].as_str() {
                    if value["reason"] != "exited" {
                        eprintln!("hearth: {message}");
                    }
                }
                return Ok(value["code"].as_i64().unwrap_or(1) as i32);
            }
            "error" => bail!("{}", value["message"].as_str().unwrap_or("the exec failed")),
            _ => {}
        }
    }
    bail!("the server closed the stream before the command ended")
}

/// `ID:/path` → (id, path).
fn remote_path(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (id.starts_with("sb-") && path.starts_with('/')).then_some((id, path))
}

async fn cp(home: &HearthHome, args: CpArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    match (remote_path(&args.source), remote_path(&args.destination)) {
        (None, Some((id, path))) => {
            let body = if args.source == "-" {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data)?;
                reqwest::Body::from(data)
            } else {
                let file = tokio::fs::File::open(&args.source)
                    .await
                    .with_context(|| format!("opening {}", args.source))?;
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024))
            };
            let request = api
                .request(reqwest::Method::PUT, &format!("/v1/sandboxes/{id}/files"))
                .query(&[("path", path)])
                .body(body);
            let written = api.json(request).await?;
            eprintln!("hearth: wrote {} bytes to {id}:{path}", written["bytes"]);
            Ok(0)
        }
        (Some((id, path)), None) => {
            let request = api
                .request(reqwest::Method::GET, &format!("/v1/sandboxes/{id}/files"))
                .query(&[("path", path)]);
            let mut stream = api.send(request).await?.bytes_stream();
            if args.destination == "-" {
                let mut out = tokio::io::stdout();
                while let Some(chunk) = stream.next().await {
                    out.write_all(&chunk?).await?;
                }
                out.flush().await?;
            } else {
                let tmp = format!("{}.hearth-partial", args.destination);
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("creating {tmp}"))?;
                let copied: Result<()> = async {
                    while let Some(chunk) = stream.next().await {
                        file.write_all(&chunk?).await?;
                    }
                    file.sync_all().await?;
                    Ok(())
                }
                .await;
                if let Err(e) = copied {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e);
                }
                tokio::fs::rename(&tmp, &args.destination).await?;
            }
            Ok(0)
        }
        (Some(_), Some(_)) => bail!("copying between two sandboxes is not supported; copy through a local file"),
        (None, None) => bail!("one side must be a sandbox path written ID:/absolute/path, e.g. sb-0123456789ab:/root/out.txt"),
    }
}

async fn rm(home: &HearthHome, args: RmArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut code = 0;
    for id in &args.ids {
        match api
            .json(api.request(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}")))
            .await
        {
            Ok(sb) => println!("{id}: {}", sb["state"].as_str().unwrap_or_default()),
            Err(e) => {
                eprintln!("hearth: {id}: {e}");
                code = exit::HEARTH_ERROR;
            }
        }
    }
    Ok(code)
}

fn print_event(event: &Value) {
    let data = &event["data"];
    let summary = match event["kind"].as_str().unwrap_or_default() {
        "exec.started" => format!("{}", data["argv"]),
        "exec.finished" => format!(
            "{} code {} in {} ms",
            data["reason"], data["code"], data["duration_ms"]
        ),
        kind if kind.starts_with("file.") || kind == "dir.created" => format!("{}", data["path"]),
        "net.connection" => {
            let verdict = if data["allowed"].as_bool() == Some(true) {
                format!(
                    "allowed ({}) {} B up, {} B down",
                    data["rule"].as_str().unwrap_or_default(),
                    data["bytes_up"],
                    data["bytes_down"]
                )
            } else {
                format!("refused: {}", data["reason"].as_str().unwrap_or_default())
            };
            format!(
                "{}:{} via {}: {verdict}",
                data["host"].as_str().unwrap_or_default(),
                data["port"],
                data["via"].as_str().unwrap_or_default()
            )
        }
        _ => data["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_default(),
    };
    println!(
        "{:>6}  {}  {:<20} {summary}",
        event["seq"],
        event["at_ms"],
        event["kind"].as_str().unwrap_or_default()
    );
}

async fn logs(home: &HearthHome, args: LogsArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/sandboxes/{}/events", args.id);
    if !args.follow {
        let mut after = 0i64;
        loop {
            let page = api
                .json(
                    api.request(reqwest::Method::GET, &path)
                        .query(&[("after", after)]),
                )
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            events.iter().for_each(print_event);
            if events.len() < 1000 {
                return Ok(0);
            }
            after = page["next_after"].as_i64().unwrap_or(after);
        }
    }
    let response = api
        .send(
            api.request(reqwest::Method::GET, &path)
                .header("Accept", "text/event-stream"),
        )
        .await?;
    let mut events = std::pin::pin!(sse_events(response.bytes_stream()));
    while let Some(event) = events.next().await {
        let (_, data) = event?;
        print_event(&serde_json::from_str(&data)?);
    }
    Ok(0)
}

/// The `network` object of a create or a run's start; none for no network.
pub(crate) fn network_body(
    net: &hearth_net::NetworkPolicy,
    limits: &crate::cli::NetLimitArgs,
) -> Option<Value> {
    if net.mode() == hearth_net::NetworkMode::None {
        return None;
    }
    let mut network = json!({
        "mode": net.mode().as_str(),
        "allow": net.entries(),
    });
    if let Some(rate) = limits.egress_rate {
        network["rate"] = json!(rate.bytes());
    }
    if let Some(max) = limits.egress_max_bytes {
        network["max_bytes"] = json!(max.bytes());
    }
    if let Some(max) = limits.egress_max_connections {
        network["max_connections"] = json!(max);
    }
    Some(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events_of(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let body = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        sse_events(body).map(|event| event.unwrap()).collect().await
    }

    #[tokio::test]
    async fn a_character_split_across_chunks_decodes_intact() {
        let event = "event: exit\ndata: {\"message\": \"caf\u{e9} \u{1f642}\"}\n\n".as_bytes();
        // Split inside the two-byte é and inside the four-byte emoji.
        let e_acute = event.iter().position(|&b| b == 0xc3).unwrap();
        let emoji = event.iter().position(|&b| b == 0xf0).unwrap();
        let chunks = [
            &event[..e_acute + 1],
            &event[e_acute + 1..emoji + 2],
            &event[emoji + 2..],
        ];
        assert_eq!(
            events_of(&chunks).await,
            [(
                "exit".to_string(),
                "{\"message\": \"caf\u{e9} \u{1f642}\"}".to_string()
            )]
        );
    }

    #[tokio::test]
    async fn events_are_framed_whatever_the_chunking() {
        let wire: &[u8] =
            b": keep-alive\n\nid: 1\nevent: stdout\ndata: {\"a\":1}\n\ndata: plain\ndata: two\n\n";
        let expected = [
            ("stdout".to_string(), "{\"a\":1}".to_string()),
            ("message".to_string(), "plain\ntwo".to_string()),
        ];
        assert_eq!(events_of(&[wire]).await, expected);
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(events_of(&bytes).await, expected);
    }

    #[tokio::test]
    async fn invalid_utf8_is_an_error_not_a_replacement_character() {
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
            b"data: \xff\n\n",
        ))]);
        let first = std::pin::pin!(sse_events(body)).next().await.unwrap();
        assert!(first.is_err(), "{first:?}");
    }
}
