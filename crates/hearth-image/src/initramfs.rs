//! The initramfs: the guest agent as `/init`, a static busybox, the virtio modules and the
//! list saying in which order to load them. Written as gzip-compressed newc cpio.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use super::cpio::CpioWriter;
use super::error::{IoContext, Result};
use super::kernel::KernelTree;

/// Directories every guest expects before it has mounted anything.
const DIRS: &[&str] = &["/dev", "/proc", "/sys", "/mnt", "/tmp", "/etc/hearth"];
/// Where the guest reads its module list.
pub const MODULE_LIST_PATH: &str = "/etc/hearth/modules";

/// What goes into an initramfs.
pub struct InitramfsContents<'a> {
    /// The static guest agent binary, becomes `/init`.
    pub agent: &'a [u8],
    /// A static busybox, becomes `/bin/busybox`.
    pub busybox: &'a [u8],
    /// The unpacked kernel package the modules come from.
    pub kernel: &'a KernelTree,
    /// Module paths relative to `lib/modules/<release>`, in load order.
    pub modules: &'a [String],
}

impl InitramfsContents<'_> {
    /// Absolute guest paths of the modules, in load order.
    pub fn module_guest_paths(&self) -> Vec<String> {
        self.modules
            .iter()
            .map(|m| format!("/lib/modules/{}/{m}", self.kernel.release))
            .collect()
    }

    /// Writes the archive to `path`. Output is reproducible (fixed times, owners and gzip
    /// header), so equal inputs give an equal digest.
    pub fn write(&self, path: &Path) -> Result<()> {
        let ctx = || format!("writing {}", path.display());
        let file = File::create(path).ctx(ctx)?;
        let gz: GzEncoder<BufWriter<File>> = GzBuilder::new()
            .mtime(0)
            .write(BufWriter::new(file), Compression::default());
        let mut cpio = CpioWriter::new(gz);
        for dir in DIRS {
            let mode = if *dir == "/tmp" { 0o1777 } else { 0o755 };
            cpio.dir(dir, mode).ctx(ctx)?;
        }
        // The kernel opens /dev/console for PID 1 before anything could mount devtmpfs.
        cpio.char_device("/dev/console", 0o600, 5, 1).ctx(ctx)?;
        cpio.file("/init", 0o755, self.agent).ctx(ctx)?;
        cpio.file("/bin/busybox", 0o755, self.busybox).ctx(ctx)?;
        let modules_dir = self.kernel.modules_dir();
        for (rel, guest) in self.modules.iter().zip(self.module_guest_paths()) {
            let src = modules_dir.join(rel);
            let data = std::fs::read(&src).ctx(|| format!("reading {}", src.display()))?;
            cpio.file(&guest, 0o644, &data).ctx(ctx)?;
        }
        let mut list = self.module_guest_paths().join("\n");
        list.push('\n');
        cpio.file(MODULE_LIST_PATH, 0o644, list.as_bytes())
            .ctx(ctx)?;
        let mut out = cpio.finish().ctx(ctx)?.finish().ctx(ctx)?;
        out.flush().ctx(ctx)?;
        out.get_ref().sync_all().ctx(ctx)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_archive;
    use std::io::Read;

    #[test]
    fn packs_agent_busybox_modules_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "6.1.0-test";
        let mdir = dir
            .path()
            .join("k/lib/modules")
            .join(rel)
            .join("kernel/drivers/virtio");
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join("virtio.ko"), b"V").unwrap();
        std::fs::write(mdir.join("virtio_mmio.ko"), b"M").unwrap();
        let kernel = KernelTree::open(&dir.path().join("k")).unwrap();
        let modules = vec![
            "kernel/drivers/virtio/virtio.ko".to_string(),
            "kernel/drivers/virtio/virtio_mmio.ko".to_string(),
        ];
        let contents = InitramfsContents {
            agent: b"AGENT",
            busybox: b"BUSYBOX",
            kernel: &kernel,
            modules: &modules,
        };
        let out = dir.path().join("initramfs.cpio.gz");
        contents.write(&out).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let entries = read_archive(&raw).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(get("init").data, b"AGENT");
        assert_eq!(get("init").mode & 0o7777, 0o755);
        assert_eq!(get("bin/busybox").data, b"BUSYBOX");
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("tmp").mode & 0o7777, 0o1777);
        for d in ["proc", "sys", "mnt", "etc/hearth"] {
            get(d);
        }
        assert_eq!(
            get("lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_mmio.ko").data,
            b"M"
        );
        assert_eq!(
            String::from_utf8(get("etc/hearth/modules").data.clone()).unwrap(),
            "/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko\n\
             /lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_mmio.ko\n"
        );
        // Reproducible: a second write gives identical bytes.
        let again = dir.path().join("again.gz");
        contents.write(&again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }
}
