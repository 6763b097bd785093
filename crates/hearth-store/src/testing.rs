//! Throwaway databases for tests (feature `testing`): each test gets its own
//! PostgreSQL database (dropped when the guard goes) or SQLite file, so
//! tests run in parallel against the real thing.
//!
//! The PostgreSQL server is the one `scripts/postgres.sh` starts; its URL is
//! `$HEARTH_TEST_POSTGRES` (default `postgres://hearth:hearth@127.0.0.1:5432/hearth`).
//! Tests that need it fail, with a message saying how to start it, when it
//! cannot be reached: they are never skipped.

use std::path::PathBuf;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::url::DatabaseUrl;

/// Environment variable naming the PostgreSQL server tests use.
pub const TEST_POSTGRES_ENV: &str = "HEARTH_TEST_POSTGRES";
const DEFAULT_TEST_POSTGRES: &str = "postgres://hearth:hearth@127.0.0.1:5432/hearth";

/// The server tests use.
pub fn admin_url() -> String {
    std::env::var(TEST_POSTGRES_ENV).unwrap_or_else(|_| DEFAULT_TEST_POSTGRES.to_string())
}

/// A database for one test; dropped (PostgreSQL) or deleted (SQLite) with
/// the guard.
pub struct TestDatabase {
    /// Where it is.
    pub url: DatabaseUrl,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new, empty SQLite file.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path: PathBuf = dir.path().join("hearth.db");
        TestDatabase {
            url: DatabaseUrl::Sqlite(path),
            name: None,
            _dir: Some(dir),
        }
    }

    /// A new, empty PostgreSQL database on the test server. Panics with
    /// what to do when the server cannot be reached.
    pub async fn postgres() -> TestDatabase {
        let admin = admin_url();
        let name = format!("hearth_t_{}", random_suffix());
        let mut conn = connect_admin(&admin).await;
        // The name is `hearth_t_` and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("HEARTH_TEST_POSTGRES is a URL");
        url.set_path(&name);
        TestDatabase {
            url: DatabaseUrl::Postgres(url.to_string()),
            name: Some(name),
            _dir: None,
        }
    }

    /// A database of the given backend (`sqlite` or `postgres`).
    pub async fn of(backend: &str) -> TestDatabase {
        match backend {
            "sqlite" => Self::sqlite(),
            "postgres" => Self::postgres().await,
            other => panic!("unknown backend {other}"),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        // Drop may run inside a runtime: do the async work on a thread of
        // its own. A database left behind is dropped by the next
        // scripts/postgres.sh.
        let admin = admin_url();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let options: PgConnectOptions = admin.parse().ok()?;
                let mut conn = options.connect().await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()?;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: a test database was left behind; scripts/postgres.sh drops it");
        }
    }
}

async fn connect_admin(admin: &str) -> sqlx::PgConnection {
    let options: PgConnectOptions = admin
        .parse()
        .unwrap_or_else(|e| panic!("{TEST_POSTGRES_ENV}={}: {e}", crate::url::redact(admin)));
    match options.connect().await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL for tests is not reachable at {}: {e}. Start it with scripts/postgres.sh \
             (scripts/test.sh does), or point {TEST_POSTGRES_ENV} at a server where this role \
             may create databases",
            crate::url::redact(admin)
        ),
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
