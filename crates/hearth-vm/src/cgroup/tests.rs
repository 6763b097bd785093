//! Tests against this host's real cgroups. They need root, as the server
//! does for the jail, and fail (rather than pass quietly) without it. Each
//! uses an instance name of its own, so parallel runs do not collide.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::*;

const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 300 << 20,
    pids: 64,
    cpu_quota_us: 150_000,
    cpu_period_us: 100_000,
};

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(
        euid, "0",
        "this test creates host cgroups and needs root; run the suite as root"
    );
}

fn layout(test: &str) -> CgroupLayout {
    require_root();
    let instance = format!("test-{}-{test}", std::process::id());
    CgroupLayout::detect(&instance).unwrap_or_else(|why| panic!("no cgroup layout: {why}"))
}

/// `sleep 30` that joins the cgroups of `procs_files` before exec.
#[allow(unsafe_code)]
fn sleep_in(procs_files: &[CString]) -> Child {
    let procs_files = procs_files.to_vec();
    let mut command = Command::new("sleep");
    command.arg("30").stdin(Stdio::null());
    // SAFETY: join_current is async-signal-safe (open, write and close on
    // paths allocated before the fork).
    unsafe {
        command.pre_exec(move || join_current(&procs_files));
    }
    command.spawn().unwrap()
}

fn procs_file(dir: &Path) -> CString {
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap()
}

/// What `/proc/<pid>/cgroup` says of `controller`.
fn cgroup_of(pid: u32, controller: Controller, version: CgroupVersion) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let matches = match version {
                CgroupVersion::V1 => controllers.split(',').any(|c| c == controller.name()),
                CgroupVersion::V2 => id == "0" && controllers.is_empty(),
            };
            matches.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("{controller} missing from /proc/{pid}/cgroup:\n{text}"))
}

fn expected_files(
    controller: Controller,
    version: CgroupVersion,
) -> Vec<(&'static str, &'static str)> {
    match (controller, version) {
        (Controller::Memory, CgroupVersion::V1) => vec![
            ("memory.limit_in_bytes", "314572800"),
            ("memory.memsw.limit_in_bytes", "314572800"),
        ],
        (Controller::Memory, CgroupVersion::V2) => {
            vec![("memory.max", "314572800"), ("memory.swap.max", "0")]
        }
        (Controller::Pids, _) => vec![("pids.max", "64")],
        (Controller::Cpu, CgroupVersion::V1) => vec![
            ("cpu.cfs_quota_us", "150000"),
            ("cpu.cfs_period_us", "100000"),
        ],
        (Controller::Cpu, CgroupVersion::V2) => vec![("cpu.max", "150000 100000")],
    }
}

fn kill_and_wait(mut child: Child) -> ExitStatus {
    let _ = child.kill();
    child.wait().unwrap()
}

#[test]
fn a_vmm_runs_in_its_own_cgroup_with_its_limits() {
    let layout = layout("limits");
    let description = layout.describe();
    assert!(
        description.contains("memory") && description.contains("hearth/test-"),
        "{description}"
    );

    let cgroup = VmmCgroup::create(&layout, "vm", &LIMITS).unwrap();
    assert_eq!(cgroup.dirs().len(), layout.parents.len());
    for (parent, dir) in layout.parents.iter().zip(cgroup.dirs()) {
        assert_eq!(*dir, parent.dir.join("vm"));
        for controller in &parent.controllers {
            for (file, value) in expected_files(*controller, parent.version) {
                match fs::read_to_string(dir.join(file)) {
                    Ok(text) => assert_eq!(text.trim(), value, "{}", dir.join(file).display()),
                    // Swap accounting may be off; create() skips these then.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && file.contains("sw") => {}
                    Err(e) => panic!("{}: {e}", dir.join(file).display()),
                }
            }
        }
    }

    let child = sleep_in(cgroup.procs_files());
    let pid = child.id();
    let inside = std::panic::catch_unwind(|| {
        for parent in &layout.parents {
            let suffix = Path::new(PARENT_NAME)
                .join(parent.dir.file_name().unwrap())
                .join("vm");
            for controller in &parent.controllers {
                let path = cgroup_of(pid, *controller, parent.version);
                assert!(
                    Path::new(&path).ends_with(&suffix),
                    "{controller} cgroup of the child is {path}, not …/{}",
                    suffix.display()
                );
            }
        }
    });
    kill_and_wait(child);
    if let Err(panic) = inside {
        std::panic::resume_unwind(panic);
    }

    let dirs = cgroup.dirs().to_vec();
    cgroup.remove().unwrap();
    for dir in dirs {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    layout.remove().unwrap();
}

#[test]
fn sweep_kills_and_removes_stale_cgroups_but_keeps_live_ones() {
    let layout = layout("sweep");
    let mut stale_procs = Vec::new();
    for parent in &layout.parents {
        fs::create_dir(parent.dir.join("stale")).unwrap();
        fs::create_dir(parent.dir.join("live")).unwrap();
        stale_procs.push(procs_file(&parent.dir.join("stale")));
    }
    // Reaped at once, as init reaps a dead server's orphans.
    let child = sleep_in(&stale_procs);
    let pid = child.id();
    let reaper = std::thread::spawn(move || {
        let mut child = child;
        child.wait().unwrap()
    });
    let stale = &layout.parents[0].dir.join("stale");
    assert_eq!(read_members(stale).unwrap(), vec![pid as libc::pid_t]);

    layout.sweep_stale(|name| name == "live");

    for parent in &layout.parents {
        assert!(
            !parent.dir.join("stale").exists(),
            "{} survived",
            parent.dir.display()
        );
        assert!(parent.dir.join("live").exists());
        fs::remove_dir(parent.dir.join("live")).unwrap();
    }
    assert_eq!(reaper.join().unwrap().signal(), Some(libc::SIGKILL));
    layout.remove().unwrap();
}

#[test]
fn create_replaces_an_empty_leftover_and_refuses_a_busy_one() {
    let layout = layout("leftover");
    for parent in &layout.parents {
        fs::create_dir(parent.dir.join("empty")).unwrap();
    }
    VmmCgroup::create(&layout, "empty", &LIMITS)
        .unwrap()
        .remove()
        .unwrap();

    // Busy only in the last hierarchy: the ones created before are undone.
    let last = &layout.parents.last().unwrap().dir.join("busy");
    fs::create_dir(last).unwrap();
    let child = sleep_in(&[procs_file(last)]);
    let error = VmmCgroup::create(&layout, "busy", &LIMITS).unwrap_err();
    kill_and_wait(child);
    let message = error.to_string();
    assert!(message.contains("may still be running"), "{message}");
    assert!(message.contains("HEARTH_VMM_JAIL=off"), "{message}");
    for parent in &layout.parents[..layout.parents.len() - 1] {
        assert!(
            !parent.dir.join("busy").exists(),
            "{} left behind",
            parent.dir.display()
        );
    }
    remove_dir_settled(last).unwrap();
    layout.remove().unwrap();
}

#[test]
fn names_must_be_one_path_component() {
    for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
        assert!(check_name("VM", bad).is_err(), "{bad:?}");
    }
    check_name("VM", "sandbox-01").unwrap();
}

#[test]
fn limits_out_of_the_kernels_range_are_refused() {
    let zero_memory = CgroupLimits {
        memory_bytes: 0,
        ..LIMITS
    };
    assert!(zero_memory.validate().is_err());
    let long_period = CgroupLimits {
        cpu_period_us: 2_000_000,
        ..LIMITS
    };
    assert!(long_period.validate().is_err());
    LIMITS.validate().unwrap();
}

#[test]
fn joining_a_missing_cgroup_fails_with_the_os_error() {
    let missing = CString::new("/nonexistent/cgroup.procs").unwrap();
    let error = join_current(&[missing]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
}

/// The v2 path, on plain files standing in for cgroupfs (this host's
/// unified hierarchy has no controllers to try it on): the controllers are
/// enabled in the server's cgroup, in `hearth` and in the instance's parent.
#[test]
fn v2_enables_the_controllers_from_the_own_cgroup_down() {
    let own = tempfile::tempdir().unwrap();
    let parent = own.path().join(PARENT_NAME).join("instance");
    fs::create_dir_all(&parent).unwrap();
    fs::write(
        own.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    for dir in [own.path(), &own.path().join(PARENT_NAME), &parent] {
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }
    // Already enabled here: written again it would be harmless, but it is not.
    fs::write(parent.join("cgroup.subtree_control"), "memory pids cpu\n").unwrap();

    prepare_v2(own.path(), &Controller::ALL, &parent).unwrap();

    for dir in [own.path(), &own.path().join(PARENT_NAME)] {
        let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
        assert_eq!(enabled, "+memory +pids +cpu", "{}", dir.display());
    }
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap();
    assert_eq!(enabled, "memory pids cpu\n");
}

#[test]
fn v2_without_a_controller_names_it() {
    let own = tempfile::tempdir().unwrap();
    fs::write(own.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
    let parent = own.path().join(PARENT_NAME).join("instance");
    let why = prepare_v2(own.path(), &Controller::ALL, &parent).unwrap_err();
    assert!(why.starts_with("no pids controller"), "{why}");
}

#[test]
fn oom_kill_counts_are_read_from_either_format() {
    let v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
    assert_eq!(parse_oom_kills(v1), Some(3));
    let v2 = b"low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
    assert_eq!(parse_oom_kills(v2), Some(1));
    assert_eq!(parse_oom_kills(b"oom_kill_disable 0\n"), None);
    assert_eq!(parse_oom_kills(b"oom_kill x\n"), None);
    assert_eq!(parse_oom_kills(b""), None);
}

/// A process over its cgroup's memory limit is killed, and the count the
/// watcher reads says so.
#[test]
#[allow(unsafe_code)]
fn a_process_over_the_memory_limit_is_killed_and_counted() {
    let layout = layout("oom");
    let limits = CgroupLimits {
        memory_bytes: 32 << 20,
        ..LIMITS
    };
    let cgroup = VmmCgroup::create(&layout, "hog", &limits).unwrap();
    let plan = cgroup.exit_plan();
    let events = plan
        .oom_events
        .clone()
        .expect("this host has a memory controller");
    assert_eq!(oom_kills(&events), Some(0));
    let procs = cgroup.procs_files().to_vec();
    let mut command = Command::new("python3");
    // Writes every page of 128 MiB, four times the limit.
    command.args(["-c", "b = bytearray(b'x' * (128 << 20)); print(len(b))"]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: join_current is async-signal-safe (open, write and close on
    // paths made before the fork).
    unsafe {
        command.pre_exec(move || join_current(&procs));
    }
    let status = command.status().expect("python3 runs");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(oom_kills(&events).is_some_and(|n| n >= 1));
    cgroup.remove().unwrap();
    layout.remove().unwrap();
}
