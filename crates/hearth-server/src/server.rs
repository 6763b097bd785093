//! Starting, running and stopping a server.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hearth_store::Store;
use hearth_vm::qemu::QemuDriver;

use crate::api::{self, AppState};
use crate::error::{Result, ServerError};
use crate::events::EventLog;
use crate::manager::SandboxManager;
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::recovery::recover;
use crate::token::TokenCheck;

/// File in the home naming the running server's URL and PID, for clients.
pub const SERVER_FILE: &str = "server.json";
/// Lock file that keeps two servers off one home.
const LOCK_FILE: &str = "server.lock";
/// Database file name.
const DB_FILE: &str = "hearth.db";

/// A started server.
pub struct Server {
    addr: SocketAddr,
    manager: SandboxManager,
    store: Store,
    stop_http: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    server_file: PathBuf,
    shutdown_grace: Duration,
    _lock: File,
}

impl Server {
    /// Take the home, recover from a crashed predecessor, and start
    /// serving.
    pub async fn start(options: ServerOptions) -> Result<Server> {
        let home = options.home.clone();
        let root = home.root().to_path_buf();
        std::fs::create_dir_all(&root)
            .map_err(ServerError::io(format!("creating {}", root.display())))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ServerError::io(format!("opening {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(ServerError::HomeInUse {
                    home: root.display().to_string(),
                    lock: lock_path.display().to_string(),
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(ServerError::io(format!("locking {}", lock_path.display()))(
                    e,
                ))
            }
        }
        if options.capacity.max_sandboxes == 0
            || options.capacity.vcpus == 0
            || options.capacity.memory_bytes == 0
        {
            return Err(ServerError::InvalidOption(
                "the capacity (max sandboxes, memory budget, vCPU budget) must be above zero"
                    .into(),
            ));
        }

        let store = Store::open(&root.join(DB_FILE)).await?;
        let token = Arc::new(TokenCheck::new(&home)?);
        let driver = Arc::new(QemuDriver::locate()?);
        let metrics = Metrics::new();
        let events = EventLog::new(store.clone());
        let lost = recover(&home, &events, &metrics).await?;
        if lost > 0 {
            tracing::warn!(lost, "recorded sandboxes of a previous server as lost");
        }

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
        let shutdown_grace = options.shutdown_grace;
        let manager = SandboxManager::new(options, driver, events.clone(), metrics.clone());
        let state = AppState {
            manager: manager.clone(),
            events,
            metrics,
            token,
        };
        let router = api::router(state);
        let stop_http = CancellationToken::new();
        let stop = stop_http.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });

        let server_file = root.join(SERVER_FILE);
        let info = json!({"url": format!("http://{addr}"), "pid": std::process::id()});
        std::fs::write(&server_file, format!("{info}\n")).map_err(ServerError::io(format!(
            "writing {}",
            server_file.display()
        )))?;
        tracing::info!(%addr, home = %root.display(), "serving");
        Ok(Server {
            addr,
            manager,
            store,
            stop_http,
            http,
            server_file,
            shutdown_grace,
            _lock: lock,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sandboxes it runs.
    pub fn manager(&self) -> &SandboxManager {
        &self.manager
    }

    /// Serve until `signal` resolves (or the listener fails), then shut
    /// down.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let failed = tokio::select! {
            _ = signal => None,
            result = &mut self.http => Some(result),
        };
        if let Some(result) = failed {
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

    /// Destroy every sandbox, finish the requests in flight (briefly), and
    /// stop.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!("shutting down: destroying every sandbox");
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

    async fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.server_file);
        self.store.close().await;
    }
}
