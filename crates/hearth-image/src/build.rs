//! Building an image: decide per component what is stale, rebuild only that in a temp
//! directory under the images directory, rename results into place, write the manifest last.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::path::Path;
use std::time::Instant;

use tempfile::TempDir;

use super::apt::{self, PackageVersion};
use super::digest::sha256_file;
use super::error::{ImageError, IoContext, Result};
use super::initramfs::InitramfsContents;
use super::kernel::{KernelTree, REQUIRED_MODULES};
use super::manifest::{
    now_rfc3339, FileDigest, Inputs, Manifest, FORMAT_VERSION, INITRAMFS_FILE, INITRAMFS_RECIPE,
    KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE, ROOTFS_RECIPE,
};
use super::{elf, rootfs, validate_name, BuildOptions, Image};

/// While a build replaces files, the previous manifest is kept under this name: the image
/// can't be opened half-replaced, yet an interrupted build still knows which files it may
/// reuse (each is re-checked against its digest).
const PENDING_MANIFEST: &str = ".manifest.pending.json";

/// Builds the image described by `opts`, or reuses what is cached and still valid.
///
/// Blocking; takes about a minute when the rootfs must be bootstrapped and a few seconds
/// otherwise. Progress lines go to `progress`. Needs root (debootstrap).
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Image> {
    let started = Instant::now();
    validate_name(&opts.name)?;
    check_guest_agent(&opts.guest_agent)?;
    require_root()?;

    fs::create_dir_all(&opts.images_dir)
        .ctx(|| format!("creating {}", opts.images_dir.display()))?;
    let _lock = lock_image(&opts.images_dir, &opts.name, progress)?;
    let image_dir = opts.images_dir.join(&opts.name);
    fs::create_dir_all(&image_dir).ctx(|| format!("creating {}", image_dir.display()))?;

    progress("resolving package versions with apt");
    let (agent_sha256, _) = sha256_file(&opts.guest_agent)?;
    let mirror = match &opts.mirror {
        Some(m) => m.trim_end_matches('/').to_string(),
        None => apt::host_mirror()?,
    };
    let kernel_pkg = apt::resolve_kernel_package()?;
    let busybox_pkg = PackageVersion {
        name: apt::BUSYBOX_PACKAGE.to_string(),
        version: apt::candidate_version(apt::BUSYBOX_PACKAGE)?,
    };
    let mut extra_packages = opts.extra_packages.clone();
    extra_packages.sort();
    extra_packages.dedup();

    let manifest_path = image_dir.join(MANIFEST_FILE);
    let pending_path = image_dir.join(PENDING_MANIFEST);
    let (old, old_is_current) = if opts.force {
        progress("--force: rebuilding every component");
        (None, false)
    } else {
        load_previous(&manifest_path, &pending_path, progress)
    };

    // Which components are still valid: same inputs, and the file matches its digest.
    let old_inputs = old.as_ref().map(|m| &m.inputs);
    let hearth_run_sha256 = rootfs::hearth_run_sha256();
    let rootfs_inputs_same = old_inputs.is_some_and(|i| {
        i.rootfs_recipe == ROOTFS_RECIPE
            && i.hearth_run_sha256 == hearth_run_sha256
            && i.suite == opts.suite
            && i.mirror == mirror
            && i.extra_packages == extra_packages
    });
    let kernel_inputs_same = old_inputs.is_some_and(|i| {
        i.kernel_package == kernel_pkg.name && i.kernel_version == kernel_pkg.version
    });
    let initramfs_inputs_same = kernel_inputs_same
        && old_inputs.is_some_and(|i| {
            i.initramfs_recipe == INITRAMFS_RECIPE
                && i.busybox_version == busybox_pkg.version
                && i.guest_agent_sha256 == agent_sha256
        });
    let check = |file: &str, same: bool, progress: &mut dyn FnMut(&str)| {
        reusable(old.as_ref(), &image_dir, file, same, progress)
    };
    let kernel_kept = check(KERNEL_FILE, kernel_inputs_same, progress)?;
    let initramfs_kept = check(INITRAMFS_FILE, initramfs_inputs_same, progress)?;
    let rootfs_kept = check(ROOTFS_FILE, rootfs_inputs_same, progress)?;

    if let (Some(old), Some(_), Some(_), Some(_)) =
        (&old, &kernel_kept, &initramfs_kept, &rootfs_kept)
    {
        let image = Image {
            dir: image_dir.clone(),
            manifest: old.clone(),
        };
        if !old_is_current {
            image.manifest.write_atomic(&manifest_path)?;
        }
        remove_if_exists(&pending_path)?;
        progress(&format!(
            "image '{}' is up to date: reused {} (inputs unchanged, digests verified)",
            opts.name,
            image_dir.display()
        ));
        return Ok(image);
    }

    // From here on files get replaced: take the manifest out of the way first, so the
    // image can't be opened in a mixed state, but keep it for the next attempt's reuse.
    if manifest_path.exists() {
        fs::rename(&manifest_path, &pending_path)
            .ctx(|| format!("renaming {} aside", manifest_path.display()))?;
    }

    let work = BuildDir::new(&opts.images_dir, &opts.name)?;
    let mut files = BTreeMap::new();
    let mut kernel_release = old_inputs
        .map(|i| i.kernel_release.clone())
        .unwrap_or_default();
    let mut modules = old_inputs.map(|i| i.modules.clone()).unwrap_or_default();
    let mut rebuilt = Vec::new();

    if kernel_kept.is_none() || initramfs_kept.is_none() {
        progress(&format!(
            "downloading {} {}",
            kernel_pkg.name, kernel_pkg.version
        ));
        let root = apt::fetch_and_extract(&kernel_pkg, &work.path().join("kernel"))?;
        let tree = KernelTree::open(&root)?;
        kernel_release = tree.release.clone();

        if kernel_kept.is_none() {
            let staged = work.path().join(KERNEL_FILE);
            fs::copy(tree.vmlinuz(), &staged)
                .ctx(|| format!("copying {}", tree.vmlinuz().display()))?;
            files.insert(KERNEL_FILE, install(&staged, &image_dir.join(KERNEL_FILE))?);
            rebuilt.push("kernel");
        }
        if initramfs_kept.is_none() {
            progress(&format!("running depmod for {}", tree.release));
            let order = tree.depmod()?.load_order(REQUIRED_MODULES)?;
            progress(&format!(
                "downloading {} {}",
                busybox_pkg.name, busybox_pkg.version
            ));
            let bb_root = apt::fetch_and_extract(&busybox_pkg, &work.path().join("busybox"))?;
            let bb_path = bb_root.join("bin/busybox");
            let busybox = fs::read(&bb_path).ctx(|| format!("reading {}", bb_path.display()))?;
            let agent = fs::read(&opts.guest_agent)
                .ctx(|| format!("reading {}", opts.guest_agent.display()))?;
            let contents = InitramfsContents {
                agent: &agent,
                busybox: &busybox,
                kernel: &tree,
                modules: &order,
            };
            progress(&format!("writing initramfs with {} modules", order.len()));
            let staged = work.path().join(INITRAMFS_FILE);
            contents.write(&staged)?;
            modules = contents.module_guest_paths();
            files.insert(
                INITRAMFS_FILE,
                install(&staged, &image_dir.join(INITRAMFS_FILE))?,
            );
            rebuilt.push("initramfs");
        }
    }

    if rootfs_kept.is_none() {
        progress(&format!(
            "bootstrapping Debian {} from {mirror} (debootstrap, about a minute)",
            opts.suite
        ));
        let tree = work.path().join("rootfs");
        let t = Instant::now();
        rootfs::debootstrap(&tree, &opts.suite, &mirror, &extra_packages)?;
        rootfs::finalize_tree(&tree)?;
        progress(&format!(
            "debootstrap done in {:.1} s; packing {ROOTFS_FILE}",
            t.elapsed().as_secs_f64()
        ));
        let staged = work.path().join(ROOTFS_FILE);
        let size = rootfs::make_ext4(&tree, &staged)?;
        // Free the tree's ~270 MB before hashing the image.
        rootfs::unmount_below(&tree);
        fs::remove_dir_all(&tree).ctx(|| format!("removing {}", tree.display()))?;
        progress(&format!("{ROOTFS_FILE}: {} MiB", size >> 20));
        files.insert(ROOTFS_FILE, install(&staged, &image_dir.join(ROOTFS_FILE))?);
        rebuilt.push("rootfs");
    }

    for (file, kept) in [
        (KERNEL_FILE, kernel_kept),
        (INITRAMFS_FILE, initramfs_kept),
        (ROOTFS_FILE, rootfs_kept),
    ] {
        if let Some(digest) = kept {
            files.insert(file, digest);
        }
    }

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        created: now_rfc3339(),
        inputs: Inputs {
            suite: opts.suite.clone(),
            mirror,
            extra_packages,
            rootfs_recipe: ROOTFS_RECIPE,
            hearth_run_sha256,
            initramfs_recipe: INITRAMFS_RECIPE,
            kernel_package: kernel_pkg.name,
            kernel_version: kernel_pkg.version,
            kernel_release,
            busybox_version: busybox_pkg.version,
            guest_agent_sha256: agent_sha256,
            modules,
        },
        files: files.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    manifest.write_atomic(&manifest_path)?;
    remove_if_exists(&pending_path)?;
    drop(work);

    let kept: Vec<&str> = [
        ("kernel", KERNEL_FILE),
        ("initramfs", INITRAMFS_FILE),
        ("rootfs", ROOTFS_FILE),
    ]
    .into_iter()
    .filter(|(label, _)| !rebuilt.contains(label))
    .map(|(label, _)| label)
    .collect();
    progress(&format!(
        "built image '{}' in {:.1} s: rebuilt {}{}",
        opts.name,
        started.elapsed().as_secs_f64(),
        rebuilt.join(", "),
        if kept.is_empty() {
            String::new()
        } else {
            format!("; reused {}", kept.join(", "))
        }
    ));
    Ok(Image {
        dir: image_dir,
        manifest,
    })
}

/// The guest agent must exist and be static: it runs as `/init` with no loader.
fn check_guest_agent(path: &Path) -> Result<()> {
    if !path.is_file() {
        return Err(ImageError::GuestAgentMissing(path.to_path_buf()));
    }
    if !elf::is_static_elf(path)? {
        return Err(ImageError::GuestAgentDynamic(path.to_path_buf()));
    }
    Ok(())
}

/// Fails unless the effective uid is 0 (read from /proc, so no `unsafe` libc call).
fn require_root() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").ctx(|| "reading /proc/self/status".into())?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    if euid == Some(0) {
        Ok(())
    } else {
        Err(ImageError::NotRoot)
    }
}

/// Holds `<images_dir>/<name>.lock` exclusively for the build; waits if another build has it.
fn lock_image(images_dir: &Path, name: &str, progress: &mut dyn FnMut(&str)) -> Result<File> {
    let path = images_dir.join(format!("{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            progress(&format!(
                "another build of image '{name}' is running; waiting for it to finish"
            ));
            file.lock().ctx(|| format!("locking {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(ImageError::io(format!("locking {}", path.display()), e))
        }
    }
    Ok(file)
}

/// Reads the manifest, falling back to the one an interrupted build set aside.
/// Returns it and whether it is the current `manifest.json`.
fn load_previous(
    manifest_path: &Path,
    pending_path: &Path,
    progress: &mut dyn FnMut(&str),
) -> (Option<Manifest>, bool) {
    let usable = |m: Manifest| (m.format_version == FORMAT_VERSION).then_some(m);
    if manifest_path.exists() {
        match Manifest::read(manifest_path) {
            Ok(m) => {
                if let Some(m) = usable(m) {
                    return (Some(m), true);
                }
                progress("manifest.json is from another builder version; rebuilding");
            }
            Err(e) => progress(&format!("ignoring unreadable manifest: {e}")),
        }
    }
    if let Ok(m) = Manifest::read(pending_path) {
        if let Some(m) = usable(m) {
            progress("resuming after an interrupted build; re-checking its files");
            return (Some(m), false);
        }
    }
    (None, false)
}

/// The cached digest of `file` if its inputs are unchanged and the file on disk still has
/// the recorded size and SHA-256; `None` (after saying why) if it must be rebuilt.
fn reusable(
    old: Option<&Manifest>,
    image_dir: &Path,
    file: &str,
    inputs_same: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<FileDigest>> {
    let Some(old) = old else {
        return Ok(None);
    };
    if !inputs_same {
        progress(&format!("{file}: inputs changed; rebuilding"));
        return Ok(None);
    }
    let Some(expected) = old.files.get(file) else {
        return Ok(None);
    };
    let path = image_dir.join(file);
    match fs::metadata(&path) {
        Ok(meta) if meta.len() == expected.size => {}
        Ok(_) => {
            progress(&format!(
                "{file}: wrong size (partial or damaged); rebuilding"
            ));
            return Ok(None);
        }
        Err(_) => {
            progress(&format!("{file}: missing; rebuilding"));
            return Ok(None);
        }
    }
    let (sha256, _) = sha256_file(&path)?;
    if sha256 != expected.sha256 {
        progress(&format!("{file}: digest mismatch (corrupted); rebuilding"));
        return Ok(None);
    }
    Ok(Some(expected.clone()))
}

/// Renames a finished file from the build dir into the image dir; returns its digest.
fn install(staged: &Path, dest: &Path) -> Result<FileDigest> {
    let (sha256, size) = sha256_file(staged)?;
    File::open(staged)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing {}", staged.display()))?;
    fs::rename(staged, dest)
        .ctx(|| format!("renaming {} to {}", staged.display(), dest.display()))?;
    Ok(FileDigest { sha256, size })
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ImageError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// A temp directory under the images dir (same filesystem, so results can be renamed into
/// place), removed when dropped — on success, on error and on panic. Anything debootstrap
/// left mounted inside is unmounted first.
struct BuildDir {
    dir: TempDir,
}

impl BuildDir {
    fn new(images_dir: &Path, name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".build-{name}-"))
            .tempdir_in(images_dir)
            .ctx(|| format!("creating a build directory in {}", images_dir.display()))?;
        Ok(BuildDir { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        rootfs::unmount_below(self.dir.path());
        // TempDir's own drop removes the tree.
    }
}
