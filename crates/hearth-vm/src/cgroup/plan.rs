//! Where this process's memory, pids and cpu cgroups live, worked out from
//! the text of `/proc/self/cgroup` and `/proc/self/mountinfo` alone, so the
//! rules can be tested against fixtures of hosts we cannot run on.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (or group of co-mounted controllers).
    V1,
    /// The single unified hierarchy.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "cgroup v1",
            Self::V2 => "cgroup v2",
        })
    }
}

/// A controller that limits a VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// Memory, including what QEMU allocates besides guest RAM.
    Memory,
    /// Number of processes and threads.
    Pids,
    /// CPU time (CFS bandwidth).
    Cpu,
}

impl Controller {
    /// Every controller a VMM's cgroup limits, in the order limits are set.
    pub const ALL: [Self; 3] = [Self::Memory, Self::Pids, Self::Cpu];

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one controller holds this process: the directory of its own cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub controller: Controller,
    pub version: CgroupVersion,
    /// Mount point plus this process's path within the mounted hierarchy.
    pub own_dir: PathBuf,
}

/// For each of [`Controller::ALL`], the directory of this process's cgroup.
///
/// A controller bound to a v1 hierarchy is found there (a controller bound
/// to v1 is unavailable in v2); any other goes to the v2 hierarchy, whose
/// `cgroup.controllers` the caller must still check, since only the live
/// file says what v2 offers.
pub(crate) fn plan(proc_cgroup: &str, mountinfo: &str) -> Result<Vec<Placement>, String> {
    let memberships: Vec<Membership> = proc_cgroup.lines().filter_map(Membership::parse).collect();
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let unified = memberships.iter().find(|m| m.unified());
    Controller::ALL
        .into_iter()
        .map(|controller| {
            let name = controller.name();
            if let Some(membership) = memberships.iter().find(|m| m.controllers.contains(&name)) {
                let own_dir = locate(&mounts, membership.path, name, |mount| {
                    mount.fstype == "cgroup" && mount.super_options.iter().any(|o| o == name)
                })?;
                return Ok(Placement {
                    controller,
                    version: CgroupVersion::V1,
                    own_dir,
                });
            }
            let Some(unified) = unified else {
                return Err(format!(
                    "no {name} controller: /proc/self/cgroup lists no cgroup v1 hierarchy with it and no cgroup v2 hierarchy"
                ));
            };
            let own_dir = locate(&mounts, unified.path, name, |mount| mount.fstype == "cgroup2")
                .map_err(|why| format!("no {name} controller in cgroup v1, and {why}"))?;
            Ok(Placement {
                controller,
                version: CgroupVersion::V2,
                own_dir,
            })
        })
        .collect()
}

/// The directory of cgroup `own` (a path within its hierarchy, as
/// `/proc/self/cgroup` gives it) through a mount of that hierarchy. A mount
/// may show only a subtree (its root field, e.g. a container's cgroup), so
/// `own` must lie within the mount's root.
fn locate(
    mounts: &[Mount],
    own: &str,
    controller: &str,
    is_hierarchy: impl Fn(&Mount) -> bool,
) -> Result<PathBuf, String> {
    let own = Path::new(own);
    if !own.is_absolute() || own.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "this process's {controller} cgroup {} lies outside its cgroup namespace",
            own.display()
        ));
    }
    let candidates: Vec<&Mount> = mounts.iter().filter(|m| is_hierarchy(m)).collect();
    for mount in &candidates {
        if let Ok(inside) = own.strip_prefix(&mount.root) {
            return Ok(if inside.as_os_str().is_empty() {
                mount.mount_point.clone()
            } else {
                mount.mount_point.join(inside)
            });
        }
    }
    match candidates.first() {
        None => Err(format!(
            "the hierarchy holding the {controller} controller is not mounted here"
        )),
        Some(mount) => Err(format!(
            "the hierarchy holding the {controller} controller is mounted at {} showing only {}, which does not contain this process's cgroup {}",
            mount.mount_point.display(),
            mount.root.display(),
            own.display()
        )),
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
struct Membership<'a> {
    id: &'a str,
    /// Empty for the v2 line; may hold `name=systemd` and the like on v1.
    controllers: Vec<&'a str>,
    path: &'a str,
}

impl<'a> Membership<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.splitn(3, ':');
        let id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        Some(Self {
            id,
            controllers: controllers.split(',').filter(|c| !c.is_empty()).collect(),
            path,
        })
    }

    fn unified(&self) -> bool {
        self.id == "0" && self.controllers.is_empty()
    }
}

/// The fields of one `/proc/self/mountinfo` line that matter here.
struct Mount {
    /// The directory of the filesystem that appears at the mount point.
    root: PathBuf,
    mount_point: PathBuf,
    fstype: String,
    super_options: Vec<String>,
}

impl Mount {
    /// `id parent dev root mount-point options [optional…] - fstype source super-options`
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
        Some(Self {
            root: PathBuf::from(unescape(fields.get(3)?)),
            mount_point: PathBuf::from(unescape(fields.get(4)?)),
            fstype: fields.get(separator + 1)?.to_string(),
            super_options: fields
                .get(separator + 3)?
                .split(',')
                .map(str::to_string)
                .collect(),
        })
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This CI host: v1 controllers each on a mount of its own, this process
    /// inside the machine's memory cgroup, cgroup2 mounted without the
    /// controllers we need.
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
4:memory:/process_api/c50eb02d1ea6954202e5996db7461670
2:cpuacct:/
1:cpu:/
0::/
";
    const HYBRID_MOUNTINFO: &str = "\
24 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn placement(controller: Controller, version: CgroupVersion, own_dir: &str) -> Placement {
        Placement {
            controller,
            version,
            own_dir: PathBuf::from(own_dir),
        }
    }

    #[test]
    fn hybrid_host_uses_each_v1_mount_with_the_own_path() {
        assert_eq!(
            plan(HYBRID_CGROUP, HYBRID_MOUNTINFO).unwrap(),
            vec![
                placement(
                    Controller::Memory,
                    CgroupVersion::V1,
                    "/sys/fs/cgroup/memory/process_api/c50eb02d1ea6954202e5996db7461670"
                ),
                placement(Controller::Pids, CgroupVersion::V1, "/sys/fs/cgroup/pids"),
                // `cpu`, not the `cpuacct` mount listed before it.
                placement(Controller::Cpu, CgroupVersion::V1, "/sys/fs/cgroup/cpu"),
            ]
        );
    }

    #[test]
    fn co_mounted_v1_controllers_share_a_hierarchy() {
        let cgroup = "4:memory:/a\n3:pids:/a\n2:cpu,cpuacct:/a\n";
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let planned = plan(cgroup, mountinfo).unwrap();
        assert_eq!(
            planned[2].own_dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/a")
        );
    }

    #[test]
    fn pure_v2_service_uses_its_own_cgroup() {
        let planned = plan("0::/system.slice/hearth.service\n", V2_MOUNTINFO).unwrap();
        let own = "/sys/fs/cgroup/system.slice/hearth.service";
        assert_eq!(
            planned,
            vec![
                placement(Controller::Memory, CgroupVersion::V2, own),
                placement(Controller::Pids, CgroupVersion::V2, own),
                placement(Controller::Cpu, CgroupVersion::V2, own),
            ]
        );
    }

    #[test]
    fn v2_root_is_the_mount_point_itself() {
        let planned = plan("0::/\n", V2_MOUNTINFO).unwrap();
        assert!(planned
            .iter()
            .all(|p| p.version == CgroupVersion::V2 && p.own_dir == Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn a_mount_of_a_subtree_is_followed_from_its_root() {
        // A container that sees only its part of the host's hierarchy.
        let cgroup = "0::/docker/abc/inner\n";
        let mountinfo =
            "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let planned = plan(cgroup, mountinfo).unwrap();
        assert_eq!(planned[0].own_dir, Path::new("/sys/fs/cgroup/inner"));
    }

    #[test]
    fn a_cgroup_outside_the_mounted_subtree_is_an_error() {
        let cgroup = "0::/elsewhere\n";
        let mountinfo = "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let why = plan(cgroup, mountinfo).unwrap_err();
        assert!(why.contains("does not contain"), "{why}");
    }

    #[test]
    fn a_controller_in_neither_version_is_named() {
        let cgroup = "4:memory:/\n1:cpu:/\n";
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let why = plan(cgroup, mountinfo).unwrap_err();
        assert!(why.starts_with("no pids controller"), "{why}");
    }

    #[test]
    fn a_v1_controller_that_is_not_mounted_is_named() {
        let cgroup = HYBRID_CGROUP.replace("8:pids:/", "8:pids:/x");
        let mountinfo: String = HYBRID_MOUNTINFO
            .lines()
            .filter(|l| !l.ends_with(",pids"))
            .map(|l| format!("{l}\n"))
            .collect();
        let why = plan(&cgroup, &mountinfo).unwrap_err();
        assert!(why.contains("pids controller is not mounted"), "{why}");
    }

    #[test]
    fn controllers_missing_from_v1_go_to_v2() {
        let cgroup = "4:memory:/m\n0::/u\n";
        let mountinfo = "\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let planned = plan(cgroup, mountinfo).unwrap();
        assert_eq!(planned[0].version, CgroupVersion::V1);
        assert_eq!(
            planned[1],
            placement(
                Controller::Pids,
                CgroupVersion::V2,
                "/sys/fs/cgroup/unified/u"
            )
        );
    }

    #[test]
    fn a_path_escaping_the_namespace_is_refused() {
        let why = plan("0::/../outside\n", V2_MOUNTINFO).unwrap_err();
        assert!(why.contains("outside its cgroup namespace"), "{why}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/my\040cgroups"), "/mnt/my cgroups");
        assert_eq!(unescape(r"a\\b"), r"a\\b");
    }
}
