//! Thin, safe wrappers over the raw system calls the agent needs.
//!
//! All of the agent's `unsafe` lives here (and in the child-side `pre_exec`
//! hook of [`crate::exec`]), each block with the argument for its soundness.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// A path or string as a C string; a NUL byte inside is `EINVAL`.
pub fn cstring(value: &str) -> io::Result<CString> {
    CString::new(value).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    // SAFETY: every pointer is either null (allowed for fstype and data) or
    // points to a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    check(ret).map(drop)
}

/// `finit_module(2)` with empty parameters. `flags` may carry
/// `MODULE_INIT_COMPRESSED_FILE` (4) for compressed modules.
pub fn finit_module(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    let params = c"";
    // SAFETY: finit_module takes an fd we own for the duration of the call
    // (borrowed), a NUL-terminated parameter string and an integer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            fd.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Flush every filesystem.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Sync and restart the machine. QEMU runs with `-no-reboot`, so this ends
/// the VM. Only meaningful as PID 1.
pub fn reboot() -> ! {
    sync();
    // SAFETY: reboot(RB_AUTOBOOT) takes a plain integer; it does not return
    // when it succeeds.
    unsafe {
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Only reached when not permitted (not PID 1 / no CAP_SYS_BOOT).
    std::process::exit(1)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive
    // the call; the kernel copies them.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Set `CLOCK_REALTIME` to `unix_ms` milliseconds since the epoch.
pub fn set_realtime_ms(unix_ms: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec on the stack, read by the kernel.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// Bring the loopback interface up (`ip link set lo up`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes integers and returns a new fd or -1.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from `req` and writes
    // the flags into its union; `req` is a valid, exclusively borrowed ifreq.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads name and flags from `req`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Outcome of one `waitpid` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// `pid` ended with the raw wait `status`.
    Reaped {
        /// The reaped process.
        pid: i32,
        /// Raw status as returned by waitpid.
        status: i32,
    },
    /// Children exist but none has ended yet.
    StillRunning,
    /// No such child (`ECHILD`).
    NoChild,
}

/// `waitpid(pid, WNOHANG)`: never blocks.
pub fn waitpid_nohang(pid: i32) -> io::Result<WaitOutcome> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call's duration.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret > 0 {
            return Ok(WaitOutcome::Reaped { pid: ret, status });
        }
        if ret == 0 {
            return Ok(WaitOutcome::StillRunning);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(WaitOutcome::NoChild),
            _ => return Err(err),
        }
    }
}

/// Send `signal` to the process group `pgid`; a group that no longer exists
/// is not an error.
pub fn killpg(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return; // never signal init's group or "every process"
    }
    // SAFETY: kill() with a negative pid signals a process group; integers only.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Send `signal` to every process we may signal except ourselves (used at
/// shutdown as PID 1).
pub fn kill_all(signal: i32) {
    // SAFETY: kill(-1, sig) signals every process but the caller; integers only.
    unsafe {
        libc::kill(-1, signal);
    }
}

/// Sizes of the filesystem holding `path`, in bytes: (total, available).
pub fn statvfs(path: &str) -> io::Result<(u64, u64)> {
    let path = cstring(path)?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `out` a valid out-pointer.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut out) })?;
    let frsize = out.f_frsize as u64;
    Ok((out.f_blocks as u64 * frsize, out.f_bavail as u64 * frsize))
}

/// Online CPUs.
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf takes an integer and returns a value or -1.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as u32
    }
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; it fails with EBADF if closed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Point stdin, stdout and stderr at `fd` (used as PID 1 when the kernel
/// could not open `/dev/console` for us).
pub fn redirect_stdio(fd: BorrowedFd<'_>) {
    for target in 0..3 {
        // SAFETY: dup2 onto 0..2 replaces those descriptors atomically; `fd`
        // stays open (borrowed) during the call.
        unsafe {
            libc::dup2(fd.as_raw_fd(), target);
        }
    }
}

/// Whether the peer of a virtio-serial port is closed (`poll` shows POLLHUP).
pub fn poll_hangup(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; timeout 0 never blocks.
    check(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(pfd.revents & libc::POLLHUP != 0)
}

/// `read(2)` into `buf`; `EINTR` is retried.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, exclusively borrowed
        // for the call; `fd` is open (borrowed).
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `write(2)` from `buf`; `EINTR` is retried.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, borrowed for the
        // call; `fd` is open (borrowed).
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
