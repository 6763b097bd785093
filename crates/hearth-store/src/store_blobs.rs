//! [`Store`]'s blob store: content-addressed bytes (pinned programs, large
//! step results, persisted files, launch logs, durable workspace layers).
//! A blob is stored once under its digest (`sha256:…` of its bytes). One
//! larger than [`BLOB_CHUNK`] that comes from a file is stored as chunks,
//! each an ordinary blob, so that neither storing nor fetching it holds
//! more than a chunk in memory, and a chunk shared by several blobs is
//! stored once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backend::RunBackend;
use crate::error::{Result, StoreError};
use crate::store::{on_engine, Store};

/// The size of a large blob's chunks.
pub const BLOB_CHUNK: usize = 4 << 20;

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("{what} {}: {e}", path.display()))
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        what: "chunked blob",
        detail,
    }
}

impl Store {
    /// Store `data` once under its digest (`sha256:…`), which it returns.
    pub async fn put_blob(&self, data: &[u8]) -> Result<String> {
        let digest = hearth_engine::digest::bytes_digest(data);
        let now = self.now();
        on_engine!(self, b => b.put_blob(&digest, data, now))?;
        Ok(digest)
    }

    /// The bytes stored under `digest` (a chunked blob's put together).
    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        match on_engine!(self, b => b.blob(digest))? {
            None => Ok(None),
            Some((data, None)) => Ok(Some(data)),
            Some((_, Some(chunks))) => {
                let mut whole = Vec::new();
                for chunk in self.chunk_list(digest, &chunks)? {
                    whole.extend(self.chunk(digest, &chunk).await?);
                }
                Ok(Some(whole))
            }
        }
    }

    /// Store the file at `path` as a blob, reading a chunk at a time;
    /// returns its digest and size.
    pub async fn put_blob_file(&self, path: &Path) -> Result<(String, u64)> {
        let mut file = Reader::open(path).await?;
        let first = file.next_chunk().await?;
        if first.len() < BLOB_CHUNK {
            // Small: stored whole, as any other blob.
            let size = first.len() as u64;
            return Ok((self.put_blob(&first).await?, size));
        }
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut chunk = first;
        while !chunk.is_empty() {
            whole.update(&chunk);
            size += chunk.len() as u64;
            chunks.push(self.put_blob(&chunk).await?);
            chunk = file.next_chunk().await?;
        }
        let digest = format!("sha256:{}", hex::encode(whole.finalize()));
        let list = serde_json::to_string(&chunks).unwrap_or_default();
        let now = self.now();
        // The row last: a crash halfway leaves chunks nothing names, never
        // a blob missing a chunk.
        on_engine!(self, b => b.put_chunked_blob(&digest, size, &list, now))?;
        Ok((digest, size))
    }

    /// Write the blob `digest` to a new file at `path`, a chunk at a time,
    /// checking that its bytes are the ones the digest names; its size, or
    /// `None` (and no file) when there is no such blob.
    pub async fn blob_to_file(&self, digest: &str, path: &Path) -> Result<Option<u64>> {
        let Some((data, chunks)) = on_engine!(self, b => b.blob(digest))? else {
            return Ok(None);
        };
        let mut file = Writer::create(path).await?;
        let result = async {
            match chunks {
                None => file.write(data).await?,
                Some(chunks) => {
                    for chunk in self.chunk_list(digest, &chunks)? {
                        file.write(self.chunk(digest, &chunk).await?).await?;
                    }
                }
            }
            file.finish(digest).await
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result.map(Some)
    }

    fn chunk_list(&self, digest: &str, chunks: &str) -> Result<Vec<String>> {
        serde_json::from_str(chunks).map_err(|e| corrupt(format!("{digest}: its chunk list: {e}")))
    }

    async fn chunk(&self, digest: &str, chunk: &str) -> Result<Vec<u8>> {
        match on_engine!(self, b => b.blob(chunk))? {
            Some((data, None)) => Ok(data),
            Some((_, Some(_))) => Err(corrupt(format!("{digest}: chunk {chunk} is chunked"))),
            None => Err(corrupt(format!("{digest}: chunk {chunk} is missing"))),
        }
    }
}

/// A file read a chunk at a time, off the async threads.
struct Reader {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl Reader {
    async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(&opened))
            .await
            .map_err(|e| StoreError::Invalid(e.to_string()))?
            .map_err(|e| io_error("opening", &path, e))?;
        Ok(Self {
            file: Some(file),
            path,
        })
    }

    /// The next chunk: full-size but at the end, empty once done.
    async fn next_chunk(&mut self) -> Result<Vec<u8>> {
        let Some(mut file) = self.file.take() else {
            return Ok(Vec::new());
        };
        let (file, read) = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(BLOB_CHUNK);
            let read = (&mut file)
                .take(BLOB_CHUNK as u64)
                .read_to_end(&mut chunk)
                .map(|_| chunk);
            (file, read)
        })
        .await
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let chunk = read.map_err(|e| io_error("reading", &self.path, e))?;
        if chunk.len() == BLOB_CHUNK {
            self.file = Some(file);
        }
        Ok(chunk)
    }
}

/// A new file written a chunk at a time, off the async threads, hashing
/// what it writes.
struct Writer {
    file: Option<std::fs::File>,
    path: PathBuf,
    hash: Sha256,
    size: u64,
}

impl Writer {
    async fn create(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let created = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&created)
        })
        .await
        .map_err(|e| StoreError::Invalid(e.to_string()))?
        .map_err(|e| io_error("creating", &path, e))?;
        Ok(Self {
            file: Some(file),
            path,
            hash: Sha256::new(),
            size: 0,
        })
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        self.hash.update(&data);
        self.size += data.len() as u64;
        let mut file = self.file.take().ok_or_else(|| {
            StoreError::Invalid(format!("{} was closed after an error", self.path.display()))
        })?;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&data);
            (file, written)
        })
        .await
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        written.map_err(|e| io_error("writing", &self.path, e))?;
        self.file = Some(file);
        Ok(())
    }

    /// Check the bytes written against `digest`; their size.
    async fn finish(self, digest: &str) -> Result<u64> {
        let written = format!("sha256:{}", hex::encode(self.hash.finalize()));
        if written != digest {
            return Err(corrupt(format!(
                "{digest}: its chunks hold {} bytes whose digest is {written}",
                self.size
            )));
        }
        Ok(self.size)
    }
}
