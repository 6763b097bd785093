//! A real build of a guest image from Debian packages (debootstrap included, a few
//! minutes), then the cache behaviour: no-op rebuild, corruption detected and repaired
//! component by component, and clear errors for a missing manifest.
//!
//! Needs root, network access to the apt mirror, and the tools the builder and this test
//! run (debootstrap, apt, dpkg, kmod, e2fsprogs, cpio, gzip, rustc). None of that is
//! hardware a machine can lack, so in CI (`CI` set to anything but empty, `0` or `false`)
//! a missing prerequisite fails the test, naming what is missing. Elsewhere the test skips
//! and prints why on stderr (shown by nextest, or by `cargo test -- --nocapture`). A
//! mirror that can't be reached is never a skip: the build fails with apt's error.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use hearth_image::{BuildOptions, Image, ImageError};

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether we run in CI, where a missing prerequisite is a failure rather than a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Programs the builder and this test run, and where each comes from.
const TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("cpio", "cpio"),
    ("zcat", "gzip"),
    ("rustc", "rustup"),
];

/// Every prerequisite the machine lacks, each with what to do about it; empty when the
/// test can run.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push(
            "root: debootstrap chroots and creates device nodes (run the tests as root)".into(),
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in TOOLS {
        let found = std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        if !found {
            missing.push(format!("`{tool}` on PATH (install {package})"));
        }
    }
    missing
}

/// Compiles a tiny Rust program, static or not, to stand in for the guest agent.
fn compile_agent(dir: &Path, static_link: bool) -> PathBuf {
    let src = dir.join("agent.rs");
    fs::write(&src, "fn main() { println!(\"hearth test agent\"); }\n").unwrap();
    let out = dir.join(if static_link {
        "agent-static"
    } else {
        "agent-dynamic"
    });
    let mut cmd = Command::new("rustc");
    cmd.arg("-O").arg(&src).arg("-o").arg(&out);
    if static_link {
        cmd.args(["-C", "target-feature=+crt-static"]);
    }
    let status = cmd.status().expect("rustc runs");
    assert!(status.success());
    out
}

/// (inode, mtime) identify whether a file was replaced.
fn identity(path: &Path) -> (u64, SystemTime) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.modified().unwrap())
}

fn leftovers(images_dir: &Path) -> Vec<String> {
    fs::read_dir(images_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".build-"))
        .collect()
}

fn build_logged(opts: &BuildOptions) -> (Image, Vec<String>, f64) {
    let mut lines = Vec::new();
    let t = Instant::now();
    let img = hearth_image::build(opts, &mut |l: &str| {
        eprintln!("[image] {l}");
        lines.push(l.to_string());
    })
    .unwrap_or_else(|e| panic!("build failed: {e}"));
    (img, lines, t.elapsed().as_secs_f64())
}

/// Runs a shell pipeline and returns its stdout; fails the test, with stderr, if it fails.
fn sh(script: &str) -> Vec<u8> {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read_from_initramfs(path: &Path, member: &str) -> Vec<u8> {
    sh(&format!(
        "zcat '{}' | cpio -i --quiet --to-stdout '{member}'",
        path.display()
    ))
}

#[test]
fn real_build_then_cache_behaviour() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let list = missing.join("\n  - ");
        let path = std::env::var("PATH").unwrap_or_default();
        if in_ci() {
            panic!(
                "CI is set, so this test must run, but the machine lacks:\n  - {list}\n\
                 (PATH is {path}) Install what is missing (scripts/setup.sh does) and run \
                 the tests as root."
            );
        }
        eprintln!(
            "SKIPPED real_build_then_cache_behaviour: the machine lacks:\n  - {list}\n\
             (PATH is {path}) With CI set this is a failure."
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let images_dir = work.path().join("images");
    let agent = compile_agent(work.path(), true);

    // A dynamically linked agent is refused before anything is downloaded.
    let dynamic = compile_agent(work.path(), false);
    let err = hearth_image::build(&BuildOptions::new(&images_dir, &dynamic), &mut |_: &str| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::GuestAgentDynamic(_)), "{err}");
    assert!(err.to_string().contains("scripts/build-guest.sh"), "{err}");

    // 1. Full build.
    let opts = BuildOptions::new(&images_dir, &agent);
    let (img, _, full_secs) = build_logged(&opts);
    eprintln!("full build: {full_secs:.1} s");
    for p in [
        img.kernel(),
        img.initramfs(),
        img.rootfs(),
        img.dir().join("manifest.json"),
    ] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    img.verify().unwrap();
    let m = img.manifest();
    assert_eq!(m.name, "default");
    assert_eq!(m.inputs.suite, "bookworm");
    assert!(m.inputs.kernel_package.starts_with("linux-image-"));
    assert_eq!(m.files.len(), 3);
    for (file, d) in &m.files {
        eprintln!("{file}: {} bytes, sha256 {}", d.size, d.sha256);
    }
    assert!(
        leftovers(&images_dir).is_empty(),
        "{:?}",
        leftovers(&images_dir)
    );

    // The initramfs holds the agent and the module list, dependencies first.
    let list =
        String::from_utf8(read_from_initramfs(&img.initramfs(), "etc/hearth/modules")).unwrap();
    let mods: Vec<&str> = list.lines().collect();
    assert_eq!(mods, m.inputs.modules);
    let pos = |name: &str| {
        mods.iter()
            .position(|p| p.ends_with(&format!("/{name}.ko")))
            .unwrap_or_else(|| panic!("{name} not in {mods:?}"))
    };
    for top in ["virtio_mmio", "virtio_console", "virtio_blk", "virtio-rng"] {
        assert!(pos("virtio") < pos(top) && pos("virtio_ring") < pos(top));
    }
    pos("overlay");
    assert!(mods[0].starts_with(&format!("/lib/modules/{}/", m.inputs.kernel_release)));
    let listing = sh(&format!(
        "zcat '{}' | cpio -t --quiet",
        img.initramfs().display()
    ));
    let listing = String::from_utf8(listing).unwrap();
    for entry in [
        "init",
        "bin/busybox",
        "dev/console",
        "proc",
        "sys",
        "mnt",
        "tmp",
        "etc/hearth",
    ] {
        assert!(
            listing.lines().any(|l| l == entry),
            "{entry} not in initramfs"
        );
    }
    // `/init` is the agent we asked for, byte for byte.
    assert!(
        read_from_initramfs(&img.initramfs(), "init") == fs::read(&agent).unwrap(),
        "/init in the initramfs differs from the guest agent {}",
        agent.display()
    );

    // The rootfs has the configured hostname (read without mounting).
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(img.rootfs())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hearth");

    // 2. Same inputs: nothing rebuilt, digests checked.
    let rootfs_id = identity(&img.rootfs());
    let kernel_id = identity(&img.kernel());
    let initramfs_digest = m.files["initramfs.cpio.gz"].clone();
    let (img2, lines, noop_secs) = build_logged(&opts);
    eprintln!("no-op build: {noop_secs:.1} s");
    assert!(lines.iter().any(|l| l.contains("up to date")), "{lines:?}");
    assert_eq!(identity(&img2.rootfs()), rootfs_id);
    assert_eq!(identity(&img2.kernel()), kernel_id);
    assert_eq!(img2.manifest(), img.manifest());

    // 3. Corrupt the initramfs (same size): open() still passes its cheap check,
    //    verify() catches it, and the next build rebuilds only the initramfs.
    let mut bytes = fs::read(img.initramfs()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(img.initramfs(), &bytes).unwrap();
    let opened = hearth_image::open(&images_dir, "default").unwrap();
    let err = opened.verify().unwrap_err().to_string();
    assert!(
        err.contains("initramfs.cpio.gz") && err.contains("hearth image build"),
        "{err}"
    );
    let (img3, lines, repair_secs) = build_logged(&opts);
    eprintln!("initramfs-only rebuild: {repair_secs:.1} s");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("initramfs.cpio.gz: digest mismatch")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rebuilt initramfs; reused kernel, rootfs")),
        "{lines:?}"
    );
    assert_eq!(
        identity(&img3.rootfs()),
        rootfs_id,
        "rootfs must not be rebuilt"
    );
    assert_eq!(
        identity(&img3.kernel()),
        kernel_id,
        "kernel must not be rebuilt"
    );
    // The initramfs is reproducible: the rebuild has the original digest.
    assert_eq!(img3.manifest().files["initramfs.cpio.gz"], initramfs_digest);
    hearth_image::open(&images_dir, "default")
        .unwrap()
        .verify()
        .unwrap();

    // 4. A truncated file is caught by the cheap check.
    let rootfs_len = fs::metadata(img.rootfs()).unwrap().len();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(img.kernel())
        .unwrap();
    let kernel_len = f.metadata().unwrap().len();
    f.set_len(kernel_len - 1).unwrap();
    let err = hearth_image::open(&images_dir, "default")
        .unwrap_err()
        .to_string();
    assert!(err.contains("vmlinuz is"), "{err}");
    assert_eq!(fs::metadata(img.rootfs()).unwrap().len(), rootfs_len);

    // 5. Without a manifest the image can't be opened, and the error says what to do.
    fs::remove_file(img.dir().join("manifest.json")).unwrap();
    let err = hearth_image::open(&images_dir, "default")
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest.json is missing"), "{err}");
    assert!(err.contains("run `hearth image build`"), "{err}");
    let err = hearth_image::open(&images_dir, "other")
        .unwrap_err()
        .to_string();
    assert!(err.contains("image 'other' not found in"), "{err}");

    assert!(
        leftovers(&images_dir).is_empty(),
        "{:?}",
        leftovers(&images_dir)
    );
}
