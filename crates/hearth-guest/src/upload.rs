//! Atomic uploads (`PUT /v1/files`): the body goes to a temporary file in
//! the target's directory, which is fsynced and renamed over the target
//! only once the whole body arrived. A refused, failed or cancelled upload
//! removes its temporary file and leaves any old file as it was; a reader
//! never sees a half-written file.
//!
//! The target is never opened: a FIFO, device or socket there (or behind a
//! symbolic link there) is refused by its type, and the rename replaces a
//! directory entry without opening what it named.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{GuestError, Result};

/// Temporary files start with this (after a dot), so they are hidden and
/// recognizable as an upload in progress.
pub const TEMP_MARKER: &str = ".hearth-upload-";

/// Longest piece of the target's name kept in the temporary file's name,
/// so that it stays under the 255-byte name limit.
const NAME_KEPT: usize = 100;

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// An upload in progress: its temporary file, removed on drop unless the
/// upload was committed.
#[derive(Debug)]
pub struct Upload {
    /// What the host asked to write (for messages).
    path: String,
    /// The file that will be replaced: `path`, or what its symbolic link
    /// names.
    target: PathBuf,
    temp: PathBuf,
    /// Mode and owner of the file being replaced, kept by the new one.
    existing: Option<(u32, u32, u32)>,
    committed: bool,
}

impl Upload {
    /// Check the target and create the temporary file (created with `mode`,
    /// subject to the umask). Blocking.
    pub fn begin(path: &str, mode: u32) -> Result<(Self, fs::File)> {
        let (target, existing) = resolve_target(path)?;
        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target.file_name().unwrap_or(OsStr::new("file")).as_bytes();
        let kept = OsStr::from_bytes(&name[..name.len().min(NAME_KEPT)]);
        let mut attempt = 0;
        loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(kept);
            temp_name.push(format!(
                "{TEMP_MARKER}{}-{}",
                std::process::id(),
                NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
            ));
            let temp = dir.join(temp_name);
            let opened = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp);
            match opened {
                Ok(file) => {
                    let upload = Self {
                        path: path.to_owned(),
                        target,
                        temp,
                        existing: existing
                            .map(|meta| (meta.mode() & 0o7777, meta.uid(), meta.gid())),
                        committed: false,
                    };
                    return Ok((upload, file));
                }
                // Left by an agent that died with the same pid: pick another.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(e) => return Err(GuestError::io("create a temporary file for", path, e)),
            }
        }
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Put the written file in place: its mode (`explicit_mode`, else the
    /// old file's, else what it was created with) and the old file's owner,
    /// fsync, rename over the target, fsync the directory. Blocking.
    pub fn commit(mut self, file: fs::File, explicit_mode: Option<u32>) -> Result<()> {
        let path = self.path.clone();
        let mode = explicit_mode.or(self.existing.map(|(mode, _, _)| mode));
        if let Some(mode) = mode {
            // Explicitly, since the umask may have masked bits.
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| GuestError::io("chmod", path.clone(), e))?;
        }
        if let Some((_, uid, gid)) = self.existing {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
        }
        file.sync_all()
            .map_err(|e| GuestError::io("fsync", path.clone(), e))?;
        drop(file);
        fs::rename(&self.temp, &self.target)
            .map_err(|e| GuestError::io("replace", path.clone(), e))?;
        self.committed = true;
        // The rename is durable once the directory is; a failure here
        // cannot be undone and the data is in place, so it is not an error.
        if let Some(dir) = self.target.parent() {
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_file(&self.temp) {
                if e.kind() != io::ErrorKind::NotFound {
                    crate::info!(
                        "cannot remove the temporary file {} of an upload that did not finish: {e}",
                        self.temp.display()
                    );
                }
            }
        }
    }
}

/// The file an upload to `path` replaces, and its metadata if it exists:
/// `path` itself, or the file its symbolic link names (the link stays).
/// Anything but a regular file there is refused.
fn resolve_target(path: &str) -> Result<(PathBuf, Option<fs::Metadata>)> {
    let own = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((path.into(), None)),
        Err(e) => return Err(GuestError::io("write", path, e)),
    };
    if !own.file_type().is_symlink() {
        crate::files::check_regular("write", path, &own, false)?;
        return Ok((path.into(), Some(own)));
    }
    match fs::canonicalize(path) {
        Ok(target) => {
            let meta = fs::metadata(&target).map_err(|e| GuestError::io("write", path, e))?;
            crate::files::check_regular("write", path, &meta, true)?;
            Ok((target, Some(meta)))
        }
        // A dangling link: the upload creates what it names.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let link = fs::read_link(path).map_err(|e| GuestError::io("write", path, e))?;
            let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
            Ok((parent.join(link), None))
        }
        Err(e) => Err(GuestError::io("write", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dropped_upload_leaves_nothing_and_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let (upload, mut file) = Upload::begin(target.to_str().unwrap(), 0o644).unwrap();
        io::Write::write_all(&mut file, b"new, partial").unwrap();
        assert!(upload.temp_path().exists());
        drop(upload);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["f"]);
    }

    #[test]
    fn a_commit_replaces_keeps_the_old_mode_and_writes_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("f", &link).unwrap();
        let (upload, mut file) = Upload::begin(link.to_str().unwrap(), 0o644).unwrap();
        io::Write::write_all(&mut file, b"new").unwrap();
        upload.commit(file, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(entries(dir.path()), ["f", "link"]);
    }

    #[test]
    fn long_names_get_a_temporary_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("n".repeat(255));
        let (upload, file) = Upload::begin(target.to_str().unwrap(), 0o644).unwrap();
        upload.commit(file, Some(0o640)).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o640);
    }
}
