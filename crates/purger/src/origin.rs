//! PostgreSQL: keeping the purger's deletes out of the changefeed with a
//! replication origin, the counterpart of CockroachDB's
//! `disable_changefeed_replication`.
//!
//! A session that ran `pg_replication_origin_session_setup(name)` stamps
//! every transaction it commits with that origin, and the PostgreSQL
//! changefeed passes the origins of its `filter_origins` pools to wal2json
//! (`filter-origins`), which then leaves those transactions out. Nothing
//! about *which* rows are deleted depends on this: without an origin the
//! deletes are simply also published (Kafka traffic, and a delete record
//! with the row's `before` image in the archive's delete files).
//!
//! An origin is active in one session at a time (`replication origin with
//! ID n is already active for PID p`, SQLSTATE 55006), so the name is a
//! pool: `<name>`, `<name>_1`, … (`replication_origin_pool` of them), and a
//! session takes the first free one. Two purgers, or a reconnect while the
//! previous backend has not exited yet, each get their own. Members are
//! created on first use (`pg_replication_origin_create`).
//!
//! Both functions are superuser-only unless `EXECUTE` is granted. When a
//! session cannot take an origin (no privilege, every member in use, no
//! free replication-state entry), the purge goes on without one and a
//! warning says why and what fixes it: the invariant is not at stake, only
//! Kafka traffic and the audit trail of `retrieve --deletes`.
//! `disable_changefeed_replication = false` turns the whole thing off
//! (and the warning with it).

use cdc_common::db::origin_pool_member;
use cdc_common::ident::quote_ident;
use cdc_common::retry::Retryable;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::db;
use crate::{PurgeError, PurgerConfig};

/// What a session's origin setup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSetup {
    /// The session's transactions carry this origin.
    Taken(String),
    /// The session has none; its deletes reach the changefeed. The reason
    /// and the fix, as logged.
    Missing(String),
    /// Dry run: nothing was created or taken (a dry run deletes nothing),
    /// and the privileges a real run needs are present.
    Checked,
}

/// Takes the first free origin of the configured pool for this session,
/// creating it when missing. Errors only for a failure that a retry can
/// heal (a dropped connection): everything else is [`OriginSetup::Missing`].
pub(crate) async fn setup(client: &Client, cfg: &PurgerConfig) -> Result<OriginSetup, PurgeError> {
    let pool: Vec<String> = (0..cfg.replication_origin_pool)
        .map(|i| origin_pool_member(&cfg.replication_origin, i))
        .collect();
    // The catalog is readable by everyone; the functions are not.
    let existing: Vec<String> = client
        .query(
            "SELECT roname::text FROM pg_catalog.pg_replication_origin WHERE roname = ANY($1::text[])",
            &[&pool],
        )
        .await
        .map_err(db("reading pg_replication_origin"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Existing members first, so one created by an administrator is used
    // before anything is created; then the missing ones, in pool order.
    let (present, absent): (Vec<&String>, Vec<&String>) =
        pool.iter().partition(|n| existing.contains(n));
    let mut busy = Vec::new();
    for name in present.into_iter().chain(absent) {
        if !existing.contains(name) {
            match client
                .execute(
                    "SELECT pg_catalog.pg_replication_origin_create($1)",
                    &[name],
                )
                .await
            {
                Ok(_) => tracing::info!(origin = %name, "replication origin created"),
                // Created by another purger in between.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return missing(client, cfg, name, e, &busy).await,
            }
        }
        match client
            .execute(
                "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
                &[name],
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(origin = %name, "session takes replication origin: its deletes are left out of the changefeed");
                return Ok(OriginSetup::Taken(name.clone()));
            }
            // Active in another session (another purger, or the backend of
            // a session this one replaces that has not exited yet).
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => busy.push(name.clone()),
            Err(e) => return missing(client, cfg, name, e, &busy).await,
        }
    }
    let why = format!(
        "every replication origin of the pool {:?} ({}) is active in another session, so this session's \
         deletes reach the changefeed (a delete event per purged row in the archive's delete files); \
         raise purger.replication_origin_pool (the changefeed's filter_origins entry covers every \
         member of the pool)",
        cfg.replication_origin,
        busy.join(", ")
    );
    Ok(warn(why))
}

/// The dry run's check: the privileges a real run needs, without creating
/// or taking anything.
pub(crate) async fn check(client: &Client, cfg: &PurgerConfig) -> Result<OriginSetup, PurgeError> {
    let row = client
        .query_one(
            "SELECT has_function_privilege('pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE'), \
                    has_function_privilege('pg_catalog.pg_replication_origin_create(text)', 'EXECUTE') \
                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
            &[&cfg.replication_origin],
        )
        .await
        .map_err(db("checking the replication-origin privileges"))?;
    let (may_setup, may_create): (bool, bool) = (row.get(0), row.get(1));
    if may_setup && may_create {
        return Ok(OriginSetup::Checked);
    }
    Ok(warn(privilege_warning(client, cfg).await?))
}

/// A failed create or setup: a retryable error is returned, anything else
/// becomes the warning.
async fn missing(
    client: &Client,
    cfg: &PurgerConfig,
    name: &str,
    e: tokio_postgres::Error,
    busy: &[String],
) -> Result<OriginSetup, PurgeError> {
    if e.is_retryable() {
        return Err(db(&format!("taking replication origin {name:?}"))(e));
    }
    let why = match e.code() {
        Some(&SqlState::INSUFFICIENT_PRIVILEGE) => privilege_warning(client, cfg).await?,
        // No free replication-state entry (max_replication_slots).
        Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED) => format!(
            "replication origin {name:?}: {e} (each origin used holds one of max_replication_slots \
             replication-state entries until it is dropped); this session's deletes reach the \
             changefeed{}",
            busy_note(busy)
        ),
        _ => format!(
            "replication origin {name:?}: {e}; this session's deletes reach the changefeed{}",
            busy_note(busy)
        ),
    };
    Ok(warn(why))
}

fn busy_note(busy: &[String]) -> String {
    if busy.is_empty() {
        String::new()
    } else {
        format!(" (in use by other sessions: {})", busy.join(", "))
    }
}

/// The warning for a role that may not use replication origins, with the
/// statements that fix it.
async fn privilege_warning(client: &Client, cfg: &PurgerConfig) -> Result<String, PurgeError> {
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(db("reading current_user"))?
        .get(0);
    let role = quote_ident(&role);
    Ok(format!(
        "role {role} may not use replication origins, so on PostgreSQL the purger's deletes flow through \
         the changefeed: a delete event per purged row, recorded with a full copy of the row in the \
         archive's delete files, where `retrieve --deletes` cannot tell them from the application's. \
         Fix, as a superuser: \
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) TO {role}; \
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO {role}; \
         (or create the pool {:?}… yourself and grant only the second). \
         Or set purger.disable_changefeed_replication = false to purge this way without this warning.",
        cfg.replication_origin
    ))
}

fn warn(why: String) -> OriginSetup {
    tracing::warn!("{why}");
    OriginSetup::Missing(why)
}
