//! `hearth run start|ls|show|logs|signal|cancel|resolve|result`: clients of
//! a running `hearth serve`'s durable runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Value};

use hearth_sandbox::HearthHome;

use crate::cli::{
    RunCommand, RunForkArgs, RunIdArgs, RunLogsArgs, RunLsArgs, RunResolveArgs, RunResultArgs,
    RunSignalArgs, RunStartArgs, RunUpgradeArgs,
};
use crate::remote::{age, sse_events, Api};

/// Exit code of `hearth run result` for a run that failed.
pub const RUN_FAILED: i32 = 1;
/// Exit code for a run that was cancelled.
pub const RUN_CANCELLED: i32 = 2;
/// Exit code for a run that has not ended (without `--wait`).
pub const RUN_NOT_ENDED: i32 = 3;

/// Run a `hearth run` command; the result is the exit code.
pub async fn run(home: &HearthHome, command: RunCommand) -> Result<i32> {
    match command {
        RunCommand::Start(args) => start(home, *args).await,
        RunCommand::Ls(args) => ls(home, args).await,
        RunCommand::Show(args) => show(home, args).await,
        RunCommand::Logs(args) => logs(home, args).await,
        RunCommand::Signal(args) => signal(home, args).await,
        RunCommand::Cancel(args) => cancel(home, args).await,
        RunCommand::Resolve(args) => resolve(home, args).await,
        RunCommand::Result(args) => result(home, args).await,
        RunCommand::Upgrade(args) => upgrade(home, args).await,
        RunCommand::Fork(args) => fork(home, args).await,
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON: {text:?}"))
}

/// The files of a program: one file, or every file under a directory.
fn read_program(path: &Path, entry: Option<&str>) -> Result<(BTreeMap<String, String>, String)> {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the program {}", path.display()))?;
    if meta.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("the program's file name is not UTF-8")?
            .to_string();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the program {}", path.display()))?;
        let limit = hearth_engine::spec::MAX_PROGRAM_BYTES;
        if bytes.len() as u64 > limit {
            bail!(
                "the program {} is {} bytes, more than the {limit} allowed",
                path.display(),
                bytes.len()
            );
        }
        return Ok((BTreeMap::from([(name.clone(), encode(&bytes))]), name));
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let file_type = entry.file_type()?;
            let full = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            if file_type.is_dir() {
                stack.push(full);
            } else if file_type.is_file() {
                let bytes = std::fs::read(&full)
                    .with_context(|| format!("cannot read {}", full.display()))?;
                total += bytes.len() as u64;
                if total > hearth_engine::spec::MAX_PROGRAM_BYTES {
                    bail!(
                        "the program {} holds more than {} bytes; leave data out of it",
                        path.display(),
                        hearth_engine::spec::MAX_PROGRAM_BYTES
                    );
                }
                let relative = full
                    .strip_prefix(path)
                    .unwrap_or(&full)
                    .to_string_lossy()
                    .to_string();
                files.insert(relative, encode(&bytes));
            }
        }
    }
    let entry = entry.unwrap_or("main.py").to_string();
    if !files.contains_key(&entry) {
        bail!(
            "the program directory {} has no {entry}; name the file to run with --entry",
            path.display()
        );
    }
    Ok((files, entry))
}

async fn start(home: &HearthHome, args: RunStartArgs) -> Result<i32> {
    let input = parse_json("--input", &args.input)?;
    let (files, entry) = read_program(&args.program, args.entry.as_deref())?;
    let api = Api::new(home, &args.server)?;
    let mut body = json!({
        "program": {"files": files, "entry": entry},
        "input": input,
        "env": args.env.into_iter().collect::<BTreeMap<_, _>>(),
    });
    if let Some(name) = args.name {
        body["name"] = json!(name);
    }
    if let Some(image) = args.image {
        body["image"] = json!(image);
    }
    if let Some(memory) = args.memory {
        body["memory_mib"] = json!(memory.as_mib());
    }
    if let Some(vcpus) = args.vcpus {
        body["vcpus"] = json!(vcpus);
    }
    if let Some(timeout) = args.timeout {
        body["timeout_seconds"] = json!(timeout.as_secs_f64());
    }
    if let Some(deadline) = args.deadline {
        body["deadline_seconds"] = json!(deadline.as_secs_f64());
    }
    if let Some(restarts) = args.max_restarts {
        body["max_restarts"] = json!(restarts);
    }
    if let Some(workspace) = args.workspace {
        body["workspace"] = json!(workspace);
    }
    if let Some(network) = crate::remote::network_body(&args.net, &args.net_limits) {
        body["network"] = network;
    }
    if let Some(cmd) = args.cmd {
        let argv: Vec<&str> = cmd.split_whitespace().collect();
        if argv.is_empty() {
            bail!("--cmd is empty");
        }
        body["command"] = json!(argv);
    }
    let run = api
        .json(api.request(reqwest::Method::POST, "/v1/runs").json(&body))
        .await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("hearth: started {id}");
    print_result(&api, &id, true).await
}

async fn ls(home: &HearthHome, args: RunLsArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut request = api.request(reqwest::Method::GET, "/v1/runs");
    if let Some(state) = &args.state {
        request = request.query(&[("state", state)]);
    }
    let list = api.json(request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list["runs"])?);
        return Ok(0);
    }
    println!(
        "{:<26} {:<16} {:>8} {:>8} {:>6}  NAME",
        "ID", "STATE", "LAUNCHES", "RESTARTS", "AGE"
    );
    for run in list["runs"].as_array().into_iter().flatten() {
        println!(
            "{:<26} {:<16} {:>8} {:>8} {:>6}  {}",
            run["id"].as_str().unwrap_or_default(),
            run["state"].as_str().unwrap_or_default(),
            run["launches"],
            run["restarts"],
            age(run["created_ms"].as_u64().unwrap_or_default()),
            run["name"].as_str().unwrap_or("-"),
        );
    }
    Ok(0)
}

fn duration_ms(start: Option<u64>, end: Option<u64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{} ms", e.saturating_sub(s)),
        (Some(_), None) => "in flight".into(),
        _ => "-".into(),
    }
}

async fn show(home: &HearthHome, args: RunIdArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let run = api
        .json(api.request(reqwest::Method::GET, &format!("/v1/runs/{}", args.id)))
        .await?;
    let events = api
        .json(api.request(
            reqwest::Method::GET,
            &format!("/v1/runs/{}/events", args.id),
        ))
        .await?;
    if args.json {
        let mut all = run.clone();
        all["events"] = events["events"].clone();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    println!(
        "run {}  {}  launches {}  restarts {}",
        run["id"].as_str().unwrap_or_default(),
        run["state"].as_str().unwrap_or_default(),
        run["launches"],
        run["restarts"]
    );
    if let Some(name) = run["name"].as_str() {
        println!("name     {name}");
    }
    println!("program  {}", run["program"].as_str().unwrap_or_default());
    if !run["waiting_for"].is_null() {
        println!("waiting  {}", run["waiting_for"]);
    }
    if !run["error"].is_null() {
        println!(
            "error    {}: {}",
            run["error"]["code"].as_str().unwrap_or_default(),
            run["error"]["message"].as_str().unwrap_or_default()
        );
    }
    if !run["output"].is_null() {
        println!("output   {}", run["output"]);
    }
    println!("\nsteps:");
    for step in run["steps"].as_array().into_iter().flatten() {
        println!(
            "  {:>3}  {:<24} {:<13} {:<10} key {}",
            step["seq"],
            step["name"].as_str().unwrap_or_default(),
            step["state"].as_str().unwrap_or_default(),
            step["effect"].as_str().unwrap_or_default(),
            step["idempotency_key"].as_str().unwrap_or_default(),
        );
        for attempt in step["attempts"].as_array().into_iter().flatten() {
            let outcome = attempt["outcome"]["outcome"].as_str().unwrap_or_default();
            let error = attempt["outcome"]["error"]["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            println!(
                "         attempt {} {}{} ({})",
                attempt["number"],
                outcome,
                error,
                duration_ms(attempt["started_ms"].as_u64(), attempt["ended_ms"].as_u64())
            );
        }
        if let Some(layer) = step["checkpoint"]["layer"].as_str() {
            println!(
                "         files: layer {layer} ({})",
                step["checkpoint"]["digest"].as_str().unwrap_or_default()
            );
        }
    }
    println!("\nlaunches:");
    for event in events["events"].as_array().into_iter().flatten() {
        let data = &event["data"];
        match event["kind"].as_str().unwrap_or_default() {
            "run.running" => println!(
                "  launch {} in sandbox {}",
                data["launch"],
                data["sandbox_id"].as_str().unwrap_or_default()
            ),
            "run.exited" => println!(
                "  launch {} ended: {} ({})",
                data["launch"],
                data["message"].as_str().unwrap_or_default(),
                data["reason"].as_str().unwrap_or_default()
            ),
            "run.pending" => println!(
                "  relaunch ({}): {}",
                data["cause"].as_str().unwrap_or_default(),
                data["message"].as_str().unwrap_or_default()
            ),
            "run.waiting" => println!(
                "  released its VM at step {} ({})",
                data["seq"],
                data["reason"].as_str().unwrap_or_default()
            ),
            _ => {}
        }
    }
    Ok(0)
}

/// Print what the run's logs hold past `printed` bytes.
async fn print_logs_from(api: &Api, path: &str, printed: &mut usize) -> Result<()> {
    let text = api
        .send(api.request(reqwest::Method::GET, path))
        .await?
        .text()
        .await?;
    if text.len() > *printed {
        print!("{}", &text[*printed..]);
        *printed = text.len();
    }
    Ok(())
}

async fn logs(home: &HearthHome, args: RunLogsArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/runs/{}/logs", args.id);
    let mut printed = 0;
    print_logs_from(&api, &path, &mut printed).await?;
    if !args.follow {
        return Ok(0);
    }
    // Follow the run's events: each launch's output is in the logs once
    // its `run.exited` is; the stream ends after the run's end and its
    // last launch's exit.
    let response = api
        .send(
            api.request(
                reqwest::Method::GET,
                &format!("/v1/runs/{}/events", args.id),
            )
            .header("Accept", "text/event-stream"),
        )
        .await?;
    let mut events = std::pin::pin!(sse_events(response.bytes_stream()));
    while let Some(event) = events.next().await {
        event?;
        print_logs_from(&api, &path, &mut printed).await?;
    }
    print_logs_from(&api, &path, &mut printed).await?;
    Ok(0)
}

async fn signal(home: &HearthHome, args: RunSignalArgs) -> Result<i32> {
    let data = parse_json("--data", &args.data)?;
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/runs/{}/signals/{}", args.id, args.name);
    let sent = api
        .json(
            api.request(reqwest::Method::POST, &path)
                .json(&json!({ "data": data })),
        )
        .await?;
    eprintln!(
        "hearth: signal {} sent to {} (#{})",
        args.name, args.id, sent["id"]
    );
    Ok(0)
}

async fn cancel(home: &HearthHome, args: RunIdArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/runs/{}/cancel", args.id);
    let run = api
        .json(
            api.request(reqwest::Method::POST, &path)
                .json(&json!({"by": "cli"})),
        )
        .await?;
    println!("{} {}", args.id, run["state"].as_str().unwrap_or_default());
    Ok(0)
}

async fn resolve(home: &HearthHome, args: RunResolveArgs) -> Result<i32> {
    let body = if args.retry {
        json!({"step": args.step, "decision": "retry"})
    } else if let Some(result) = &args.skip_with {
        json!({"step": args.step, "decision": "skip", "result": parse_json("--skip-with", result)?})
    } else {
        json!({"step": args.step, "decision": "fail", "message": args.fail})
    };
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/runs/{}/resolve", args.id);
    let run = api
        .json(api.request(reqwest::Method::POST, &path).json(&body))
        .await?;
    println!("{} {}", args.id, run["state"].as_str().unwrap_or_default());
    Ok(0)
}

async fn upgrade(home: &HearthHome, args: RunUpgradeArgs) -> Result<i32> {
    let (files, entry) = read_program(&args.program, args.entry.as_deref())?;
    let api = Api::new(home, &args.server)?;
    let path = format!("/v1/runs/{}/upgrade", args.id);
    let run = api
        .json(
            api.request(reqwest::Method::POST, &path)
                .timeout(Duration::from_secs(360))
                .json(&json!({"program": {"files": files, "entry": entry}})),
        )
        .await?;
    println!(
        "{} now runs {}",
        args.id,
        run["program"].as_str().unwrap_or_default()
    );
    Ok(0)
}

async fn fork(home: &HearthHome, args: RunForkArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    let mut body = json!({"at_step": args.at_step});
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    let path = format!("/v1/runs/{}/fork", args.id);
    let run = api
        .json(api.request(reqwest::Method::POST, &path).json(&body))
        .await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        println!("{id}");
        return Ok(0);
    }
    eprintln!(
        "hearth: forked {} at step {} as {id}",
        args.id, args.at_step
    );
    print_result(&api, &id, true).await
}

async fn result(home: &HearthHome, args: RunResultArgs) -> Result<i32> {
    let api = Api::new(home, &args.server)?;
    print_result(&api, &args.id, args.wait).await
}

/// Print a run's output (or error) and return the exit code its state
/// means.
async fn print_result(api: &Api, id: &str, wait: bool) -> Result<i32> {
    loop {
        let mut request = api.request(reqwest::Method::GET, &format!("/v1/runs/{id}/result"));
        if wait {
            request = request.query(&[("wait", "60")]);
        }
        let result = api.json(request).await?;
        match result["state"].as_str().unwrap_or_default() {
            "completed" => {
                println!("{}", serde_json::to_string_pretty(&result["output"])?);
                return Ok(0);
            }
            "failed" => {
                eprintln!(
                    "hearth: run {id} failed ({}): {}",
                    result["error"]["code"].as_str().unwrap_or_default(),
                    result["error"]["message"].as_str().unwrap_or_default()
                );
                return Ok(RUN_FAILED);
            }
            "cancelled" => {
                eprintln!("hearth: run {id} was cancelled");
                return Ok(RUN_CANCELLED);
            }
            state if !wait => {
                eprintln!("hearth: run {id} has not ended (it is {state}); wait with --wait");
                return Ok(RUN_NOT_ENDED);
            }
            _ => {}
        }
    }
}
