//! Store errors.

/// What can go wrong reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// Database file.
        path: String,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migration failed (a newer or damaged database).
    #[error("cannot migrate the store at {path}: {source}; if it was written by a newer Hearth, use that version")]
    Migrate {
        /// Database file.
        path: String,
        /// Underlying error.
        #[source]
        source: sqlx::migrate::MigrateError,
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
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wrap a query error with what was being done.
pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}
