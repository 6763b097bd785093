//! Helpers shared by the end-to-end tests of the `hearth` binary.

use std::path::{Path, PathBuf};

pub mod served;

/// The guest images: `HEARTH_IMAGES`, or the default home's.
pub fn images() -> PathBuf {
    std::env::var_os("HEARTH_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".local/share/hearth/images")
        })
}

/// Run the `hearth` binary with `args` against the server at `url`, home
/// `home`, and collect its output.
#[allow(dead_code)] // Not every test binary uses every helper.
pub fn hearth(home: &Path, url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .env("HEARTH_URL", url)
        .env_remove("HEARTH_LOG")
        .output()
        .unwrap()
}

/// QEMU processes whose command line names `home` (the VMs of sandboxes
/// under it).
pub fn live_vmms(home: &Path) -> Vec<u32> {
    let needle = home.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu-system") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}
