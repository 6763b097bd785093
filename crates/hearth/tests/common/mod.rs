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
