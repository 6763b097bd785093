//! The per-VM writable layer: a sparse ext4 image whose size is the
//! sandbox's disk quota. The guest stacks it over the read-only base with
//! overlayfs, so writes never touch the base image and a full layer gives
//! ENOSPC inside the guest.

use std::path::Path;
use std::process::Command;

use crate::error::{Result, VmError};

/// Smallest writable layer that holds an ext4 filesystem with room to spare.
pub const MIN_SCRATCH_BYTES: u64 = 16 * 1024 * 1024;

/// Create a sparse, empty ext4 image of `size` bytes at `path`.
pub fn create_ext4(path: &Path, size: u64) -> Result<()> {
    let fail = |message: String| VmError::ScratchDisk {
        path: path.to_path_buf(),
        message,
    };
    if size < MIN_SCRATCH_BYTES {
        return Err(VmError::InvalidSpec(format!(
            "disk size {size} bytes is below the {} MiB minimum",
            MIN_SCRATCH_BYTES >> 20
        )));
    }
    let file = std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
    file.set_len(size).map_err(|e| fail(e.to_string()))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "hearth-scratch", "-m", "0"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail("mkfs.ext4 not found: install e2fsprogs (scripts/setup.sh does)".into())
            }
            _ => fail(format!("running mkfs.ext4: {e}")),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!(
            "mkfs.ext4 exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_sparse_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.ext4");
        create_ext4(&path, 64 << 20).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        let magic = std::fs::read(&path).unwrap();
        // ext4 superblock magic 0xEF53 at offset 1024 + 56.
        assert_eq!(&magic[1080..1082], &[0x53, 0xEF]);
    }

    #[test]
    fn rejects_tiny_disks() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_ext4(&dir.path().join("x"), 1024).unwrap_err();
        assert!(err.to_string().contains("minimum"), "{err}");
    }
}
