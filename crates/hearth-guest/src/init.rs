//! PID-1 mode: turn the initramfs into a running sandbox, serve the host on
//! the virtio-serial port, and power off on request.
//!
//! Boot contract (the image builder's side is in `hearth-image`): `/init` is
//! this binary, `/etc/hearth/modules` lists module paths in load order,
//! `/dev/vda` is the read-only base rootfs and `/dev/vdb` the writable
//! scratch filesystem. Any failure here is fatal: it is printed to the
//! console (which the host shows to the user) and the VM is powered off.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use hearth_proto::GUEST_PORT_NAME;

use crate::agent::{Agent, AgentOptions};
use crate::{channel, isolation, sys, usage};

/// File listing the kernel modules to load, one absolute path per line.
pub const MODULES_LIST: &str = "/etc/hearth/modules";
/// How long to wait for disks and the port to appear.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// Print `hearth-guest: fatal: <message>` on the console, sync, and power
/// off (QEMU runs with `-no-reboot`).
pub fn fatal(message: &str) -> ! {
    let line = format!("hearth-guest: fatal: {message}\n");
    match fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut console) => {
            let _ = std::io::Write::write_all(&mut console, line.as_bytes());
        }
        Err(_) => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
    }
    sys::reboot()
}

/// Run as PID 1: boot, serve, power off. Never returns.
pub fn run_pid1() -> ! {
    if let Err(message) = boot() {
        fatal(&message);
    }
    let runtime = crate::agent::runtime()
        .unwrap_or_else(|e| fatal(&format!("cannot start the async runtime: {e}")));
    let agent = runtime.block_on(serve());
    agent.kill_workloads();
    sys::kill_all(libc::SIGKILL);
    sys::reboot()
}

async fn serve() -> Agent {
    let agent = Agent::start(AgentOptions {
        pid1: true,
        cgroup_root: Some("/sys/fs/cgroup".into()),
        isolate_workloads: true,
        ..AgentOptions::default()
    })
    .unwrap_or_else(|e| fatal(&format!("cannot start the agent: {e}")));
    let port = tokio::task::spawn_blocking(|| {
        let path = channel::find_port(GUEST_PORT_NAME, DEVICE_TIMEOUT)?;
        channel::open_port(&path)
    })
    .await
    .unwrap_or_else(|e| fatal(&format!("port lookup failed: {e}")))
    .unwrap_or_else(|e| fatal(&format!("cannot open the host channel: {e}")));
    crate::info!("ready in {} ms", usage::uptime_ms());
    tokio::spawn(isolation::keep_oom_score());
    tokio::spawn(channel::serve_port(agent.clone(), port));
    agent.shutdown_requested().await;
    // The 204 must reach the host before the VM disappears.
    agent.finish_shutdown().await;
    agent
}

fn mkdir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {path}: {e}"))
}

fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    mkdir(target)?;
    match sys::mount(source, target, fstype, flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (e.g. devtmpfs automount): fine.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(format!(
            "mount {} {source} on {target}{}: {e}",
            fstype.unwrap_or("(move)"),
            data.map(|d| format!(" ({d})")).unwrap_or_default()
        )),
    }
}

/// Everything between the kernel starting us and the agent serving.
fn boot() -> Result<(), String> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount(
        "devtmpfs",
        "/dev",
        Some("devtmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    if !sys::fd_is_open(2) {
        if let Ok(console) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
        {
            sys::redirect_stdio(console.as_fd());
        }
    }
    mount(
        "proc",
        "/proc",
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )?;
    mount(
        "sysfs",
        "/sys",
        Some("sysfs"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )?;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    crate::log::set_debug(cmdline.split_whitespace().any(|p| p == "hearth.debug=1"));

    load_modules();
    for disk in ["/dev/vda", "/dev/vdb"] {
        wait_for(disk)?;
    }
    mount(
        "/dev/vda",
        "/mnt/lower",
        Some("ext4"),
        libc::MS_RDONLY,
        None,
    )?;
    mount("/dev/vdb", "/mnt/rw", Some("ext4"), libc::MS_NOATIME, None)?;
    mkdir("/mnt/rw/upper")?;
    mkdir("/mnt/rw/work")?;
    mount(
        "overlay",
        "/mnt/root",
        Some("overlay"),
        0,
        Some("lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"),
    )?;

    // Make the overlay the root, keeping /dev, /proc and /sys.
    for dir in ["dev", "proc", "sys"] {
        let target = format!("/mnt/root/{dir}");
        mount(&format!("/{dir}"), &target, None, libc::MS_MOVE, None)?;
    }
    std::env::set_current_dir("/mnt/root").map_err(|e| format!("chdir /mnt/root: {e}"))?;
    sys::mount(".", "/", None, libc::MS_MOVE, None)
        .map_err(|e| format!("move the overlay to /: {e}"))?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot into the overlay: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;

    mount(
        "devpts",
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    mount(
        "tmpfs",
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=1777"),
    )?;
    mount(
        "tmpfs",
        "/run",
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=0755"),
    )?;
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        Some("cgroup2"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    if let Err(e) = sys::loopback_up() {
        crate::info!("cannot bring up lo: {e}");
    }
    let _ = sys::sethostname("hearth");
    fs::write("/proc/self/oom_score_adj", isolation::AGENT_OOM_SCORE_ADJ)
        .map_err(|e| format!("set oom_score_adj of the agent: {e}"))?;
    // Before any workload runs: without CAP_SYS_PTRACE nothing can trace
    // the agent, take its descriptors or read its /proc files.
    isolation::protect_agent().map_err(|e| format!("make the agent non-dumpable: {e}"))?;
    Ok(())
}

/// Load every module listed in [`MODULES_LIST`]. A module that fails is
/// reported; the wait for the disks then says what is missing.
fn load_modules() {
    let Ok(list) = fs::read_to_string(MODULES_LIST) else {
        crate::debug!("no {MODULES_LIST}: loading no modules");
        return;
    };
    for line in list.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Err(e) = load_module(line) {
            crate::info!("module {line}: {e}");
        }
    }
}

fn load_module(path: &str) -> std::io::Result<()> {
    let file = File::open(path)?;
    let compressed = [".xz", ".zst", ".gz"].iter().any(|ext| path.ends_with(ext));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match sys::finit_module(file.as_fd(), flags) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn wait_for(device: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    while !Path::new(device).exists() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{device} did not appear within {} s (is virtio_blk in {MODULES_LIST} and the disk attached?)",
                DEVICE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
