//! What confines each QEMU process beyond the VM boundary, so that a QEMU
//! escape is an unprivileged process that sees almost nothing, not root
//! with the host's full view (Firecracker's jailer, for QEMU):
//!
//! - QEMU's own seccomp filter (`-sandbox on,obsolete=deny,
//!   elevateprivileges=deny,spawn=deny,resourcecontrol=deny`: no obsolete
//!   syscalls, no setuid, no fork or exec, no scheduler or affinity
//!   changes);
//! - a new, empty network namespace (a VM has no network device, so QEMU
//!   needs none; its channels are inherited Unix sockets);
//! - a user of its own: uid and gid [`Confinement::uid_base`] plus the PID
//!   of the process that watches it, unique on the host while the VM runs,
//!   with no supplementary groups (but `/dev/kvm`'s group under KVM) and
//!   `no_new_privs`;
//! - a mount namespace whose root is an empty, read-only tmpfs holding only
//!   what QEMU needs, each at its host path: its binary, the libraries and
//!   modules it loads and its firmware (read-only), the VM's kernel,
//!   initramfs and base image (read-only), its writable disk and console
//!   log, and `/dev/null`, `/dev/urandom` (and `/dev/kvm`);
//! - a new PID namespace, in which QEMU is PID 1;
//! - a cgroup of its own with memory, pids and CPU limits.
//!
//! Each part is used where this host supports it and reported, with why
//! not, by [`Jail::report`] (`hearth doctor`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::cgroup::{CgroupLayout, CgroupLimits};
use crate::driver::VmSpec;
use crate::error::{Result, VmError};
use crate::Accel;

/// QEMU's seccomp filter, as its command-line option.
pub const SECCOMP_OPTION: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Environment variable that turns the jail off (`off`), to measure what it
/// costs or to rule it out when debugging; `hearth doctor` says so.
pub const JAIL_ENV: &str = "HEARTH_VMM_JAIL";

/// Environment variable that sets the memory a VMM's cgroup allows QEMU
/// beyond guest RAM, in MiB (default: 1280 under TCG, 384 under KVM).
pub const MEMORY_OVERHEAD_ENV: &str = "HEARTH_VMM_MEMORY_OVERHEAD_MIB";

/// Environment variable that moves the jailed VMMs' uid range (default
/// [`DEFAULT_UID_BASE`]).
pub const UID_BASE_ENV: &str = "HEARTH_VMM_UID_BASE";

/// First uid of the range jailed VMMs run as: far above the ranges
/// distributions hand to users, system services and `/etc/subuid`, and low
/// enough that base plus the largest PID (2^22) stays below 2^31.
pub const DEFAULT_UID_BASE: u32 = 2_000_000_000;

/// The cgroup instance all Hearth processes on a host share: VM cgroups
/// are named by sandbox id, unique on their own.
const CGROUP_INSTANCE: &str = "vmm";

/// Where QEMU keeps its loadable modules and its firmware on Debian.
const VMM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/qemu",
    "/usr/share/qemu",
    "/usr/share/seabios",
];

/// Which confinements every VMM gets on this host.
#[derive(Debug, Clone)]
pub struct Jail {
    /// QEMU's seccomp filter; `Err` says why not.
    pub seccomp: std::result::Result<(), String>,
    /// A new network namespace; `Err` says why not.
    pub network_namespace: std::result::Result<(), String>,
    /// Its own user, mount namespace and PID namespace; `Err` says why not.
    pub confinement: std::result::Result<Arc<Confinement>, String>,
    /// A cgroup of its own; `Err` says why not.
    pub cgroup: std::result::Result<Arc<CgroupLayout>, String>,
    /// Memory allowed to QEMU beyond guest RAM, MiB, when set by
    /// [`MEMORY_OVERHEAD_ENV`] (else [`vmm_limits`]'s default).
    pub memory_overhead_mib: Option<u64>,
}

/// What a jailed VMM is given of the host, and who it runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The QEMU binary, the dynamic loader and the libraries it and its
    /// modules link, as named (the paths QEMU opens them by).
    pub vmm_files: Vec<PathBuf>,
    /// QEMU's module and firmware directories that exist here.
    pub vmm_dirs: Vec<PathBuf>,
    /// A VMM runs as uid and gid `uid_base` plus the PID of its watcher.
    pub uid_base: u32,
}

impl Jail {
    /// No confinement, with `why`.
    pub fn off(why: &str) -> Self {
        Self {
            seccomp: Err(why.to_string()),
            network_namespace: Err(why.to_string()),
            confinement: Err(why.to_string()),
            cgroup: Err(why.to_string()),
            memory_overhead_mib: None,
        }
    }

    /// What `binary` and this process can do, unless `HEARTH_VMM_JAIL=off`.
    pub fn detect(binary: &Path) -> Self {
        if std::env::var(JAIL_ENV).is_ok_and(|v| v == "off") {
            return Self::off(&format!("turned off by {JAIL_ENV}=off"));
        }
        // The checks run programs (QEMU, unshare, ldd over QEMU's modules):
        // once per binary per process.
        static DETECTED: OnceLock<Mutex<HashMap<PathBuf, Jail>>> = OnceLock::new();
        let detected = DETECTED.get_or_init(Default::default);
        if let Some(jail) = detected.lock().get(binary) {
            return jail.clone();
        }
        let overhead = match std::env::var(MEMORY_OVERHEAD_ENV) {
            Ok(text) => text
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{MEMORY_OVERHEAD_ENV}={text} is not a whole number of MiB")),
            Err(_) => Ok(None),
        };
        let jail = Self {
            seccomp: seccomp_supported(binary),
            network_namespace: network_namespace_allowed(),
            confinement: Confinement::detect(binary).map(Arc::new),
            cgroup: overhead.clone().and_then(|_| {
                CgroupLayout::detect(CGROUP_INSTANCE).map(|layout| {
                    layout.sweep_abandoned(std::time::Duration::from_secs(60));
                    Arc::new(layout)
                })
            }),
            memory_overhead_mib: overhead.unwrap_or(None),
        };
        detected.lock().insert(binary.to_path_buf(), jail.clone());
        jail
    }

    /// Whether QEMU gets its seccomp filter.
    pub fn seccomp(&self) -> bool {
        self.seccomp.is_ok()
    }

    /// Whether QEMU starts in a new network namespace.
    pub fn network_namespace(&self) -> bool {
        self.network_namespace.is_ok()
    }

    /// Whether QEMU runs as its own user in its own mount and PID
    /// namespaces.
    pub fn confined(&self) -> bool {
        self.confinement.is_ok()
    }

    /// One line per confinement: in force, or not and why.
    pub fn report(&self) -> Vec<String> {
        fn line<T>(name: &str, state: &std::result::Result<T, String>, on: String) -> String {
            match state {
                Ok(_) => format!("{name}: on{on}"),
                Err(why) => format!("{name}: off ({why})"),
            }
        }
        let uid = match &self.confinement {
            Ok(c) => format!(
                " (uid and gid {} + the watcher's PID, no capabilities, no_new_privs)",
                c.uid_base
            ),
            Err(_) => String::new(),
        };
        let files = match &self.confinement {
            Ok(c) => format!(
                " ({} QEMU files and {} directories, the VM's own files, /dev/null, /dev/urandom)",
                c.vmm_files.len(),
                c.vmm_dirs.len()
            ),
            Err(_) => String::new(),
        };
        let cgroup = match &self.cgroup {
            Ok(layout) => format!(" ({})", layout.describe()),
            Err(_) => String::new(),
        };
        vec![
            line(
                "seccomp filter (QEMU -sandbox)",
                &self.seccomp,
                String::new(),
            ),
            line(
                "network namespace (empty)",
                &self.network_namespace,
                String::new(),
            ),
            line("unprivileged user", &self.confinement, uid),
            line(
                "mount namespace (only its own files)",
                &self.confinement,
                files,
            ),
            line(
                "PID namespace (QEMU is PID 1)",
                &self.confinement,
                String::new(),
            ),
            line(
                "own cgroup (memory, pids and CPU limits)",
                &self.cgroup,
                cgroup,
            ),
        ]
    }
}

impl Confinement {
    /// What `binary` needs, if this process may confine it (root: it
    /// switches users, mounts, and makes mount and PID namespaces).
    pub fn detect(binary: &Path) -> std::result::Result<Self, String> {
        if !is_root() {
            return Err(
                "needs root to switch the VMM to its own user and build its namespaces".into(),
            );
        }
        let status = std::process::Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(_) => return Err("this host refuses new mount or PID namespaces".into()),
            Err(e) => return Err(format!("cannot run unshare to check: {e}")),
        }
        let uid_base = match std::env::var(UID_BASE_ENV) {
            Ok(text) => text
                .parse::<u32>()
                .ok()
                .filter(|base| base.checked_add(1 << 22).is_some_and(|top| top < 1 << 31))
                .ok_or_else(|| {
                    format!("{UID_BASE_ENV}={text} is not a uid from 1 to 2143289343")
                })?,
            Err(_) => DEFAULT_UID_BASE,
        };
        let mut files = BTreeSet::new();
        files.insert(binary.to_path_buf());
        let mut objects = vec![binary.to_path_buf()];
        let vmm_dirs: Vec<PathBuf> = VMM_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .collect();
        // Of QEMU's loadable modules a VM here loads only its accelerator
        // (`-nodefaults -display none`: no display, audio or USB modules),
        // so only those modules' libraries are shown: fewer mounts, and a
        // quicker check (each `ldd` costs milliseconds).
        for dir in &vmm_dirs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                objects.extend(entries.flatten().map(|e| e.path()).filter(|p| {
                    p.extension().is_some_and(|x| x == "so")
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("accel-"))
                }));
            }
        }
        for object in &objects {
            let output = std::process::Command::new("ldd")
                .arg(object)
                .output()
                .map_err(|e| format!("cannot run ldd to find QEMU's libraries: {e}"))?;
            if object == binary && !output.status.success() {
                return Err(format!(
                    "ldd {} failed: {}",
                    binary.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            files.extend(parse_ldd(&String::from_utf8_lossy(&output.stdout)));
        }
        Ok(Self {
            vmm_files: files.into_iter().collect(),
            vmm_dirs,
            uid_base,
        })
    }

    /// The mounts and ownership that jail the VM of `spec`, whose writable
    /// disk is `scratch`; `kvm_group` is `/dev/kvm`'s group under KVM.
    pub(crate) fn plan(&self, spec: &VmSpec, scratch: &Path) -> Result<MountPlan> {
        let root = spec.state_dir.join("jail");
        std::fs::create_dir_all(&root)
            .map_err(VmError::io(format!("creating {}", root.display())))?;
        let mut binds = Vec::new();
        for file in &self.vmm_files {
            binds.push(Bind::new(file, file, BindKind::Program)?);
        }
        for dir in &self.vmm_dirs {
            binds.push(Bind::new(dir, dir, BindKind::ProgramDir)?);
        }
        for (what, image) in [
            ("kernel", &spec.kernel),
            ("initramfs", &spec.initramfs),
            ("root filesystem", &spec.rootfs),
        ] {
            let mode = std::fs::metadata(image)
                .map_err(VmError::io(format!("reading {}", image.display())))?
                .mode();
            if mode & 0o004 == 0 {
                return Err(VmError::InvalidSpec(format!(
                    "the {what} {} is not readable by the jailed VMM (mode {:o}): `chmod o+r` it, or set {JAIL_ENV}=off",
                    image.display(),
                    mode & 0o7777
                )));
            }
            binds.push(Bind::new(image, image, BindKind::ReadOnly)?);
        }
        let mut owned = Vec::new();
        let console = spec.console_log();
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&console)
                .map_err(VmError::io(format!("creating {}", console.display())))?;
        }
        binds.push(Bind::new(&console, &console, BindKind::Writable)?);
        owned.push(console);
        match &spec.scratch {
            crate::ScratchDisk::Ephemeral => {
                binds.push(Bind::new(scratch, scratch, BindKind::Writable)?);
                owned.push(scratch.to_path_buf());
            }
            crate::ScratchDisk::Layered { dir, .. } => {
                binds.push(Bind::new(dir, dir, BindKind::WritableDir)?);
                owned.push(dir.clone());
                let entries = std::fs::read_dir(dir)
                    .map_err(VmError::io(format!("listing {}", dir.display())))?;
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_file()) {
                        owned.push(entry.path());
                    }
                }
            }
        }
        let mut groups = Vec::new();
        for device in ["/dev/null", "/dev/urandom"] {
            binds.push(Bind::new(
                Path::new(device),
                Path::new(device),
                BindKind::Device,
            )?);
        }
        if spec.accel == Accel::Kvm {
            let kvm = Path::new("/dev/kvm");
            binds.push(Bind::new(kvm, kvm, BindKind::Device)?);
            let gid = std::fs::metadata(kvm)
                .map_err(VmError::io("reading /dev/kvm"))?
                .gid();
            groups.push(gid);
        }
        let mut dirs = BTreeSet::new();
        for bind in &binds {
            let mut parent = bind.target.parent();
            while let Some(dir) = parent {
                if dir == Path::new("/") {
                    break;
                }
                dirs.insert(dir.to_path_buf());
                parent = dir.parent();
            }
        }
        Ok(MountPlan {
            root: cstring(&root)?,
            dirs: dirs
                .iter()
                .map(|d| cstring(&under(&root, d)))
                .collect::<Result<_>>()?,
            binds: binds
                .into_iter()
                .map(|b| b.finish(&root))
                .collect::<Result<_>>()?,
            owned: owned.iter().map(|p| cstring(p)).collect::<Result<_>>()?,
            uid_base: self.uid_base,
            groups,
        })
    }
}

/// The limits on the QEMU process of a VM with `spec`: its guest memory
/// plus what QEMU itself needs (`overhead_mib`, by default under TCG up to
/// 1 GiB of translated code and more), a thread count well above QEMU's
/// (vCPUs, its I/O pool of 64, helpers), and one CPU per vCPU plus one for
/// its I/O.
pub fn vmm_limits(spec: &VmSpec, overhead_mib: Option<u64>) -> CgroupLimits {
    let overhead_mib = overhead_mib.unwrap_or(match spec.accel {
        Accel::Tcg => 1280,
        Accel::Kvm => 384,
    });
    CgroupLimits {
        memory_bytes: (spec.memory_mib + overhead_mib) << 20,
        pids: 128 + u64::from(spec.vcpus),
        cpu_quota_us: (u64::from(spec.vcpus) + 1) * 100_000,
        cpu_period_us: 100_000,
    }
}

/// How one host path is shown in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindKind {
    /// QEMU's binary or a library: read-only, executable.
    Program,
    /// QEMU's modules or firmware: read-only, executable.
    ProgramDir,
    /// An image file: read-only, not executable.
    ReadOnly,
    /// The VM's own file: writable, not executable.
    Writable,
    /// The VM's own directory (a layer chain): writable.
    WritableDir,
    /// A device node.
    Device,
}

struct Bind {
    source: PathBuf,
    target: PathBuf,
    kind: BindKind,
}

impl Bind {
    fn new(source: &Path, target: &Path, kind: BindKind) -> Result<Self> {
        if !target.is_absolute() {
            return Err(VmError::InvalidSpec(format!(
                "the jail needs absolute paths: {}",
                target.display()
            )));
        }
        Ok(Self {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
            kind,
        })
    }

    fn finish(self, root: &Path) -> Result<JailBind> {
        let flags = match self.kind {
            BindKind::Program | BindKind::ProgramDir => {
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV
            }
            BindKind::ReadOnly => {
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
            }
            BindKind::Writable | BindKind::WritableDir => {
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
            }
            BindKind::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
        };
        Ok(JailBind {
            source: cstring(&self.source)?,
            target: cstring(&under(root, &self.target))?,
            directory: matches!(self.kind, BindKind::ProgramDir | BindKind::WritableDir),
            flags,
        })
    }
}

/// Everything the jailing child does, prepared so that it runs without
/// allocating (it runs between fork and exec).
#[derive(Debug)]
pub(crate) struct MountPlan {
    /// The empty directory the jail's root tmpfs is mounted on.
    pub root: CString,
    /// Directories to make in the tmpfs, parents first.
    pub dirs: Vec<CString>,
    /// Host paths to show in the jail.
    pub binds: Vec<JailBind>,
    /// Paths handed to the VMM's user before it starts.
    pub owned: Vec<CString>,
    /// See [`Confinement::uid_base`].
    pub uid_base: u32,
    /// Supplementary groups (`/dev/kvm`'s, under KVM).
    pub groups: Vec<libc::gid_t>,
}

/// One bind mount into the jail.
#[derive(Debug)]
pub(crate) struct JailBind {
    /// The host path.
    pub source: CString,
    /// Its place under the jail's root (before the root moves).
    pub target: CString,
    /// A directory (else a file or device).
    pub directory: bool,
    /// Flags of the read-only/nosuid/nodev/noexec remount.
    pub flags: libc::c_ulong,
}

impl MountPlan {
    /// What a step of the plan was, for an error message (`step` and
    /// `index` as reported by the jailing child).
    pub(crate) fn describe(&self, step: u32, index: u32) -> String {
        let at = |list: &[CString], i: u32| {
            list.get(i as usize)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match step {
            STEP_CGROUP => "joining the VMM's cgroup".into(),
            STEP_CHOWN => format!("handing {} to the VMM's user", at(&self.owned, index)),
            STEP_PRIVATE => "making the mount namespace private".into(),
            STEP_ROOT => format!(
                "mounting the jail's root on {}",
                self.root.to_string_lossy()
            ),
            STEP_MKDIR => format!("making {}", at(&self.dirs, index)),
            STEP_BIND => format!(
                "showing {} in the jail",
                self.binds
                    .get(index as usize)
                    .map(|b| b.source.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            STEP_PIVOT => "moving into the jail's root".into(),
            STEP_USER => "switching to the VMM's user".into(),
            STEP_CLONE => "starting the VMM in new namespaces".into(),
            _ => format!("step {step}"),
        }
    }
}

/// Steps of the jailing child, as it reports a failure.
pub(crate) const STEP_CGROUP: u32 = 1;
pub(crate) const STEP_CHOWN: u32 = 2;
pub(crate) const STEP_PRIVATE: u32 = 3;
pub(crate) const STEP_ROOT: u32 = 4;
pub(crate) const STEP_MKDIR: u32 = 5;
pub(crate) const STEP_BIND: u32 = 6;
pub(crate) const STEP_PIVOT: u32 = 7;
pub(crate) const STEP_USER: u32 = 8;
pub(crate) const STEP_CLONE: u32 = 9;

fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| VmError::InvalidSpec(format!("a path holds a NUL byte: {}", path.display())))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The files `ldd` names: `name => /path (addr)` and `/path (addr)` lines,
/// leaving out the vDSO and what was not found.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Whether `binary` knows the `-sandbox` option with the filter's settings
/// (a QEMU built without libseccomp refuses it while parsing its options,
/// before `-version` prints and exits).
fn seccomp_supported(binary: &Path) -> std::result::Result<(), String> {
    let output = std::process::Command::new(binary)
        .args(["-sandbox", SECCOMP_OPTION, "-version"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "this QEMU has no seccomp support: {}",
            stderr.trim().lines().next().unwrap_or("-sandbox refused")
        ))
    }
}

/// Whether this process may make network namespaces (root, or
/// `CAP_SYS_ADMIN`: checked by asking the kernel in a throwaway child).
fn network_namespace_allowed() -> std::result::Result<(), String> {
    let status = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err(
            "this process may not create network namespaces (needs root or CAP_SYS_ADMIN)".into(),
        ),
        Err(e) => Err(format!("cannot run unshare to check: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_is_on_and_why_the_rest_is_not() {
        let mut jail = Jail::off("x");
        jail.seccomp = Ok(());
        jail.network_namespace = Err("needs root".into());
        let report = jail.report();
        assert_eq!(report[0], "seccomp filter (QEMU -sandbox): on");
        assert_eq!(report[1], "network namespace (empty): off (needs root)");
        assert_eq!(report[2], "unprivileged user: off (x)");
        assert_eq!(report.len(), 6);
        assert!(!Jail::off("x").seccomp());
        assert!(!Jail::off("x").confined());
    }

    #[test]
    fn ldd_output_names_the_files_loaded() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \tlibgone.so.2 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn limits_cover_the_guest_and_qemu() {
        let spec = VmSpec {
            name: "sb-1".into(),
            state_dir: "/s".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            rootfs: "/r".into(),
            disk_bytes: 1 << 30,
            vcpus: 2,
            memory_mib: 512,
            accel: Accel::Tcg,
            kernel_args: Vec::new(),
            scratch: crate::ScratchDisk::Ephemeral,
        };
        let limits = vmm_limits(&spec, None);
        assert_eq!(vmm_limits(&spec, Some(16)).memory_bytes, (512 + 16) << 20);
        assert_eq!(limits.memory_bytes, (512 + 1280) << 20);
        assert_eq!(limits.pids, 130);
        assert_eq!(limits.cpu_quota_us, 300_000);
    }

    #[test]
    fn the_plan_shows_each_file_at_its_host_path_and_refuses_unreadable_images() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        for name in ["vmlinuz", "initramfs", "rootfs"] {
            std::fs::write(images.join(name), b"x").unwrap();
        }
        let state = dir.path().join("sandboxes/sb-1");
        std::fs::create_dir_all(&state).unwrap();
        let scratch = state.join("scratch.ext4");
        std::fs::write(&scratch, b"").unwrap();
        let spec = VmSpec {
            name: "sb-1".into(),
            state_dir: state.clone(),
            kernel: images.join("vmlinuz"),
            initramfs: images.join("initramfs"),
            rootfs: images.join("rootfs"),
            disk_bytes: 1 << 30,
            vcpus: 1,
            memory_mib: 256,
            accel: Accel::Tcg,
            kernel_args: Vec::new(),
            scratch: crate::ScratchDisk::Ephemeral,
        };
        let confinement = Confinement {
            vmm_files: vec!["/usr/bin/qemu-system-x86_64".into(), "/lib64/ld.so".into()],
            vmm_dirs: vec!["/usr/share/qemu".into()],
            uid_base: DEFAULT_UID_BASE,
        };
        let plan = confinement.plan(&spec, &scratch).unwrap();
        let root = state.join("jail");
        assert_eq!(plan.root.to_str().unwrap(), root.to_str().unwrap());
        let target = |host: &Path| under(&root, host).to_string_lossy().into_owned();
        let bind = |host: &Path| {
            plan.binds
                .iter()
                .find(|b| b.target.to_str().unwrap() == target(host))
                .unwrap_or_else(|| panic!("{} is not shown: {plan:?}", host.display()))
        };
        let rootfs = bind(&spec.rootfs);
        assert_ne!(rootfs.flags & libc::MS_RDONLY, 0);
        assert_ne!(rootfs.flags & libc::MS_NOEXEC, 0);
        let qemu = bind(Path::new("/usr/bin/qemu-system-x86_64"));
        assert_eq!(qemu.flags & libc::MS_NOEXEC, 0, "QEMU must be executable");
        assert!(bind(Path::new("/usr/share/qemu")).directory);
        assert_eq!(bind(&scratch).flags & libc::MS_RDONLY, 0);
        assert_eq!(bind(&spec.console_log()).flags & libc::MS_RDONLY, 0);
        bind(Path::new("/dev/urandom"));
        assert!(!plan
            .binds
            .iter()
            .any(|b| b.target.to_str().unwrap() == target(Path::new("/dev/kvm"))));
        // Only the VM's own two files change hands; the console log was
        // made private to it.
        let owned: Vec<&str> = plan.owned.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(
            owned,
            [
                spec.console_log().to_str().unwrap(),
                scratch.to_str().unwrap()
            ]
        );
        let mode = std::fs::metadata(spec.console_log())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Every directory is made before anything inside it.
        let dirs: Vec<&str> = plan.dirs.iter().map(|c| c.to_str().unwrap()).collect();
        for (i, d) in dirs.iter().enumerate() {
            let parent = Path::new(d).parent().unwrap().to_str().unwrap();
            assert!(
                parent == root.to_str().unwrap() || dirs[..i].contains(&parent),
                "{d} before its parent: {dirs:?}"
            );
        }
        // An image only root can read is refused up front, naming the fix.
        std::fs::set_permissions(&spec.rootfs, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = confinement.plan(&spec, &scratch).unwrap_err().to_string();
        assert!(error.contains("not readable by the jailed VMM"), "{error}");
        assert!(error.contains("chmod o+r"), "{error}");
    }

    #[test]
    fn this_hosts_qemu_takes_the_whole_jail() {
        // The suite runs as root with Debian's QEMU, built with libseccomp.
        let Some(qemu) = crate::qemu::find_on_path(crate::qemu::QEMU_BINARY) else {
            panic!("qemu-system-x86_64 is not installed: run scripts/setup.sh");
        };
        let jail = Jail::detect(&qemu);
        assert!(jail.seccomp(), "{:?}", jail.seccomp);
        assert!(jail.network_namespace(), "{:?}", jail.network_namespace);
        let confinement = jail.confinement.as_ref().expect("confinement");
        assert!(confinement.vmm_files.contains(&qemu), "{confinement:?}");
        assert!(
            confinement
                .vmm_files
                .iter()
                .any(|f| f.to_string_lossy().contains("libc.so")),
            "{confinement:?}"
        );
        assert!(jail.cgroup.is_ok(), "{:?}", jail.cgroup);
    }
}
