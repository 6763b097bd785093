//! The store a home had: a server never silently starts a new, empty
//! history in a home that had one.
//!
//! A store gets an identity the first time a server adopts it, and the home
//! records it (`store-id`). At each start the file and the store are held
//! against that record: a SQLite file that went missing or empty, a damaged
//! one, or a database that is empty or another one refuses the start with
//! what was found and what to do, unless the operator passes `--reset`,
//! which moves a damaged or empty file aside (it is kept) and adopts what
//! the store now is. The decisions are pure functions of what was found, so
//! each case is tested without a server.

use std::path::{Path, PathBuf};

use hearth_store::{DatabaseUrl, SharedClock, Store, StoreError};

use crate::error::{Result, ServerError};

/// File in the home recording the identity of the home's store.
pub const STORE_ID_FILE: &str = "store-id";

/// What the SQLite file looks like before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileState {
    /// Not there.
    Missing,
    /// There, with no bytes (and no write-ahead log with any): Hearth never
    /// leaves a store like this.
    Empty,
    /// There, with bytes: the integrity check says more.
    Present,
}

/// What to do before opening the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BeforeOpen {
    /// Open it (creating it when missing).
    Open,
    /// Move it aside, marked with why, then open a new one.
    MoveAside(&'static str),
    /// Do not start: the reason.
    Refuse(String),
}

/// Decide on the SQLite file at `path` from its state and the identity the
/// home recorded.
pub(crate) fn before_open(
    path: &Path,
    file: FileState,
    recorded: Option<&str>,
    reset: bool,
) -> BeforeOpen {
    match (file, recorded, reset) {
        (FileState::Present, _, _) => BeforeOpen::Open,
        (FileState::Missing, None, _) | (FileState::Missing, Some(_), true) => BeforeOpen::Open,
        (FileState::Missing, Some(id), false) => BeforeOpen::Refuse(format!(
            "the store {} is missing, but this home had one with history (store {id}); \
             restore the file from a backup, or start with --reset to begin an empty history",
            path.display()
        )),
        (FileState::Empty, _, true) => BeforeOpen::MoveAside("empty"),
        (FileState::Empty, _, false) => BeforeOpen::Refuse(format!(
            "the store {} is empty (0 bytes): whatever history it held is gone, and Hearth \
             never leaves a store empty; restore the file from a backup, or start with --reset \
             to move it aside and begin an empty history",
            path.display()
        )),
    }
}

/// What to do once the store is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterOpen {
    /// It is the home's store: nothing to do.
    Same,
    /// Give the store a new identity (it has none) and record it.
    AdoptNew,
    /// Record the store's identity in the home.
    Record(String),
    /// Do not start: the reason.
    Refuse(String),
}

/// Decide from the store's identity and the one the home recorded.
pub(crate) fn after_open(
    url: &str,
    found: Option<&str>,
    recorded: Option<&str>,
    reset: bool,
) -> AfterOpen {
    match (found, recorded) {
        (None, None) => AfterOpen::AdoptNew,
        (None, Some(_)) if reset => AfterOpen::AdoptNew,
        (None, Some(id)) => AfterOpen::Refuse(format!(
            "the store at {url} is empty, but this home had one with history (store {id}): \
             it was replaced or emptied; point --database at the right store or restore it, or \
             start with --reset to begin an empty history"
        )),
        (Some(found), Some(id)) if found == id => AfterOpen::Same,
        (Some(found), None) => AfterOpen::Record(found.to_string()),
        (Some(found), Some(_)) if reset => AfterOpen::Record(found.to_string()),
        (Some(found), Some(id)) => AfterOpen::Refuse(format!(
            "the store at {url} (store {found}) is not the one this home had (store {id}); \
             point --database at the right store, or start with --reset to make this one the \
             home's store"
        )),
    }
}

/// The state of the SQLite file at `path`.
fn file_state(path: &Path) -> Result<FileState> {
    let len = |p: &Path| match std::fs::metadata(p) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::io(format!("reading {}", p.display()))(e)),
    };
    Ok(match len(path)? {
        None => FileState::Missing,
        Some(0) if len(&sidecar(path, "-wal"))?.unwrap_or(0) == 0 => FileState::Empty,
        Some(_) => FileState::Present,
    })
}

/// `hearth.db-wal` and `hearth.db-shm` beside `hearth.db`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Rename the file at `path` and its sidecars to `…​.<why>-<ms>`, keeping
/// them for whoever wants to look.
fn move_aside(path: &Path, why: &str, now_ms: u64) -> Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{why}-{now_ms}"));
    let aside = PathBuf::from(aside);
    for suffix in ["-wal", "-shm"] {
        let from = sidecar(path, suffix);
        let to = sidecar(&aside, suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            // Not there, or SQLite removed it as the failed open's last
            // connection closed: nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ServerError::io(format!(
                    "moving {} aside to {}",
                    from.display(),
                    to.display()
                ))(e))
            }
        }
    }
    std::fs::rename(path, &aside).map_err(ServerError::io(format!(
        "moving {} aside to {}",
        path.display(),
        aside.display()
    )))?;
    Ok(aside)
}

/// Create the SQLite file empty and private (0600) if it is missing
/// (SQLite gives its write-ahead log and shared-memory files the same
/// mode); whether it did.
fn private_file(path: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(ServerError::io(format!("creating {}", path.display()))(e)),
    }
}

fn recorded_identity(home: &Path) -> Result<Option<String>> {
    let path = home.join(STORE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Open the home's store (or check `given`, already open) and hold it
/// against what the home recorded.
pub(crate) async fn open_checked(
    home: &Path,
    url: &DatabaseUrl,
    given: Option<Store>,
    clock: SharedClock,
    reset: bool,
) -> Result<Store> {
    let recorded = recorded_identity(home)?;
    let store = match given {
        Some(store) => store,
        None => open(url, clock, recorded.as_deref(), reset).await?,
    };
    let found = store.identity().await?;
    match after_open(store.url(), found.as_deref(), recorded.as_deref(), reset) {
        AfterOpen::Same => {}
        AfterOpen::AdoptNew => {
            let fresh = format!("st-{}", hearth_sandbox::ids::random_hex(8));
            let adopted = store.adopt_identity(&fresh).await?;
            if recorded.is_some() {
                tracing::warn!(store = %store.url(), identity = %adopted, "--reset: began a new, empty history");
            }
            record(home, &adopted)?;
        }
        AfterOpen::Record(identity) => {
            if recorded.is_some() {
                tracing::warn!(store = %store.url(), %identity, "--reset: this home now uses another store");
            }
            record(home, &identity)?;
        }
        AfterOpen::Refuse(reason) => {
            store.close().await;
            return Err(ServerError::StoreHistory(reason));
        }
    }
    Ok(store)
}

fn record(home: &Path, identity: &str) -> Result<()> {
    crate::token::write_private(&home.join(STORE_ID_FILE), &format!("{identity}\n"))
}

async fn open(
    url: &DatabaseUrl,
    clock: SharedClock,
    recorded: Option<&str>,
    reset: bool,
) -> Result<Store> {
    let DatabaseUrl::Sqlite(path) = url else {
        return Ok(Store::open(url, clock).await?);
    };
    let now = clock.now_ms();
    match before_open(path, file_state(path)?, recorded, reset) {
        BeforeOpen::Open => {}
        BeforeOpen::MoveAside(why) => {
            let aside = move_aside(path, why, now)?;
            tracing::warn!(store = %path.display(), aside = %aside.display(), "--reset: moved the {why} store aside");
        }
        BeforeOpen::Refuse(reason) => return Err(ServerError::StoreHistory(reason)),
    }
    let created = private_file(path)?;
    match Store::open(url, clock.clone()).await {
        // Never leave behind an empty file this start made: the next start
        // would take it for a store whose history was lost.
        Err(e) if created => {
            if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
            Err(e.into())
        }
        Err(StoreError::Damaged { detail, .. }) if reset => {
            let aside = move_aside(path, "damaged", now)?;
            tracing::warn!(store = %path.display(), aside = %aside.display(), %detail, "--reset: moved the damaged store aside");
            private_file(path)?;
            Ok(Store::open(url, clock).await?)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [FileState; 3] = [FileState::Missing, FileState::Empty, FileState::Present];

    #[test]
    fn a_present_file_is_always_opened_and_checked() {
        for recorded in [None, Some("st-a")] {
            for reset in [false, true] {
                assert_eq!(
                    before_open(
                        Path::new("/h/hearth.db"),
                        FileState::Present,
                        recorded,
                        reset
                    ),
                    BeforeOpen::Open
                );
            }
        }
    }

    #[test]
    fn a_missing_file_is_new_only_in_a_home_without_history() {
        let path = Path::new("/h/hearth.db");
        assert_eq!(
            before_open(path, FileState::Missing, None, false),
            BeforeOpen::Open
        );
        let BeforeOpen::Refuse(why) = before_open(path, FileState::Missing, Some("st-a"), false)
        else {
            panic!("a lost store started empty");
        };
        assert!(why.contains("/h/hearth.db is missing") && why.contains("--reset"));
        assert_eq!(
            before_open(path, FileState::Missing, Some("st-a"), true),
            BeforeOpen::Open
        );
    }

    #[test]
    fn an_empty_file_is_refused_even_in_a_home_that_recorded_nothing() {
        let path = Path::new("/h/hearth.db");
        for recorded in [None, Some("st-a")] {
            let BeforeOpen::Refuse(why) = before_open(path, FileState::Empty, recorded, false)
            else {
                panic!("a truncated store started empty");
            };
            assert!(why.contains("empty (0 bytes)") && why.contains("--reset"));
            assert_eq!(
                before_open(path, FileState::Empty, recorded, true),
                BeforeOpen::MoveAside("empty")
            );
        }
    }

    #[test]
    fn only_reset_ever_starts_without_the_recorded_history() {
        // Whatever is found, without --reset a home that recorded a store
        // starts only on that store.
        for file in STATES {
            let before = before_open(Path::new("/h/hearth.db"), file, Some("st-a"), false);
            assert!(matches!(before, BeforeOpen::Open | BeforeOpen::Refuse(_)));
        }
        for found in [None, Some("st-a"), Some("st-b")] {
            let after = after_open("db", found, Some("st-a"), false);
            match found {
                Some("st-a") => assert_eq!(after, AfterOpen::Same),
                _ => assert!(
                    matches!(after, AfterOpen::Refuse(_)),
                    "{found:?}: {after:?}"
                ),
            }
        }
    }

    #[test]
    fn a_home_without_a_record_adopts_its_store() {
        assert_eq!(after_open("db", None, None, false), AfterOpen::AdoptNew);
        assert_eq!(
            after_open("db", Some("st-a"), None, false),
            AfterOpen::Record("st-a".into())
        );
    }

    #[test]
    fn reset_adopts_what_the_store_now_is() {
        assert_eq!(
            after_open("db", None, Some("st-a"), true),
            AfterOpen::AdoptNew
        );
        assert_eq!(
            after_open("db", Some("st-b"), Some("st-a"), true),
            AfterOpen::Record("st-b".into())
        );
        let AfterOpen::Refuse(why) = after_open("pg://x/db", Some("st-b"), Some("st-a"), false)
        else {
            panic!("another store was taken for the home's");
        };
        assert!(why.contains("st-b") && why.contains("st-a") && why.contains("pg://x/db"));
    }

    #[test]
    fn files_are_moved_aside_with_their_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::write(sidecar(&path, "-shm"), b"shm").unwrap();
        assert_eq!(file_state(&path).unwrap(), FileState::Empty);
        let aside = move_aside(&path, "empty", 42).unwrap();
        assert_eq!(aside, dir.path().join("hearth.db.empty-42"));
        assert!(aside.exists() && !path.exists());
        assert_eq!(
            std::fs::read(sidecar(&aside, "-shm")).unwrap(),
            b"shm".to_vec()
        );
        assert_eq!(file_state(&path).unwrap(), FileState::Missing);
    }
}
