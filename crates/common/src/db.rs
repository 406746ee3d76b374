//! Database connections and dialect detection.

use tokio_postgres::{Client, NoTls};

/// Which SQL dialect the connected server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// PostgreSQL: `xmin` version guard, `SKIP LOCKED`, wal2json changefeed.
    Postgres,
    /// CockroachDB: `crdb_internal_mvcc_timestamp` version guard,
    /// `AS OF SYSTEM TIME`, native changefeeds.
    Cockroach,
}

impl Dialect {
    /// Classifies the text of `SELECT version()`.
    pub fn from_version_string(version: &str) -> Self {
        if version.contains("CockroachDB") {
            Dialect::Cockroach
        } else {
            Dialect::Postgres
        }
    }
}

/// Errors opening a database session.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server could not be reached or refused the session.
    #[error("cannot connect to the database ({redacted_url}): {source}")]
    Connect {
        /// The URL with any password removed.
        redacted_url: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query failed.
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

impl crate::retry::Retryable for DbError {
    fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect { source, .. } | DbError::Query(source) => source.is_retryable(),
        }
    }
}

/// Removes the password from a connection URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Key/value connection strings: drop any password=... pair.
        Err(_) => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Opens a session and spawns its connection task. The task ends (and is
/// logged) when the connection drops; the client then returns
/// `is_closed()` errors, which are retryable.
pub async fn connect(url: &str, application_name: &str) -> Result<Client, DbError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|source| DbError::Connect {
        redacted_url: redact_url(url),
        source,
    })?;
    config.application_name(application_name);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| DbError::Connect {
            redacted_url: redact_url(url),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// Asks the server which dialect it speaks.
pub async fn detect_dialect(client: &Client) -> Result<Dialect, DbError> {
    let row = client.query_one("SELECT version()", &[]).await?;
    let v: String = row.get(0);
    Ok(Dialect::from_version_string(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_version() {
        assert_eq!(
            Dialect::from_version_string(
                "CockroachDB CCL v24.1.0 (x86_64-pc-linux-gnu, built 2024/05/15)"
            ),
            Dialect::Cockroach
        );
        assert_eq!(
            Dialect::from_version_string("PostgreSQL 15.19 (Debian 15.19-0+deb12u1) on x86_64"),
            Dialect::Postgres
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        assert!(!redact_url("postgresql://root:hunter2@localhost/x").contains("hunter2"));
    }
}
