//! The files routes: write, read, stat, list, remove, mkdir.
//!
//! All filesystem work runs on blocking threads or through `tokio::fs`, so a
//! slow disk never stalls the agent. Paths come from the query string (a
//! [`PathQuery`]) and are checked by [`parse_query`] first.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use hearth_proto::limits::{
    DEFAULT_DOWNLOAD_MAX_BYTES, DEFAULT_DOWNLOAD_TIMEOUT, FILE_OP_TIMEOUT, MAX_DOWNLOAD_BYTES,
    MAX_DOWNLOAD_TIMEOUT, MAX_LIST_ENTRIES, MAX_PATH, STREAM_CHUNK, UPLOAD_IDLE_TIMEOUT,
};
use hearth_proto::{FileStat, FileType, PathQuery, WriteResult};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{self, ResponseBody};
use crate::capacity::Slot;
use crate::error::{GuestError, Result};
use crate::upload::Upload;

/// Default mode of a written file.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Parse and check the query string of a files route: the path must be
/// absolute, at most `MAX_PATH` bytes, without NUL, and valid UTF-8 (the
/// decoder turns invalid UTF-8 into U+FFFD, which is rejected).
pub fn parse_query(query: Option<&str>) -> Result<PathQuery> {
    let query: PathQuery = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| GuestError::InvalidArgument(format!("invalid query string: {e}")))?;
    check_path(&query.path)?;
    Ok(query)
}

/// Check a path from the host (see [`parse_query`]).
pub fn check_path(path: &str) -> Result<()> {
    let invalid = |why: &str| {
        Err(GuestError::InvalidArgument(format!(
            "invalid path {path:?}: {why}"
        )))
    };
    if path.len() > MAX_PATH {
        return Err(GuestError::TooLarge(format!(
            "path of {} bytes exceeds the {MAX_PATH}-byte limit",
            path.len()
        )));
    }
    if !path.starts_with('/') {
        return invalid("must be absolute");
    }
    if path.contains('\0') {
        return invalid("contains a NUL byte");
    }
    if path.contains('\u{FFFD}') {
        return invalid("is not valid UTF-8");
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(GuestError::Internal(format!("file task failed: {e}"))))
}

/// [`blocking`], answered [`GuestError::TimedOut`] after [`FILE_OP_TIMEOUT`]
/// (a hung disk): the host gets an answer before it gives up. The thread
/// cannot be interrupted; the slot the work holds (moved into it) stays
/// taken until it returns, so hung calls make file requests busy, never
/// the agent.
async fn bounded<T: Send + 'static>(
    what: String,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::time::timeout(FILE_OP_TIMEOUT, blocking(work))
        .await
        .unwrap_or_else(|_| {
            Err(GuestError::TimedOut(format!(
                "{what} did not finish within {} s; the agent stopped waiting for it",
                FILE_OP_TIMEOUT.as_secs()
            )))
        })
}

/// `PUT /v1/files`: stream the request body into the file, atomically
/// (see [`crate::upload`]).
pub async fn write(
    query: PathQuery,
    mut body: Incoming,
    _slot: Option<Slot>,
) -> Result<Response<ResponseBody>> {
    let path = query.path.clone();
    let mode = query.mode.unwrap_or(DEFAULT_FILE_MODE);
    if mode > 0o7777 {
        return Err(GuestError::InvalidArgument(format!(
            "invalid mode {mode:o} for {path}"
        )));
    }
    if query.parents {
        if let Some(parent) = Path::new(&path).parent() {
            let parent = parent.to_path_buf();
            tokio::fs::create_dir_all(&parent)
                .await
                .map_err(|e| GuestError::io("create parent directories of", path.clone(), e))?;
        }
    }
    // Written to a temporary file, renamed over the target at the end; if
    // this future ends early (an error, or the host reset the stream), the
    // upload's drop removes the temporary file and the old one stays.
    let (upload, file) = {
        let path = path.clone();
        bounded(format!("write {path}"), move || Upload::begin(&path, mode)).await?
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut written: u64 = 0;
    loop {
        let Ok(frame) = tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, body.frame()).await else {
            return Err(GuestError::TimedOut(format!(
                "upload to {path} received nothing for {} s and was abandoned; the file was left as it was",
                UPLOAD_IDLE_TIMEOUT.as_secs()
            )));
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            GuestError::InvalidArgument(format!(
                "request body for {path} failed: {e}; the file was left as it was"
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|e| GuestError::io("write", path.clone(), e))?;
            written += data.len() as u64;
        }
    }
    file.flush()
        .await
        .map_err(|e| GuestError::io("write", path.clone(), e))?;
    let file = file.into_std().await;
    blocking(move || upload.commit(file, query.mode)).await?;
    Ok(body::json(&WriteResult { bytes: written }))
}

/// How long a download waits before reading again a file that had nothing
/// to give (`EAGAIN`, as `/proc/kmsg` answers when it is empty).
const EMPTY_READ_PAUSE: Duration = Duration::from_millis(100);

/// A download's limits: the host's, capped, or the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Most bytes sent.
    pub max_bytes: u64,
    /// Longest the download may take.
    pub timeout: Duration,
}

impl DownloadLimits {
    /// The limits `query` asks for, capped at [`MAX_DOWNLOAD_BYTES`] and
    /// [`MAX_DOWNLOAD_TIMEOUT`]; a zero timeout is refused.
    pub fn of(query: &PathQuery) -> Result<Self> {
        let max_bytes = query
            .max_bytes
            .unwrap_or(DEFAULT_DOWNLOAD_MAX_BYTES)
            .min(MAX_DOWNLOAD_BYTES);
        let timeout = match query.timeout_ms {
            None => DEFAULT_DOWNLOAD_TIMEOUT,
            Some(0) => {
                return Err(GuestError::InvalidArgument(
                    "timeout_ms 0: a download needs at least 1 ms".into(),
                ))
            }
            Some(ms) => Duration::from_millis(ms).min(MAX_DOWNLOAD_TIMEOUT),
        };
        Ok(Self { max_bytes, timeout })
    }
}

/// `GET /v1/files`: stream a regular file's contents, within its
/// [`DownloadLimits`]. A file that reports more than `max_bytes` is refused
/// before any byte; one that turns out longer (files in `/proc` report 0,
/// `/proc/kmsg` never ends) or takes longer than the time limit ends with
/// an error naming the limit: trailers when `trailers` (the host sent
/// `te: trailers`), else a reset stream.
pub async fn read(
    query: PathQuery,
    trailers: bool,
    slot: Option<Slot>,
) -> Result<Response<ResponseBody>> {
    let limits = DownloadLimits::of(&query)?;
    let path = query.path;
    let (file, meta) = {
        let path = path.clone();
        bounded(format!("read {path}"), move || open_regular_for_read(&path)).await?
    };
    if meta.len() > limits.max_bytes {
        return Err(GuestError::TooLarge(format!(
            "{path} is {} bytes, more than the download limit of {} bytes (max_bytes, at most {MAX_DOWNLOAD_BYTES})",
            meta.len(),
            limits.max_bytes
        )));
    }
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let on_deadline = GuestError::TimedOut(format!(
        "download of {path} stopped at its time limit of {} ms (timeout_ms, at most {} ms)",
        limits.timeout.as_millis(),
        MAX_DOWNLOAD_TIMEOUT.as_millis()
    ));
    let (tx, body) = body::transfer(4, deadline, on_deadline, trailers);
    tokio::spawn(async move {
        // A download counts against the file bound while it streams.
        let _slot = slot;
        stream_file(tokio::fs::File::from_std(file), &path, limits.max_bytes, tx).await;
    });
    Ok(body::streamed(body, "application/octet-stream"))
}

/// Send `file` down `tx` in chunks until its end, `max_bytes`, or the body
/// is gone (the host reset the stream, or the body's deadline passed). A
/// file with nothing to give yet (`EAGAIN`) is read again after a pause.
pub async fn stream_file(
    mut file: tokio::fs::File,
    path: &str,
    max_bytes: u64,
    tx: body::TransferSender,
) {
    let mut buffer = vec![0u8; STREAM_CHUNK];
    let mut sent: u64 = 0;
    loop {
        let chunk = match file.read(&mut buffer).await {
            Ok(0) => return,
            Ok(n) if sent + n as u64 > max_bytes => Err(GuestError::TooLarge(format!(
                "download of {path} stopped at its size limit of {max_bytes} bytes (max_bytes, at most {MAX_DOWNLOAD_BYTES})"
            ))),
            Ok(n) => {
                sent += n as u64;
                Ok(Bytes::copy_from_slice(&buffer[..n]))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(EMPTY_READ_PAUSE) => continue,
                }
            }
            Err(e) => Err(GuestError::io("read", path, e)),
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// What a non-regular file is, for error messages ("a FIFO").
fn describe(file_type: fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Refuse anything but a regular file for `op` ("read", "write"): a
/// directory with `EISDIR` (its own error class), anything else (FIFO,
/// device, socket) with a message saying what the path is. `via_link` says
/// the path is a symbolic link to it.
pub(crate) fn check_regular(
    op: &'static str,
    path: &str,
    meta: &fs::Metadata,
    via_link: bool,
) -> Result<()> {
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    if file_type.is_dir() {
        return Err(GuestError::io(
            op,
            path,
            io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let link = if via_link {
        " (through a symbolic link)"
    } else {
        ""
    };
    Err(GuestError::InvalidArgument(format!(
        "{op} {path}: is {}{link}, not a regular file; only regular files can be read or written",
        describe(file_type)
    )))
}

/// Metadata of what `path` names, following symbolic links, and whether
/// `path` itself is a link. `op` names the operation in errors.
fn metadata_through_links(op: &'static str, path: &str) -> Result<(fs::Metadata, bool)> {
    let own = fs::symlink_metadata(path).map_err(|e| GuestError::io(op, path, e))?;
    if !own.file_type().is_symlink() {
        return Ok((own, false));
    }
    let target = fs::metadata(path).map_err(|e| GuestError::io(op, path, e))?;
    Ok((target, true))
}

/// Open `path` for reading if, and only if, it is a regular file.
///
/// A FIFO without a writer blocks `open` forever, and opening some devices
/// has side effects, so the type is checked on the path first; the open
/// itself is non-blocking (`O_NONBLOCK`, `O_NOCTTY`) and the type is
/// checked again on the open file (`fstat`), in case the path was swapped
/// in between. The descriptor stays non-blocking: regular files ignore the
/// flag, and the few `/proc` files that honour it (`/proc/kmsg`) answer
/// `EAGAIN` instead of parking a thread.
pub fn open_regular_for_read(path: &str) -> Result<(fs::File, fs::Metadata)> {
    let (meta, via_link) = metadata_through_links("read", path)?;
    check_regular("read", path, &meta, via_link)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| GuestError::io("open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| GuestError::io("stat", path, e))?;
    check_regular("read", path, &meta, via_link)?;
    Ok((file, meta))
}

/// Metadata of `path` (not following a final symlink), named `name`.
pub fn stat_entry(path: &Path, name: String) -> io::Result<FileStat> {
    let meta = fs::symlink_metadata(path)?;
    let file_type = meta.file_type();
    let file_type = if file_type.is_file() {
        FileType::File
    } else if file_type.is_dir() {
        FileType::Dir
    } else if file_type.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Other
    };
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).ok(),
            Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
        })
        .unwrap_or(0);
    Ok(FileStat {
        name,
        file_type,
        size: meta.size(),
        mode: meta.mode() & 0o7777,
        modified_ms,
    })
}

/// `GET /v1/files/stat`.
pub async fn stat(query: PathQuery, slot: Option<Slot>) -> Result<Response<ResponseBody>> {
    let what = format!("stat {}", query.path);
    let stat = bounded(what, move || {
        // The slot frees when the thread is done, not when the host gives up.
        let _slot = slot;
        stat_entry(Path::new(&query.path), query.path.clone())
            .map_err(|e| GuestError::io("stat", query.path.clone(), e))
    })
    .await?;
    Ok(body::json(&stat))
}

/// `GET /v1/files/list`: the entries of a directory, sorted by name.
pub async fn list(query: PathQuery, slot: Option<Slot>) -> Result<Response<ResponseBody>> {
    let what = format!("list {}", query.path);
    let deadline = Instant::now() + FILE_OP_TIMEOUT;
    let entries = bounded(what, move || {
        // The slot frees when the thread is done, not when the host gives up.
        let _slot = slot;
        let path = query.path;
        let dir = fs::read_dir(&path).map_err(|e| GuestError::io("list", path.clone(), e))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| GuestError::io("list", path.clone(), e))?;
            // Nobody waits for the answer any more: stop.
            if Instant::now() > deadline {
                return Err(GuestError::TimedOut(format!("list {path} ran out of time")));
            }
            if entries.len() == MAX_LIST_ENTRIES {
                return Err(GuestError::TooLarge(format!(
                    "{path} has more than {MAX_LIST_ENTRIES} entries"
                )));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match stat_entry(&entry.path(), name) {
                Ok(stat) => entries.push(stat),
                // Removed while listing: skip it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(GuestError::io(
                        "stat",
                        entry.path().display().to_string(),
                        e,
                    ))
                }
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    })
    .await?;
    Ok(body::json(&entries))
}

/// `DELETE /v1/files`: a file, symlink or empty directory; a whole tree
/// with `recursive`.
pub async fn remove(query: PathQuery, slot: Option<Slot>) -> Result<Response<ResponseBody>> {
    let what = format!("remove {}", query.path);
    bounded(what, move || {
        // The slot frees when the thread is done, not when the host gives up.
        let _slot = slot;
        let path = query.path;
        let meta =
            fs::symlink_metadata(&path).map_err(|e| GuestError::io("remove", path.clone(), e))?;
        let result = if meta.is_dir() {
            if query.recursive {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_dir(&path)
            }
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| GuestError::io("remove", path, e))
    })
    .await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

/// `POST /v1/files/mkdir`: with `parents` like `mkdir -p`, else an existing
/// path is `AlreadyExists`.
pub async fn mkdir(query: PathQuery, slot: Option<Slot>) -> Result<Response<ResponseBody>> {
    let what = format!("mkdir {}", query.path);
    bounded(what, move || {
        // The slot frees when the thread is done, not when the host gives up.
        let _slot = slot;
        let path = query.path;
        let result = if query.parents {
            fs::create_dir_all(&path).and_then(|()| {
                if Path::new(&path).is_dir() {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(libc::ENOTDIR))
                }
            })
        } else {
            fs::create_dir(&path)
        };
        result.map_err(|e| GuestError::io("mkdir", path, e))
    })
    .await?;
    Ok(body::empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::ErrorCode;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn queries_are_checked() {
        let q = parse_query(Some("path=%2Ftmp%2Fa+b&parents=true")).unwrap();
        assert_eq!(q.path, "/tmp/a b");
        assert!(q.parents);
        let code = |q: &str| parse_query(Some(q)).unwrap_err().code();
        assert_eq!(code("path=relative"), ErrorCode::InvalidArgument);
        assert_eq!(code("path=%2Fa%00b"), ErrorCode::InvalidArgument);
        assert_eq!(code("path=%2F%FF"), ErrorCode::InvalidArgument);
        assert_eq!(code("nopath=1"), ErrorCode::InvalidArgument);
        let long = format!("path=/{}", "a".repeat(MAX_PATH));
        assert_eq!(code(&long), ErrorCode::TooLarge);
    }

    /// Like `/proc/kmsg` with nothing to say: reads answer `EAGAIN`. The
    /// download neither ends nor holds a thread; it sends what comes and
    /// stops once its body is gone (the host reset it, or its deadline).
    #[tokio::test]
    async fn a_file_with_nothing_to_read_yet_is_polled_until_the_body_goes() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let file = fs::File::from(std::os::fd::OwnedFd::from(theirs));
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (tx, mut body) = body::transfer(4, far, GuestError::TimedOut("late".into()), true);
        let streaming = tokio::spawn(async move {
            stream_file(tokio::fs::File::from_std(file), "/proc/kmsg", 1 << 20, tx).await
        });
        io::Write::write_all(&mut &ours, b"<6>hello").unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("the written bytes arrive")
            .unwrap()
            .unwrap();
        assert_eq!(&frame.into_data().unwrap()[..], b"<6>hello");
        drop(body);
        tokio::time::timeout(Duration::from_secs(30), streaming)
            .await
            .expect("the download stops once its body is gone")
            .unwrap();
        drop(ours);
    }

    #[test]
    fn download_limits_default_and_cap() {
        let query = |max_bytes, timeout_ms| PathQuery {
            path: "/f".into(),
            mode: None,
            parents: false,
            recursive: false,
            max_bytes,
            timeout_ms,
        };
        let limits = DownloadLimits::of(&query(None, None)).unwrap();
        assert_eq!(limits.max_bytes, DEFAULT_DOWNLOAD_MAX_BYTES);
        assert_eq!(limits.timeout, DEFAULT_DOWNLOAD_TIMEOUT);
        let limits = DownloadLimits::of(&query(Some(u64::MAX), Some(u64::MAX))).unwrap();
        assert_eq!(limits.max_bytes, MAX_DOWNLOAD_BYTES);
        assert_eq!(limits.timeout, MAX_DOWNLOAD_TIMEOUT);
        let limits = DownloadLimits::of(&query(Some(0), Some(5))).unwrap();
        assert_eq!((limits.max_bytes, limits.timeout.as_millis()), (0, 5));
        assert!(DownloadLimits::of(&query(None, Some(0))).is_err());
    }

    #[test]
    fn stat_entry_reports_kind_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"hello").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let stat = stat_entry(&file, "f".into()).unwrap();
        assert_eq!(stat.file_type, FileType::File);
        assert_eq!(stat.size, 5);
        assert_eq!(stat.mode, 0o640);
        assert!(stat.modified_ms > 0);
        assert_eq!(
            stat_entry(dir.path(), "d".into()).unwrap().file_type,
            FileType::Dir
        );
    }
}
