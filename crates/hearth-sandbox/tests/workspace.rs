//! Durable workspaces, on real VMs: the writable layer kept as a chain of
//! qcow2 layers, frozen by checkpoints, and a fresh VM booted on the last
//! checkpoint sees exactly the files written before it.

mod common;

use common::{sh, TestHome};
use hearth_sandbox::SandboxOptions;
use hearth_vm::{scratch, Checkpoint, ScratchDisk};

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_booted_on_a_checkpoint_has_the_files_written_before_it_and_no_later_ones() {
    let t = TestHome::new();
    let dir = t.dir.path().join("workspace");
    std::fs::create_dir_all(&dir).unwrap();
    scratch::create_base_layer(&dir, "base.qcow2", 256 << 20).unwrap();
    let options = |top: &str| SandboxOptions {
        memory: "256M".parse().unwrap(),
        scratch: ScratchDisk::Layered {
            dir: dir.clone(),
            top: top.into(),
        },
        ..SandboxOptions::default()
    };

    let first = t.sandbox(options("base.qcow2")).await;
    let wrote = sh(
        &first,
        "mkdir -p /work && echo one > /work/a.txt && dd if=/dev/urandom of=/work/big bs=1M count=3 2>/dev/null && sha256sum /work/big",
    )
    .await;
    assert_eq!(wrote.report.code, 0, "{wrote:?}");
    let big_digest = wrote.stdout_text();
    let frozen = first.checkpoint("l1.qcow2").await.unwrap();
    assert_eq!(
        frozen,
        Checkpoint::Frozen {
            layer: "base.qcow2".into()
        }
    );
    // Nothing written since: the same checkpoint, no new layer.
    let again = first.checkpoint("l2.qcow2").await.unwrap();
    assert_eq!(again.layer(), "base.qcow2", "{again:?}");
    assert!(!dir.join("l2.qcow2").exists() || matches!(again, Checkpoint::Frozen { .. }));
    // Written after the checkpoint: must not survive.
    let later = sh(
        &first,
        "echo two > /work/b.txt && echo three > /work/a.txt && sync",
    )
    .await;
    assert_eq!(later.report.code, 0, "{later:?}");
    first.destroy().await;

    // A fresh VM on the checkpoint: its own top layer over the frozen one.
    scratch::create_overlay(&dir, "r1.qcow2", "base.qcow2").unwrap();
    let second = t.sandbox(options("r1.qcow2")).await;
    let seen = sh(
        &second,
        "cat /work/a.txt; test -e /work/b.txt && echo b-exists; sha256sum /work/big",
    )
    .await;
    assert_eq!(seen.report.code, 0, "{seen:?}");
    let text = seen.stdout_text();
    assert!(text.starts_with("one\n"), "{text}");
    assert!(!text.contains("b-exists"), "{text}");
    assert!(text.ends_with(&big_digest), "{text} vs {big_digest}");
    second.destroy().await;

    // An ephemeral sandbox cannot be checkpointed, and says why.
    let plain = t.small().await;
    let error = plain.checkpoint("x.qcow2").await.unwrap_err().to_string();
    assert!(error.contains("ephemeral"), "{error}");
    plain.destroy().await;
    std::fs::remove_dir_all(&dir).unwrap();
    t.assert_clean().await;
}
