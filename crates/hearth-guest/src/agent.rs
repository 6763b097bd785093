//! The agent's shared state and the handle the binary and tests hold.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hearth_proto::{GuestInfo, Hello, PROTOCOL_VERSION};
use tokio::sync::watch;

use crate::capacity::{Capacity, CapacityLimits};
use crate::cgroup::Cgroups;
use crate::error::{GuestError, Result};
use crate::exec::ExecRegistry;
use crate::isolation::Isolation;
use crate::owner::ExecOwners;
use crate::reaper::{ReapScope, Reaper};
use crate::{memguard, sys, usage};

/// Least memory the workload may be left with by `agent_reserve_mib`.
const MIN_WORKLOAD_MEMORY: u64 = 16 * 1024 * 1024;

/// Longest wait, after a shutdown request, for the connections to close.
/// They close as soon as their responses (the shutdown's own 204 first) are
/// written; this only bounds a host that stops reading.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Most threads the agent's runtime runs blocking work on (file system
/// calls, forks). Each kind of request is bounded below this on its own
/// (see `capacity`), so no kind can take them all.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// The agent's async runtime, the same as PID 1 and in host mode
/// (`serve-unix`), so host-mode tests meet the limits a VM has: two workers
/// and [`MAX_BLOCKING_THREADS`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}

/// How the agent runs.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// PID-1 mode: reap every process, move the agent into its own cgroup,
    /// and let the hello set the clock and hostname. Off in host mode, where
    /// the agent must not touch the machine it runs on.
    pub pid1: bool,
    /// A cgroup v2 directory the agent may manage (`/sys/fs/cgroup` as PID
    /// 1). `None`, or a root that cannot be set up, degrades gracefully:
    /// kills via process groups, no OOM detection, usage from `/proc` only.
    pub cgroup_root: Option<PathBuf>,
    /// How many requests of each kind are served at once.
    pub capacity: CapacityLimits,
    /// Confine execs (see [`crate::isolation`]) unless the hello asks for
    /// a privileged sandbox. On as PID 1; off in host mode, where the agent
    /// may lack the privileges to do it and must not change how the host's
    /// tests run.
    pub isolate_workloads: bool,
}

/// State shared by every connection and request.
#[derive(Debug)]
pub struct AgentState {
    /// How the agent was started.
    pub options: AgentOptions,
    /// The child reaper.
    pub reaper: Reaper,
    /// The workload cgroup tree, when cgroups are usable.
    pub cgroups: Option<Cgroups>,
    /// Running execs.
    pub execs: ExecRegistry,
    /// How running execs are recognised in `/proc`, to name the exec that
    /// opened a network connection (shared with the egress proxy).
    pub owners: Arc<ExecOwners>,
    /// Requests being served, by kind.
    pub capacity: Capacity,
    /// Memory limit applied to the workload by the last hello, bytes (0
    /// before any hello).
    pub workload_memory_limit: AtomicU64,
    /// Milliseconds from kernel start to the first request served.
    pub boot_ms: OnceLock<u64>,
    /// How execs are confined, when [`AgentOptions::isolate_workloads`]
    /// is on.
    pub isolation: Option<Isolation>,
    /// Set by the hello: execs get full root, no confinement.
    pub privileged: AtomicBool,
    /// The egress proxy, while the host keeps its control stream open.
    egress: std::sync::Mutex<Option<Arc<crate::egress::Egress>>>,
    shutdown: watch::Sender<bool>,
    /// Connections being served.
    connections: watch::Sender<usize>,
}

/// Cloneable handle to a running agent.
#[derive(Debug, Clone)]
pub struct Agent {
    pub(crate) state: Arc<AgentState>,
}

impl Agent {
    /// Start the agent (its reaper and cgroup tree). Must be called inside a
    /// Tokio runtime.
    pub fn start(options: AgentOptions) -> Result<Self> {
        let scope = if options.pid1 {
            ReapScope::All
        } else {
            ReapScope::Registered
        };
        let reaper = Reaper::start(scope)
            .map_err(|e| GuestError::Internal(format!("cannot watch SIGCHLD: {e}")))?;
        let cgroups = match &options.cgroup_root {
            None => {
                crate::info!("no cgroup root: kills use process groups, no OOM detection, usage from /proc only");
                None
            }
            Some(root) => match Cgroups::setup(root, options.pid1) {
                Ok(cgroups) => Some(cgroups),
                Err(e) => {
                    crate::info!("cgroups unavailable ({e}): kills use process groups, no OOM detection, usage from /proc only");
                    None
                }
            },
        };
        let isolation = if options.isolate_workloads {
            let isolation = Isolation::prepare().map_err(|e| {
                GuestError::Internal(format!(
                    "cannot read the agent's capabilities to confine execs: {e}"
                ))
            })?;
            Some(isolation)
        } else {
            None
        };
        let (shutdown, _) = watch::channel(false);
        let capacity = Capacity::new(options.capacity);
        let state = Arc::new(AgentState {
            options,
            reaper,
            cgroups,
            execs: ExecRegistry::default(),
            owners: Arc::default(),
            capacity,
            workload_memory_limit: AtomicU64::new(0),
            boot_ms: OnceLock::new(),
            isolation,
            privileged: AtomicBool::new(false),
            egress: std::sync::Mutex::new(None),
            shutdown,
            connections: watch::channel(0).0,
        });
        memguard::spawn(&state);
        Ok(Self { state })
    }

    /// Whether the workload cgroup tree is in use.
    pub fn has_cgroups(&self) -> bool {
        self.state.cgroups.is_some()
    }

    /// Resolves once `POST /v1/shutdown` was answered.
    pub async fn shutdown_requested(&self) {
        self.state.shutdown_requested().await;
    }

    /// Kill every running exec and, with cgroups, every workload process.
    pub fn kill_workloads(&self) {
        self.state.execs.kill_all();
        if let Some(cgroups) = &self.state.cgroups {
            cgroups.kill_workload();
        }
    }

    /// After a shutdown request: kill the workloads, so that their exec
    /// streams end, and wait until every connection has closed. Each closes
    /// gracefully once its responses, the shutdown's own 204 among them,
    /// are written out (see [`Agent::serve_connection`]); so when this
    /// returns the host has its answer and the process may exit. Gives up
    /// after [`SHUTDOWN_DRAIN`]; returns whether every connection closed.
    pub async fn finish_shutdown(&self) -> bool {
        self.kill_workloads();
        let mut open = self.state.connections.subscribe();
        let closed = tokio::time::timeout(SHUTDOWN_DRAIN, open.wait_for(|open| *open == 0)).await;
        if closed.is_err() {
            crate::info!(
                "connections still open {} s after the shutdown request; exiting anyway",
                SHUTDOWN_DRAIN.as_secs()
            );
        }
        closed.is_ok()
    }

    /// Count a connection as open until the returned guard is dropped.
    pub(crate) fn open_connection(&self) -> OpenConnection {
        self.state.connections.send_modify(|open| *open += 1);
        OpenConnection {
            state: self.state.clone(),
        }
    }
}

/// A connection being served; see [`Agent::open_connection`].
pub(crate) struct OpenConnection {
    state: Arc<AgentState>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.state.connections.send_modify(|open| *open -= 1);
    }
}

impl AgentState {
    /// The egress proxy, if running.
    pub fn egress(&self) -> Option<Arc<crate::egress::Egress>> {
        self.egress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_egress(&self, egress: Option<Arc<crate::egress::Egress>>) {
        *self.egress.lock().unwrap_or_else(|e| e.into_inner()) = egress;
    }

    /// How the next exec is confined: `None` in a privileged sandbox or
    /// when the agent does not confine execs.
    pub fn exec_isolation(&self) -> Option<&Isolation> {
        if self.privileged.load(Ordering::Relaxed) {
            None
        } else {
            self.isolation.as_ref()
        }
    }

    /// Resolves once `POST /v1/shutdown` was answered.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|requested| *requested).await;
    }

    /// Record that shutdown was requested.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Apply a hello: check the version, set clock and hostname (PID-1 mode)
    /// and the workload limits, and describe the guest. Blocking.
    pub fn hello(&self, hello: &Hello) -> Result<GuestInfo> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(GuestError::VersionMismatch {
                host: hello.protocol_version,
                guest: PROTOCOL_VERSION,
            });
        }
        if hello.hostname.is_empty()
            || hello.hostname.len() > 64
            || !hello.hostname.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(GuestError::InvalidArgument(format!(
                "invalid hostname {:?}: use 1 to 64 printable ASCII characters without spaces",
                hello.hostname
            )));
        }
        let mem = usage::meminfo();
        let reserve = u64::from(hello.agent_reserve_mib) * 1024 * 1024;
        let limit = mem.total.saturating_sub(reserve);
        if limit < MIN_WORKLOAD_MEMORY {
            return Err(GuestError::InvalidArgument(format!(
                "agent_reserve_mib {} leaves the workload {} MiB of {} MiB total; at least {} MiB are needed",
                hello.agent_reserve_mib,
                limit / (1024 * 1024),
                mem.total / (1024 * 1024),
                MIN_WORKLOAD_MEMORY / (1024 * 1024)
            )));
        }
        if self.options.pid1 {
            sys::set_realtime_ms(hello.unix_time_ms).map_err(|e| {
                GuestError::io("set the clock to", hello.unix_time_ms.to_string(), e)
            })?;
            sys::sethostname(&hello.hostname)
                .map_err(|e| GuestError::io("set hostname", hello.hostname.clone(), e))?;
        }
        let applied_limit = match &self.cgroups {
            Some(cgroups) => {
                cgroups.set_memory_max(limit)?;
                cgroups.set_pids_max(hello.pids_max)?;
                limit
            }
            None => mem.total,
        };
        self.workload_memory_limit
            .store(applied_limit, Ordering::Relaxed);
        if hello.privileged != self.privileged.swap(hello.privileged, Ordering::Relaxed) {
            crate::info!(
                "execs from now on are {}",
                if hello.privileged {
                    "privileged: full root, not confined"
                } else {
                    "confined"
                }
            );
        }
        let (disk_total, _) = sys::statvfs("/").unwrap_or((0, 0));
        Ok(GuestInfo {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            vcpus: sys::online_cpus(),
            mem_total_bytes: mem.total,
            workload_memory_limit_bytes: applied_limit,
            disk_total_bytes: disk_total,
            boot_ms: *self.boot_ms.get_or_init(usage::uptime_ms),
            workload_isolation: self.exec_isolation().is_some(),
        })
    }
}
