//! Where Hearth keeps its files: `$HEARTH_HOME` (default
//! `~/.local/share/hearth`) holds per-sandbox state and failure logs; the
//! guest images live in `$HEARTH_IMAGES` (default `$HEARTH_HOME/images`) so a
//! test run can share one built image across many throwaway homes.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directories of one Hearth installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HearthHome {
    root: PathBuf,
    images: PathBuf,
}

impl HearthHome {
    /// A home at `root` with images in `images`.
    pub fn new(root: impl Into<PathBuf>, images: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            images: images.into(),
        }
    }

    /// A home at `root` with images in `root/images`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let images = root.join("images");
        Self { root, images }
    }

    /// The home from `HEARTH_HOME` and `HEARTH_IMAGES`, with defaults.
    pub fn from_env() -> Self {
        let root = std::env::var_os("HEARTH_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_root);
        let images = std::env::var_os("HEARTH_IMAGES")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("images"));
        Self { root, images }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where guest images are built and cached.
    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    /// Per-sandbox state directories (one per live VM).
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Console logs kept from sandboxes that ended abnormally.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Create the home (and its parents) if needed, readable by its owner
    /// only: it holds the store (every exec's argv), the API token and the
    /// console logs. A home made by an older version with wider access is
    /// tightened, and so are the files directly in it.
    pub fn create_private(&self) -> std::io::Result<()> {
        if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mode = std::fs::metadata(&self.root)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::info!(home = %self.root.display(), mode = format!("{:o}", mode & 0o777), "making the home private (0700)");
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        }
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let mode = meta.permissions().mode();
            // Only what Hearth writes: files and its own directories (the
            // image cache may be shared with other homes).
            let private = if meta.is_file() {
                mode & 0o600
            } else if meta.is_dir()
                && matches!(entry.file_name().to_str(), Some("sandboxes" | "logs"))
            {
                0o700
            } else {
                continue;
            };
            if mode & 0o077 != 0 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(private))?;
            }
        }
        Ok(())
    }

    /// Create a directory inside the home, private to its owner.
    pub fn create_private_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.create_private()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
}

fn default_root() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("hearth")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_default_under_root() {
        let home = HearthHome::at("/x");
        assert_eq!(home.images_dir(), Path::new("/x/images"));
        assert_eq!(home.sandboxes_dir(), PathBuf::from("/x/sandboxes"));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_home_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let home = HearthHome::at(dir.path().join("a/home"));
        home.create_private().unwrap();
        assert_eq!(mode(home.root()), 0o700);
        home.create_private_dir(&home.sandboxes_dir().join("sb-1"))
            .unwrap();
        assert_eq!(mode(&home.sandboxes_dir()), 0o700);
        assert_eq!(mode(&home.sandboxes_dir().join("sb-1")), 0o700);
    }

    #[test]
    fn an_older_wider_home_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let home = HearthHome::at(dir.path().join("home"));
        std::fs::create_dir(home.root()).unwrap();
        std::fs::create_dir(home.logs_dir()).unwrap();
        std::fs::create_dir(home.root().join("images")).unwrap();
        let db = home.root().join("hearth.db");
        std::fs::write(&db, b"x").unwrap();
        for p in [
            home.root(),
            &home.logs_dir(),
            &home.root().join("images"),
            &db,
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        home.create_private().unwrap();
        assert_eq!(mode(home.root()), 0o700);
        assert_eq!(mode(&home.logs_dir()), 0o700);
        assert_eq!(mode(&db), 0o600);
        // Not Hearth's own to restrict: a shared image cache.
        assert_eq!(mode(&home.root().join("images")), 0o755);
    }
}
