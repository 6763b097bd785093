//! Clean shutdown, timeout changes and zombie reaping, on real VMs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{sh, wait_until, TestHome};
use hearth_sandbox::{EndReason, ExecOptions, Sandbox};

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_powers_the_guest_off() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let end = sandbox.shutdown(Duration::from_secs(30)).await;
    assert_eq!(end.reason, EndReason::Exited, "{end}");
    assert!(
        end.console_log.is_none(),
        "a clean end keeps no failure log"
    );
    t.assert_clean().await;
}

/// `pid:starttime` of each process still alive (zombies included) among
/// `processes`; the start time tells a reused pid from the original.
async fn still_there(sandbox: &Sandbox, processes: &str) -> String {
    let script = format!(
        "for ps in {processes}; do p=${{ps%:*}}; \
         [ \"$(cut -d' ' -f22 /proc/$p/stat 2>/dev/null)\" = \"${{ps#*:}}\" ] && \
         echo \"$p $(grep '^State:' /proc/$p/status | cut -f2) ppid $(grep '^PPid:' /proc/$p/status | cut -f2)\"; \
         done; true"
    );
    sh(sandbox, &script).await.stdout_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_processes_are_reaped_by_the_agent() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    // Each subshell starts a sleeper and exits at once: the sleepers are
    // orphans, reparented to PID 1 (the agent), which alone can reap them.
    let out = sh(
        &sandbox,
        "for i in 1 2 3 4 5; do (sleep 3600 >/dev/null 2>&1 & \
         sleep_pid=$!; echo $sleep_pid:$(cut -d' ' -f22 /proc/$sleep_pid/stat)); done",
    )
    .await;
    let orphans: Vec<String> = out
        .stdout_text()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(orphans.len(), 5, "{out:?}");
    let orphans = orphans.join(" ");

    // They exist, and their parent is PID 1.
    let alive = still_there(&sandbox, &orphans).await;
    let lines: Vec<&str> = alive.lines().collect();
    assert_eq!(lines.len(), 5, "orphans {orphans}: {alive}");
    assert!(
        lines.iter().all(|l| l.ends_with("ppid 1")),
        "not reparented to PID 1: {alive}"
    );

    // Killed, they become zombies of PID 1 until the agent's reaper
    // collects them; without it they would stay zombies for ever.
    let pids: Vec<&str> = orphans
        .split_whitespace()
        .map(|ps| ps.split(':').next().unwrap())
        .collect();
    sh(&sandbox, &format!("kill -9 {}", pids.join(" "))).await;
    let left = wait_until(
        Duration::from_secs(30),
        || still_there(&sandbox, &orphans),
        String::is_empty,
    )
    .await;
    assert!(left.is_empty(), "killed orphans were never reaped: {left}");
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeout_can_be_extended() {
    let t = TestHome::new();
    let original = Duration::from_secs(3);
    let sandbox = t
        .sandbox(hearth_sandbox::SandboxOptions {
            memory: "256M".parse().unwrap(),
            timeout: Some(original),
            ..Default::default()
        })
        .await;
    // The lifetime starts just before create returns, so the original
    // deadline is at or before this instant.
    let original_deadline = tokio::time::Instant::now() + original;
    sandbox.set_timeout(Some(Duration::from_secs(120))).unwrap();

    // A command that runs across the original deadline completes: had the
    // monitor kept the old deadline, the VM would be killed under it.
    let mut across = sandbox
        .exec(ExecOptions {
            stdin: true,
            ..ExecOptions::new(["cat"])
        })
        .await
        .unwrap();
    let stdin = across.take_stdin().unwrap();
    tokio::time::sleep_until(original_deadline).await;
    stdin.write(Bytes::from_static(b"alive\n")).await.unwrap();
    stdin.close();
    let out = across
        .collect(1024)
        .await
        .expect("the command outlives the original deadline");
    assert_eq!(out.stdout_text(), "alive\n");
    assert!(
        sandbox.end().is_none(),
        "ended despite the extension: {:?}",
        sandbox.end()
    );
    assert!(sandbox.set_timeout(Some(Duration::MAX)).is_err());
    sandbox.destroy().await;
    t.assert_clean().await;
}
