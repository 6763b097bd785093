//! Starting, running and stopping a server: assembled from its parts
//! (store, VM driver, clock, id source), it takes its home, joins the
//! cluster as a node, and serves.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hearth_sandbox::{reap_orphans, HearthHome};
use hearth_store::{NodeCapacity, NodeSpec, SharedClock, Store, SystemClock};
use hearth_vm::qemu::QemuDriver;
use hearth_vm::Driver;

use crate::api::{self, AppState};
use crate::cluster::{Heartbeat, Node};
use crate::error::{Result, ServerError};
use crate::events::EventLog;
use crate::forward::Forwarder;
use crate::ids::{IdSource, RandomIds};
use crate::manager::{ManagerParts, SandboxManager};
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::runs::RunEngine;
use crate::token::TokenCheck;

/// File in the home naming the running server's URL and PID, for clients.
pub const SERVER_FILE: &str = "server.json";
/// Lock file that keeps two servers off one home.
const LOCK_FILE: &str = "server.lock";
/// File in the home keeping this node's id across restarts.
const NODE_ID_FILE: &str = "node-id";

/// What a server is assembled from. Tests substitute any of them.
#[derive(Clone)]
pub struct ServerParts {
    /// The VMM backend.
    pub driver: Arc<dyn Driver>,
    /// Wall-clock time for everything recorded.
    pub clock: SharedClock,
    /// Where sandbox ids come from.
    pub ids: Arc<dyn IdSource>,
    /// An open store; `None` opens `ServerOptions::database` once the home
    /// is locked.
    pub store: Option<Store>,
}

impl ServerParts {
    /// The parts of a real server: QEMU, the system clock, random ids, and
    /// the store named by the options.
    pub fn standard() -> Result<ServerParts> {
        Ok(ServerParts {
            driver: Arc::new(QemuDriver::locate()?),
            clock: SystemClock::shared(),
            ids: Arc::new(RandomIds),
            store: None,
        })
    }
}

/// A started server.
pub struct Server {
    addr: SocketAddr,
    url: String,
    manager: SandboxManager,
    runs: RunEngine,
    node: Node,
    store: Store,
    stop_http: CancellationToken,
    stop_upkeep: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    upkeep: tokio::task::JoinHandle<()>,
    server_file: PathBuf,
    shutdown_grace: Duration,
    _lock: File,
}

fn lock_home(home: &HearthHome) -> Result<File> {
    let root = home.root();
    home.create_private()
        .map_err(ServerError::io(format!("creating {}", root.display())))?;
    let lock_path = root.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(ServerError::io(format!("opening {}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(ServerError::HomeInUse {
            home: root.display().to_string(),
            lock: lock_path.display().to_string(),
        }),
        Err(TryLockError::Error(e)) => Err(ServerError::io(format!(
            "locking {}",
            lock_path.display()
        ))(e)),
    }
}

/// Whether `id` can be a node id: 1 to 64 letters, digits, `.`, `_`, `-`.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The node id: given, or kept in the home (made on first start).
fn node_id(home: &HearthHome, given: Option<&str>) -> Result<String> {
    if let Some(id) = given {
        if !valid_node_id(id) {
            return Err(ServerError::InvalidOption(format!(
                "node id {id:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'"
            )));
        }
        return Ok(id.to_string());
    }
    let path = home.root().join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_node_id(text.trim()) => return Ok(text.trim().to_string()),
        Ok(text) => {
            return Err(ServerError::InvalidOption(format!(
                "{} holds {:?}, which is not a node id; delete the file to get a new id, or pass --node-id",
                path.display(),
                text.trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::io(format!("reading {}", path.display()))(e)),
    }
    let id = format!("nd-{}", hearth_sandbox::ids::random_hex(6));
    crate::token::write_private(&path, &format!("{id}\n"))?;
    Ok(id)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Server {
    /// Take the home, open the store, join the cluster, record what a
    /// crashed predecessor left as lost, and start serving.
    pub async fn start(options: ServerOptions, parts: ServerParts) -> Result<Server> {
        let home = options.home.clone();
        let lock = lock_home(&home)?;
        let root = home.root().to_path_buf();
        if options.capacity.max_sandboxes == 0
            || options.capacity.vcpus == 0
            || options.capacity.memory_bytes == 0
        {
            return Err(ServerError::InvalidOption(
                "the capacity (max sandboxes, memory budget, vCPU budget) must be above zero"
                    .into(),
            ));
        }
        if options.http.max_connections == 0
            || options.http.header_timeout.is_zero()
            || options.http.idle_timeout.is_zero()
        {
            return Err(ServerError::InvalidOption(
                "the HTTP limits (max connections, header timeout, idle timeout) must be above zero"
                    .into(),
            ));
        }
        if options.lease_ttl < Duration::from_secs(1) {
            return Err(ServerError::InvalidOption(
                "the lease TTL must be at least 1s".into(),
            ));
        }
        // Bad certificate files stop the start before anything else.
        let tls = options.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let store = crate::home_store::open_checked(
            &root,
            &options.database,
            parts.store,
            parts.clock.clone(),
            options.reset_store,
        )
        .await?;
        let token = Arc::new(match &options.token_file {
            Some(path) => TokenCheck::at(path)?,
            None => TokenCheck::new(&home)?,
        });
        let metrics = Metrics::new();
        let reaped = {
            let home = home.clone();
            tokio::task::spawn_blocking(move || reap_orphans(&home))
                .await
                .unwrap_or_default()
        };

        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: options.listen.to_string(),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(ServerError::io("reading the listen address"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if tls.is_none() {
            if let Some(warning) = crate::tls::plain_http_warning(addr) {
                tracing::warn!("{warning}");
            }
        }
        let spec = NodeSpec {
            id: node_id(&home, options.node_id.as_deref())?,
            url: options
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}")),
            hostname: hostname(),
            home: root.display().to_string(),
            capacity: NodeCapacity {
                sandboxes: options.capacity.max_sandboxes,
                memory_bytes: options.capacity.memory_bytes,
                vcpus: options.capacity.vcpus,
            },
        };
        let node = Node::join(store.clone(), spec, options.lease_ttl, reaped).await?;
        let lost = node.sweep(&metrics).await?;
        if lost > 0 {
            tracing::warn!(lost, "recorded sandboxes of a previous server as lost");
        }
        let events = EventLog::new(store.clone(), options.event_poll);
        let shutdown_grace = options.shutdown_grace;
        let http_limits = options.http;
        let buffer_budget = options.buffer_budget;
        let run_options = options.runs.clone();
        let manager = SandboxManager::new(
            options,
            ManagerParts {
                driver: parts.driver,
                events: events.clone(),
                node: node.clone(),
                clock: parts.clock,
                ids: parts.ids,
                metrics: metrics.clone(),
            },
        );
        let runs = RunEngine::new(manager.clone(), run_options);
        tokio::spawn(
            runs.clone()
                .schedule()
                .instrument(tracing::info_span!("runs", node = %node.id())),
        );
        let stop_upkeep = CancellationToken::new();
        let upkeep = tokio::spawn(
            upkeep(manager.clone(), metrics.clone(), stop_upkeep.clone())
                .instrument(tracing::info_span!("node", id = %node.id())),
        );
        let state = AppState {
            manager: manager.clone(),
            runs: runs.clone(),
            events,
            metrics,
            token,
            forwarder: Forwarder::new(node.id()),
            buffers: crate::buffers::BufferBudget::new(buffer_budget),
        };
        let router = api::router(state);
        let stop_http = CancellationToken::new();
        let http = tokio::spawn(crate::listener::serve(
            listener,
            router,
            http_limits,
            tls,
            stop_http.clone(),
        ));

        let url = format!("{scheme}://{addr}");
        let server_file = root.join(SERVER_FILE);
        let info = json!({"url": url, "pid": std::process::id(), "node_id": node.id()});
        crate::token::write_private(&server_file, &format!("{info}\n"))?;
        tracing::info!(%addr, home = %root.display(), node = %node.id(), store = %store.url(), "serving");
        Ok(Server {
            addr,
            url,
            manager,
            runs,
            node,
            store,
            stop_http,
            stop_upkeep,
            http,
            upkeep,
            server_file,
            shutdown_grace,
            _lock: lock,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL: `https://` with TLS, else `http://`, and the address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The sandboxes it runs.
    pub fn manager(&self) -> &SandboxManager {
        &self.manager
    }

    /// The durable runs it launches.
    pub fn runs(&self) -> &RunEngine {
        &self.runs
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Serve until `signal` resolves (or the listener fails), then shut
    /// down.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let failed = tokio::select! {
            _ = signal => None,
            result = &mut self.http => Some(result),
        };
        if let Some(result) = failed {
            self.runs.shutdown(self.shutdown_grace).await;
            self.manager.shutdown_all(self.shutdown_grace).await;
            self.cleanup().await;
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServerError::io("serving HTTP")(e)),
                Err(e) => Err(ServerError::io("serving HTTP")(std::io::Error::other(
                    e.to_string(),
                ))),
            };
        }
        self.shutdown().await
    }

    /// Destroy every sandbox, finish the requests in flight (briefly), give
    /// up the lease, and stop.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!("shutting down: destroying every sandbox");
        self.runs.shutdown(self.shutdown_grace).await;
        self.manager.shutdown_all(self.shutdown_grace).await;
        self.stop_http.cancel();
        if tokio::time::timeout(self.shutdown_grace, &mut self.http)
            .await
            .is_err()
        {
            tracing::warn!("requests still open after the grace period; closing them");
            self.http.abort();
        }
        self.cleanup().await;
        Ok(())
    }

    async fn cleanup(&mut self) {
        self.stop_upkeep.cancel();
        let _ = (&mut self.upkeep).await;
        self.node.leave().await;
        let _ = std::fs::remove_file(&self.server_file);
        self.store.close().await;
    }
}

/// Keep the lease and watch the other nodes until `stop`.
async fn upkeep(manager: SandboxManager, metrics: Metrics, stop: CancellationToken) {
    let node = manager.node().clone();
    let mut ticks = tokio::time::interval(node.heartbeat_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        match node.heartbeat(manager.load()).await {
            Ok(Heartbeat::Renewed) => {}
            Ok(Heartbeat::Rejoined { lost, reason }) => {
                manager
                    .abandon(&lost, &format!("this node lost its lease ({reason})"))
                    .await;
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed; retrying");
                continue;
            }
        }
        if let Err(error) = node.sweep(&metrics).await {
            tracing::warn!(%error, "looking for dead nodes failed; retrying");
        }
    }
}
