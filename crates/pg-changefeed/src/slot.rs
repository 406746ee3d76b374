//! The replication slot. [`ensure_slot`] creates it with wal2json when it
//! is missing and refuses a slot of another plugin, another kind or
//! another database. [`refuse_lost_slot`] runs before it: a missing slot is
//! created only when the changefeed's topics hold nothing yet, or with
//! `recreate_slot` (with a warning that `retouch` is needed), because
//! topics that hold messages mean an earlier slot of this changefeed is
//! gone and the changes made since would, silently, never reach Kafka. The
//! slot is only peeked, never consumed: it moves only through [`advance`],
//! to the end LSN the caller passes, which the feed loop passes only for a
//! transaction whose every message Kafka acknowledged. [`heartbeat`]
//! writes a transactional logical message (it touches no table), so that
//! an idle database, or WAL whose transactions were all left out by
//! origin, still gives the next peek a commit to advance the slot to.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_common::db::parse_lsn;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::PgChangefeedConfig;
use crate::error::ChangefeedError;

/// Prefix of the heartbeat logical messages (visible in the WAL, ignored by
/// this changefeed).
pub const HEARTBEAT_PREFIX: &str = "cdc-archiver";

/// Writes a heartbeat: a transactional logical message, i.e. a commit the
/// next peek can advance the slot to. Returns when it was written.
pub(crate) async fn heartbeat(client: &Client, slot: &str) -> Result<Instant, ChangefeedError> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&HEARTBEAT_PREFIX, &slot],
        )
        .await?;
    Ok(Instant::now())
}

/// WAL a peek may read without finding a transaction to send (all of it
/// left out by origin, or not yet committed) before the feed writes a
/// heartbeat transaction at once, instead of after `resolved_interval`, so
/// that the next peek can advance the slot past it and peeks do not read
/// the same WAL again and again while a purge runs.
pub(crate) const SKIP_HEARTBEAT_BYTES: u64 = 1 << 20;

/// Moves the slot to `end_lsn` (the end of a transaction whose every
/// message Kafka acknowledged).
pub(crate) async fn advance(
    client: &Client,
    slot: &str,
    end_lsn: &str,
    cancel: &CancellationToken,
) -> Result<(), ChangefeedError> {
    const SQL: &str = "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)";
    match client.execute(SQL, &[&slot, &end_lsn]).await {
        // Our own cancel request of a peek can, in a narrow race, reach the
        // session only once it runs the advance.
        Err(e) if cancel.is_cancelled() && e.code() == Some(&SqlState::QUERY_CANCELED) => {
            client.execute(SQL, &[&slot, &end_lsn]).await?;
        }
        r => {
            r?;
        }
    }
    Ok(())
}

/// A missing slot is created only for topics that hold nothing yet (a new
/// changefeed), or with `recreate_slot`: topics that hold messages mean an
/// earlier slot of this changefeed is gone, and the changes made since it
/// went never reach Kafka, silently, if a new slot is simply created.
pub(crate) async fn refuse_lost_slot(
    client: &Client,
    producer: &FutureProducer,
    config: &PgChangefeedConfig,
    topics: &BTreeMap<String, i32>,
) -> Result<(), ChangefeedError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot_name],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let mut used = Vec::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            let (c, t) = (producer.clone(), topic.clone());
            let high = tokio::task::spawn_blocking(move || {
                c.client()
                    .fetch_watermarks(&t, p, Duration::from_secs(10))
                    .map(|(_, h)| h)
            })
            .await
            .map_err(|e| ChangefeedError::Topic {
                topic: topic.clone(),
                reason: format!("watermark lookup failed: {e}"),
            })??;
            if high > 0 {
                used.push(topic.clone());
                break;
            }
        }
    }
    if used.is_empty() {
        return Ok(());
    }
    if config.recreate_slot {
        warn!(slot = %config.slot_name, topics = ?used,
            "creating the replication slot again (--recreate-slot): changes made while there was none are not \
             in Kafka; run `cdc-archiver retouch` for each table so that its marked rows are archived again");
        return Ok(());
    }
    Err(ChangefeedError::Slot {
        slot: config.slot_name.clone(),
        reason: format!(
            "does not exist, but topics {used:?} already hold this changefeed's messages: the slot was dropped \
             or lost (a failover), and the changes made since are not in Kafka. Start once with \
             `--recreate-slot` (config `recreate_slot = true`), then run `cdc-archiver retouch --table <t>` \
             for each table, so that rows marked meanwhile are archived from their current state"
        ),
    })
}

/// Creates the slot with wal2json if it is missing; refuses a slot of
/// another plugin or database. Returns the slot's `confirmed_flush_lsn`.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<Option<u64>, ChangefeedError> {
    const LOOKUP: &str =
        "SELECT plugin::text, slot_type, database::text = current_database()::text, \
                confirmed_flush_lsn::text \
                          FROM pg_replication_slots WHERE slot_name = $1";
    if client.query_opt(LOOKUP, &[&slot]).await?.is_none() {
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
                &[&slot],
            )
            .await
        {
            Ok(_) => info!(slot, "replication slot created"),
            // Another process created it first: check it below.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let row = client
        .query_opt(LOOKUP, &[&slot])
        .await?
        .ok_or_else(|| ChangefeedError::Slot {
            slot: slot.to_owned(),
            reason: "vanished right after creation".into(),
        })?;
    let plugin: Option<String> = row.get(0);
    let kind: String = row.get(1);
    let same_db: Option<bool> = row.get(2);
    if kind != "logical" || plugin.as_deref() != Some("wal2json") || same_db != Some(true) {
        return Err(ChangefeedError::Slot {
            slot: slot.to_owned(),
            reason: format!(
                "exists but is a {kind} slot of plugin {plugin:?} in {} database: choose another slot_name",
                if same_db == Some(true) { "this" } else { "another" }
            ),
        });
    }
    Ok(row
        .get::<_, Option<String>>(3)
        .as_deref()
        .and_then(parse_lsn))
}
