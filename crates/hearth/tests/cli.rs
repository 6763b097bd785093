//! End-to-end tests that drive the real `hearth` binary (and real VMs).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

struct Env {
    home: tempfile::TempDir,
    images: PathBuf,
}

impl Env {
    fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("hc")
            .tempdir_in("/tmp")
            .unwrap();
        let images = common::images();
        Self { home, images }
    }

    fn hearth(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        cmd.env("HEARTH_HOME", self.home.path())
            .env("HEARTH_IMAGES", &self.images)
            .env_remove("HEARTH_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.hearth().args(args).output().unwrap()
    }

    fn sandboxes(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.home.path().join("sandboxes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn live_vmms(&self) -> Vec<u32> {
        common::live_vmms(self.home.path())
    }

    fn assert_clean(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.live_vmms().is_empty() && self.sandboxes().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "leaked: vmms {:?}, files {:?}",
            self.live_vmms(),
            self.sandboxes()
        );
    }
}

/// Kills the child if the test fails before it is reaped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn runs_python_and_passes_exit_codes_through() {
    let env = Env::new();
    let out = env.run(&["sandbox", "run", "--", "python3", "-c", "print(6*7)"]);
    assert_eq!(text(&out.stdout), "42\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let out = env.run(&[
        "sandbox",
        "run",
        "--memory",
        "256M",
        "--",
        "sh",
        "-c",
        "echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stderr), "err\n");

    let out = env.run(&[
        "sandbox",
        "run",
        "--memory",
        "256M",
        "--",
        "definitely-not-a-command",
    ]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("definitely-not-a-command"),
        "{}",
        text(&out.stderr)
    );
    env.assert_clean();
}

#[test]
fn forwards_stdin_env_and_workdir() {
    let env = Env::new();
    let mut child = env
        .hearth()
        .args([
            "sandbox",
            "run",
            "--memory",
            "256M",
            "--vcpus",
            "2",
            "--disk",
            "512M",
            "--timeout",
            "60s",
            "--env",
            "K=V",
            "--workdir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "cat; echo $K; pwd; nproc",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "hello\nV\n/tmp\n2\n",
        "stderr: {}",
        text(&out.stderr)
    );
    env.assert_clean();
}

#[test]
fn bad_input_gives_one_line_errors_and_starts_nothing() {
    let env = Env::new();
    let out = env.run(&["sandbox", "run", "--memory", "12XB", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("12XB"), "{}", text(&out.stderr));

    let out = env.run(&["sandbox", "run", "--vcpus", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("vcpus"), "{stderr}");

    let out = env.run(&["sandbox", "run", "--image", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("hearth image build"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = env.run(&["sandbox", "run", "--timeout", "-3s", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));

    // A database that cannot be reached, or a URL that is not one: one
    // line naming the URL, its password hidden, and a non-zero exit.
    for (url, needle) in [
        (
            "postgres://hearth:s3cret@127.0.0.1:1/hearth",
            "Connection refused",
        ),
        (
            "mysql://hearth:s3cret@localhost/hearth",
            "unsupported scheme",
        ),
        (
            "postgres://hearth:s3cret@127.0.0.1:notaport/hearth",
            "invalid port",
        ),
    ] {
        let out = env.run(&["serve", "--listen", "127.0.0.1:0", "--database", url]);
        assert_eq!(out.status.code(), Some(125), "{url}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains("hearth:***@"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }

    // Certificates to trust for https:// tools that are missing or are
    // not certificates.
    let not_pem = env.home.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (file, needle) in [
        ("/nonexistent/ca.pem".to_string(), "No such file"),
        (not_pem.display().to_string(), "no PEM certificate"),
    ] {
        let out = env.run(&["serve", "--listen", "127.0.0.1:0", "--tools-ca", &file]);
        assert_eq!(out.status.code(), Some(125), "{file}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--tools-ca") && stderr.contains(needle),
            "{stderr}"
        );
    }
    env.assert_clean();
}

#[test]
fn a_sandbox_past_its_timeout_is_reported_as_timed_out() {
    let env = Env::new();
    let out = env.run(&[
        "sandbox",
        "run",
        "--memory",
        "256M",
        "--timeout",
        "3s",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("timed_out"),
        "{}",
        text(&out.stderr)
    );
    env.assert_clean();
}

/// Wait until the sandbox's VM has booted (its console says the agent is ready).
fn wait_until_running(env: &Env) -> PathBuf {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(dir) = env.sandboxes().into_iter().next() {
            let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            if console.contains("ready") && !env.live_vmms().is_empty() {
                return dir;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the sandbox never came up");
}

#[test]
fn sigint_tears_the_vm_down() {
    let env = Env::new();
    let mut child = ChildGuard(
        env.hearth()
            .args(["sandbox", "run", "--memory", "256M", "--", "sleep", "300"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until_running(&env);
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    env.assert_clean();
}

#[test]
fn after_a_sigkill_the_next_command_reaps_the_orphan() {
    let env = Env::new();
    let mut child = ChildGuard(
        env.hearth()
            .args(["sandbox", "run", "--memory", "256M", "--", "sleep", "300"])
            .spawn()
            .unwrap(),
    );
    let dir = wait_until_running(&env);
    Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    child.0.wait().unwrap();
    // The VM dies with its owner (parent-death signal); its files remain
    // until the next hearth command reaps them.
    let start = Instant::now();
    while !env.live_vmms().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.live_vmms().is_empty(), "the VM outlived its owner");
    // Its watcher saw its owner go, killed it and removed its cgroup (this
    // host mounts the v1 pids controller at /sys/fs/cgroup/pids).
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    let cgroup = std::path::Path::new("/sys/fs/cgroup/pids/hearth/vmm").join(&id);
    while cgroup.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!cgroup.exists(), "the VMM's cgroup outlived it");
    assert!(dir.exists(), "state should remain until gc");
    let out = env.run(&["gc"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("reaped 1 orphaned"), "{stdout}");
    assert!(!dir.exists());
    let logs = env.home.path().join("logs");
    assert!(
        std::fs::read_dir(logs).unwrap().count() >= 1,
        "console log kept"
    );
    env.assert_clean();
}

#[test]
fn doctor_reports_the_accelerator_and_image() {
    let env = Env::new();
    let out = env.run(&["doctor"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("accelerator: "), "{stdout}");
    assert!(stdout.contains("image default: ok"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}
