//! The host keeps its channel to the guest agent (`hearth_sandbox::channel`),
//! against the fake VM driver, whose relay breaks a channel connection the
//! way a guest writing garbage into its port does. Needs
//! `cargo build -p hearth-guest` first. The same attack on a real VM is in
//! `failures.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hearth_sandbox::{EndReason, ExecEvent, ExecOptions, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::fake::FakeDriver;

struct Fake {
    dir: tempfile::TempDir,
    home: HearthHome,
    driver: FakeDriver,
    sandbox: Sandbox,
}

impl Fake {
    async fn new() -> Fake {
        // Short paths: the guest socket's path must fit a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("hh")
            .tempdir_in("/tmp")
            .unwrap();
        let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
        hearth_image::write_placeholder(home.images_dir(), "default").unwrap();
        let driver = FakeDriver::locate().expect(
            "the fake driver runs hearth-guest: build it with `cargo build -p hearth-guest`",
        );
        let sandbox = Sandbox::create(&home, &driver, SandboxOptions::default())
            .await
            .expect("fake sandbox boots");
        Fake {
            dir,
            home,
            driver,
            sandbox,
        }
    }

    async fn echo(&self, text: &str) -> hearth_sandbox::Result<String> {
        let out = self
            .sandbox
            .run(ExecOptions::new(["echo", text]), None)
            .await?;
        Ok(out.stdout_text())
    }

    /// Wait (bounded, generously) until the sandbox has ended, then check
    /// that its "VM" and files are gone.
    async fn wait_ended(&self) -> hearth_sandbox::SandboxEnd {
        let end = tokio::time::timeout(Duration::from_secs(90), self.sandbox.wait())
            .await
            .expect("the sandbox ends");
        assert!(
            self.driver.running().is_empty(),
            "VMs left: {:?}",
            self.driver.running()
        );
        let left: Vec<_> = std::fs::read_dir(self.home.sandboxes_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "sandbox files left: {left:?}");
        let _ = &self.dir;
        end
    }
}

/// Poll until the keeper has reconnected `count` times (bounded).
async fn reconnected(sandbox: &Sandbox, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sandbox.channel_reconnects() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect within 60s (end: {:?})",
            sandbox.end()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_channel_is_reconnected_and_later_calls_work() {
    let f = Fake::new().await;
    assert_eq!(f.echo("before").await.unwrap(), "before\n");

    // A call in flight at the break fails.
    let mut streaming = f
        .sandbox
        .exec(ExecOptions::new([
            "sh",
            "-c",
            "echo started; exec sleep 600",
        ]))
        .await
        .unwrap();
    loop {
        match streaming.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(_)) => break,
            Some(_) => {}
            None => panic!("the command ended before the break"),
        }
    }
    assert!(f.driver.break_channel(f.sandbox.id()));
    let broke = loop {
        match streaming.next_event().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended cleanly across a broken channel"),
            Err(error) => break error,
        }
    };
    assert!(broke.to_string().contains("broke"), "{broke}");

    // The keeper reconnects; later calls work, more than once.
    reconnected(&f.sandbox, 1).await;
    assert_eq!(f.echo("after").await.unwrap(), "after\n");
    assert!(f.driver.break_channel(f.sandbox.id()));
    reconnected(&f.sandbox, 2).await;
    assert_eq!(f.echo("again").await.unwrap(), "again\n");
    assert!(f.sandbox.end().is_none(), "{:?}", f.sandbox.end());

    let end = f.sandbox.destroy().await;
    assert_eq!(end.reason, EndReason::Destroyed, "{end}");
    f.wait_ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_keeps_breaking_ends_the_sandbox() {
    let f = Fake::new().await;
    // Every new connection breaks soon after it opens, and the current one
    // breaks now: the host must stop reconnecting and end the sandbox.
    f.driver
        .faults()
        .break_channels
        .store(true, Ordering::SeqCst);
    assert!(f.driver.break_channel(f.sandbox.id()));
    let end = f.wait_ended().await;
    assert_eq!(end.reason, EndReason::GuestChannelLost, "{end}");
    assert!(end.reason.is_failure());
    assert!(end.message.contains("host channel"), "{end}");
    // Calls now say the sandbox ended, and why.
    let error = f.echo("late").await.unwrap_err();
    assert!(error.to_string().contains("guest_channel_lost"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_cannot_be_reopened_ends_the_sandbox() {
    let f = Fake::new().await;
    f.driver
        .faults()
        .refuse_connect
        .store(true, Ordering::SeqCst);
    assert!(f.driver.break_channel(f.sandbox.id()));
    let end = f.wait_ended().await;
    assert_eq!(end.reason, EndReason::GuestChannelLost, "{end}");
    assert!(end.message.contains("reconnecting failed"), "{end}");
    assert!(end.message.contains("refused by the test"), "{end}");
    assert_eq!(f.sandbox.channel_reconnects(), 0);
}

/// A call made while the host reconnects waits for the new connection
/// instead of failing "guest connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_the_channel_reconnects_waits_for_it() {
    let f = Fake::new().await;
    assert_eq!(f.echo("before").await.unwrap(), "before\n");
    // Hold the reconnect back: its first attempt is refused, the next comes
    // 500 ms later.
    f.driver
        .faults()
        .refuse_connect
        .store(true, Ordering::SeqCst);
    assert!(f.driver.break_channel(f.sandbox.id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while f.sandbox.channel_open() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the break is never seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sandbox = f.sandbox.clone();
    let call = tokio::spawn(async move {
        sandbox
            .run(ExecOptions::new(["echo", "during"]), None)
            .await
            .map(|out| out.stdout_text())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "{:?}", call.await);
    f.driver
        .faults()
        .refuse_connect
        .store(false, Ordering::SeqCst);
    assert_eq!(call.await.unwrap().unwrap(), "during\n");
    assert_eq!(f.sandbox.channel_reconnects(), 1);
    let end = f.sandbox.destroy().await;
    assert_eq!(end.reason, EndReason::Destroyed, "{end}");
    f.wait_ended().await;
}
