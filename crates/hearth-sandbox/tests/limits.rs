//! Resource limits, on real VMs.

mod common;

use std::time::Duration;

use common::{sh, wait_until, TestHome};
use hearth_proto::ExitReason;
use hearth_sandbox::{EndReason, ExecOptions, SandboxError, SandboxOptions};

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_oom_kills_the_hog_and_the_guest_carries_on() {
    let t = TestHome::new();
    let sandbox = t.small().await;

    let meminfo = sh(&sandbox, "grep MemTotal /proc/meminfo")
        .await
        .stdout_text();
    let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mib = kib / 1024;
    assert!(
        (180..=256).contains(&mib),
        "MemTotal {mib} MiB for a 256M sandbox"
    );

    // Allocate and touch 1 MiB at a time until something gives.
    let hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n";
    let out = sandbox
        .run(ExecOptions::new(["python3", "-c", hog]), None)
        .await
        .expect("the exec itself completes");
    assert_eq!(out.report.reason, ExitReason::OomKilled, "{:?}", out.report);
    assert_eq!(out.report.code, 137);
    let message = out.report.message.clone().unwrap_or_default();
    assert!(message.contains("memory"), "{message}");

    // The agent survived and answers.
    assert_eq!(sh(&sandbox, "echo ok").await.stdout_text(), "ok\n");
    let usage = sandbox.usage().await.unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(usage.workload_memory_peak_bytes > 64 << 20, "{usage:?}");

    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vcpus_are_what_was_asked_for() {
    let t = TestHome::new();
    let sandbox = t
        .sandbox(SandboxOptions {
            vcpus: 2,
            memory: "256M".parse().unwrap(),
            ..SandboxOptions::default()
        })
        .await;
    assert_eq!(sh(&sandbox, "nproc").await.stdout_text(), "2\n");
    assert_eq!(sandbox.info().guest.vcpus, 2);
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_quota_gives_enospc_inside_the_guest() {
    let t = TestHome::new();
    let sandbox = t
        .sandbox(SandboxOptions {
            memory: "256M".parse().unwrap(),
            disk: "256M".parse().unwrap(),
            ..SandboxOptions::default()
        })
        .await;
    let out = sh(
        &sandbox,
        "dd if=/dev/zero of=/root/big bs=1M count=512 2>&1; echo status=$?",
    )
    .await;
    let text = out.stdout_text();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!text.contains("status=0"), "{text}");
    let usage = sandbox.usage().await.unwrap();
    assert!(usage.disk_total_bytes <= 256 << 20, "{usage:?}");
    // Still usable after filling the disk.
    assert_eq!(
        sh(&sandbox, "rm /root/big; echo ok").await.stdout_text(),
        "ok\n"
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_timeout_ends_in_a_timeout_report() {
    let t = TestHome::new();
    let sandbox = t
        .sandbox(SandboxOptions {
            memory: "256M".parse().unwrap(),
            timeout: Some(Duration::from_secs(3)),
            // Boot time counts against the timeout; make room for slow boots.
            boot_timeout: Duration::from_secs(60),
            ..SandboxOptions::default()
        })
        .await;
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        sandbox.run(ExecOptions::new(["sleep", "60"]), None),
    )
    .await
    .expect("the exec does not hang past the sandbox timeout");
    match result {
        Err(SandboxError::Ended(end)) => {
            assert_eq!(end.reason, EndReason::TimedOut, "{end}");
            assert!(end.message.contains("3s"), "{end}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(sandbox.end().unwrap().reason, EndReason::TimedOut);
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeout_kills_the_whole_process_tree() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let options = ExecOptions {
        timeout: Some(Duration::from_secs(1)),
        ..ExecOptions::new(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    };
    let out = sandbox.run(options, None).await.unwrap();
    assert_eq!(out.report.reason, ExitReason::TimedOut, "{:?}", out.report);
    let left = sh(
        &sandbox,
        "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -c '^sleep$' || true",
    )
    .await
    .stdout_text();
    assert_eq!(left.trim(), "0", "sleep processes survived the timeout");
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_stays_responsive_under_cpu_fork_and_memory_pressure() {
    let t = TestHome::new();
    let sandbox = t
        .sandbox(SandboxOptions {
            vcpus: 2,
            memory: "256M".parse().unwrap(),
            ..SandboxOptions::default()
        })
        .await;
    // Burn every vCPU, fork-bomb, and hog memory, all at once, in the background.
    let mut hogs = Vec::new();
    for script in [
        "yes > /dev/null & yes > /dev/null & wait",
        "bomb() { bomb | bomb & }; bomb",
        "python3 -c 'x = []\nwhile True: x.append(bytearray(1 << 20))'",
    ] {
        hogs.push(
            sandbox
                .exec(ExecOptions::new(["bash", "-c", script]))
                .await
                .unwrap(),
        );
    }
    // Check responsiveness once the workload really misbehaves: the fork
    // bomb holds a good part of the pid limit and the memory hog has used
    // at least half of the memory limit (a peak, so it stays true after
    // the hog is stopped).
    let usage = wait_until(
        Duration::from_secs(60),
        || async {
            tokio::time::timeout(Duration::from_secs(30), sandbox.usage())
                .await
                .expect("usage answered while the workload misbehaves")
                .unwrap()
        },
        |usage| {
            usage.pids >= 256
                && usage.workload_memory_peak_bytes * 2 >= usage.workload_memory_limit_bytes
        },
    )
    .await;
    assert!(
        usage.pids >= 256
            && usage.workload_memory_peak_bytes * 2 >= usage.workload_memory_limit_bytes,
        "the hogs never got going: {usage:?}"
    );
    for _ in 0..3 {
        let answered = tokio::time::timeout(Duration::from_secs(30), sh(&sandbox, "echo ok"))
            .await
            .expect("echo answered while the workload misbehaves");
        assert_eq!(answered.stdout_text(), "ok\n");
    }
    let usage = tokio::time::timeout(Duration::from_secs(30), sandbox.usage())
        .await
        .expect("usage answered")
        .unwrap();
    assert!(usage.pids <= 1024, "{usage:?}");
    // The memory hog was stopped by the guest (kernel OOM killer or the
    // agent's memory-pressure guard), and says so.
    let mut memory_hog = hogs.pop().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match memory_hog.next_event().await {
                Ok(Some(hearth_sandbox::ExecEvent::Exit(report))) => break report,
                Ok(Some(_)) => continue,
                other => panic!("memory hog stream ended without a report: {other:?}"),
            }
        }
    })
    .await
    .expect("the memory hog was stopped");
    assert_eq!(report.reason, ExitReason::OomKilled, "{report:?}");
    assert!(report.message.unwrap_or_default().contains("memory"));
    drop(hogs);
    let end = tokio::time::timeout(Duration::from_secs(30), sandbox.destroy())
        .await
        .expect("destroy works under load");
    assert_eq!(end.reason, EndReason::Destroyed);
    t.assert_clean().await;
}
