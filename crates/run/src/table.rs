//! One table's run: **mark** → **wait** → **purge** → **verify**. The
//! purge starts only after the archive watermark has passed everything
//! this run marked (or, when nothing was marked now, everything committed
//! until now while some row is still marked); when the sink falls behind
//! the table stops at the wait and is reported *partial*, nothing purged.
//! Archived rows are counted by position in the checkpoint chains, never
//! by another host's clock.

use std::collections::BTreeMap;
use std::time::Instant;

use cdc_changefeed::Hlc;
use cdc_common::storage::ArchiveStore;
use cdc_purger::PurgeOptions;
use tokio_util::sync::CancellationToken;

use crate::report::rate;
use crate::verify::verify;
use crate::{
    parse_decimal_hlc, target_of, wait, Outcome, RunConfig, StageRates, StageTimes, TablePlan,
    TableReport,
};

/// Per partition, the first offset of its last checkpoint: where the
/// chains ended before this run. Object names only (the newest manifest's
/// name and a listing after it, no reads).
async fn chain_heads(store: &ArchiveStore, table: &str) -> Option<BTreeMap<i32, i64>> {
    let read = async {
        let mut heads = BTreeMap::new();
        for p in cdc_checkpoint::partitions(store, table).await? {
            if let Some((last, _)) = cdc_checkpoint::head(store, table, p).await? {
                heads.insert(p, last);
            }
        }
        Ok::<_, cdc_checkpoint::CheckpointError>(heads)
    };
    match read.await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the checkpoints; the run report will not count archived rows");
            None
        }
    }
}

/// Row versions archived by the checkpoints that extend the chains past
/// `heads` (see [`chain_heads`]): position in the chain, not the sink's
/// `created_at`, so no clock of another host is compared with ours.
async fn archived_since(
    store: &ArchiveStore,
    table: &str,
    heads: Option<&BTreeMap<i32, i64>>,
) -> u64 {
    let Some(heads) = heads else { return 0 };
    let mut n = 0;
    let Ok(parts) = cdc_checkpoint::partitions(store, table).await else {
        return 0;
    };
    for p in parts {
        if let Ok(chain) = cdc_checkpoint::read_chain(store, table, p).await {
            n += chain
                .checkpoints
                .iter()
                .filter(|c| heads.get(&p).is_none_or(|&head| c.first_offset > head))
                .map(|c| c.counts.rows_archived)
                .sum::<u64>();
        }
    }
    n
}

/// When some row of the table is marked: the database's clock now, as an
/// HLC (CockroachDB: `cluster_logical_timestamp()`), which every committed
/// mark precedes. `None` when no row is marked.
async fn still_marked_now(plan: &TablePlan) -> Result<Option<Hlc>, String> {
    let client = cdc_common::db::connect(&plan.database_url, "cdc-archiver-run")
        .await
        .map_err(|e| e.to_string())?;
    let dialect = cdc_common::db::detect_dialect(&client)
        .await
        .map_err(|e| e.to_string())?;
    let clock = match dialect {
        cdc_common::db::Dialect::Cockroach => "cluster_logical_timestamp()::STRING",
        cdc_common::db::Dialect::Postgres => {
            "((extract(epoch FROM clock_timestamp()) * 1000000)::INT8 * 1000)::text"
        }
    };
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE {}), {clock}",
        plan.marker.table.quoted(),
        cdc_common::ident::quote_ident(&plan.marker.archived_column)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| e.to_string())?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let text: String = row.get(1);
    parse_decimal_hlc(&text)
        .map(Some)
        .ok_or_else(|| format!("the database clock {text:?} is not a timestamp"))
}

pub(crate) async fn run_table(
    plan: &TablePlan,
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
) -> TableReport {
    let archive_table = plan.purger.archive_table();
    let mut report = TableReport {
        table: plan.marker.table.to_string(),
        archive_table: archive_table.clone(),
        eligible: None,
        mark: None,
        archived: 0,
        wait: None,
        purge: None,
        verify: None,
        outcome: Outcome::Success,
        error: None,
        stage_secs: StageTimes::default(),
        rates: StageRates::default(),
    };
    // Where the chains end now: what is archived from here on is this run's.
    let heads = chain_heads(store, &archive_table).await;

    let t = Instant::now();
    let mark = cdc_marker::mark(
        &plan.database_url,
        &plan.marker,
        shutdown.child_token(),
        |_| {},
    )
    .await;
    report.stage_secs.mark = t.elapsed().as_secs_f64();
    let mark = match mark {
        Ok(m) => m,
        Err(e) => {
            report.outcome = Outcome::Failure;
            report.error = Some(format!("mark: {e}"));
            return report;
        }
    };
    report.eligible = mark.eligible_at_start;
    report.rates.mark = rate(mark.rows_marked, report.stage_secs.mark);
    let target = match target_of(&mark) {
        Some(t) => Some(t),
        // Nothing marked now: rows earlier runs marked (or re-touched) may
        // still be on their way to the archive, so the purge waits for
        // everything committed until now, unless no row is marked at all.
        None => match still_marked_now(plan).await {
            Ok(t) => t,
            Err(e) => {
                report.outcome = Outcome::Failure;
                report.error = Some(format!("reading the database clock: {e}"));
                report.mark = Some(mark);
                return report;
            }
        },
    };
    report.mark = Some(mark);

    let t = Instant::now();
    let wait = wait::wait_for_watermark(
        store,
        &archive_table,
        target,
        cfg,
        plan.sink.as_ref(),
        shutdown,
    )
    .await;
    report.stage_secs.wait = t.elapsed().as_secs_f64();
    let reached = wait.reached;
    report.wait = Some(wait);
    report.archived = archived_since(store, &archive_table, heads.as_ref()).await;
    if !reached {
        report.outcome = Outcome::Partial;
        report.error = Some(if shutdown.is_cancelled() {
            "shutdown requested while waiting for the archive watermark; nothing was purged"
                .to_owned()
        } else {
            format!(
                "the archive watermark did not pass the marker's last write within {:?}; \
                 nothing was purged. {} Rows marked now are purged by a later run",
                cfg.wait_timeout,
                report
                    .wait
                    .as_ref()
                    .map_or_else(String::new, wait::WaitReport::explain)
            )
        });
        return report;
    }
    report.rates.archive = rate(
        report.archived,
        report.stage_secs.mark + report.stage_secs.wait,
    );

    let t = Instant::now();
    let opts = PurgeOptions {
        dry_run: false,
        allow_unindexed_foreign_keys: cfg.allow_unindexed_foreign_keys,
        crash_after_batches: None,
        progress: false,
        replay: None,
    };
    let purge = cdc_purger::purge(&plan.purger, store, shutdown.child_token(), &opts).await;
    report.stage_secs.purge = t.elapsed().as_secs_f64();
    // Checkpoints may have been added while purging.
    report.archived = archived_since(store, &archive_table, heads.as_ref()).await;
    match purge {
        Ok(p) => {
            report.rates.purge = rate(p.totals.deleted, report.stage_secs.purge);
            if !p.refused.is_empty() {
                report.outcome = Outcome::Failure;
                report.error = Some(format!(
                    "{} checkpoint(s) refused by the purger",
                    p.refused.len()
                ));
            } else if p.interrupted {
                report.outcome = Outcome::Partial;
                report.error = Some("shutdown requested during the purge".to_owned());
            }
            report.purge = Some(p);
        }
        Err(e) => {
            report.outcome = Outcome::Failure;
            report.error = Some(format!("purge: {e}"));
            return report;
        }
    }

    let t = Instant::now();
    let blocking: Vec<cdc_purger::catalog::ReferencingKey> = report
        .purge
        .as_ref()
        .map(|p| p.preflight.blocking().cloned().collect())
        .unwrap_or_default();
    let v = verify(store, plan, &archive_table, &blocking).await;
    report.stage_secs.verify = t.elapsed().as_secs_f64();
    if !v.chains_ok || !v.problems.is_empty() {
        report.outcome = Outcome::Failure;
        report.error.get_or_insert_with(|| v.problems.join("; "));
    } else if v.rows_still_marked > 0 {
        report.outcome = report.outcome.worst(Outcome::Partial);
        let no_copy = report
            .purge
            .as_ref()
            .map_or(0, |p| p.totals.skipped_no_version);
        let table = plan.marker.table.to_string();
        report.error.get_or_insert_with(|| {
            let mut why = format!(
                "{} row(s) are still marked archived in the table after the purge \
                 (changed after they were archived, or not yet archived); a later run purges them",
                v.rows_still_marked
            );
            if no_copy > 0 {
                why.push_str(&format!(
                    "; {no_copy} archived row(s) could not be compared with the table (a column added since, \
                     an incomplete copy): `cdc-archiver retouch --table {table}` archives them again whole"
                ));
            }
            why
        });
    }
    report.verify = Some(v);
    report
}
