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

/// PostgreSQL: the replication origin the purger's sessions take (config
/// `purger.replication_origin`), so that the PostgreSQL changefeed can
/// leave their deletes out (config `pg_changefeed.filter_origins`): the
/// PostgreSQL counterpart of CockroachDB's `disable_changefeed_replication`.
/// Both defaults are this constant, so they cannot drift apart.
///
/// It names a *pool*: an origin is active in one session at a time, so a
/// session takes the first free one of `<name>`, `<name>_1`, `<name>_2`, …
/// ([`origin_pool_member`]), and the changefeed leaves out every member
/// ([`is_origin_pool_member`]).
pub const PURGER_REPLICATION_ORIGIN: &str = "cdc_archiver_purger";

/// Member `i` of the replication-origin pool `base`: `base` itself for 0,
/// `base_<i>` after it.
pub fn origin_pool_member(base: &str, i: u32) -> String {
    if i == 0 {
        base.to_owned()
    } else {
        format!("{base}_{i}")
    }
}

/// Whether `name` is a member of the replication-origin pool `base` (see
/// [`origin_pool_member`]): `base`, or `base_<n>` with `n` a decimal
/// number from 1 without leading zeros.
pub fn is_origin_pool_member(base: &str, name: &str) -> bool {
    match name.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('_').is_some_and(|n| {
            !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// A PostgreSQL LSN in PostgreSQL's text form (`X/Y`: the high and the low
/// 32 bits, each in hexadecimal, as `pg_lsn` prints them and the PostgreSQL
/// changefeed sends its `pg_lsn`) as one number, ordered as the WAL is;
/// `None` if the text is not one.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let half = |s: &str| {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().map(u64::from)
    };
    let (high, low) = text.split_once('/')?;
    Some(half(high)? << 32 | half(low)?)
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

/// The settings every cdc-archiver session pins, so that values print and
/// parse the same whatever the role's or database's defaults (`ALTER ROLE
/// … SET TimeZone …`, a `DateStyle` in the connection URL): the changefeed
/// reads values under them, the purger compares current rows with what it
/// read, holds are keyed by `jsonb_build_array(<key>)::text` (timestamps in
/// UTC), restore casts archived text back. UTC timestamps, ISO dates read
/// year first, PostgreSQL's interval style, floats in their shortest exact
/// form (`extra_float_digits > 0`; `3` also gives every digit before 12),
/// hex bytea.
pub const SESSION_SETTINGS: [(&str, &str); 5] = [
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// Settings a CockroachDB version may not know (its changefeed writes ISO
/// text and hex bytes either way): refused ones are skipped there.
const OPTIONAL_SETTINGS: [&str; 3] = ["DateStyle", "IntervalStyle", "bytea_output"];

/// Pins [`SESSION_SETTINGS`]: one round trip on PostgreSQL; on a server
/// that refuses one of the optional settings (CockroachDB), each one on
/// its own, skipping those.
pub async fn pin_session(client: &Client) -> Result<(), DbError> {
    // Values are constants; names are plain identifiers.
    let set = |(name, value): &(&str, &str)| format!("SET {name} = '{value}'");
    let all: Vec<String> = SESSION_SETTINGS.iter().map(set).collect();
    if client.batch_execute(&all.join("; ")).await.is_ok() {
        return Ok(());
    }
    for s in &SESSION_SETTINGS {
        match client.batch_execute(&set(s)).await {
            Ok(()) => {}
            Err(e) if OPTIONAL_SETTINGS.contains(&s.0) && !e.is_closed() => {
                tracing::debug!(setting = s.0, error = %e, "session setting not supported here");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens a session with [`SESSION_SETTINGS`] pinned and spawns its
/// connection task. The task ends (and is logged) when the connection
/// drops; the client then returns `is_closed()` errors, which are
/// retryable.
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
    pin_session(&client).await?;
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
    fn origin_pool_names() {
        let base = PURGER_REPLICATION_ORIGIN;
        let pool: Vec<String> = (0..3).map(|i| origin_pool_member(base, i)).collect();
        assert_eq!(
            pool,
            [
                "cdc_archiver_purger",
                "cdc_archiver_purger_1",
                "cdc_archiver_purger_2"
            ]
        );
        for name in &pool {
            assert!(is_origin_pool_member(base, name), "{name}");
        }
        assert!(is_origin_pool_member(base, "cdc_archiver_purger_17"));
        for other in [
            "cdc_archiver_purger_",
            "cdc_archiver_purger_01",
            "cdc_archiver_purger_1a",
            "cdc_archiver_purgers",
            "cdc_archiver_purger__1",
            "cdc_archiver",
            "pg_16384",
        ] {
            assert!(!is_origin_pool_member(base, other), "{other}");
        }
    }

    #[test]
    fn parses_postgresql_lsns() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/1A2B3C8"), Some(0x1A2B3C8));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("ff/0000000a"), Some(0xFF_0000_000A));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        // Ordered as the WAL: the high half first.
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "1/2/3",
            "g/1",
            "+1/2",
            "1/-2",
            "123456789/0",
            " 0/1",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
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
