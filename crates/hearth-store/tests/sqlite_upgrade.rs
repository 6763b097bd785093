//! A SQLite store written before nodes existed opens with this version: its
//! schema is migrated in place, and the sandboxes its server left
//! unfinished (owned by no node) are found as orphans, to be recorded lost.

use hearth_store::{DatabaseUrl, SandboxState, Store, SystemClock};

#[tokio::test]
async fn a_store_from_before_nodes_is_migrated_and_its_unfinished_sandboxes_are_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.db");
    // The schema as the previous version left it: only the first migration.
    let first_only = dir.path().join("migrations");
    std::fs::create_dir(&first_only).unwrap();
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite/20261128000000_sandboxes_and_events.sql"
    );
    std::fs::copy(
        source,
        first_only.join("20261128000000_sandboxes_and_events.sql"),
    )
    .unwrap();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(first_only.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO sandboxes (id, state, image, vcpus, memory_bytes, disk_bytes, labels, \
             created_ms, updated_ms, server_pid) VALUES ('sb-old', 'running', 'default', 1, 1, 1, \
             '{\"team\":\"a\"}', 5, 5, 4242)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events (sandbox_id, at_ms, kind, data) VALUES ('sb-old', 5, \
             'sandbox.running', '{}')",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::open(&DatabaseUrl::Sqlite(path), SystemClock::shared())
        .await
        .unwrap();
    let old = store.sandbox("sb-old").await.unwrap().unwrap();
    assert_eq!(old.state, SandboxState::Running);
    assert_eq!((old.node_id.as_str(), old.node_epoch), ("", 0));
    assert_eq!(old.labels.get("team").map(String::as_str), Some("a"));
    let orphans = store.orphaned_sandboxes().await.unwrap();
    assert_eq!(orphans.len(), 1);
    let lost = store
        .mark_lost(&orphans[0], Some("nd-new"), "its server is gone", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.kind, "sandbox.lost");
    // Old events keep their numbers and read as version 1.
    let events = store.events(Some("sb-old"), 0, 10).await.unwrap();
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].version, 1);
    assert_eq!(events[1].seq, 2);
    store.close().await;
}
