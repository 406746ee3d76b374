//! `cdc-archiver sink rewind <checkpoint>`: a partition's chain made to
//! end at an earlier checkpoint, so that the sink, when it next starts,
//! resumes after it and archives the later offsets again from Kafka (the
//! archive side is [`cdc_checkpoint::plan_rewind`] and
//! [`cdc_checkpoint::run_rewind`]: moves, never rewrites, with a record).
//!
//! Guarantee: a rewind is done only when both checks pass, in the dry run
//! as with `--yes`:
//! - no member is in the sink's consumer group (a running sink holds the
//!   partition's chain end in memory and would write after the old end: a
//!   gap that every reader refuses);
//! - Kafka still holds every offset from the target's end + 1 to the
//!   chain's end (otherwise the sink could not archive them again and
//!   would stop the partition at a gap);
//! - with `--yes`, a rewind past purged checkpoints needs
//!   `--including-purged`: until the sink has archived those offsets
//!   again, the rows their purges deleted are in no segment the chain
//!   names (retrieve does not find them).
//!
//! The table's maintenance lease is held while objects move, so no
//! `checkpoints compact --yes` or `gc --yes` runs meanwhile. A sink (or a
//! purge) started between the check and the end of the moves is the
//! operator's race to avoid (the command says so); it can only make the
//! chain unreadable, never let the purger delete a row it should not.

use std::time::Duration;

use cdc_checkpoint::{layout, RewindPlan, RewindRecord};
use cdc_common::storage::ArchiveStore;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{group, SinkConfig, SinkError};

/// What `sink rewind` found, and did with `--yes`.
#[derive(Debug)]
pub struct RewindOutcome {
    /// The plan (what moves, what is written).
    pub plan: RewindPlan,
    /// Kafka's offsets of the partition (low, high) when checked.
    pub kafka_offsets: (i64, i64),
    /// The record, when the rewind was done (`--yes`).
    pub record: Option<RewindRecord>,
}

fn refused(plan: &RewindPlan, reason: String) -> SinkError {
    SinkError::Checkpoint(cdc_checkpoint::CheckpointError::Refused {
        what: format!("rewind of {}/p{}", plan.table, plan.partition),
        reason,
    })
}

/// Plans the rewind of the chain that holds `checkpoint` (a path
/// `<table>/checkpoints/p<N>/<first>.json`) to end with it, checks the
/// group and Kafka, and with `yes` does it.
pub async fn rewind(
    config: &SinkConfig,
    checkpoint: &str,
    yes: bool,
    including_purged: bool,
    reason: Option<String>,
) -> Result<RewindOutcome, SinkError> {
    let Some((table, partition, first)) = layout::parse_checkpoint_path(checkpoint) else {
        return Err(SinkError::Config(format!(
            "{checkpoint} is not a checkpoint path: expected <table>/checkpoints/p<N>/<first offset, 20 digits>.json (as `checkpoints list` prints them)"
        )));
    };
    let store = ArchiveStore::open(&config.storage)?;
    let id = layout::new_id(chrono::Utc::now());
    let plan = cdc_checkpoint::plan_rewind(&store, table, partition, first, &id).await?;
    if !config
        .topics
        .iter()
        .any(|t| t.name == plan.topic && t.table() == table)
    {
        return Err(SinkError::Config(format!(
            "the chain of {table}/p{partition} archives topic {}, which this configuration does not map to table {table}: run the rewind with the configuration of the sink that writes it",
            plan.topic
        )));
    }
    let kafka_offsets = check_kafka(config, &plan).await?;
    let purged = plan.purged_superseded();
    if yes && purged > 0 && !including_purged {
        return Err(refused(
            &plan,
            format!(
                "{purged} of the checkpoints it supersedes were purged: until the sink has archived their offsets again, `retrieve` does not find the rows those purges deleted (their segments stay, named in the rewind record), and if Kafka loses the offsets first they stay out of the chain. Add --including-purged to rewind anyway"
            ),
        ));
    }
    let record = if yes && !plan.is_empty() {
        let what = format!("rewind of {table}/p{partition}");
        let lease =
            cdc_checkpoint::take_lease(&store, table, &what, cdc_checkpoint::MAINTENANCE_LEASE_TTL)
                .await?;
        let done = cdc_checkpoint::run_rewind(&store, &plan, &id, reason).await;
        lease.release(&store).await?;
        Some(done?)
    } else {
        None
    };
    Ok(RewindOutcome {
        plan,
        kafka_offsets,
        record,
    })
}

/// The two checks of the module notes; Kafka's (low, high) offsets of the
/// partition.
async fn check_kafka(config: &SinkConfig, plan: &RewindPlan) -> Result<(i64, i64), SinkError> {
    let (view, low, high) = {
        let config = config.clone();
        let topic = plan.topic.clone();
        let partition = plan.partition;
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                group::client_config(&config.brokers, &config.kafka).create()?;
            let timeout = Duration::from_secs(10);
            let view = group::describe(
                consumer.client(),
                &config.group_id,
                std::slice::from_ref(&topic),
                timeout,
            )?;
            let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            Ok::<_, SinkError>((view, low, high))
        })
        .await??
    };
    if !view.members.is_empty() {
        return Err(refused(
            plan,
            format!(
                "sinks are running ({}): stop every sink of group {} (SIGTERM drains), check with `cdc-archiver check`, then rewind",
                view.summary(),
                view.group
            ),
        ));
    }
    let resume = plan.resume_offset();
    if low > resume {
        return Err(refused(
            plan,
            format!(
                "Kafka no longer holds offset {resume} of {}/{} (its log starts at {low}): the sink could not archive offsets {resume}..{low} again; rewind to a checkpoint that ends at or after offset {}",
                plan.topic,
                plan.partition,
                low - 1
            ),
        ));
    }
    if let Some(end) = plan.chain_end {
        if high <= end {
            return Err(refused(
                plan,
                format!(
                    "Kafka's log of {}/{} ends before the chain does (next offset {high}, chain end {end}): the topic was recreated or truncated, and a rewind cannot bring back what it held",
                    plan.topic, plan.partition
                ),
            ));
        }
    }
    Ok((low, high))
}
