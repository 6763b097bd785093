//! A real build of a guest image from Debian packages (debootstrap included, about a minute),
//! then the cache behaviour: no-op rebuild, corruption detected and repaired component by
//! component, and clear errors for a missing manifest.
//!
//! Needs root, network access to the apt mirror, debootstrap, kmod and e2fsprogs; skipped
//! (with a message) when not root or debootstrap is missing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

fn read_from_initramfs(path: &Path, member: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat '{}' | cpio -i --quiet --to-stdout '{member}'",
            path.display()
        ))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn real_build_then_cache_behaviour() {
    if !is_root() {
        eprintln!("skipping: building a guest image needs root");
        return;
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: debootstrap is not installed");
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
    let list = read_from_initramfs(&img.initramfs(), "etc/hearth/modules");
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
    let agent_bytes = fs::read(&agent).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat '{}' | cpio -t --quiet",
            img.initramfs().display()
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
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
    assert!(!agent_bytes.is_empty());

    // The rootfs has the configured hostname (read without mounting).
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(img.rootfs())
        .output()
        .unwrap();
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
