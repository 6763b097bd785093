//! Clean shutdown, timeout changes and zombie reaping, on real VMs.

mod common;

use std::time::Duration;

use common::{sh, TestHome};
use hearth_sandbox::EndReason;

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

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_processes_are_reaped_by_the_agent() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    // Children that outlive their parent are reparented to PID 1 (the agent).
    sh(&sandbox, "for i in 1 2 3 4 5; do (sleep 0.2 &); done").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let zombies = sh(
        &sandbox,
        "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
    )
    .await
    .stdout_text();
    assert_eq!(zombies.trim(), "0", "zombie processes were left unreaped");
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeout_can_be_extended() {
    let t = TestHome::new();
    let sandbox = t
        .sandbox(hearth_sandbox::SandboxOptions {
            memory: "256M".parse().unwrap(),
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .await;
    sandbox.set_timeout(Some(Duration::from_secs(120))).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        sandbox.end().is_none(),
        "ended despite the extension: {:?}",
        sandbox.end()
    );
    assert_eq!(sh(&sandbox, "echo alive").await.stdout_text(), "alive\n");
    sandbox.destroy().await;
    t.assert_clean().await;
}
