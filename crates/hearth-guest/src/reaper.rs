//! The child reaper: one task that collects exit statuses on SIGCHLD and
//! hands each to whoever registered for that pid.
//!
//! As PID 1 the agent inherits every orphan, so it reaps with
//! `waitpid(-1)` and discards statuses nobody registered for. In host mode
//! ([`ReapScope::Registered`]) it waits only for the pids it registered, so
//! it never steals the exit status of a child someone else in the process
//! (a test harness) spawned.
//!
//! The race "child exits before it is registered" is closed by a mutex held
//! across fork + register ([`Reaper::spawn_registered`]); the reaper takes the
//! same mutex around its `waitpid` loop. Holding it there also keeps the
//! reaper away from a child that std's `Command::spawn` itself waits for when
//! `exec` fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::sys::{self, WaitOutcome};

/// Which children the reaper waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapScope {
    /// Every child (`waitpid(-1)`): PID-1 mode.
    All,
    /// Only registered pids: host mode, sharing the process with others.
    Registered,
}

type Waiters = HashMap<i32, oneshot::Sender<i32>>;

/// Handle to the reaper task.
#[derive(Debug, Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
    scope: ReapScope,
}

impl Reaper {
    /// Start the reaper task on the current Tokio runtime.
    pub fn start(scope: ReapScope) -> std::io::Result<Self> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Self {
            waiters: Arc::new(Mutex::new(HashMap::new())),
            scope,
        };
        let task = reaper.clone();
        tokio::spawn(async move {
            // SIGCHLD can coalesce or arrive before a registration; a slow
            // periodic sweep makes a missed signal cost latency, not a hang.
            let mut sweep = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = sweep.tick() => {}
                }
                task.reap_now();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A poisoned map is still a valid map.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `spawn` (which forks) with the registry locked and register the
    /// pid it returns, so the exit of even a very short-lived child is caught.
    /// Blocking: call from a blocking context.
    pub fn spawn_registered<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(i32, T)>,
    ) -> std::io::Result<(i32, T, oneshot::Receiver<i32>)> {
        let mut waiters = self.lock();
        let (pid, value) = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, value, rx))
    }

    /// Collect every exit status available now.
    pub fn reap_now(&self) {
        let mut waiters = self.lock();
        match self.scope {
            ReapScope::All => {
                while let Ok(WaitOutcome::Reaped { pid, status }) = sys::waitpid_nohang(-1) {
                    if let Some(tx) = waiters.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
            }
            ReapScope::Registered => {
                let pids: Vec<i32> = waiters.keys().copied().collect();
                for pid in pids {
                    match sys::waitpid_nohang(pid) {
                        Ok(WaitOutcome::Reaped { status, .. }) => {
                            if let Some(tx) = waiters.remove(&pid) {
                                let _ = tx.send(status);
                            }
                        }
                        Ok(WaitOutcome::NoChild) => {
                            // Someone else reaped it; report a plain kill
                            // rather than leaving the exec waiting forever.
                            if let Some(tx) = waiters.remove(&pid) {
                                let _ = tx.send(libc::SIGKILL);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
