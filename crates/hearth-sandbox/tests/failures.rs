//! Bad input and guest failures: clear errors, nothing left running.

mod common;

use std::time::Duration;

use common::TestHome;
use hearth_sandbox::{EndReason, ExecOptions, Sandbox, SandboxError, SandboxOptions};

#[tokio::test(flavor = "multi_thread")]
async fn invalid_options_are_refused_before_anything_starts() {
    let t = TestHome::new();
    let err = Sandbox::create(
        &t.home,
        &t.driver,
        SandboxOptions {
            vcpus: 0,
            ..SandboxOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("vcpus"), "{err}");

    let err = Sandbox::create(
        &t.home,
        &t.driver,
        SandboxOptions {
            image: "no-such-image".into(),
            ..SandboxOptions::default()
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no-such-image") && text.contains("hearth image build"),
        "{text}"
    );
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_kernel_panic_is_reported_with_the_console() {
    let t = TestHome::new();
    // Only a privileged sandbox may write /proc/sysrq-trigger.
    let sandbox = t.small_privileged().await;
    let run = sandbox
        .run(
            ExecOptions::new(["sh", "-c", "echo c > /proc/sysrq-trigger"]),
            None,
        )
        .await;
    let end = tokio::time::timeout(Duration::from_secs(60), sandbox.wait())
        .await
        .expect("the panicked VM ends");
    assert_eq!(
        end.reason,
        EndReason::GuestKernelPanic,
        "{end}; run output: {run:?}"
    );
    assert!(end.to_string().contains("sysrq"), "{end}");
    let log = end
        .console_log
        .clone()
        .expect("console log kept on failure");
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("Kernel panic"));
    // Named by its place in the home, not by a host path.
    let text = end.to_string();
    assert!(text.contains("full console log: logs/sb-"), "{text}");
    assert!(!text.contains(&*t.dir.path().to_string_lossy()), "{text}");
    // Later calls say the sandbox ended, and why.
    let err = sandbox
        .run(ExecOptions::new(["true"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::Ended(_)) || err.to_string().contains("connection"),
        "{err}"
    );
    t.assert_clean().await;
}

/// Crash the guest agent (PID 1) from a workload: attach with ptrace and
/// point its instruction pointer at address 0.
const CRASH_PID1: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_POKEUSER, PTRACE_ATTACH, PTRACE_DETACH = 6, 16, 17
assert libc.ptrace(PTRACE_ATTACH, 1, None, None) == 0, ctypes.get_errno()
os.waitpid(1, 0x40000000)
RIP = 16 * 8
assert libc.ptrace(PTRACE_POKEUSER, 1, ctypes.c_void_p(RIP), None) == 0, ctypes.get_errno()
libc.ptrace(PTRACE_DETACH, 1, None, None)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_agent_crash_is_reported() {
    let t = TestHome::new();
    // Only a privileged sandbox's execs may trace the agent.
    let sandbox = t.small_privileged().await;
    let _ = sandbox
        .run(ExecOptions::new(["python3", "-c", CRASH_PID1]), None)
        .await;
    let end = tokio::time::timeout(Duration::from_secs(60), sandbox.wait())
        .await
        .expect("the VM ends when its agent dies");
    assert_eq!(end.reason, EndReason::GuestAgentCrashed, "{end}");
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_killed_from_outside_is_a_vm_crash() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let pid = sandbox.vmm_pid().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), sandbox.wait())
        .await
        .unwrap();
    assert_eq!(end.reason, EndReason::VmCrashed, "{end}");
    assert!(end.message.contains("signal"), "{end}");
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_timeout_holds_when_the_guest_stops_answering() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    let mut exec = sandbox
        .exec(ExecOptions {
            timeout: Some(Duration::from_secs(1)),
            ..ExecOptions::new(["sleep", "600"])
        })
        .await
        .unwrap();
    // The whole VM freezes: nothing the guest would do reaches the host.
    let pid = sandbox.vmm_pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match exec.next_event().await.unwrap() {
                Some(hearth_sandbox::ExecEvent::Exit(report)) => return report,
                Some(_) => {}
                None => panic!("the exec ended without a report"),
            }
        }
    })
    .await;
    signal("-CONT");
    let report = ended.expect("the host ended the exec");
    assert_eq!(
        report.reason,
        hearth_proto::ExitReason::TimedOut,
        "{report:?}"
    );
    let message = report.message.unwrap_or_default();
    assert!(message.contains("host-enforced"), "{message}");
    assert!(exec.next_event().await.unwrap().is_none());
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_every_handle_destroys_the_sandbox() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    assert_eq!(t.live_vmms(), [sandbox.vmm_pid().unwrap()]);
    drop(sandbox);
    // Nothing is left to wait on: the VMM and the files must go by themselves.
    t.assert_clean().await;
}

/// Write garbage into the agent's channel, as root in the guest can: take
/// the agent's descriptor of the virtio-serial port (`pidfd_getfd`, syscall
/// 438) and write to it. `argv[1]` is how many writes (0: until killed),
/// 50 ms apart. Runs in the background after a second, so the exec that
/// starts it ends cleanly first.
const GARBLE_CHANNEL: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
port_fd = None
for name in os.listdir("/proc/1/fd"):
    try:
        if os.readlink(f"/proc/1/fd/{name}").startswith("/dev/vport"):
            port_fd = int(name)
            break
    except OSError:
        pass
assert port_fd is not None, os.listdir("/proc/1/fd")
pidfd = os.pidfd_open(1)
port = libc.syscall(438, pidfd, port_fd, 0)
assert port >= 0, ctypes.get_errno()
time.sleep(1)
count = int(sys.argv[1])
n = 0
while count == 0 or n < count:
    try:
        os.write(port, b"\xff\xff\xff\x07\x00" + b"garbage " * 8)
    except OSError:
        pass
    n += 1
    time.sleep(0.05)
"#;

/// Start [`GARBLE_CHANNEL`] in the guest, detached from the exec.
async fn garble_channel(sandbox: &Sandbox, writes: u32) {
    let script = format!("python3 -c \"$0\" {writes} >/tmp/garble.log 2>&1 </dev/null &",);
    let out = sandbox
        .run(
            ExecOptions::new(["sh", "-c", &script, GARBLE_CHANNEL]),
            None,
        )
        .await
        .expect("the attack starts");
    assert_eq!(out.report.code, 0, "{}", out.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_the_channel_once_is_survived_by_a_reconnect() {
    let t = TestHome::new();
    // Only a privileged sandbox's root can take the agent's descriptor
    // (tests/isolation.rs shows the others cannot); the host must still
    // survive what it does with it.
    let sandbox = t.small_privileged().await;
    garble_channel(&sandbox, 1).await;
    let (reconnects, end) = common::wait_until(
        Duration::from_secs(120),
        || async { (sandbox.channel_reconnects(), sandbox.end()) },
        |(n, end)| *n >= 1 || end.is_some(),
    )
    .await;
    assert!(end.is_none(), "the sandbox ended: {end:?}");
    assert_eq!(reconnects, 1, "the host did not reconnect within 120s");
    // Later calls work on the new connection, and the attack had run.
    let out = common::sh(&sandbox, "cat /tmp/garble.log; echo works").await;
    assert_eq!(out.stdout_text(), "works\n", "{}", out.stderr_text());
    assert!(sandbox.end().is_none());
    assert_eq!(sandbox.destroy().await.reason, EndReason::Destroyed);
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_keeps_garbling_its_channel_is_ended() {
    let t = TestHome::new();
    // Only a privileged sandbox's root can take the agent's descriptor
    // (tests/isolation.rs shows the others cannot); the host must still
    // survive what it does with it.
    let sandbox = t.small_privileged().await;
    garble_channel(&sandbox, 0).await;
    let end = tokio::time::timeout(Duration::from_secs(180), sandbox.wait())
        .await
        .expect("the sandbox ends once the channel keeps breaking");
    assert_eq!(end.reason, EndReason::GuestChannelLost, "{end}");
    assert!(end.message.contains("host channel"), "{end}");
    assert!(end.console_log.is_some(), "a failure keeps its console log");
    // The VM is gone and nothing is left.
    t.assert_clean().await;
    let err = sandbox
        .run(ExecOptions::new(["true"]), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("guest_channel_lost"), "{err}");
}
