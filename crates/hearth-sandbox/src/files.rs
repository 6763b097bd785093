//! Files in a sandbox: streamed, binary-safe transfers and directory
//! operations.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use hearth_proto::{limits, FileStat, PathQuery, Usage, WriteResult};

use crate::client::{chunks, FileReader};
use crate::error::{Result, SandboxError};
use crate::lifecycle::Sandbox;

impl Sandbox {
    /// Write `data` to `path` (created with its parent directories,
    /// truncated if it exists).
    pub async fn write_file(&self, path: &str, data: Bytes) -> Result<WriteResult> {
        let (tx, rx) = mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            for chunk in chunks(data, limits::STREAM_CHUNK) {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let result = self.write_file_stream(path, None, rx).await;
        feeder.abort();
        result
    }

    /// Write everything `reader` yields to `path`, streaming (memory use does
    /// not grow with the file).
    pub async fn write_file_from<R>(&self, path: &str, mut reader: R) -> Result<WriteResult>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; limits::STREAM_CHUNK];
                match reader.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Bytes::from(buf)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        let result = self.write_file_stream(path, None, rx).await;
        match feeder.await {
            Ok(Err(e)) => Err(SandboxError::io(format!("reading the data for {path}"))(e)),
            _ => result,
        }
    }

    /// Write the chunks received on `chunks` to `path` with `mode`.
    pub async fn write_file_stream(
        &self,
        path: &str,
        mode: Option<u32>,
        chunks: mpsc::Receiver<Bytes>,
    ) -> Result<WriteResult> {
        let query = PathQuery {
            path: path.to_string(),
            mode,
            parents: true,
            recursive: false,
            max_bytes: None,
            timeout_ms: None,
        };
        match self.client().await.write_file_stream(&query, chunks).await {
            Ok(result) => Ok(result),
            Err(error) => Err(self.explain(error).await),
        }
    }

    /// Open `path` for a streamed read.
    pub async fn read_file(&self, path: &str) -> Result<FileReader> {
        match self.client().await.read_file(path).await {
            Ok(reader) => Ok(reader),
            Err(error) => Err(self.explain(error).await),
        }
    }

    /// Open `path` for a streamed read that stops past `max_bytes` or after
    /// `timeout` (each capped by the guest; `None` for its defaults).
    pub async fn read_file_within(
        &self,
        path: &str,
        max_bytes: Option<u64>,
        timeout: Option<std::time::Duration>,
    ) -> Result<FileReader> {
        let query = PathQuery {
            path: path.to_string(),
            mode: None,
            parents: false,
            recursive: false,
            max_bytes,
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
        };
        match self.client().await.read_file_within(&query).await {
            Ok(reader) => Ok(reader),
            Err(error) => Err(self.explain(error).await),
        }
    }

    /// Read all of `path` (at most `limit` bytes).
    pub async fn read_file_to_vec(&self, path: &str, limit: usize) -> Result<Vec<u8>> {
        let reader = self.read_file(path).await?;
        match reader.read_to_end(limit).await {
            Ok(data) => Ok(data),
            Err(error) => Err(self.explain(error).await),
        }
    }

    /// Metadata of `path`.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        self.client().await.stat(path).await
    }

    /// Entries of the directory `path`.
    pub async fn list(&self, path: &str) -> Result<Vec<FileStat>> {
        self.client().await.list(path).await
    }

    /// Remove `path`; with `recursive`, a whole tree.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.client().await.remove(path, recursive).await
    }

    /// Create the directory `path`; with `parents`, like `mkdir -p`.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        self.client().await.mkdir(path, parents).await
    }

    /// Resource usage of the sandbox.
    pub async fn usage(&self) -> Result<Usage> {
        match self.client().await.usage().await {
            Ok(usage) => Ok(usage),
            Err(error) => Err(self.explain(error).await),
        }
    }

    /// Checkpoint the writable layer of a durable workspace: the guest
    /// flushes its filesystems, then the layer is frozen as it stands and
    /// writes go on in a new layer named `next`. A layer unchanged since
    /// the last checkpoint is not frozen again.
    pub async fn checkpoint(&self, next: &str) -> Result<hearth_vm::Checkpoint> {
        if let Err(error) = self.client().await.sync().await {
            return Err(self.explain(error).await);
        }
        Ok(self.vm().checkpoint(next).await?)
    }
}
