//! Which database a store lives in: a SQLite file (the embedded default) or
//! a PostgreSQL server shared by several nodes.

use std::fmt;
use std::path::PathBuf;

use crate::error::StoreError;

/// Where the store is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password, even in debug output.
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

const EXPECTED: &str =
    "expected postgres://user:password@host:port/database, or sqlite:///path/to/hearth.db";

impl DatabaseUrl {
    /// Parse a URL as given to `--database` or `HEARTH_DATABASE_URL`.
    pub fn parse(text: &str) -> Result<DatabaseUrl, StoreError> {
        let text = text.trim();
        let invalid = |detail: String| StoreError::InvalidUrl {
            url: redact(text),
            detail,
        };
        if text.is_empty() {
            return Err(invalid(format!("the database URL is empty; {EXPECTED}")));
        }
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(invalid(format!("no file path; {EXPECTED}")));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        let parsed = url::Url::parse(text).map_err(|e| invalid(format!("{e}; {EXPECTED}")))?;
        match parsed.scheme() {
            "postgres" | "postgresql" => {}
            other => return Err(invalid(format!("unsupported scheme {other:?}; {EXPECTED}"))),
        }
        // Host-less URLs are fine when a socket directory is given as
        // `?host=/run/postgresql`.
        let has_socket = parsed.query_pairs().any(|(k, _)| k == "host");
        if parsed.host_str().is_none_or(str::is_empty) && !has_socket {
            return Err(invalid(format!("no host; {EXPECTED}")));
        }
        let database = parsed.path().trim_start_matches('/');
        if database.is_empty() {
            return Err(invalid(format!("no database name; {EXPECTED}")));
        }
        Ok(DatabaseUrl::Postgres(text.to_string()))
    }

    /// The URL with its password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => redact(url),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

/// `text` with the password of a URL (if any) replaced by `***`.
pub fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => {
            // A password in the query (`?password=`) is hidden too.
            if parsed.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" { "***".into() } else { v };
                        (k.into_owned(), v.into_owned())
                    })
                    .collect();
                let mut parsed = parsed;
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
                parsed.to_string()
            } else {
                parsed.to_string()
            }
        }
        // Not a URL: it may still hold a password after "user:" and before
        // "@"; hide everything between the first ':' after "//" and the '@'.
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let authority = &text[scheme_end + 3..at];
                match authority.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &text[..scheme_end + 3],
                        &authority[..colon],
                        &text[at..]
                    ),
                    None => text.to_string(),
                }
            }
            _ => text.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_parse_and_hide_their_password() {
        let url = DatabaseUrl::parse("postgres://hearth:s3cret@db.local:5432/hearth").unwrap();
        assert_eq!(url.backend(), "postgres");
        assert_eq!(url.redacted(), "postgres://hearth:***@db.local:5432/hearth");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        let socket = DatabaseUrl::parse("postgres:///hearth?host=/run/postgresql").unwrap();
        assert_eq!(socket.backend(), "postgres");
        assert_eq!(
            redact("postgres://u@h/d?password=s3cret&sslmode=disable"),
            "postgres://u@h/d?password=***&sslmode=disable"
        );
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/hearth/hearth.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/hearth/hearth.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:hearth.db").unwrap(),
            DatabaseUrl::Sqlite("hearth.db".into())
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong_without_the_password() {
        for (text, needle) in [
            ("", "empty"),
            ("mysql://u:pw@h/db", "unsupported scheme"),
            ("postgres://u:pw@/db", "host"),
            ("postgres://u:pw@h:5432", "no database"),
            ("postgres://u:pw@h:notaport/db", "invalid port"),
            ("sqlite://", "no file path"),
        ] {
            let error = DatabaseUrl::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
            assert!(!error.contains("pw"), "{text}: {error}");
        }
    }
}
