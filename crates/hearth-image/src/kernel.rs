//! The kernel side: finding the release and `vmlinuz` in an unpacked kernel package,
//! generating `modules.dep` with depmod, and ordering the modules the guest must load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::run;
use super::error::{ImageError, IoContext, Result};

/// Modules the guest needs, by module name (`-` and `_` are equivalent, as for modprobe).
///
/// Debian's cloud kernel builds its virtio drivers as modules: the MMIO transport (microvm
/// has no PCI), the console (the host↔guest channel), the block device (rootfs), overlayfs
/// (a writable layer over the read-only rootfs), the entropy source and TUN (the
/// device of the transparent egress path, created by the agent only when a sandbox has
/// network).
pub const REQUIRED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "overlay",
    "virtio_rng",
    "tun",
];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// Root the package was unpacked into.
    pub root: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64` (the directory under `lib/modules`).
    pub release: String,
}

impl KernelTree {
    /// Finds the single release under `root/lib/modules`.
    pub fn open(root: &Path) -> Result<Self> {
        let modules = root.join("lib/modules");
        let mut releases = Vec::new();
        for entry in std::fs::read_dir(&modules)
            .ctx(|| format!("listing {} (is this a kernel package?)", modules.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", modules.display()))?;
            releases.push(entry.file_name().to_string_lossy().into_owned());
        }
        match releases.as_slice() {
            [one] => Ok(KernelTree {
                root: root.to_path_buf(),
                release: one.clone(),
            }),
            _ => Err(ImageError::Modules(format!(
                "expected exactly one kernel release in {}, found {releases:?}",
                modules.display()
            ))),
        }
    }

    /// `lib/modules/<release>` inside the unpacked tree.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The compressed kernel image, `boot/vmlinuz-<release>`.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// Runs `depmod` on the tree (the package ships no `modules.dep`) and parses the result.
    pub fn depmod(&self) -> Result<ModulesDep> {
        run(Command::new("depmod")
            .arg("-b")
            .arg(&self.root)
            .arg(&self.release))?;
        let path = self.modules_dir().join("modules.dep");
        let text = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        ModulesDep::parse(&text)
    }
}

/// The dependency graph from `modules.dep`: module path → paths it needs.
#[derive(Debug, Clone, Default)]
pub struct ModulesDep {
    deps: BTreeMap<String, Vec<String>>,
    by_name: HashMap<String, String>,
}

impl ModulesDep {
    /// Parses `modules.dep` text: lines `path.ko: dep.ko dep2.ko`, paths relative to
    /// `lib/modules/<release>`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut dep = ModulesDep::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, needs) = line.split_once(':').ok_or_else(|| {
                ImageError::Modules(format!("modules.dep line {}: no ':' in {line:?}", n + 1))
            })?;
            let module = module.trim().to_string();
            dep.by_name.insert(module_name(&module), module.clone());
            dep.deps.insert(
                module,
                needs.split_whitespace().map(str::to_string).collect(),
            );
        }
        Ok(dep)
    }

    /// The path of the module called `name` (`virtio_rng` finds `virtio-rng.ko`).
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&normalize(name)).map(String::as_str)
    }

    /// The modules named in `wanted` and everything they need, transitively, as paths in
    /// load order: every module comes after all of its dependencies. Ties keep the order of
    /// `wanted`, so the result is deterministic.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            let path = self.path_of(name).ok_or_else(|| {
                ImageError::Modules(format!(
                    "module {name} is not in modules.dep (built in, or missing from this kernel package?)"
                ))
            })?;
            let mut stack = Vec::new();
            self.visit(path, &mut stack, &mut done, &mut order)?;
        }
        Ok(order)
    }

    /// Depth-first post-order walk; `stack` holds the current path to detect cycles.
    fn visit(
        &self,
        path: &str,
        stack: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(path) {
            return Ok(());
        }
        if stack.iter().any(|p| p == path) {
            stack.push(path.to_string());
            return Err(ImageError::Modules(format!(
                "dependency cycle: {}",
                stack.join(" -> ")
            )));
        }
        let needs = self.deps.get(path).ok_or_else(|| {
            ImageError::Modules(format!(
                "{} needs {path}, which has no entry in modules.dep",
                stack
                    .last()
                    .map(String::as_str)
                    .unwrap_or("a requested module")
            ))
        })?;
        stack.push(path.to_string());
        for dep in needs {
            self.visit(dep, stack, done, order)?;
        }
        stack.pop();
        done.insert(path.to_string());
        order.push(path.to_string());
        Ok(())
    }
}

/// The module name of a path: file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/tun.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/c.ko
kernel/c.ko: kernel/a.ko
kernel/d.ko: kernel/missing.ko
";

    #[test]
    fn orders_dependencies_first_without_duplicates() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let order = dep.load_order(REQUIRED_MODULES).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/char/virtio_console.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/overlayfs/overlay.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/drivers/net/tun.ko",
            ]
        );
    }

    #[test]
    fn every_module_follows_its_dependencies() {
        // A chain given in "wrong" order within a line still comes out right.
        let dep = ModulesDep::parse("x.ko: z.ko y.ko\ny.ko: z.ko\nz.ko:\n").unwrap();
        assert_eq!(dep.load_order(&["x"]).unwrap(), ["z.ko", "y.ko", "x.ko"]);
    }

    #[test]
    fn cycle_is_an_error() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let err = dep.load_order(&["a"]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        assert!(
            err.contains("kernel/a.ko -> kernel/b.ko -> kernel/c.ko -> kernel/a.ko"),
            "{err}"
        );
    }

    #[test]
    fn missing_module_or_dependency_is_an_error() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let err = dep.load_order(&["nope"]).unwrap_err().to_string();
        assert!(err.contains("module nope is not in modules.dep"), "{err}");
        let err = dep.load_order(&["d"]).unwrap_err().to_string();
        assert!(err.contains("kernel/missing.ko"), "{err}");
    }

    #[test]
    fn names_normalize_and_compressed_suffixes() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert!(ModulesDep::parse("no colon here\n").is_err());
    }
}
