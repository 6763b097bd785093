//! Starting VMM processes so that they die with us.
//!
//! Each VMM child gets `PR_SET_PDEATHSIG(SIGKILL)`: if the Hearth process dies,
//! even by SIGKILL, the kernel kills its VMs. The signal fires when the
//! *thread* that forked the child exits, so all VMMs are forked from one
//! dedicated thread that lives as long as the process (not from a tokio worker
//! or blocking-pool thread, which may be retired while the VM runs).

use std::os::fd::RawFd;
use std::sync::mpsc;
use std::sync::OnceLock;

use parking_lot::Mutex;

use tokio::process::{Child, Command};

type Reply = tokio::sync::oneshot::Sender<std::io::Result<Child>>;

struct Request {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: Reply,
}

static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

fn launcher() -> mpsc::Sender<Request> {
    LAUNCHER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("hearth-vm-launcher".into())
                .spawn(move || {
                    for request in rx {
                        let _guard = request.runtime.enter();
                        let mut command = request.command;
                        let _ = request.reply.send(command.spawn());
                    }
                })
                .expect("spawn the VM launcher thread");
            Mutex::new(tx)
        })
        .lock()
        .clone()
}

/// Spawn `command` as a child that is SIGKILLed when this process dies, in
/// its own process group (a Ctrl-C at the terminal reaches Hearth, which
/// tears VMs down in order, not the VMM directly), with `inherit_fd` passed
/// through exec, and in a new, empty network namespace when `new_netns`.
pub async fn spawn_owned(
    mut command: Command,
    inherit_fd: Option<RawFd>,
    new_netns: bool,
) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, kill, setpgid, fcntl,
    // unshare); it touches no locks or allocations.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = inherit_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.kill_on_drop(true);
    let (reply, answer) = tokio::sync::oneshot::channel();
    launcher()
        .send(Request {
            command,
            runtime: tokio::runtime::Handle::current(),
            reply,
        })
        .map_err(|_| std::io::Error::other("VM launcher thread is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("VM launcher thread dropped the request"))?
}
