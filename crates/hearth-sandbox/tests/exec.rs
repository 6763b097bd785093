//! Running commands, on real VMs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{sh, TestHome};
use hearth_proto::ExitReason;
use hearth_sandbox::{ExecEvent, ExecOptions};

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_stdin_env_cwd_and_missing_commands() {
    let t = TestHome::new();
    let sandbox = t.small().await;

    let out = sh(&sandbox, "exit 7").await;
    assert_eq!(
        (out.report.reason, out.report.code),
        (ExitReason::Exited, 7)
    );

    let out = sandbox
        .run(ExecOptions::new(["no-such-program", "x"]), None)
        .await
        .unwrap();
    assert_eq!(out.report.code, 127);
    assert_eq!(out.report.reason, ExitReason::SpawnFailed);
    let message = out.report.message.unwrap();
    assert!(message.contains("no-such-program"), "{message}");

    let out = sandbox
        .run(
            ExecOptions::new(["cat"]),
            Some(Bytes::from_static(b"hello\n")),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "hello\n");

    let mut options = ExecOptions::new(["sh", "-c", "echo $GREETING; pwd"]);
    options.env.insert("GREETING".into(), "hi there".into());
    options.cwd = Some("/tmp".into());
    let out = sandbox.run(options, None).await.unwrap();
    assert_eq!(out.stdout_text(), "hi there\n/tmp\n");

    let out = sh(&sandbox, "echo out; echo err >&2; kill -TERM $$").await;
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(out.stderr_text(), "err\n");
    assert_eq!(out.report.reason, ExitReason::Signaled);
    assert_eq!(out.report.code, 128 + 15);

    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_binary_safe() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)";
    let out = sandbox
        .run(ExecOptions::new(["python3", "-c", script]), None)
        .await
        .unwrap();
    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * 1000).collect();
    assert_eq!(out.stdout, expected);
    sandbox.destroy().await;
    t.assert_clean().await;
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_megabytes_of_output_stream_with_bounded_memory() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let before = peak_rss_kib();
    let mut execution = sandbox
        .exec(ExecOptions::new([
            "sh",
            "-c",
            "head -c 104857600 /dev/zero",
        ]))
        .await
        .unwrap();
    let mut total = 0usize;
    let mut nonzero = false;
    let report = loop {
        match execution.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(data) => {
                total += data.len();
                nonzero |= data.iter().any(|&b| b != 0);
            }
            ExecEvent::Exit(report) => break report,
            _ => {}
        }
    };
    assert_eq!(report.code, 0);
    assert_eq!(total, 100 << 20);
    assert_eq!(report.stdout_bytes, 100 << 20);
    assert!(!nonzero);
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 64,
        "host memory grew by {grown_mib} MiB while streaming"
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn execs_in_one_sandbox_run_concurrently() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    // The first exec blocks until it gets a line on stdin; the second must
    // complete meanwhile, which it can only do if execs don't block each other.
    let mut waiting = sandbox
        .exec(ExecOptions {
            stdin: true,
            ..ExecOptions::new(["sh", "-c", "read line; echo got $line"])
        })
        .await
        .unwrap();
    let stdin = waiting.take_stdin().unwrap();
    let second = sh(&sandbox, "echo second").await;
    assert_eq!(second.stdout_text(), "second\n");
    // Two more meet at a FIFO: opening one end blocks until the other end
    // is opened, so each finishes only if both run at the same time (one
    // after the other, the first would block until its timeout).
    sh(&sandbox, "mkfifo /tmp/meet").await;
    let meet = |script: &str| {
        sandbox.run(
            ExecOptions {
                timeout: Some(Duration::from_secs(60)),
                ..ExecOptions::new(["sh", "-c", script])
            },
            None,
        )
    };
    let (writer, reader) = tokio::join!(
        meet("echo hello > /tmp/meet; echo wrote"),
        meet("read line < /tmp/meet; echo \"read $line\"")
    );
    let (writer, reader) = (writer.unwrap(), reader.unwrap());
    for out in [&writer, &reader] {
        assert_eq!(
            (out.report.reason, out.report.code),
            (ExitReason::Exited, 0),
            "{out:?}"
        );
    }
    assert_eq!(
        (writer.stdout_text(), reader.stdout_text()),
        ("wrote\n".into(), "read hello\n".into())
    );

    stdin.write(Bytes::from_static(b"first\n")).await.unwrap();
    stdin.close();
    let mut output = Vec::new();
    while let Some(event) = waiting.next_event().await.unwrap() {
        if let ExecEvent::Stdout(data) = event {
            output.extend_from_slice(&data);
        }
    }
    assert_eq!(output, b"got first\n");
    sandbox.destroy().await;
    t.assert_clean().await;
}

/// Wait for the process `argv[1]` to exit (at most 30 s); print whether it did.
const WAIT_EXIT: &str = r#"
import os, select, sys
try:
    fd = os.pidfd_open(int(sys.argv[1]))
except ProcessLookupError:
    print("exited")
    sys.exit(0)
print("exited" if select.select([fd], [], [], 30)[0] else "still running")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kill_and_drop_end_a_running_command() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let mut execution = sandbox
        .exec(ExecOptions::new(["sleep", "300"]))
        .await
        .unwrap();
    assert!(matches!(
        execution.next_event().await.unwrap(),
        Some(ExecEvent::Started(_))
    ));
    execution.kill().await.unwrap();
    let report = loop {
        if let Some(ExecEvent::Exit(report)) = execution.next_event().await.unwrap() {
            break report;
        }
    };
    assert_eq!(report.reason, ExitReason::Killed);

    // Dropping the stream (a client that went away) kills the command too.
    let mut dropped = sandbox
        .exec(ExecOptions::new(["sh", "-c", "exec sleep 301"]))
        .await
        .unwrap();
    let Some(ExecEvent::Started(pid)) = dropped.next_event().await.unwrap() else {
        panic!("no Started event");
    };
    drop(dropped);
    // A pidfd becomes readable when its process exits: wait on that, in the
    // guest, for at most 30 s.
    let exited = sandbox
        .run(
            ExecOptions::new(["python3", "-c", WAIT_EXIT, &pid.to_string()]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        exited.stdout_text(),
        "exited\n",
        "the dropped exec's process {} kept running: {exited:?}",
        pid
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}
