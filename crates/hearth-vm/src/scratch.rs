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

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `path`.
#[allow(unsafe_code)] // statvfs; see the SAFETY comments.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a
    // zeroed, properly aligned statvfs that the call fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers outlive the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Give `file` all `size` bytes on disk now (not as the guest writes), so
/// that a guest can fill only its own disk, never the host's filesystem.
#[allow(unsafe_code)] // fallocate; see the SAFETY comment.
fn allocate(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "disk too large"))?;
    // SAFETY: the descriptor is open for writing for the whole call; mode 0
    // allocates (and extends) without touching existing data.
    match unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Create an empty ext4 image of `size` bytes at `path`, its blocks
/// allocated up front (where the filesystem can: elsewhere sparse, with a
/// warning).
pub fn create_ext4(path: &Path, size: u64) -> Result<()> {
    make_ext4(path, size, true)
}

/// Create an empty ext4 image at `path`, allocated up front or sparse.
fn make_ext4(path: &Path, size: u64, preallocate: bool) -> Result<()> {
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
    let allocated = match preallocate {
        true => allocate(&file, size),
        false => file.set_len(size),
    };
    match allocated {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(VmError::NoDiskSpace {
                needed_mib: size >> 20,
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            tracing::warn!(path = %path.display(), "this filesystem cannot allocate the scratch disk up front; it stays sparse and a guest may fill the host's disk");
            file.set_len(size).map_err(|e| fail(e.to_string()))?;
        }
        Err(e) => return Err(fail(format!("allocating {size} bytes: {e}"))),
    }
    drop(file);
    // nodiscard: mkfs would otherwise punch the allocated blocks out again.
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "hearth-scratch", "-m", "0"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
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
    if preallocate {
        // mkfs zeroes a few ranges by punching holes, even with nodiscard:
        // allocate those again (existing blocks keep their data).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        if let Err(e) = allocate(&file, size) {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(VmError::NoDiskSpace {
                    needed_mib: size >> 20,
                });
            }
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(fail(format!("allocating {size} bytes: {e}")));
            }
        }
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
    // Sparse: only what mkfs wrote goes into the qcow2 base.
    let result = make_ext4(&raw, size, false).and_then(|()| {
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
    fn creates_ext4_with_its_blocks_allocated() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.ext4");
        create_ext4(&path, 64 << 20).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        // Every block is the file's already (mkfs punched none out), so a
        // guest filling it takes nothing more from the host.
        assert!(meta.blocks() * 512 >= 64 << 20, "{} blocks", meta.blocks());
        let magic = std::fs::read(&path).unwrap();
        // ext4 superblock magic 0xEF53 at offset 1024 + 56.
        assert_eq!(&magic[1080..1082], &[0x53, 0xEF]);
    }

    /// A 32 MiB tmpfs of the test's own, unmounted when dropped (needs
    /// root, as the whole suite does).
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn new() -> SmallFs {
            let dir = tempfile::tempdir().unwrap();
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=32m", "hearth-test"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(mounted.success(), "mounting a tmpfs needs root");
            SmallFs(dir)
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_disk_larger_than_the_free_space_is_refused_and_leaves_nothing() {
        let fs = SmallFs::new();
        let free = free_bytes(fs.0.path()).unwrap();
        assert!(free <= 32 << 20 && free > 16 << 20, "{free}");
        let path = fs.0.path().join("scratch.ext4");
        let err = create_ext4(&path, 64 << 20).unwrap_err();
        assert!(
            matches!(err, VmError::NoDiskSpace { needed_mib: 64 }),
            "{err}"
        );
        assert!(err.to_string().contains("not enough free disk"), "{err}");
        assert!(!path.exists());
        assert_eq!(free_bytes(fs.0.path()).unwrap(), free, "nothing kept");
        // One that fits takes its whole size at once.
        create_ext4(&path, 20 << 20).unwrap();
        assert!(free_bytes(fs.0.path()).unwrap() <= free - (20 << 20));
    }

    #[test]
    fn rejects_tiny_disks() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_ext4(&dir.path().join("x"), 1024).unwrap_err();
        assert!(err.to_string().contains("minimum"), "{err}");
    }
}
