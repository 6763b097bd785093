//! The per-VM writable layer: a sparse ext4 image whose size is the
//! sandbox's disk quota. The guest stacks it over the read-only base with
//! overlayfs, so writes never touch the base image and a full layer gives
//! ENOSPC inside the guest.
//!
//! A durable workspace keeps that layer past its VM as a chain of qcow2
//! layers ([`ScratchDisk::Layered`]): a base (the empty filesystem), and
//! one layer per checkpoint, each naming the layer below it by a name
//! relative to their common directory, so a chain copied into any
//! directory opens unchanged.

use std::path::{Path, PathBuf};
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

/// Where a VM's writable layer lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ScratchDisk {
    /// A fresh, empty layer in the VM's state directory, deleted with it.
    #[default]
    Ephemeral,
    /// The qcow2 layer `top` in `dir`, on top of the chain of layers below
    /// it there; kept when the VM ends. A checkpoint freezes `top` and goes
    /// on writing to a new layer over it.
    Layered {
        /// The directory holding the chain.
        dir: PathBuf,
        /// The file name of the writable top layer.
        top: String,
    },
}

fn qemu_img(dir: &Path, args: &[&str], what: &Path) -> Result<()> {
    let fail = |message: String| VmError::ScratchDisk {
        path: what.to_path_buf(),
        message,
    };
    let output = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail("qemu-img not found: install qemu-utils (scripts/setup.sh does)".into())
            }
            _ => fail(format!("running qemu-img: {e}")),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!(
            "qemu-img {} exited with {}: {}",
            args.first().unwrap_or(&""),
            output.status,
            stderr.trim()
        )));
    }
    Ok(())
}

/// Whether `name` may name a layer: a plain file name, no path.
pub fn check_layer_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(VmError::InvalidSpec(format!(
            "layer name {name:?} must be 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// Create `dir/name`: the base of a chain, an empty ext4 filesystem of
/// `size` bytes in qcow2 (which holds only what mkfs wrote, a few MiB).
pub fn create_base_layer(dir: &Path, name: &str, size: u64) -> Result<()> {
    check_layer_name(name)?;
    let raw = dir.join(format!(".{name}.raw"));
    let result = create_ext4(&raw, size).and_then(|()| {
        let raw_name = raw.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        qemu_img(
            dir,
            &["convert", "-q", "-f", "raw", "-O", "qcow2", raw_name, name],
            &dir.join(name),
        )
    });
    let _ = std::fs::remove_file(&raw);
    result
}

/// Create `dir/name`, an empty qcow2 layer over `dir/backing`.
pub fn create_overlay(dir: &Path, name: &str, backing: &str) -> Result<()> {
    check_layer_name(name)?;
    check_layer_name(backing)?;
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-F",
            "qcow2",
            "-b",
            backing,
            name,
        ],
        &dir.join(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_and_an_overlay_chain_by_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        create_base_layer(dir.path(), "base.qcow2", 64 << 20).unwrap();
        create_overlay(dir.path(), "l1.qcow2", "base.qcow2").unwrap();
        // The base holds what mkfs wrote, not the disk's size.
        let base = std::fs::metadata(dir.path().join("base.qcow2")).unwrap();
        assert!(base.len() < 16 << 20, "{}", base.len());
        assert!(!dir.path().join(".base.qcow2.raw").exists());
        // Moved elsewhere, the chain still opens.
        let moved = tempfile::tempdir().unwrap();
        for name in ["base.qcow2", "l1.qcow2"] {
            std::fs::rename(dir.path().join(name), moved.path().join(name)).unwrap();
        }
        let info = Command::new("qemu-img")
            .args(["info", "--backing-chain", "-U"])
            .arg(moved.path().join("l1.qcow2"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(info.status.success(), "{text}");
        assert!(text.contains("backing file: base.qcow2"), "{text}");
        assert!(text.contains("virtual size: 64 MiB"), "{text}");
    }

    #[test]
    fn layer_names_are_plain_file_names() {
        for bad in ["", "../x", "a/b", ".hidden", "x y"] {
            assert!(check_layer_name(bad).is_err(), "{bad:?}");
        }
        check_layer_name("ws-3.qcow2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(create_overlay(dir.path(), "l1.qcow2", "../etc/passwd").is_err());
    }

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
