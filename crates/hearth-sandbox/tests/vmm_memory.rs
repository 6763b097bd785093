//! A QEMU that goes over its host cgroup's memory limit is killed by the
//! host kernel, and the sandbox's end says so (real VM). The only test in
//! this file, so that the setting below reaches no other test's driver
//! whichever runner starts it.

mod common;

use std::time::Duration;

use common::TestHome;
use hearth_sandbox::{EndReason, ExecOptions};

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_over_its_memory_limit_is_killed_and_its_end_says_why() {
    // QEMU may use 16 MiB beyond the guest's 256 MiB: less than it needs
    // once the guest touches most of its memory.
    // Set before any driver exists (the jail's settings are read once).
    std::env::set_var(hearth_vm::jail::MEMORY_OVERHEAD_ENV, "16");
    let t = TestHome::new();
    let sandbox = t.small().await;
    assert!(t.driver.jail().cgroup.is_ok(), "{:?}", t.driver.jail());
    // The guest writes 200 MiB: within what the guest allows a workload,
    // beyond what the host allows QEMU.
    let _ = tokio::time::timeout(
        Duration::from_secs(120),
        sandbox.run(
            ExecOptions::new([
                "python3",
                "-c",
                "import time; b = bytearray(b'x' * (200 << 20)); time.sleep(60)",
            ]),
            None,
        ),
    )
    .await;
    let end = tokio::time::timeout(Duration::from_secs(60), sandbox.wait())
        .await
        .expect("the sandbox ends");
    assert_eq!(end.reason, EndReason::VmCrashed, "{end}");
    assert!(
        end.message
            .contains("went over this VM's memory limit of 272 MiB"),
        "{end}"
    );
    assert!(end.message.contains("SIGKILL"), "{end}");
    eprintln!("{end}");
    t.assert_clean().await;
}
