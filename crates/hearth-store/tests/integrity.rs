//! A damaged SQLite file is refused at start with a clear error, before
//! anything is written into it; a sound one opens.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use hearth_store::{DatabaseUrl, Store, StoreError, SystemClock};

/// A store file with some history in it: many pages of blobs.
async fn store_with_history(path: &Path) {
    let store = Store::open(
        &DatabaseUrl::Sqlite(path.to_path_buf()),
        SystemClock::shared(),
    )
    .await
    .unwrap();
    for i in 0..300u32 {
        let data: Vec<u8> = (0..3000u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        store.put_blob(&data).await.unwrap();
    }
    store.close().await;
    drop(store);
    // The history goes into the file itself, out of the WAL.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let wal = path.with_extension("db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
}

async fn reopen(path: &Path) -> Result<Store, StoreError> {
    Store::open(
        &DatabaseUrl::Sqlite(path.to_path_buf()),
        SystemClock::shared(),
    )
    .await
}

#[tokio::test]
async fn a_sound_file_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.db");
    store_with_history(&path).await;
    reopen(&path).await.unwrap().close().await;
}

#[tokio::test]
async fn a_file_overwritten_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.db");
    store_with_history(&path).await;
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > 512 * 1024,
        "the history spans many pages ({len} bytes)"
    );
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2)).unwrap();
        file.write_all(&[0x5a; 64 * 1024]).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    match reopen(&path).await {
        Err(e @ StoreError::Damaged { .. }) => {
            let text = e.to_string();
            assert!(text.contains("damaged"), "{text}");
            assert!(text.contains("--reset"), "says what to do: {text}");
        }
        Err(other) => panic!("expected a damaged store, got {other}"),
        Ok(_) => panic!("a damaged store opened"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "nothing written into it"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.db");
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    match reopen(&path).await {
        Err(StoreError::Damaged { detail, .. }) => {
            assert!(detail.contains("not a database"), "{detail}")
        }
        Err(other) => panic!("expected a damaged store, got {other}"),
        Ok(_) => panic!("garbage opened as a store"),
    }
}

/// A store whose disk fills refuses writes as unavailable (nothing written,
/// retried once there is room), not as a failed query whose change is
/// dropped. Mounts a tmpfs: needs root, as the suite does.
#[tokio::test]
async fn a_full_disk_is_an_outage_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "hearth-test"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let result = async {
        let store = reopen(&dir.path().join("hearth.db")).await.unwrap();
        let mut seed = 0u32;
        let error = loop {
            seed += 1;
            let data: Vec<u8> = (0..256 * 1024u32)
                .map(|j| (j.wrapping_mul(seed) >> 3) as u8)
                .collect();
            if let Err(e) = store.put_blob(&data).await {
                break e;
            }
            assert!(seed < 100, "2 MiB never filled");
        };
        store.close().await;
        error
    }
    .await;
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    assert!(result.is_unavailable(), "{result}");
    assert!(result.to_string().contains("full"), "{result}");
}
