//! Isolation and ephemerality, on real VMs.

mod common;

use common::{sh, TestHome};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn guest_runs_its_own_kernel_and_cannot_see_host_files() {
    let t = TestHome::new();
    let marker = format!("/tmp/hearth-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    let sandbox = t.small().await;

    let image = hearth_image::open(t.home.images_dir(), "default").unwrap();
    let guest_release = sh(&sandbox, "uname -r").await.stdout_text();
    assert_eq!(guest_release.trim(), image.manifest().inputs.kernel_release);
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest_release.trim(), host_release.trim());
    assert_eq!(sandbox.info().guest.kernel_release, guest_release.trim());

    let probe = sh(
        &sandbox,
        &format!("test -e {marker} && echo visible || echo absent"),
    )
    .await;
    assert_eq!(probe.stdout_text(), "absent\n");

    sandbox.destroy().await;
    std::fs::remove_file(&marker).unwrap();
    t.assert_clean().await;
}

fn sha256_file(path: &std::path::Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_never_outlive_a_sandbox_or_touch_the_base_image() {
    let t = TestHome::new();
    let image = hearth_image::open(t.home.images_dir(), "default").unwrap();
    let before = sha256_file(&image.rootfs());

    let first = t.small().await;
    let out = sh(
        &first,
        "echo persisted > /root/state && rm -rf /usr/share/doc && echo x > /etc/motd && cat /root/state",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "persisted\n",
        "stderr: {}",
        out.stderr_text()
    );
    first.destroy().await;

    let second = t.small().await;
    let out = sh(
        &second,
        "test -e /root/state && echo present || echo gone; test -d /usr/share/doc && echo doc",
    )
    .await;
    assert_eq!(out.stdout_text(), "gone\ndoc\n");
    second.destroy().await;

    assert_eq!(sha256_file(&image.rootfs()), before, "base image changed");
    t.assert_clean().await;
}
