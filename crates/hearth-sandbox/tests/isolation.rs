//! Isolation and ephemerality, on real VMs.

mod common;

use common::{sh, TestHome};
use hearth_sandbox::ExecOptions;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn guest_runs_its_own_kernel_and_cannot_see_host_files() {
    let t = TestHome::new();
    let marker = format!("/tmp/hearth-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    let sandbox = t.small().await;

    let image = hearth_image::open(t.home.images_dir(), "default").unwrap();
    let guest_release = sh(&sandbox, "uname -r").await.stdout_text();
    assert_eq!(guest_release.trim(), image.manifest().inputs.kernel_release);
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest_release.trim(), host_release.trim());
    assert_eq!(sandbox.info().guest.kernel_release, guest_release.trim());

    let probe = sh(
        &sandbox,
        &format!("test -e {marker} && echo visible || echo absent"),
    )
    .await;
    assert_eq!(probe.stdout_text(), "absent\n");

    sandbox.destroy().await;
    std::fs::remove_file(&marker).unwrap();
    t.assert_clean().await;
}

fn sha256_file(path: &std::path::Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_never_outlive_a_sandbox_or_touch_the_base_image() {
    let t = TestHome::new();
    let image = hearth_image::open(t.home.images_dir(), "default").unwrap();
    let before = sha256_file(&image.rootfs());

    let first = t.small().await;
    let out = sh(
        &first,
        "echo persisted > /root/state && rm -rf /usr/share/doc && echo x > /etc/motd && cat /root/state",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "persisted\n",
        "stderr: {}",
        out.stderr_text()
    );
    first.destroy().await;

    let second = t.small().await;
    let out = sh(
        &second,
        "test -e /root/state && echo present || echo gone; test -d /usr/share/doc && echo doc",
    )
    .await;
    assert_eq!(out.stdout_text(), "gone\ndoc\n");
    second.destroy().await;

    assert_eq!(sha256_file(&image.rootfs()), before, "base image changed");
    t.assert_clean().await;
}

/// Capabilities an unprivileged exec must not have (bit numbers).
const DROPPED: [(u32, &str); 5] = [
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (22, "CAP_SYS_BOOT"),
];
/// Capabilities package installs need, kept (CAP_CHOWN, CAP_DAC_OVERRIDE,
/// CAP_FOWNER, CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT).
const KEPT: [u32; 6] = [0, 1, 3, 6, 7, 18];

/// `CapEff`, `CapBnd`, ... of `/proc/self/status` text, as a mask.
fn cap_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// Tries, as root in the guest, every way we know into the agent: take its
/// descriptors (`pidfd_getfd` of each fd `/proc/1/fd` lists), read its
/// memory and environment, raise the exec's own `memory.max`, move into the
/// agent's cgroup, point `core_pattern` at a program. Prints one
/// `<attempt> <outcome>` line each.
const ATTACKS: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def outcome(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
pidfd = os.pidfd_open(1)
fds = sorted(int(n) for n in os.listdir("/proc/1/fd"))
def getfd(fd):
    taken = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if taken < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    os.close(taken)
print("fds", len(fds))
print("pidfd_getfd", sorted({outcome(lambda: getfd(fd)) for fd in fds}))
print("mem", outcome(lambda: open("/proc/1/mem", "rb").read(1)))
print("environ", outcome(lambda: open("/proc/1/environ", "rb").read(1)))
print("fd_link", outcome(lambda: os.readlink("/proc/1/fd/%d" % fds[0])))
own = "/sys/fs/cgroup" + open("/proc/self/cgroup").read().split(":", 2)[2].strip()
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
print("own_memory_max", outcome(lambda: write(own + "/memory.max", "max")))
print("workload_memory_max", outcome(lambda: write("/sys/fs/cgroup/workload/memory.max", "max")))
print("join_agent", outcome(lambda: write("/sys/fs/cgroup/agent/cgroup.procs", str(os.getpid()))))
print("cgroup", open("/proc/self/cgroup").read().strip())
print("core_pattern", outcome(lambda: write("/proc/sys/kernel/core_pattern", "|/tmp/x")))
print("unbind", outcome(lambda: write("/sys/bus/virtio/drivers/virtio_console/unbind", "virtio9")))
"#;

fn attack_lines(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_workload_cannot_reach_the_agent_or_its_cgroups() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    assert!(sandbox.info().guest.workload_isolation);

    let status = sh(&sandbox, "id -u; cat /proc/self/status").await;
    let text = status.stdout_text();
    assert!(text.starts_with("0\n"), "execs stay root: {text}");
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        let mask = cap_mask(&text, field);
        for (cap, name) in DROPPED {
            assert_eq!(mask & (1 << cap), 0, "{field} has {name}: {mask:x}");
        }
        for cap in KEPT {
            assert_ne!(mask & (1 << cap), 0, "{field} lacks capability {cap}");
        }
    }
    assert_eq!(cap_mask(&text, "CapInh"), 0);
    assert_eq!(cap_mask(&text, "CapAmb"), 0);

    let out = sandbox
        .run(ExecOptions::new(["python3", "-c", ATTACKS]), None)
        .await
        .unwrap();
    let seen = attack_lines(&out.stdout_text());
    let say = |k: &str| seen.get(k).map(String::as_str).unwrap_or("(missing)");
    let context = format!(
        "stdout: {}\nstderr: {}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert!(say("fds") != "0", "{context}");
    assert_eq!(say("pidfd_getfd"), "['EPERM']", "{context}");
    assert_eq!(say("mem"), "EACCES", "{context}");
    assert_eq!(say("environ"), "EACCES", "{context}");
    assert_eq!(say("fd_link"), "EACCES", "{context}");
    assert_eq!(say("own_memory_max"), "EROFS", "{context}");
    assert_eq!(say("workload_memory_max"), "EROFS", "{context}");
    assert_eq!(say("join_agent"), "EROFS", "{context}");
    assert!(say("cgroup").starts_with("0::/workload/exec-"), "{context}");
    assert_eq!(say("core_pattern"), "EROFS", "{context}");
    assert_eq!(say("unbind"), "EROFS", "{context}");

    // Without CAP_SYS_ADMIN nothing can be remounted writable.
    let out = sh(
        &sandbox,
        "mount -o remount,rw /sys/fs/cgroup && echo remounted; \
         umount /sys/fs/cgroup && echo unmounted; \
         touch /sys/fs/cgroup/workload/cgroup.kill 2>/dev/null && echo writable; echo done",
    )
    .await;
    assert_eq!(out.stdout_text(), "done\n", "{}", out.stderr_text());

    // Raising the agent's OOM score is allowed to root; the agent undoes it
    // within a second (bounded here by a generous poll in the guest).
    let out = sh(
        &sandbox,
        "echo 1000 > /proc/1/oom_score_adj; i=0; \
         while [ \"$(cat /proc/1/oom_score_adj)\" != -1000 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
         cat /proc/1/oom_score_adj",
    )
    .await;
    assert_eq!(out.stdout_text(), "-1000\n", "{}", out.stderr_text());

    // The agent still works after all of it.
    assert_eq!(sh(&sandbox, "echo alive").await.stdout_text(), "alive\n");
    sandbox.destroy().await;
    t.assert_clean().await;
}

/// A tiny package built in the guest: `dpkg -i` and `apt-get install` of a
/// local `.deb` work as root in a confined exec (apt drops to its `_apt`
/// user, which needs CAP_SETUID/CAP_SETGID). Python packages: see
/// [`PIP_INSTALL`].
const PACKAGE_INSTALL: &str = r#"
set -e
build() {
  mkdir -p /tmp/$1/DEBIAN /tmp/$1/usr/share/$1
  printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@e>\nDescription: test\n' $1 > /tmp/$1/DEBIAN/control
  echo installed > /tmp/$1/usr/share/$1/marker
  chown -R root:root /tmp/$1
  dpkg-deb --build /tmp/$1 /tmp/$1.deb >/dev/null
}
build hearth-probe-a
build hearth-probe-b
dpkg -i /tmp/hearth-probe-a.deb >/dev/null
apt-get install -y -q /tmp/hearth-probe-b.deb >/dev/null 2>/tmp/apt.err || { cat /tmp/apt.err >&2; exit 1; }
dpkg-query -W -f='${Package} ${Status}\n' hearth-probe-a hearth-probe-b
cat /usr/share/hearth-probe-a/marker /usr/share/hearth-probe-b/marker
"#;

/// Builds a one-module wheel in the guest and pip-installs it system-wide,
/// then imports it from elsewhere.
const PIP_INSTALL: &str = r#"
set -e
python3 - <<'PY'
import base64, hashlib, zipfile
files = {
    "hearthprobe/__init__.py": b"GREETING = 'hello from a wheel'\n",
    "hearthprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hearthprobe\nVersion: 1.0\n",
    "hearthprobe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(
    f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
    for n, d in files.items()
) + "hearthprobe-1.0.dist-info/RECORD,,\n"
files["hearthprobe-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile("/tmp/hearthprobe-1.0-py3-none-any.whl", "w") as z:
    for n, d in files.items():
        z.writestr(n, d)
PY
python3 -m pip install -q --no-index --disable-pip-version-check --root-user-action=ignore /tmp/hearthprobe-1.0-py3-none-any.whl
cd / && python3 -c 'import hearthprobe; print(hearthprobe.GREETING)'
"#;

#[tokio::test(flavor = "multi_thread")]
async fn package_installs_work_as_root_in_a_confined_exec() {
    let t = TestHome::new();
    let sandbox = t.small().await;
    assert!(sandbox.info().guest.workload_isolation);
    let out = sh(&sandbox, PACKAGE_INSTALL).await;
    assert_eq!(
        out.stdout_text(),
        "hearth-probe-a install ok installed\nhearth-probe-b install ok installed\ninstalled\ninstalled\n",
        "stderr: {}",
        out.stderr_text()
    );
    // pip installs system-wide too (the image ships pip and no PEP 668
    // marker): a wheel made here, since the sandbox has no network.
    let pip = sh(&sandbox, PIP_INSTALL).await;
    assert_eq!(
        pip.stdout_text(),
        "hello from a wheel\n",
        "stderr: {}",
        pip.stderr_text()
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_sandbox_gives_full_root() {
    let t = TestHome::new();
    let sandbox = t.small_privileged().await;
    assert!(!sandbox.info().guest.workload_isolation);

    let text = sh(
        &sandbox,
        "cat /proc/sys/kernel/cap_last_cap /proc/self/status",
    )
    .await
    .stdout_text();
    let last: u32 = text.lines().next().unwrap().parse().unwrap();
    let full = (1u64 << (last + 1)) - 1;
    assert_eq!(cap_mask(&text, "CapEff"), full, "{text}");
    assert_eq!(cap_mask(&text, "CapBnd"), full, "{text}");

    let out = sandbox
        .run(ExecOptions::new(["python3", "-c", ATTACKS]), None)
        .await
        .unwrap();
    let seen = attack_lines(&out.stdout_text());
    let context = format!(
        "stdout: {}\nstderr: {}",
        out.stdout_text(),
        out.stderr_text()
    );
    // A descriptor may close between the listing and the call (EBADF).
    assert!(
        seen.get("pidfd_getfd").is_some_and(|o| o.contains("'ok'")),
        "{context}"
    );
    assert_eq!(
        seen.get("own_memory_max").map(String::as_str),
        Some("ok"),
        "{context}"
    );
    assert_eq!(
        seen.get("join_agent").map(String::as_str),
        Some("ok"),
        "{context}"
    );
    assert_eq!(
        seen.get("cgroup").map(String::as_str),
        Some("0::/agent"),
        "{context}"
    );
    sandbox.destroy().await;
    t.assert_clean().await;
}

/// The VMM itself is jailed: QEMU's seccomp filter is in force in the
/// running process (`Seccomp: 2`, filter mode); it runs as a uid of its
/// own with no capabilities; it lives in network, mount and PID namespaces
/// of its own (no interface but loopback and no route; a root holding only
/// its own files; it is PID 1); and its cgroup bounds its memory, threads
/// and CPU.
#[tokio::test(flavor = "multi_thread")]
async fn the_vmm_runs_jailed() {
    let t = TestHome::new();
    let jail = t.driver.jail();
    assert!(jail.seccomp(), "{jail:?}");
    assert!(jail.network_namespace(), "{jail:?}");
    assert!(jail.confined(), "{jail:?}");
    assert!(jail.cgroup.is_ok(), "{jail:?}");
    let sandbox = t.small().await;
    let pid = sandbox.vmm_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Seccomp:"), ["2"], "{status}");
    let uids = field("Uid:");
    assert_eq!(uids.len(), 4, "{status}");
    let uid: u32 = uids[0].parse().unwrap();
    assert!(uid >= hearth_vm::jail::DEFAULT_UID_BASE, "{status}");
    assert!(uids.iter().all(|u| *u == uids[0]), "{status}");
    assert!(field("Gid:").iter().all(|g| *g == uids[0]), "{status}");
    assert_eq!(field("Groups:"), Vec::<&str>::new(), "{status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{status}");
    assert_eq!(field("CapPrm:"), ["0000000000000000"], "{status}");
    assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
    // QEMU is PID 1 of its own PID namespace.
    assert_eq!(field("NSpid:").last().copied(), Some("1"), "{status}");
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for kind in ["net", "mnt", "pid"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "QEMU shares the host's {kind} namespace"
        );
    }
    // Its root holds only what it needs: no /etc, no /root, no /home, no
    // /proc; nothing of the Hearth home but its own two files; QEMU's
    // binary and firmware are there.
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let home_top = t
        .home
        .root()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let mut expected = vec![
        "dev".to_string(),
        "lib".into(),
        "lib64".into(),
        "usr".into(),
    ];
    for dir in [&home_top, "root"] {
        // The home and the images live under these here (the images
        // under /root/.local in CI).
        if !expected.contains(&dir.to_string()) && top.contains(&dir.to_string()) {
            expected.push(dir.to_string());
        }
    }
    expected.sort();
    assert_eq!(top, expected, "the VMM's root holds more than it needs");
    for absent in ["etc", "proc", "sys", "home", "tmp/.X11-unix", "etc/shadow"] {
        assert!(
            !root.join(absent).exists(),
            "/{absent} is visible to the VMM"
        );
    }
    let home_in_jail = root.join(t.home.root().strip_prefix("/").unwrap());
    assert!(
        !home_in_jail.join("hearth.db").exists(),
        "the store is visible to the VMM"
    );
    let state_dir = t.home.sandboxes_dir().join(sandbox.id());
    let state_in_jail = root.join(state_dir.strip_prefix("/").unwrap());
    let mut own: Vec<String> = std::fs::read_dir(&state_in_jail)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    own.sort();
    assert_eq!(own, ["console.log", "scratch.ext4"]);
    let dev: Vec<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dev.len() <= 3 && dev.contains(&"urandom".to_string()),
        "{dev:?}"
    );
    assert!(root.join("usr/bin/qemu-system-x86_64").is_file());
    // Its own cgroup, with limits on QEMU itself.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = sandbox.id();
    for controller in ["memory", "pids", "cpu"] {
        let line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("no {controller} line in {cgroups}"));
        assert!(
            line.ends_with(&format!("/hearth/vmm/{name}")),
            "{controller}: {line}"
        );
        if controller == "memory" {
            // This host mounts each v1 controller at /sys/fs/cgroup/NAME.
            let path = line.splitn(3, ':').nth(2).unwrap();
            let limit = std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            ))
            .unwrap();
            // 256 MiB of guest plus QEMU's own allowance under TCG.
            assert_eq!(limit.trim(), ((256u64 + 1280) << 20).to_string());
        }
    }
    // /proc/PID/net shows the process's own namespace: only loopback, and
    // no route anywhere.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{dev}");
    let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    assert_eq!(routes.lines().skip(1).count(), 0, "no routes: {routes}");
    // And the VM works under it.
    assert_eq!(sh(&sandbox, "echo ok").await.stdout_text(), "ok\n");
    let name = name.to_string();
    sandbox.destroy().await;
    t.assert_clean().await;
    // Its cgroup goes with it.
    let cgroup = std::path::Path::new("/sys/fs/cgroup/pids/hearth/vmm").join(&name);
    assert!(!cgroup.exists(), "{} outlived the VM", cgroup.display());
}
