//! Where Hearth keeps its files: `$HEARTH_HOME` (default
//! `~/.local/share/hearth`) holds per-sandbox state and failure logs; the
//! guest images live in `$HEARTH_IMAGES` (default `$HEARTH_HOME/images`) so a
//! test run can share one built image across many throwaway homes.

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
}
