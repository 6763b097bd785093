//! The home and its store, through the real binary: private to its owner,
//! and never silently started on a lost, emptied or damaged history.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::images;
use common::served::{temp_home, Served};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Start and stop a server on `home` (SIGTERM, as an operator would).
async fn serve_once(home: &Path, args: &[&str]) {
    let mut served = Served::start(home, args);
    let (status, _) = served.get("/v1/sandboxes").await;
    assert!(status.is_success(), "{status}");
    assert!(served.signal("TERM").await.success());
}

/// Start a server expected to refuse: its exit code and stderr.
fn serve_refused(home: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HEARTH_HOME", home)
        .env("HEARTH_IMAGES", images())
        .env_remove("HEARTH_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "the server started: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "it never listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn store_id(home: &Path) -> String {
    std::fs::read_to_string(home.join("store-id"))
        .unwrap()
        .trim()
        .to_string()
}

fn aside(home: &Path, why: &str) -> Vec<String> {
    std::fs::read_dir(home)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("hearth.db.{why}-")))
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect()
}

#[tokio::test]
async fn the_home_and_its_files_are_readable_by_their_owner_only() {
    let dir = temp_home();
    // A home made by an older version: world-readable, its store too.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let served = Served::start(&home, &[]);
    assert_eq!(mode(&home), 0o700);
    for file in ["hearth.db", "token", "node-id", "store-id", "server.json"] {
        assert_eq!(mode(&home.join(file)), 0o600, "{file}");
    }
    for file in ["hearth.db-wal", "hearth.db-shm"] {
        if home.join(file).exists() {
            assert_eq!(mode(&home.join(file)), 0o600, "{file}");
        }
    }
    drop(served);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        home.join("hearth.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    serve_once(&home, &[]).await;
    assert_eq!(mode(&home), 0o700, "a wider home is tightened");
    assert_eq!(mode(&home.join("hearth.db")), 0o600);
}

#[tokio::test]
async fn a_store_truncated_to_nothing_is_refused_until_reset_moves_it_aside() {
    let dir = temp_home();
    let home = dir.path();
    serve_once(home, &[]).await;
    let first = store_id(home);
    // A normal restart finds its own store.
    serve_once(home, &[]).await;
    assert_eq!(store_id(home), first);

    for file in ["hearth.db-wal", "hearth.db-shm"] {
        let _ = std::fs::remove_file(home.join(file));
    }
    std::fs::File::create(home.join("hearth.db")).unwrap();
    let refused = serve_refused(home);
    assert!(refused.contains("is empty (0 bytes)"), "{refused}");
    assert!(refused.contains("--reset"), "says what to do: {refused}");
    assert_eq!(
        std::fs::metadata(home.join("hearth.db")).unwrap().len(),
        0,
        "the refusal wrote nothing"
    );

    serve_once(home, &["--reset"]).await;
    assert_eq!(aside(home, "empty").len(), 1, "the empty file is kept");
    assert_ne!(store_id(home), first, "a new history began");
}

#[tokio::test]
async fn a_missing_store_is_refused_in_a_home_that_had_one() {
    let dir = temp_home();
    let home = dir.path();
    serve_once(home, &[]).await;
    let first = store_id(home);
    for file in ["hearth.db", "hearth.db-wal", "hearth.db-shm"] {
        let _ = std::fs::remove_file(home.join(file));
    }
    let refused = serve_refused(home);
    assert!(refused.contains("is missing"), "{refused}");
    assert!(
        refused.contains(&first),
        "names the store it had: {refused}"
    );
    assert!(!home.join("hearth.db").exists(), "no new store was made");
    serve_once(home, &["--reset"]).await;
    assert_ne!(store_id(home), first);
}

#[tokio::test]
async fn a_store_damaged_in_the_middle_is_refused_until_reset_moves_it_aside() {
    let dir = temp_home();
    let home = dir.path();
    serve_once(home, &[]).await;
    let db = home.join("hearth.db");
    // Fold the WAL into the file, then overwrite pages in its middle. A
    // server's store is small: overwrite every page past the first.
    let checkpoint = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()",
            db.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(checkpoint.success());
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len >= 8192, "{len}");
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        file.seek(SeekFrom::Start(4096)).unwrap();
        file.write_all(&vec![0xa5; (len - 4096) as usize]).unwrap();
    }
    let refused = serve_refused(home);
    assert!(refused.contains("is damaged"), "{refused}");
    assert!(refused.contains("--reset"), "{refused}");
    serve_once(home, &["--reset"]).await;
    assert_eq!(aside(home, "damaged").len(), 1, "the damaged file is kept");
}
