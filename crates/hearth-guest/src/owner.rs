//! Which exec opened a network connection, for the host's audit
//! (`EgressOpen.exec`).
//!
//! Both ways out see the program's TCP socket from the outside: the proxy
//! as the peer of a connection it accepted, the transparent path as the
//! source of a SYN. Either way the socket itself lives in the guest kernel,
//! so the agent finds its owner the way `ss -p` does:
//!
//! 1. `/proc/net/tcp` and `/proc/net/tcp6` list every TCP socket with its
//!    local and remote address and its inode; the program's is the one
//!    whose local address is the connection's source and whose remote
//!    address is where the program connected (the proxy, or the SYN's
//!    destination).
//! 2. The process holding it has a `/proc/<pid>/fd/*` link to
//!    `socket:[inode]`.
//! 3. That process belongs to an exec through the exec's cgroup leaf
//!    (`/proc/<pid>/cgroup`, in the VM), else through its ancestry up to an
//!    exec's first process (`/proc/<pid>/stat`'s ppid), else through its
//!    session (each exec's first process is a session leader, and its
//!    children inherit the session).
//!
//! Bounded: the walk runs on a blocking thread, scans at most
//! [`MAX_PIDS_SCANNED`] processes and gives up after [`LOOKUP_BUDGET`]:
//! the answer is `None` then, and the connection is asked of the host
//! without it. A process that exits, or a socket that closes, during the
//! walk gives `None` too: "where known".
//!
//! The parsers are pure functions and the walk takes the `/proc` root as a
//! parameter, so both are tested without a VM.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a lookup may take before it gives up (the connection then goes
/// to the host without an exec). A lookup takes 0-12 ms in a TCG VM with
/// a few dozen processes, the first one up to ~40 ms; the margin is for a
/// loaded host.
pub const LOOKUP_BUDGET: Duration = Duration::from_millis(100);

/// Most processes whose descriptors one lookup reads.
pub const MAX_PIDS_SCANNED: usize = 4096;

/// Most ancestors followed from the socket's process toward an exec.
const MAX_ANCESTORS: usize = 64;

/// Most lines of `/proc/net/tcp{,6}` one lookup reads (each socket is a
/// line; a guest with more sockets than this gets `None`).
const MAX_SOCKET_LINES: usize = 65536;

/// How one running exec is recognised in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRoot {
    /// The exec's id, as the host named it.
    pub id: String,
    /// Its first process: the leader of its session and process group, as
    /// the agent knows it (in the agent's PID namespace, which need not be
    /// that of the `/proc` it reads: see [`parse_nspid`]).
    pub pid: i32,
    /// Its cgroup leaf as `/proc/<pid>/cgroup` names it (`/workload/exec-3`),
    /// when the agent uses cgroups.
    pub cgroup: Option<String>,
}

/// The running execs, by id, for [`ExecOwners::lookup`].
#[derive(Debug, Default)]
pub struct ExecOwners {
    execs: Mutex<HashMap<String, ExecRoot>>,
}

impl ExecOwners {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ExecRoot>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember a started exec.
    pub fn add(&self, root: ExecRoot) {
        self.lock().insert(root.id.clone(), root);
    }

    /// Forget an exec that ended.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The execs known now.
    pub fn snapshot(&self) -> Vec<ExecRoot> {
        self.lock().values().cloned().collect()
    }

    /// The exec whose process holds the TCP socket from `local` to
    /// `remote` (as the program's side sees it), within [`LOOKUP_BUDGET`].
    /// `None` when no exec runs, the socket or its process is gone, or the
    /// budget ran out.
    pub async fn lookup(&self, local: SocketAddr, remote: SocketAddr) -> Option<String> {
        let roots = self.snapshot();
        if roots.is_empty() {
            return None;
        }
        let started = Instant::now();
        let deadline = started + LOOKUP_BUDGET;
        let walk = tokio::task::spawn_blocking(move || {
            find_exec(
                Path::new("/proc"),
                local,
                remote,
                &roots,
                &Limits {
                    skip_pid: own_pid(Path::new("/proc")),
                    max_pids: MAX_PIDS_SCANNED,
                    deadline,
                },
            )
        });
        // The walk checks the deadline itself; this bounds a blocking pool
        // that is busy (the walk then runs on, and its answer is dropped).
        let exec = match tokio::time::timeout(LOOKUP_BUDGET, walk).await {
            Ok(Ok(exec)) => exec,
            _ => None,
        };
        crate::debug!(
            "egress owner: {local} -> {remote}: {} in {} us",
            exec.as_deref().unwrap_or("unknown"),
            started.elapsed().as_micros()
        );
        exec
    }
}

/// The agent's own pid in the `/proc` at `proc` (`/proc/self`), which is
/// its pid as the system call reports it only when both share a PID
/// namespace (as PID 1 in the VM they do; the host tests' fake driver runs
/// the agent in a PID namespace of its own under the host's `/proc`).
fn own_pid(proc: &Path) -> u32 {
    fs::read_link(proc.join("self"))
        .ok()
        .and_then(|target| target.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// What bounds one walk.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A process not to scan, as `/proc` names it (the agent itself: it
    /// holds the proxy's side of every connection and many descriptors).
    pub skip_pid: u32,
    /// Most processes whose descriptors are read.
    pub max_pids: usize,
    /// When to give up.
    pub deadline: Instant,
}

impl Limits {
    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// The exec owning the TCP socket from `local` to `remote`, looked up in
/// the `/proc` tree at `proc` (see the module doc).
pub fn find_exec(
    proc: &Path,
    local: SocketAddr,
    remote: SocketAddr,
    roots: &[ExecRoot],
    limits: &Limits,
) -> Option<String> {
    if roots.is_empty() {
        return None;
    }
    let inode = socket_inode(proc, local, remote, limits)?;
    let pid = pid_holding(proc, inode, limits)?;
    exec_of(proc, pid, roots, limits)
}

/// Whether a process still holds the TCP socket from `local` to `remote`
/// in the `/proc` tree at `proc`: `false` once its program closed it (the
/// socket is gone, or orphaned: inode 0 while the kernel finishes it), or
/// when the tables cannot be read within [`LOOKUP_BUDGET`].
pub fn is_held(proc: &Path, local: SocketAddr, remote: SocketAddr) -> bool {
    let limits = Limits {
        skip_pid: 0,
        max_pids: 0,
        deadline: Instant::now() + LOOKUP_BUDGET,
    };
    socket_inode(proc, local, remote, &limits).is_some()
}

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// The socket's own address.
    pub local: SocketAddr,
    /// Its peer's address.
    pub remote: SocketAddr,
    /// The socket's inode (0 for a socket no process holds, e.g. in
    /// `TIME_WAIT`).
    pub inode: u64,
}

/// Parse one line of `/proc/net/tcp{,6}`:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, where
/// an address is `ADDR:PORT` in hex, `ADDR` the kernel's 32-bit words
/// printed as native-endian numbers (so `0100007F` is 127.0.0.1 on a
/// little-endian machine) and `PORT` in host order. `None` for the header
/// or a malformed line.
pub fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    slot.strip_suffix(':')?.parse::<u64>().ok()?;
    let local = parse_hex_address(fields.next()?)?;
    let remote = parse_hex_address(fields.next()?)?;
    // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode.
    let inode = fields.nth(6)?.parse().ok()?;
    Some(TcpSocket {
        local,
        remote,
        inode,
    })
}

/// `0100007F:1F90` → 127.0.0.1:8080 (on a little-endian machine); 32 hex
/// digits for IPv6.
fn parse_hex_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(hex_word(address)?.to_ne_bytes())),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&hex_word(&address[i * 8..i * 8 + 8])?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn hex_word(text: &str) -> Option<u32> {
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// The address with an IPv4-mapped IPv6 address (a dual-stack socket's
/// view of an IPv4 peer) as plain IPv4, so both views compare equal.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The fields of `/proc/<pid>/stat` the walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Parent process id.
    pub ppid: i32,
    /// Session id.
    pub session: i32,
}

/// Parse `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session ...`.
/// `comm` may hold spaces and `)`, so the fields after it are found after
/// the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let _pgrp: i32 = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat { ppid, session })
}

/// The cgroup v2 path in `/proc/<pid>/cgroup` (the `0::PATH` line).
pub fn parse_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// A process's pid in the innermost PID namespace it belongs to, from
/// `/proc/<pid>/status` (`NSpid: 4242 7`: 4242 where this `/proc` was
/// mounted, 7 in its own namespace). The pids in `/proc` are those of the
/// namespace that mounted it, while the agent knows its execs by the pids
/// its own `fork` returned.
pub fn parse_nspid(status: &str) -> Option<i32> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace().next_back()?.parse().ok()
}

/// The inode in a descriptor link's target, `socket:[12345]`.
pub fn socket_link_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inode of the socket from `local` to `remote`.
fn socket_inode(
    proc: &Path,
    local: SocketAddr,
    remote: SocketAddr,
    limits: &Limits,
) -> Option<u64> {
    let (local, remote) = (canonical(local), canonical(remote));
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(file) = fs::File::open(proc.join(table)) else {
            continue;
        };
        for line in BufReader::new(file).lines().take(MAX_SOCKET_LINES) {
            let Ok(line) = line else { break };
            let Some(socket) = parse_tcp_line(&line) else {
                continue;
            };
            if socket.inode != 0
                && canonical(socket.local) == local
                && canonical(socket.remote) == remote
            {
                return Some(socket.inode);
            }
        }
        if limits.expired() {
            return None;
        }
    }
    None
}

/// The process holding socket `inode`: newest processes first (the one
/// that just connected is likely among them).
fn pid_holding(proc: &Path, inode: u64, limits: &Limits) -> Option<i32> {
    let mut pids: Vec<i32> = fs::read_dir(proc)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid: &i32| pid > 0 && pid as u32 != limits.skip_pid)
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    let wanted = format!("socket:[{inode}]");
    for pid in pids.into_iter().take(limits.max_pids) {
        if limits.expired() {
            return None;
        }
        let Ok(fds) = fs::read_dir(proc.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for (n, fd) in fds.enumerate() {
            if n % 256 == 255 && limits.expired() {
                return None;
            }
            let Ok(fd) = fd else { break };
            if fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The exec process `pid` belongs to.
fn exec_of(proc: &Path, pid: i32, roots: &[ExecRoot], limits: &Limits) -> Option<String> {
    let dir = proc.join(pid.to_string());
    if let Ok(text) = fs::read_to_string(dir.join("cgroup")) {
        if let Some(path) = parse_cgroup(&text) {
            if let Some(root) = roots.iter().find(|r| r.cgroup.as_deref() == Some(path)) {
                return Some(root.id.clone());
            }
        }
    }
    // `pid` as `/proc` names it, as the agent names it.
    let agent_pid = |pid: i32| {
        fs::read_to_string(proc.join(pid.to_string()).join("status"))
            .ok()
            .as_deref()
            .and_then(parse_nspid)
            .unwrap_or(pid)
    };
    let by_pid = |pid: i32| {
        let pid = agent_pid(pid);
        roots.iter().find(|r| r.pid == pid).map(|r| r.id.clone())
    };
    let mut current = pid;
    let mut session = None;
    for _ in 0..MAX_ANCESTORS {
        if let Some(id) = by_pid(current) {
            return Some(id);
        }
        if limits.expired() {
            return None;
        }
        let Some(stat) = fs::read_to_string(proc.join(current.to_string()).join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            break;
        };
        session.get_or_insert(stat.session);
        if stat.ppid <= 1 || stat.ppid as u32 == limits.skip_pid {
            break;
        }
        current = stat.ppid;
    }
    session.filter(|&s| s > 0).and_then(by_pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An address as the kernel prints it in `/proc/net/tcp{,6}`.
    fn hex_address(address: SocketAddr) -> String {
        let ip = match address.ip() {
            IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
            IpAddr::V6(ip) => ip
                .octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        };
        format!("{ip}:{:04X}", address.port())
    }

    fn tcp_line(slot: usize, local: SocketAddr, remote: SocketAddr, inode: u64) -> String {
        format!(
            "{slot:4}: {} {} 01 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1",
            hex_address(local),
            hex_address(remote)
        )
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn kernel_lines_parse() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_tcp_line(header), None);
        let line = "   3: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 48213 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_tcp_line(line),
            Some(TcpSocket {
                local: "127.0.0.1:41394".parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
                inode: 48213,
            })
        );
        let v6 = "   0: 0000000000000000FFFF00000100007F:C350 0000000000000000FFFF00000212C6C6:01BB 02 00000000:00000000 01:00000064 00000000     0        0 777 1 0000000000000000 100 0 0 10 -1";
        let socket = parse_tcp_line(v6).unwrap();
        assert_eq!(socket.local, "[::ffff:127.0.0.1]:50000".parse().unwrap());
        assert_eq!(
            canonical(socket.remote),
            "198.198.18.2:443".parse().unwrap()
        );
        assert_eq!(socket.inode, 777);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "0: 0100007F:1F90",
            "x: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "0: 0100007G:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "0: 0100007F:1F9 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 notanumber",
            "0: 100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",
        ] {
            assert_eq!(parse_tcp_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn stat_fields_come_after_the_last_paren() {
        assert_eq!(
            parse_stat("4242 (curl) S 4200 4200 4100 0 -1 4194560 ..."),
            Some(ProcStat {
                ppid: 4200,
                session: 4100
            })
        );
        assert_eq!(
            parse_stat("7 (a) b) 1 2) R 6 7 3 0 -1"),
            Some(ProcStat {
                ppid: 6,
                session: 3
            })
        );
        assert_eq!(parse_stat("7 (no end R 6 7 3"), None);
        assert_eq!(parse_stat("7 (x) R"), None);
    }

    #[test]
    fn cgroup_and_socket_links_parse() {
        assert_eq!(
            parse_cgroup("1:name=systemd:/x\n0::/workload/exec-3\n"),
            Some("/workload/exec-3")
        );
        assert_eq!(parse_cgroup("1:cpu:/x\n"), None);
        assert_eq!(socket_link_inode("socket:[123]"), Some(123));
        assert_eq!(socket_link_inode("pipe:[123]"), None);
        assert_eq!(socket_link_inode("socket:[12x]"), None);
        assert_eq!(
            parse_nspid("Name:\tcurl\nNSpid:\t4242\t7\nNSsid: 1\n"),
            Some(7)
        );
        assert_eq!(parse_nspid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_nspid("Pid:\t4242\n"), None);
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        ]
    }

    proptest! {
        #[test]
        fn tcp_lines_round_trip(slot in 0usize..100_000, local in address(), remote in address(), inode in any::<u64>()) {
            let parsed = parse_tcp_line(&tcp_line(slot, local, remote, inode));
            prop_assert_eq!(parsed, Some(TcpSocket { local, remote, inode }));
        }

        #[test]
        fn stat_survives_any_comm(comm in "[ -~]{0,16}", ppid in 0i32..4_194_304, session in 0i32..4_194_304) {
            let text = format!("99 ({comm}) S {ppid} 99 {session} 0 -1 4194560 0 0");
            prop_assert_eq!(parse_stat(&text), Some(ProcStat { ppid, session }));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let _ = parse_tcp_line(&text);
            let _ = parse_stat(&text);
            let _ = parse_cgroup(&text);
            let _ = socket_link_inode(&text);
            let _ = parse_nspid(&text);
        }
    }

    /// A fake `/proc`: sockets in `net/tcp`, and processes with their
    /// parent, session, cgroup and socket descriptors.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new(sockets: &[(SocketAddr, SocketAddr, u64)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("net")).unwrap();
            let header = "  sl  local_address rem_address   st tx_queue rx_queue\n";
            let (mut tcp, mut tcp6) = (header.to_owned(), header.to_owned());
            for (i, (local, remote, inode)) in sockets.iter().enumerate() {
                let table = if local.is_ipv4() { &mut tcp } else { &mut tcp6 };
                *table += &tcp_line(i, *local, *remote, *inode);
                table.push('\n');
            }
            fs::write(dir.path().join("net/tcp"), tcp).unwrap();
            fs::write(dir.path().join("net/tcp6"), tcp6).unwrap();
            Self { dir }
        }

        fn process(&self, pid: i32, ppid: i32, session: i32, cgroup: &str, sockets: &[u64]) {
            let dir = self.dir.path().join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(
                dir.join("stat"),
                format!("{pid} (odd) name) S {ppid} {pid} {session} 0 -1 0"),
            )
            .unwrap();
            fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            for (n, inode) in sockets.iter().enumerate() {
                std::os::unix::fs::symlink(
                    format!("socket:[{inode}]"),
                    dir.join("fd").join((n + 3).to_string()),
                )
                .unwrap();
            }
        }

        /// Give `pid` the pid `inner` in a PID namespace of its own.
        fn nspid(&self, pid: i32, inner: i32) {
            fs::write(
                self.dir.path().join(pid.to_string()).join("status"),
                format!("Name:\todd\nPid:\t{pid}\nNSpid:\t{pid}\t{inner}\n"),
            )
            .unwrap();
        }

        fn find(&self, local: &str, remote: &str, roots: &[ExecRoot]) -> Option<String> {
            find_exec(
                self.dir.path(),
                local.parse().unwrap(),
                remote.parse().unwrap(),
                roots,
                &limits(),
            )
        }
    }

    fn limits() -> Limits {
        Limits {
            skip_pid: 1,
            max_pids: MAX_PIDS_SCANNED,
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    fn root(id: &str, pid: i32, cgroup: Option<&str>) -> ExecRoot {
        ExecRoot {
            id: id.into(),
            pid,
            cgroup: cgroup.map(str::to_owned),
        }
    }

    const PROXY: &str = "127.0.0.1:3128";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_socket_is_traced_to_its_exec_through_proc() {
        let fake = FakeProc::new(&[
            // The proxy's listener and its side of the connection.
            (addr(PROXY), addr("0.0.0.0:0"), 10),
            (addr(PROXY), addr("127.0.0.1:40000"), 11),
            // The programs' sides.
            (addr("127.0.0.1:40000"), addr(PROXY), 20),
            (addr("127.0.0.1:40001"), addr(PROXY), 21),
            (addr("10.0.0.2:40002"), addr("198.18.0.5:443"), 22),
            (
                addr("[::ffff:127.0.0.1]:40003"),
                addr("[::ffff:127.0.0.1]:3128"),
                23,
            ),
            (addr("127.0.0.1:40004"), addr(PROXY), 24),
            (addr("127.0.0.1:40005"), addr(PROXY), 0),
        ]);
        // The agent (skipped), holding the proxy's sockets.
        fake.process(1, 0, 1, "/agent", &[10, 11]);
        // exec x1 in its leaf: a shell and its curl.
        fake.process(100, 1, 100, "/workload/exec-1", &[]);
        fake.process(101, 100, 100, "/workload/exec-1", &[20]);
        // exec x2 without cgroups: a shell, a child that started its own
        // session, and its grandchild.
        fake.process(200, 1, 200, "/user.slice", &[]);
        fake.process(201, 200, 201, "/user.slice", &[]);
        fake.process(202, 201, 201, "/user.slice", &[21, 22]);
        // A daemon of exec x3 that was reparented to PID 1: only its
        // session tells.
        fake.process(300, 1, 300, "/user.slice", &[]);
        fake.process(305, 1, 300, "/user.slice", &[23]);
        // Nobody's process.
        fake.process(400, 1, 400, "/user.slice", &[24]);
        let roots = [
            root("x1", 100, Some("/workload/exec-1")),
            root("x2", 200, None),
            root("x3", 300, None),
        ];
        let find = |local, remote| fake.find(local, remote, &roots);
        assert_eq!(find("127.0.0.1:40000", PROXY).as_deref(), Some("x1"));
        assert_eq!(find("127.0.0.1:40001", PROXY).as_deref(), Some("x2"));
        assert_eq!(
            find("10.0.0.2:40002", "198.18.0.5:443").as_deref(),
            Some("x2")
        );
        assert_eq!(find("127.0.0.1:40003", PROXY).as_deref(), Some("x3"));
        assert_eq!(find("127.0.0.1:40004", PROXY), None);
        // No holder (inode 0), no such socket, or no execs: unknown.
        assert_eq!(find("127.0.0.1:40005", PROXY), None);
        assert_eq!(find("127.0.0.1:49999", PROXY), None);
        assert_eq!(fake.find("127.0.0.1:40000", PROXY, &[]), None);
        // The cgroup wins over a stale pid match.
        let moved = [
            root("x9", 101, None),
            root("x1", 100, Some("/workload/exec-1")),
        ];
        assert_eq!(
            fake.find("127.0.0.1:40000", PROXY, &moved).as_deref(),
            Some("x1")
        );
    }

    #[test]
    fn execs_are_found_by_their_pids_in_the_agents_namespace() {
        // The agent in a PID namespace of its own (3000 in /proc, 2 in its
        // namespace), as under the host tests' fake driver: it knows its
        // execs by their inner pids.
        let fake = FakeProc::new(&[
            (addr("127.0.0.1:40000"), addr(PROXY), 20),
            (addr("127.0.0.1:40001"), addr(PROXY), 21),
        ]);
        fake.process(3000, 2999, 2999, "/", &[]);
        fake.nspid(3000, 2);
        fake.process(3010, 3000, 3010, "/", &[]);
        fake.nspid(3010, 5);
        fake.process(3011, 3010, 3010, "/", &[20]);
        fake.nspid(3011, 6);
        // Reparented to the namespace's init: found by its session.
        fake.process(3012, 2999, 3010, "/", &[21]);
        fake.nspid(3012, 7);
        let roots = [root("x1", 5, None), root("x2", 3010, None)];
        let find = |local| {
            find_exec(
                fake.dir.path(),
                addr(local),
                addr(PROXY),
                &roots,
                &Limits {
                    skip_pid: 3000,
                    ..limits()
                },
            )
        };
        assert_eq!(find("127.0.0.1:40000").as_deref(), Some("x1"));
        assert_eq!(find("127.0.0.1:40001").as_deref(), Some("x1"));
    }

    #[test]
    fn the_walk_stops_at_its_limits() {
        let fake = FakeProc::new(&[(addr("127.0.0.1:40000"), addr(PROXY), 20)]);
        fake.process(100, 1, 100, "/", &[]);
        fake.process(101, 100, 100, "/", &[]);
        fake.process(102, 100, 100, "/", &[20]);
        let roots = [root("x1", 100, None)];
        let run = |limits: Limits| {
            find_exec(
                fake.dir.path(),
                addr("127.0.0.1:40000"),
                addr(PROXY),
                &roots,
                &limits,
            )
        };
        assert_eq!(run(limits()).as_deref(), Some("x1"));
        // Newest first: pid 102 holds it, so one pid is enough, none is not.
        assert_eq!(
            run(Limits {
                max_pids: 1,
                ..limits()
            })
            .as_deref(),
            Some("x1")
        );
        assert_eq!(
            run(Limits {
                max_pids: 0,
                ..limits()
            }),
            None
        );
        assert_eq!(
            run(Limits {
                skip_pid: 102,
                ..limits()
            }),
            None
        );
        assert_eq!(
            run(Limits {
                deadline: Instant::now(),
                ..limits()
            }),
            None
        );
    }

    #[test]
    fn the_real_proc_names_this_process_for_its_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let roots = [root("me", std::process::id() as i32, None)];
        let started = Instant::now();
        let found = find_exec(
            Path::new("/proc"),
            local,
            remote,
            &roots,
            &Limits {
                skip_pid: 0,
                ..limits()
            },
        );
        assert_eq!(found.as_deref(), Some("me"), "in {:?}", started.elapsed());
        // The accepting side is a different socket: the same process, but
        // found from its own addresses.
        let (_server, _) = listener.accept().unwrap();
        let found = find_exec(
            Path::new("/proc"),
            remote,
            local,
            &roots,
            &Limits {
                skip_pid: 0,
                ..limits()
            },
        );
        assert_eq!(found.as_deref(), Some("me"));
    }

    #[tokio::test]
    async fn the_table_follows_execs_and_answers_none_without_them() {
        let owners = ExecOwners::default();
        assert_eq!(owners.lookup(addr("127.0.0.1:1"), addr(PROXY)).await, None);
        owners.add(root("x1", 100, None));
        owners.add(root("x2", 200, None));
        owners.remove("x1");
        assert_eq!(owners.snapshot(), vec![root("x2", 200, None)]);
    }
}
