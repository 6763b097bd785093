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
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let options: PgConnectOptions = admin.parse().map_err(|e| format!("{e}"))?;
                // A few tries: the server may be busy closing the test's
                // own connections.
                let mut last = String::new();
                for _ in 0..5 {
                    let dropped = async {
                        let mut conn = options.connect().await?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await?;
                        Ok::<(), sqlx::Error>(())
                    };
                    match dropped.await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(last)
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!(
                "note: a test database was left behind ({error}); scripts/postgres.sh drops it"
            ),
            Err(_) => {
                eprintln!("note: a test database was left behind; scripts/postgres.sh drops it")
            }
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

/// A PostgreSQL server of a test's own (Debian's binaries, a data
/// directory in /tmp, a free port on 127.0.0.1), for tests that stop and
/// start the database under a running server. Runs as the `postgres` user,
/// so the test must run as root. Stopped and removed with the guard.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Make and start a fresh server.
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                dirs.flatten()
                    .map(|d| d.path().join("bin"))
                    .filter(|b| b.join("initdb").is_file())
                    .max()
            })
            .expect(
                "PostgreSQL's server binaries in /usr/lib/postgresql/*/bin: run scripts/setup.sh",
            );
        let dir = tempfile::Builder::new()
            .prefix("hpg")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        run(std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = dir.path().join("data");
        run(as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]));
        let server = PrivatePostgres { dir, bin, port };
        server.resume();
        server
    }

    /// Its URL.
    pub fn url(&self) -> DatabaseUrl {
        DatabaseUrl::Postgres(format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ))
    }

    /// Stop it (fast: connections are cut).
    pub fn stop(&self) {
        run(as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// Start it again, on the same port.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &options, "-w", "start"]));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn as_postgres(program: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut std::process::Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e} (this test must run as root)"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
