//! The root filesystem: a minimal Debian made by debootstrap, tidied, and packed into an
//! ext4 image with `mkfs.ext4 -d` (no loop mount, so no kernel help needed).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::command::run;
use super::error::{IoContext, Result};

/// Packages always installed on top of minbase: Python is the workload, TLS needs CAs,
/// agents install what they need with pip and fetch with curl (through the sandbox's
/// network policy), and `ip` shows (and lets root try to change) the guest's network.
pub const BASE_PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "ca-certificates",
    "curl",
    "iproute2",
];

/// `hearth_run`, the Python client of the run endpoint that durable programs import. It is
/// installed into every rootfs so `python3 -c 'import hearth_run'` works in every VM.
pub const HEARTH_RUN_PY: &str = include_str!("../../../sdk/hearth-run/hearth_run.py");

/// Where [`HEARTH_RUN_PY`] goes in the rootfs: Debian's python3 searches it.
pub const HEARTH_RUN_PATH: &str = "usr/lib/python3/dist-packages/hearth_run.py";

/// SHA-256 of [`HEARTH_RUN_PY`]: part of the rootfs's cache key, so a changed module
/// rebuilds the rootfs.
pub fn hearth_run_sha256() -> String {
    super::digest::sha256_bytes(HEARTH_RUN_PY.as_bytes())
}

/// Filesystem label the guest can mount by.
pub const ROOTFS_LABEL: &str = "hearth-root";

/// ext4 allocates in 4 KiB blocks; small files cost a whole block.
const BLOCK: u64 = 4096;
/// Free space left in the image beyond the payload and its 25 % margin.
const SLACK: u64 = 64 << 20;

/// Runs `debootstrap --variant=minbase` for `suite` from `mirror` into `dir`.
pub fn debootstrap(dir: &Path, suite: &str, mirror: &str, extra_packages: &[String]) -> Result<()> {
    let mut include: Vec<&str> = BASE_PACKAGES.to_vec();
    include.extend(extra_packages.iter().map(String::as_str));
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", include.join(",")))
        .arg(suite)
        .arg(dir)
        .arg(mirror))?;
    Ok(())
}

/// Makes the debootstrapped tree fit to boot as a sandbox root: drops apt caches, sets the
/// hostname and hosts, leaves a placeholder `resolv.conf` (the agent fills it at start),
/// installs the `hearth_run` Python module, and makes sure the mount points exist.
pub fn finalize_tree(dir: &Path) -> Result<()> {
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let cache = dir.join(cache);
        let Ok(entries) = fs::read_dir(&cache) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_deb = path.extension().is_some_and(|e| e == "deb");
            let in_lists = cache.ends_with("lists");
            if (is_deb || in_lists) && path.is_file() {
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let etc = dir.join("etc");
    write(&etc.join("hostname"), "hearth\n")?;
    write(
        &etc.join("hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\thearth\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    // debootstrap copies the host's resolv.conf; the guest must not inherit it.
    let resolv = etc.join("resolv.conf");
    if resolv.symlink_metadata().is_ok() {
        fs::remove_file(&resolv).ctx(|| format!("removing {}", resolv.display()))?;
    }
    write(&resolv, "")?;
    // Debian marks its Python "externally managed" (PEP 668) so that pip does not fight
    // apt; a sandbox is disposable and has no apt workflow to protect, and `pip install`
    // must just work in it, as it does in other sandboxes.
    if let Ok(entries) = fs::read_dir(dir.join("usr/lib")) {
        for entry in entries.flatten() {
            let marker = entry.path().join("EXTERNALLY-MANAGED");
            let is_python = entry.file_name().to_string_lossy().starts_with("python3");
            if is_python && marker.is_file() {
                fs::remove_file(&marker).ctx(|| format!("removing {}", marker.display()))?;
            }
        }
    }
    let module = dir.join(HEARTH_RUN_PATH);
    if let Some(parent) = module.parent() {
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    write(&module, HEARTH_RUN_PY)?;
    fs::set_permissions(&module, fs::Permissions::from_mode(0o644))
        .ctx(|| format!("setting mode of {}", module.display()))?;
    for (sub, mode) in [
        ("mnt", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("run", 0o755),
    ] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .ctx(|| format!("setting mode of {}", p.display()))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

/// What a tree will occupy in ext4: bytes rounded up to blocks, and the inode count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeUsage {
    /// Bytes, each file and directory rounded up to a 4 KiB block.
    pub bytes: u64,
    /// Files, directories, links and device nodes (hard links counted once).
    pub inodes: u64,
}

/// Walks `dir` (without following symlinks) and measures it.
pub fn measure_tree(dir: &Path) -> Result<TreeUsage> {
    let mut usage = TreeUsage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = path
            .symlink_metadata()
            .ctx(|| format!("reading metadata of {}", path.display()))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes += 1;
        if meta.is_dir() {
            usage.bytes += BLOCK;
            for entry in fs::read_dir(&path).ctx(|| format!("listing {}", path.display()))? {
                stack.push(entry.ctx(|| format!("listing {}", path.display()))?.path());
            }
        } else if meta.is_file() || meta.file_type().is_symlink() {
            usage.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
        }
    }
    Ok(usage)
}

/// Image size for a tree of `used` bytes: +25 % and 64 MiB slack, rounded up to 1 MiB.
pub fn image_size_for(used: u64) -> u64 {
    let size = used + used / 4 + SLACK;
    size.div_ceil(1 << 20) << 20
}

/// Inodes to ask mkfs for: the tree's plus 25 % and a few thousand spare for the sandbox.
pub fn inode_count_for(inodes: u64) -> u64 {
    inodes + inodes / 4 + 4096
}

/// Packs `dir` into a fresh ext4 image at `image`, sized for its contents.
/// No journal: the image is read-only in use, and a journal only costs space.
pub fn make_ext4(dir: &Path, image: &Path) -> Result<u64> {
    let usage = measure_tree(dir)?;
    let size = image_size_for(usage.bytes);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .args(["-L", ROOTFS_LABEL, "-O", "^has_journal", "-N"])
        .arg(inode_count_for(usage.inodes).to_string())
        .arg(image)
        .arg(format!("{}k", size / 1024)))?;
    Ok(size)
}

/// Unmounts anything still mounted at or below `dir` (debootstrap mounts /proc and /sys in
/// its target and may leave them behind if it is killed), so deleting `dir` can never
/// reach into the host's /proc or /sys.
pub fn unmount_below(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces as \040; our temp paths have none.
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect();
    // Deepest first.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg("-l").arg(&t).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_adds_a_quarter_and_slack_rounded_to_mib() {
        assert_eq!(image_size_for(0), 64 << 20);
        assert_eq!(image_size_for(400 << 20), (500 + 64) << 20);
        let odd = image_size_for(1);
        assert_eq!(odd % (1 << 20), 0);
        assert!(odd > (64 << 20));
        // The design measured 267 MB for minbase + python3: 267 * 1.25 MB + 64 MiB = 383 MiB.
        assert_eq!(image_size_for(267_000_000), 383 << 20);
    }

    #[test]
    fn measures_blocks_inodes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/small"), b"x").unwrap();
        fs::write(dir.path().join("big"), vec![0u8; 5000]).unwrap();
        fs::hard_link(dir.path().join("big"), dir.path().join("big2")).unwrap();
        std::os::unix::fs::symlink("big", dir.path().join("link")).unwrap();
        let u = measure_tree(dir.path()).unwrap();
        // root dir, sub, small, big (once), link
        assert_eq!(u.inodes, 5);
        assert_eq!(u.bytes, 2 * BLOCK + BLOCK + 2 * BLOCK + BLOCK);
    }

    #[test]
    fn finalize_writes_config_and_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var/cache/apt/archives/partial")).unwrap();
        fs::create_dir_all(root.join("var/lib/apt/lists/partial")).unwrap();
        fs::write(root.join("var/cache/apt/archives/x.deb"), b"deb").unwrap();
        fs::write(root.join("var/lib/apt/lists/foo_Packages"), b"p").unwrap();
        fs::create_dir_all(root.join("usr/lib/python3.11")).unwrap();
        fs::write(root.join("usr/lib/python3.11/EXTERNALLY-MANAGED"), b"[x]").unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        finalize_tree(root).unwrap();
        assert!(!root.join("var/cache/apt/archives/x.deb").exists());
        assert!(!root.join("var/lib/apt/lists/foo_Packages").exists());
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "hearth\n"
        );
        assert!(fs::read_to_string(root.join("etc/hosts"))
            .unwrap()
            .contains("hearth"));
        assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
        assert!(!root.join("usr/lib/python3.11/EXTERNALLY-MANAGED").exists());
        assert!(root.join("usr/lib/python3.11").is_dir());
        let tmp = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        for d in ["mnt", "root", "run"] {
            assert!(root.join(d).is_dir());
        }
        let module = root.join("usr/lib/python3/dist-packages/hearth_run.py");
        let text = fs::read_to_string(&module).unwrap();
        assert_eq!(text, HEARTH_RUN_PY);
        assert!(text.contains("def context():"));
        assert_eq!(
            fs::metadata(&module).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn the_embedded_module_is_the_sdk_file_and_its_digest_is_its_own() {
        let on_disk = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/hearth-run/hearth_run.py"),
        )
        .unwrap();
        assert_eq!(on_disk, HEARTH_RUN_PY.as_bytes());
        assert_eq!(hearth_run_sha256(), crate::digest::sha256_bytes(&on_disk));
    }
}
