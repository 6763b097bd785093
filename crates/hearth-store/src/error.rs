//! Store errors.

/// What can go wrong reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is malformed.
    #[error("invalid database URL {url}: {detail}")]
    InvalidUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The database could not be opened or reached at start.
    #[error("cannot open the store at {url}: {source}; check that the database runs there and that the user, password and database name are right")]
    Open {
        /// Database URL or file, password hidden.
        url: String,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migration failed (a newer or damaged database).
    #[error("cannot migrate the store at {url}: {source}; if it was written by a newer Hearth, use that version")]
    Migrate {
        /// Database URL or file, password hidden.
        url: String,
        /// Underlying error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The database cannot be reached now (down, restarting, network).
    /// Nothing was written; the request can be retried.
    #[error("the database is unavailable ({what}): {source}; retry once it is back")]
    Unavailable {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("store query failed ({what}): {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// A statement of SQLite's journal writer failed.
    #[error("store query failed ({what}): {source}")]
    Sqlite {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file failed its integrity check at start (truncated,
    /// overwritten, not a database): starting on it could lose or
    /// overwrite history.
    #[error("the store at {url} is damaged ({detail}); Hearth will not start on it so that no history is lost. Restore it from a backup, or start the server with --reset to move it aside and begin an empty store")]
    Damaged {
        /// The file.
        url: String,
        /// What the check found.
        detail: String,
    },
    /// A row held a value this version does not understand.
    #[error("store holds an unreadable {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A sandbox id was inserted twice.
    #[error("sandbox {0} already exists in the store")]
    Duplicate(String),
    /// The sandbox is not in the store.
    #[error("sandbox {0} is not in the store")]
    NotFound(String),
    /// The run is not in the store.
    #[error("no run with id {0:?}; list them with `hearth run ls` or GET /v1/runs")]
    RunNotFound(String),
    /// The run has ended: it takes no signal or change.
    #[error("run {id} has ended ({state}): it takes no more signals or changes")]
    RunEnded {
        /// The run.
        id: String,
        /// Its final state.
        state: String,
    },
    /// The run is owned by a node: only that node changes it.
    #[error("run {id} cannot be changed here: {reason}")]
    RunOwned {
        /// The run.
        id: String,
        /// Who owns it.
        reason: String,
    },
    /// A write that depends on ownership came with a lease that is no
    /// longer the node's current, live lease (it was taken over), or for a
    /// sandbox the node does not own. Nothing was written.
    #[error("refused by the fencing check: node {node_id} (epoch {epoch}) {reason}")]
    Fenced {
        /// The node that tried to write.
        node_id: String,
        /// The epoch it wrote under.
        epoch: i64,
        /// Why it was refused.
        reason: String,
    },
    /// Another live node, on another host or home, holds this node id.
    #[error("node id {node_id} is held by a live node on {hostname} (home {home}) whose lease runs until {expires_ms} ms; give each server its own --node-id, or stop that one")]
    NodeIdInUse {
        /// The node id.
        node_id: String,
        /// The holder's host.
        hostname: String,
        /// The holder's home.
        home: String,
        /// When its lease runs out, ms since the epoch.
        expires_ms: u64,
    },
    /// The caller asked for something that cannot be (a bug in the
    /// caller, e.g. an event that does not match the state change).
    #[error("invalid store request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the error is the database being out of reach, so that the
    /// request may be retried later (an API answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether a database error means "cannot reach the database" rather than
/// "the query is wrong".
fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: class 08 (connection exception), 57P01-57P03
            // (admin shutdown, crash shutdown, cannot connect now), 53300
            // (too many connections), 53100 (disk full). SQLite: 13
            // (SQLITE_FULL). A full disk wrote nothing and clears when
            // space is freed: retried like an outage, not lost.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "53300" | "53100" | "13"
                )
        }),
        _ => false,
    }
}

/// Wrap a query error with what was being done.
pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| {
        if is_connection_error(&source) {
            StoreError::Unavailable { what, source }
        } else {
            StoreError::Query { what, source }
        }
    }
}
