//! A guest that fills its disk fills only its own: the server's home on a
//! small tmpfs (as in the original report, where a 1 GiB disk was accepted
//! on a 50 MB filesystem and the guest's writes then wedged the server and
//! its store). Needs root to mount the tmpfs, as the suite does.

mod common;

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use common::served::{temp_home, wait_no_vmms, Served};

/// A tmpfs of `size` on `dir`, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Tmpfs<'a> {
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "hearth-test",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test]
async fn a_guest_filling_its_disk_fills_only_its_own() {
    let dir = temp_home();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let _fs = Tmpfs::mount(&home, "96m");
    let mut server = Served::start(&home, &["--disk-reserve", "16M"]);

    // A disk the filesystem cannot hold is refused up front, naming disk.
    let (status, body) = server
        .post("/v1/sandboxes", json!({"memory": "256M", "disk": "1G"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "capacity_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not enough free disk"), "{body}");
    assert!(message.contains("--disk-reserve"), "{body}");
    let (_, events) = server.get("/v1/events").await;
    assert!(
        events.to_string().contains("\"limit\":\"disk\""),
        "{events}"
    );

    // One that fits is allocated in full: the guest can fill it, and
    // nothing more.
    let id = server
        .create(json!({"memory": "256M", "disk": "40M"}))
        .await;
    let (status, out) = server
        .post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            json!({
                "argv": ["sh", "-c", "dd if=/dev/zero of=/root/big bs=1M count=200 conv=fsync; echo dd=$?"],
                "timeout": 60,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.contains("dd=1"), "the guest's disk filled: {out}");
    assert!(
        out["stderr"].as_str().unwrap().contains("No space left"),
        "{out}"
    );
    // The host's filesystem still has room: the store writes, other
    // calls answer, and a destroy records the end.
    let run = server.run(&id, &["echo", "still here"]).await;
    assert_eq!(run["stdout"], "still here\n");
    let (status, ended) = server
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["state"], "stopped", "{ended}");
    wait_no_vmms(&home).await;
    let df = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&home)
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes");
    assert!(
        free > 40 << 20,
        "the disk was freed with its sandbox: {free}"
    );
    assert!(server.signal("TERM").await.success());
}
