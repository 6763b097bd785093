//! Facts about the store itself, for both backends: its identity.

use crate::error::{query, Result};
use crate::store::{on_engine, Store};

/// The `store_meta` key of the store's identity.
const IDENTITY: &str = "identity";

const READ: &str = "SELECT value FROM store_meta WHERE key = $1";
const CLAIM: &str = "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO NOTHING";

/// Implement the metadata primitives for `$backend`, whose `reads()` and
/// `writes()` are pools of the same database.
macro_rules! impl_meta {
    ($backend:ty) => {
        impl $backend {
            pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>> {
                sqlx::query_scalar(READ)
                    .bind(key)
                    .fetch_optional(self.reads())
                    .await
                    .map_err(query("reading the store's metadata"))
            }

            pub(crate) async fn claim_meta(&self, key: &str, value: &str) -> Result<()> {
                sqlx::query(CLAIM)
                    .bind(key)
                    .bind(value)
                    .execute(self.writes())
                    .await
                    .map_err(query("writing the store's metadata"))?;
                Ok(())
            }
        }
    };
}

impl_meta!(crate::sqlite::SqliteBackend);
impl_meta!(crate::postgres::PgBackend);

impl Store {
    /// This store's identity, if a server adopted it; `None` for a store
    /// that is new (or was emptied).
    pub async fn identity(&self) -> Result<Option<String>> {
        on_engine!(self, b => b.meta(IDENTITY))
    }

    /// Give the store the identity `fresh` unless it has one, and return
    /// the one it has: several servers adopting one new store at once all
    /// get the same.
    pub async fn adopt_identity(&self, fresh: &str) -> Result<String> {
        on_engine!(self, b => b.claim_meta(IDENTITY, fresh))?;
        match self.identity().await? {
            Some(identity) => Ok(identity),
            None => Err(crate::StoreError::Corrupt {
                what: "store identity",
                detail: "written but not read back".into(),
            }),
        }
    }
}
