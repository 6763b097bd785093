//! Guest image builder: a kernel, an initramfs and an ext4 root filesystem, made from
//! Debian packages only, cached under an images directory with a manifest of digests.
//!
//! An image `<name>` lives in `<images_dir>/<name>/`:
//!
//! | file | holds |
//! |---|---|
//! | `vmlinuz` | the kernel of the package `linux-image-cloud-amd64` depends on |
//! | `initramfs.cpio.gz` | guest agent as `/init`, static busybox, virtio + overlay modules |
//! | `rootfs.ext4` | debootstrap minbase + python3, pip (usable system-wide), ca-certificates, curl and iproute2 (+ extra packages) + `hearth_run.py` |
//! | `manifest.json` | inputs and the SHA-256 + size of each file; written last |
//!
//! [`build`] rebuilds only what is stale: the rootfs when suite, mirror, packages or the
//! embedded `hearth_run` Python module change, the kernel when the resolved kernel package
//! version changes, the initramfs when the kernel, busybox or guest agent change. Any file
//! whose size or digest no longer matches the manifest is rebuilt, never used. [`open`] is
//! the cheap check for callers that are about to boot an image; [`Image::verify`] checks
//! every digest.
//!
//! This crate knows nothing about VMs: [`Image::kernel`], [`Image::initramfs`] and
//! [`Image::rootfs`] are plain paths, which callers put into `hearth_vm::VmSpec`.

mod apt;
mod build;
mod command;
mod cpio;
mod digest;
mod elf;
mod error;
mod initramfs;
mod kernel;
mod manifest;
mod rootfs;

use std::path::{Path, PathBuf};

pub use build::build;
pub use elf::is_static_elf;
use error::IoContext;
pub use error::{ImageError, Result};
pub use kernel::REQUIRED_MODULES;
pub use manifest::{FileDigest, Inputs, Manifest, FORMAT_VERSION};

use manifest::{INITRAMFS_FILE, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE};

/// Name of the image built when none is given.
pub const DEFAULT_IMAGE_NAME: &str = "default";
/// Debian suite of the rootfs when none is given.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Environment variable naming the guest agent binary to pack.
pub const GUEST_AGENT_ENV: &str = "HEARTH_GUEST_AGENT";

/// What to build and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Directory holding all images (e.g. `$HEARTH_HOME/images`).
    pub images_dir: PathBuf,
    /// Image name: the subdirectory of `images_dir`.
    pub name: String,
    /// The static guest agent binary, packed as the initramfs's `/init`.
    pub guest_agent: PathBuf,
    /// Debian suite for the rootfs.
    pub suite: String,
    /// Debian mirror for debootstrap; `None` reads it from the host's apt sources.
    pub mirror: Option<String>,
    /// Extra packages to install into the rootfs.
    pub extra_packages: Vec<String>,
    /// Rebuild every component even if the cache is valid.
    pub force: bool,
}

impl BuildOptions {
    /// Options for the image `default` of suite `bookworm`, mirror from the host's apt sources.
    pub fn new(images_dir: impl Into<PathBuf>, guest_agent: impl Into<PathBuf>) -> Self {
        BuildOptions {
            images_dir: images_dir.into(),
            name: DEFAULT_IMAGE_NAME.to_string(),
            guest_agent: guest_agent.into(),
            suite: DEFAULT_SUITE.to_string(),
            mirror: None,
            extra_packages: Vec::new(),
            force: false,
        }
    }
}

/// A built image: its directory and manifest. Obtained from [`build`] or [`open`].
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
    manifest: Manifest,
}

impl Image {
    /// The image's directory, `<images_dir>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the image was built from and the digests of its files.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The kernel, for QEMU's `-kernel`.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(KERNEL_FILE)
    }

    /// The initramfs, for QEMU's `-initrd`.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join(INITRAMFS_FILE)
    }

    /// The ext4 root filesystem, attached read-only as a virtio-blk drive.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS_FILE)
    }

    /// Checks the full SHA-256 of every file against the manifest (reads ~400 MB).
    pub fn verify(&self) -> Result<()> {
        for file in [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
            let expected = self.entry(file)?;
            let (sha256, size) = digest::sha256_file(&self.dir.join(file))?;
            if sha256 != expected.sha256 || size != expected.size {
                return Err(self.damaged(format!(
                    "{file} does not match its manifest digest (corrupted or modified)"
                )));
            }
        }
        Ok(())
    }

    fn entry(&self, file: &str) -> Result<&FileDigest> {
        self.manifest
            .files
            .get(file)
            .ok_or_else(|| self.damaged(format!("manifest.json lists no {file}")))
    }

    fn damaged(&self, reason: String) -> ImageError {
        ImageError::Damaged {
            name: self.manifest.name.clone(),
            dir: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
            reason,
        }
    }
}

/// Opens a built image cheaply: the manifest parses and every file exists with its
/// recorded size. Use [`Image::verify`] for the full digest check.
pub fn open(images_dir: &Path, name: &str) -> Result<Image> {
    validate_name(name)?;
    let dir = images_dir.join(name);
    let damaged = |reason: String| ImageError::Damaged {
        name: name.to_string(),
        dir: images_dir.to_path_buf(),
        reason,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        if !dir.exists() {
            return Err(ImageError::NotFound {
                name: name.to_string(),
                dir: images_dir.to_path_buf(),
            });
        }
        return Err(damaged(
            "manifest.json is missing (the build was interrupted or the file was deleted)".into(),
        ));
    }
    let manifest = Manifest::read(&manifest_path)
        .map_err(|e| damaged(format!("manifest.json is unreadable: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(damaged(format!(
            "it was made by an incompatible builder (manifest format {}, this build reads {FORMAT_VERSION})",
            manifest.format_version
        )));
    }
    let image = Image { dir, manifest };
    for file in [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
        let expected = image.entry(file)?;
        match std::fs::metadata(image.dir.join(file)) {
            Ok(meta) if meta.len() == expected.size => {}
            Ok(meta) => {
                return Err(damaged(format!(
                    "{file} is {} bytes, the manifest says {}",
                    meta.len(),
                    expected.size
                )))
            }
            Err(e) => return Err(damaged(format!("{file} is missing ({e})"))),
        }
    }
    Ok(image)
}

/// Write an image named `name` whose files are placeholders (a few bytes
/// each), for VM drivers that boot nothing from them: the fake driver of
/// tests, which runs the guest agent on the host. [`open`] accepts it;
/// QEMU could not boot it. The manifest says so in its inputs.
pub fn write_placeholder(images_dir: &Path, name: &str) -> Result<Image> {
    validate_name(name)?;
    let dir = images_dir.join(name);
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut files = std::collections::BTreeMap::new();
    for file in [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
        let contents = format!("placeholder {file}: this image boots nothing\n");
        std::fs::write(dir.join(file), &contents)
            .ctx(|| format!("writing {}", dir.join(file).display()))?;
        files.insert(
            file.to_string(),
            FileDigest {
                sha256: digest::sha256_bytes(contents.as_bytes()),
                size: contents.len() as u64,
            },
        );
    }
    let placeholder = "placeholder".to_string();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: name.to_string(),
        created: manifest::now_rfc3339(),
        inputs: Inputs {
            suite: placeholder.clone(),
            mirror: placeholder.clone(),
            extra_packages: Vec::new(),
            rootfs_recipe: 0,
            hearth_run_sha256: placeholder.clone(),
            initramfs_recipe: 0,
            kernel_package: placeholder.clone(),
            kernel_version: placeholder.clone(),
            kernel_release: placeholder.clone(),
            busybox_version: placeholder.clone(),
            guest_agent_sha256: placeholder,
            modules: Vec::new(),
        },
        files,
    };
    manifest.write_atomic(&dir.join(MANIFEST_FILE))?;
    open(images_dir, name)
}

/// Where the guest agent binary probably is: `$HEARTH_GUEST_AGENT`, else `hearth-guest`
/// next to the running executable (an installed release), else the workspace's
/// `target/guest/x86_64-unknown-linux-gnu/release/hearth-guest` (what
/// `scripts/build-guest.sh` produces). The first that exists.
pub fn default_guest_agent_path() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os(GUEST_AGENT_ENV).filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("hearth-guest"));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/guest/x86_64-unknown-linux-gnu/release/hearth-guest"),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// Image names become directory names: no separators, no hidden or parent directories.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["default", "py-3.11", "a_b"] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn open_reports_missing_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path(), "default").unwrap_err().to_string();
        assert!(err.contains("image 'default' not found in"), "{err}");
        assert!(err.contains("run `hearth image build`"), "{err}");
        std::fs::create_dir(dir.path().join("default")).unwrap();
        let err = open(dir.path(), "default").unwrap_err().to_string();
        assert!(err.contains("manifest.json is missing"), "{err}");
    }

    #[test]
    fn options_defaults() {
        let o = BuildOptions::new("/var/images", "/bin/agent");
        assert_eq!(o.name, "default");
        assert_eq!(o.suite, "bookworm");
        assert_eq!(o.mirror, None);
        assert!(!o.force);
    }
}
