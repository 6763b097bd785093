//! The API token: one bearer token per home, in `$HEARTH_HOME/token`
//! (mode 0600), created on the first start and rotated by
//! `hearth token rotate`. The server re-reads the file when it changes, so a
//! rotation takes effect without a restart.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hearth_sandbox::ids::random_hex;
use hearth_sandbox::HearthHome;
use parking_lot::Mutex;

use crate::error::{Result, ServerError};

/// File name of the token inside the home.
pub const TOKEN_FILE: &str = "token";

/// Token prefix, so a leaked token is recognisable by secret scanners.
const PREFIX: &str = "hth_";

/// Path of the token file of `home`.
pub fn token_path(home: &HearthHome) -> PathBuf {
    home.root().join(TOKEN_FILE)
}

fn new_token() -> String {
    format!("{PREFIX}{}", random_hex(32))
}

/// Read the token of `home`, creating it (mode 0600) if there is none.
pub fn ensure_token(home: &HearthHome) -> Result<String> {
    ensure_token_at(&token_path(home))
}

/// Read the token file at `path`, creating it (mode 0600) if there is none.
/// Several servers given the same file (`--token-file`) accept the same
/// token.
pub fn ensure_token_at(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    let reading = || ServerError::io(format!("reading the API token {}", path.display()));
    match read_token(&path) {
        Ok(token) => return Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(reading()(e)),
    }
    let (tmp, token) = write_new_token(&path)?;
    // Linking fails if the file appeared meanwhile: then use that one.
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_token(&path).map_err(reading())
        }
        Err(e) => Err(ServerError::io(format!(
            "creating the API token {}",
            path.display()
        ))(e)),
    }
}

/// Replace the token of `home` with a new one and return it. Clients with
/// the old token are refused from then on.
pub fn rotate_token(home: &HearthHome) -> Result<String> {
    rotate_token_at(&token_path(home))
}

/// Replace the token in the file at `path` with a new one and return it.
pub fn rotate_token_at(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    let (tmp, token) = write_new_token(&path)?;
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(ServerError::io(format!(
            "writing the API token {}",
            path.display()
        ))(e));
    }
    Ok(token)
}

/// A new token, written whole and synced to a private temporary file beside
/// `path`, so that the token file itself only ever appears complete.
fn write_new_token(path: &Path) -> Result<(PathBuf, String)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(ServerError::io(format!("creating {}", dir.display())))?;
    }
    let token = new_token();
    let tmp = private_temp(path, &format!("{token}\n")).map_err(ServerError::io(format!(
        "writing the API token {}",
        path.display()
    )))?;
    Ok((tmp, token))
}

/// `contents` in a new private (0600) file beside `path`, synced; its path.
fn private_temp(path: &Path, contents: &str) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", random_hex(4)));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            file.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replace `path` with a private (0600) file holding `contents`; readers
/// only ever see the old file or the whole new one.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    let failed = || ServerError::io(format!("writing {}", path.display()));
    let tmp = private_temp(path, contents).map_err(failed())?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        failed()(e)
    })
}

/// Read a token file, refusing one that others can read.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}` or `hearth token rotate`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    let token = fs::read_to_string(path)?.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty; run `hearth token rotate`", path.display()),
        ));
    }
    Ok(token)
}

/// Checks presented tokens against the token file, re-reading it when its
/// modification time changes (so a rotation takes effect at once). The
/// file is looked at off the async runtime.
#[derive(Debug)]
pub struct TokenCheck {
    path: PathBuf,
    /// The file's identity (inode, modification time) when read, and the
    /// token. A rotation renames a new file over the old one, so the inode
    /// changes even within one tick of the coarse modification clock.
    cached: Mutex<(Option<(u64, SystemTime)>, String)>,
}

fn identity(meta: &fs::Metadata) -> Option<(u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.ino(), meta.modified().ok()?))
}

impl TokenCheck {
    /// A check against `home`'s token, which is created if missing.
    pub fn new(home: &HearthHome) -> Result<Self> {
        Self::at(&token_path(home))
    }

    /// A check against the token file at `path`, created if missing.
    pub fn at(path: &Path) -> Result<Self> {
        let token = ensure_token_at(path)?;
        let seen = fs::metadata(path).ok().as_ref().and_then(identity);
        Ok(Self {
            path: path.to_path_buf(),
            cached: Mutex::new((seen, token)),
        })
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `presented` is the current token.
    pub async fn accepts(&self, presented: &str) -> bool {
        let modified = tokio::fs::metadata(&self.path)
            .await
            .ok()
            .as_ref()
            .and_then(identity);
        let stale = modified != self.cached.lock().0;
        if stale {
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || read_token(&path)).await;
            match read {
                Ok(Ok(token)) => *self.cached.lock() = (modified, token),
                // Keep the last good token rather than lock everyone out.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot re-read the API token; keeping the previous one")
                }
                Err(e) => tracing::warn!(error = %e, "re-reading the API token failed"),
            }
        }
        let cached = self.cached.lock();
        constant_time_eq(presented.as_bytes(), cached.1.as_bytes())
    }
}

/// Compare without an early exit, so timing does not reveal how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_is_created_private_reused_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let home = HearthHome::new(dir.path().join("home"), dir.path().join("images"));
        let first = ensure_token(&home).unwrap();
        assert!(first.starts_with(PREFIX) && first.len() == PREFIX.len() + 64);
        let mode = fs::metadata(token_path(&home))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token(&home).unwrap(), first);

        let check = TokenCheck::new(&home).unwrap();
        assert!(check.accepts(&first).await);
        assert!(!check.accepts("hth_wrong").await);
        assert!(!check.accepts("").await);
        // At once, even within one tick of the file clock.
        let second = rotate_token(&home).unwrap();
        assert_ne!(first, second);
        assert!(check.accepts(&second).await);
        assert!(!check.accepts(&first).await);
        let third = rotate_token(&home).unwrap();
        assert!(check.accepts(&third).await);
        assert!(!check.accepts(&second).await);
        assert_eq!(
            fs::metadata(token_path(&home))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(home.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(TOKEN_FILE)]);
    }

    #[test]
    fn a_world_readable_token_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "hth_x\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
