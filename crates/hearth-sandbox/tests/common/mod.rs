//! Shared set-up for tests that boot real VMs: a throwaway `HEARTH_HOME` per
//! test over the one shared, prebuilt guest image, and a leak check.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use hearth_sandbox::{ExecOptions, ExecOutput, HearthHome, Sandbox, SandboxOptions};
use hearth_vm::qemu::QemuDriver;

/// A per-test home; on drop, checks that nothing was left behind.
pub struct TestHome {
    pub home: HearthHome,
    pub driver: QemuDriver,
    pub dir: tempfile::TempDir,
}

/// The shared image directory: `$HEARTH_IMAGES`, or the default home's.
pub fn images_dir() -> PathBuf {
    HearthHome::from_env().images_dir().to_path_buf()
}

impl TestHome {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hh")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let images = images_dir();
        if hearth_image::open(&images, "default").is_err() {
            panic!(
                "no guest image in {}: run scripts/test.sh (it builds the image) or `hearth image build`",
                images.display()
            );
        }
        Self {
            home: HearthHome::new(dir.path(), images),
            driver: QemuDriver::locate().expect("qemu-system-x86_64 installed"),
            dir,
        }
    }

    pub async fn sandbox(&self, options: SandboxOptions) -> Sandbox {
        let options = SandboxOptions {
            accel: hearth_vm::AccelPreference::Auto,
            ..options
        };
        Sandbox::create(&self.home, &self.driver, options)
            .await
            .expect("sandbox boots")
    }

    pub async fn small(&self) -> Sandbox {
        self.sandbox(SandboxOptions {
            memory: "256M".parse().unwrap(),
            ..SandboxOptions::default()
        })
        .await
    }

    /// [`Self::small`] with `privileged: true`: its execs get full root.
    pub async fn small_privileged(&self) -> Sandbox {
        self.sandbox(SandboxOptions {
            memory: "256M".parse().unwrap(),
            privileged: true,
            ..SandboxOptions::default()
        })
        .await
    }

    /// Files left in the sandboxes directory (should be none after destroy).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.home.sandboxes_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// QEMU processes whose command line names this home.
    pub fn live_vmms(&self) -> Vec<u32> {
        let needle = self.dir.path().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Assert nothing of any sandbox remains, allowing the monitor a
    /// bounded time to reap the VMM and remove the files.
    pub async fn assert_clean(&self) {
        let (vmms, files) = wait_until(
            Duration::from_secs(10),
            || async { (self.live_vmms(), self.leftovers()) },
            |(vmms, files)| vmms.is_empty() && files.is_empty(),
        )
        .await;
        assert!(
            vmms.is_empty() && files.is_empty(),
            "leaked: VMM pids {vmms:?}, files {files:?}"
        );
    }
}

/// Probe until `done` holds for what `probe` saw, or `limit` has passed;
/// returns the last thing seen. For conditions nothing signals (another
/// process's files, a guest's process table); each probe is bounded.
pub async fn wait_until<T, F, Fut>(limit: Duration, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = probe().await;
        if done(&seen) || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `sh -c script` and collect the result.
pub async fn sh(sandbox: &Sandbox, script: &str) -> ExecOutput {
    sandbox
        .run(ExecOptions::new(["sh", "-c", script]), None)
        .await
        .expect("exec runs")
}
