//! Durable workspaces on this node. A launch of a run with
//! `workspace: durable` boots on the chain of layers its journal's last
//! checkpoint names, fetched from the blob store into a directory of the
//! launch's own; at each step's end the VM's writable layer is frozen,
//! stored as a blob (in chunks when large: a layer is never held in memory
//! whole) and recorded with the step; the directory goes when the
//! launch ends. The blob store, not this node's disk, holds the workspace,
//! so another node can relaunch the run and a fork can start from any
//! step's files.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use hearth_engine::{HostError, WorkspaceCheckpoint};
use hearth_sandbox::Sandbox;
use hearth_store::Store;
use hearth_vm::{scratch, Checkpoint, ScratchDisk};

/// One launch's workspace directory and where its chain stands; the
/// directory is removed when this is dropped.
#[derive(Debug)]
pub(crate) struct LaunchWorkspace {
    dir: PathBuf,
    /// Names this launch's layers apart from every other's.
    tag: String,
    state: Mutex<Chain>,
}

#[derive(Debug)]
struct Chain {
    /// The frozen layer under the writable one.
    parent: Option<String>,
    /// The last checkpoint this launch took.
    last: Option<WorkspaceCheckpoint>,
    /// Layers this launch has named.
    named: u32,
}

/// The directory of every launch's workspace on this node.
pub(crate) fn workspaces_dir(home: &Path) -> PathBuf {
    home.join("workspaces")
}

/// Remove what launches that died with this process left (no launch runs
/// yet when it is called).
pub(crate) fn remove_leftovers(home: &Path) {
    let dir = workspaces_dir(home);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn random_tag() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

impl LaunchWorkspace {
    /// Lay out launch `launch` of `run_id`'s workspace: the layers of
    /// `chain` (base first) fetched from the blob store with a new writable
    /// layer over them, or a fresh base of `disk_bytes` when the chain is
    /// empty. Returns the workspace and the VM's writable disk.
    pub async fn prepare(
        store: &Store,
        home: &Path,
        run_id: &str,
        launch: u32,
        chain: &[WorkspaceCheckpoint],
        disk_bytes: u64,
    ) -> Result<(Self, ScratchDisk), String> {
        let tag = random_tag();
        let dir = workspaces_dir(home).join(format!("{run_id}-{launch}-{tag}"));
        let workspace = Self {
            dir: dir.clone(),
            tag,
            state: Mutex::new(Chain {
                parent: chain.last().map(|c| c.layer.clone()),
                last: None,
                named: 0,
            }),
        };
        // On an error, dropping the workspace removes what was laid out.
        let top = workspace.lay_out(store, chain, disk_bytes).await?;
        Ok((workspace, ScratchDisk::Layered { dir, top }))
    }

    fn next_name(&self) -> String {
        let mut state = self.state.lock();
        state.named += 1;
        format!("{}-{}.qcow2", self.tag, state.named)
    }

    async fn lay_out(
        &self,
        store: &Store,
        chain: &[WorkspaceCheckpoint],
        disk_bytes: u64,
    ) -> Result<String, String> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        for layer in chain {
            scratch::check_layer_name(&layer.layer).map_err(|e| e.to_string())?;
            // A chunk at a time: a layer may be larger than memory allows.
            let path = self.dir.join(&layer.layer);
            store
                .blob_to_file(&layer.digest, &path)
                .await
                .map_err(|e| format!("fetching workspace layer {}: {e}", layer.layer))?
                .ok_or_else(|| {
                    format!(
                        "workspace layer {} (blob {}) is not in the blob store",
                        layer.layer, layer.digest
                    )
                })?;
        }
        let top = self.next_name();
        let (dir, name) = (self.dir.clone(), top.clone());
        let below = chain.last().map(|c| c.layer.clone());
        tokio::task::spawn_blocking(move || match below {
            Some(below) => scratch::create_overlay(&dir, &name, &below),
            None => scratch::create_base_layer(&dir, &name, disk_bytes),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(top)
    }

    /// Checkpoint the VM's files as they stand: freeze its writable layer
    /// and keep it as a blob (unless nothing changed since the last one).
    pub async fn checkpoint(
        &self,
        sandbox: &Sandbox,
        store: &Store,
    ) -> Result<WorkspaceCheckpoint, HostError> {
        let next = self.next_name();
        let frozen = sandbox
            .checkpoint(&next)
            .await
            .map_err(|e| HostError(format!("checkpointing the workspace: {e}")))?;
        let layer = match frozen {
            Checkpoint::Unchanged { .. } => {
                return self.state.lock().last.clone().ok_or_else(|| {
                    HostError("the workspace reported no change before any checkpoint".into())
                })
            }
            Checkpoint::Frozen { layer } => layer,
        };
        let (digest, _) = store
            .put_blob_file(&self.dir.join(&layer))
            .await
            .map_err(|e| HostError(format!("storing the frozen layer {layer}: {e}")))?;
        let mut state = self.state.lock();
        let checkpoint = WorkspaceCheckpoint {
            layer: layer.clone(),
            digest,
            parent: state.parent.replace(layer),
        };
        state.last = Some(checkpoint.clone());
        Ok(checkpoint)
    }
}

impl LaunchWorkspace {
    /// Remove the directory (the launch is over, its VM gone: the blobs
    /// hold what counts).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LaunchWorkspace {
    fn drop(&mut self) {
        self.remove();
    }
}
