//! `manifest.json`: what an image was built from and the digest of every file in it.
//!
//! The manifest is the cache key. A component is reused only when the inputs it was built
//! from are unchanged and its file still has the recorded size and SHA-256.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::{IoContext, Result};

/// Version of the manifest schema. A manifest with another version is treated as absent.
pub const FORMAT_VERSION: u32 = 1;
/// Version of the rootfs recipe (debootstrap flags, tidying, mkfs options). Bumping it
/// rebuilds every rootfs on the next build.
pub const ROOTFS_RECIPE: u32 = 3;
/// Version of the initramfs recipe (layout, module list). Bumping it rebuilds initramfs.
pub const INITRAMFS_RECIPE: u32 = 1;

/// File names inside an image directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The gzip-compressed newc cpio initramfs.
pub const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
/// The ext4 root filesystem.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// The manifest itself.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Description of a built image, stored as `manifest.json` in its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Image name (the directory name).
    pub name: String,
    /// When the manifest was written, RFC 3339 UTC.
    pub created: String,
    /// What the image was built from.
    pub inputs: Inputs,
    /// File name → digest, for `vmlinuz`, `initramfs.cpio.gz` and `rootfs.ext4`.
    pub files: BTreeMap<String, FileDigest>,
}

/// Everything an image's contents depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// Debian suite of the rootfs, e.g. `bookworm`.
    pub suite: String,
    /// Debian mirror the rootfs was bootstrapped from.
    pub mirror: String,
    /// Packages installed beyond minbase and [`crate::rootfs::BASE_PACKAGES`] (sorted,
    /// deduplicated).
    pub extra_packages: Vec<String>,
    /// Rootfs recipe version, [`ROOTFS_RECIPE`].
    pub rootfs_recipe: u32,
    /// SHA-256 of the `hearth_run` Python module installed in the rootfs. Empty in
    /// manifests written before the module was installed, which therefore rebuild.
    #[serde(default)]
    pub hearth_run_sha256: String,
    /// Initramfs recipe version, [`INITRAMFS_RECIPE`].
    pub initramfs_recipe: u32,
    /// Kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// Version of `busybox-static` packed as `/bin/busybox`.
    pub busybox_version: String,
    /// SHA-256 of the guest agent packed as `/init`.
    pub guest_agent_sha256: String,
    /// Modules in the initramfs, absolute guest paths in load order.
    pub modules: Vec<String>,
}

/// Size and SHA-256 of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read(path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| {
            super::ImageError::io(
                format!("parsing {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Writes the manifest atomically: to a temp file in the same directory, then renamed.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".manifest-")
            .tempfile_in(dir)
            .ctx(|| format!("creating a temp file in {}", dir.display()))?;
        let json = serde_json::to_vec_pretty(self).expect("manifest serializes");
        tmp.write_all(&json)
            .and_then(|()| tmp.write_all(b"\n"))
            .and_then(|()| tmp.as_file().sync_all())
            .ctx(|| format!("writing {}", tmp.path().display()))?;
        // tempfile creates 0600; the manifest is meant to be read by non-root users.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .ctx(|| format!("setting mode of {}", tmp.path().display()))?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .ctx(|| format!("renaming manifest into {}", path.display()))?;
        Ok(())
    }
}

/// Current time as RFC 3339 UTC (`2025-05-20T12:34:56Z`), without a date library.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let mut files = BTreeMap::new();
        files.insert(
            KERNEL_FILE.to_string(),
            FileDigest {
                sha256: "ab".repeat(32),
                size: 7,
            },
        );
        Manifest {
            format_version: FORMAT_VERSION,
            name: "default".into(),
            created: now_rfc3339(),
            inputs: Inputs {
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                extra_packages: vec!["git".into()],
                rootfs_recipe: ROOTFS_RECIPE,
                hearth_run_sha256: "ef".repeat(32),
                initramfs_recipe: INITRAMFS_RECIPE,
                kernel_package: "linux-image-6.1.0-56-cloud-amd64".into(),
                kernel_version: "6.1.192-2".into(),
                kernel_release: "6.1.0-56-cloud-amd64".into(),
                busybox_version: "1:1.35.0-4+deb12u1+b1".into(),
                guest_agent_sha256: "cd".repeat(32),
                modules: vec![
                    "/lib/modules/6.1.0-56-cloud-amd64/kernel/fs/overlayfs/overlay.ko".into(),
                ],
            },
            files,
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let m = sample();
        m.write_atomic(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), m);
        // Only the manifest is left: the temp file was renamed, not copied.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::write(&path, b"{not json").unwrap();
        assert!(Manifest::read(&path)
            .unwrap_err()
            .to_string()
            .contains("parsing"));
    }

    #[test]
    fn a_manifest_from_before_hearth_run_reads_with_an_empty_digest() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["inputs"]
            .as_object_mut()
            .unwrap()
            .remove("hearth_run_sha256");
        let old: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(old.inputs.hearth_run_sha256, "");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_747_742_096), "2025-05-20T11:54:56Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
