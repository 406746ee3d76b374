//! `checkpoints audit --run ID`: delete reconciliation for one scheduled
//! run, from the archive alone. For every checkpoint the run's report says
//! it purged (or left interrupted), the purge record must exist, be that
//! run's purger's (or, for an interrupted one, a later purger's), agree
//! with the report's counts, and account for every row of its segment; the
//! segment must be the one the chain's checkpoint names and pass its size,
//! SHA-256 and structure checks. The rows deleted by the run's records must
//! add up to what the run reported, and no record of the run's purger may
//! be missing from its report. A checkpoint that a later `sink rewind`
//! superseded is audited as the rewind kept it (its moved checkpoint and
//! purge record; the segment stays in place, kept from gc).
//!
//! Guarantee: the report is stored before it is printed, as
//! `<table>/audits/<run-id>/<audited-at>.json`, with its SHA-256 in a
//! second object beside it (`….json.sha256`), both with a conditional
//! create: an audit is never overwritten, and a later change to either
//! object is detected by recomputing the hash (and prevented outright
//! under S3 Object Lock).
//!
//! What it does not do: query the database. That the rows deleted were
//! exactly the archived versions is the purger's guarantee (its content
//! guard); this audit proves the archive side: every deletion the run
//! reported is accounted for by a record over a verified segment.

use std::collections::BTreeMap;

use cdc_checkpoint::{layout, Checkpoint, CheckpointError, PurgeRecord, RewindRecord};
use cdc_common::storage::ArchiveStore;
use serde::Serialize;

use super::verify::{verify_files, VerifyReport};
use super::Finding;

/// The audit report format this crate writes.
pub const AUDIT_FORMAT_VERSION: u32 = 1;

/// One checkpoint the run touched, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditedCheckpoint {
    /// Partition.
    pub partition: i32,
    /// First offset (names the checkpoint and its purge record).
    pub first_offset: i64,
    /// What the run's report says happened to it (`purged`, `interrupted`).
    pub status: String,
    /// The segment the chain's checkpoint names.
    pub segment: Option<String>,
    /// Rows in that segment, as read and verified (`None`: not verified).
    pub segment_rows: Option<u64>,
    /// The purge record's purger.
    pub record_purger: Option<String>,
    /// Rows the record says were deleted.
    pub deleted: u64,
    /// Rows the record accounts for (deleted, already gone, kept for a
    /// reason, superseded).
    pub accounted: u64,
    /// The rewind that later moved this checkpoint and its record out of
    /// the chain (they were audited as that rewind kept them).
    pub superseded_by_rewind: Option<String>,
}

/// The result of one audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Always [`AUDIT_FORMAT_VERSION`].
    pub format_version: u32,
    /// The run audited.
    pub run_id: String,
    /// Archive table.
    pub table: String,
    /// The run's purger (from its report).
    pub purger_id: Option<String>,
    /// The run's outcome, as it reported it.
    pub run_outcome: Option<String>,
    /// Rows the run reported deleted (those of checkpoints it left
    /// interrupted included).
    pub reported_deleted: u64,
    /// Of those, the rows deleted in checkpoints the run left interrupted:
    /// no record of this run names them (the purge that completed such a
    /// checkpoint counted them as already gone).
    pub interrupted_deleted: u64,
    /// Rows deleted according to the purge records of the checkpoints the
    /// run purged.
    pub recorded_deleted: u64,
    /// Segments fetched and verified.
    pub segments_verified: u64,
    /// Every checkpoint the run purged or left interrupted.
    pub checkpoints: Vec<AuditedCheckpoint>,
    /// Everything that does not reconcile.
    pub findings: Vec<Finding>,
    /// RFC 3339.
    pub audited_at: String,
}

fn finding(partition: Option<i32>, kind: &'static str, detail: String) -> Finding {
    Finding {
        partition,
        kind,
        detail,
    }
}

/// Audits run `run_id` of `table` (see the module notes); `None` when the
/// archive has no report of that run for that table. Errors are storage
/// failures and an unreadable run report; everything else is a finding.
pub async fn audit(
    store: &ArchiveStore,
    table: &str,
    run_id: &str,
) -> Result<Option<AuditReport>, CheckpointError> {
    let relative = layout::run_path(table, run_id);
    let Some(bytes) = cdc_checkpoint::get_object(store, &relative).await? else {
        return Ok(None);
    };
    let path = store.path(&relative);
    let run: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Malformed {
            path: path.to_string(),
            source: e,
        })?;
    let entry = run["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["archive_table"] == table))
        .cloned()
        .unwrap_or_default();
    let purge = &entry["purge"];
    let mut report = AuditReport {
        format_version: AUDIT_FORMAT_VERSION,
        run_id: run_id.to_owned(),
        table: table.to_owned(),
        purger_id: purge["purger_id"].as_str().map(str::to_owned),
        run_outcome: entry["outcome"].as_str().map(str::to_owned),
        reported_deleted: purge["totals"]["deleted"].as_u64().unwrap_or(0),
        interrupted_deleted: 0,
        recorded_deleted: 0,
        segments_verified: 0,
        checkpoints: Vec::new(),
        findings: Vec::new(),
        audited_at: cdc_checkpoint::now_rfc3339(),
    };
    if purge.is_null() {
        let why = entry["error"].as_str().map_or_else(
            || "it did not purge".to_owned(),
            |e| format!("its purge failed ({e}); batches it committed before the failure are not in its report: `checkpoints verify` and a replay dry run (`purge --replay-from 0 --replay-to …`) show what the table and the archive hold"),
        );
        report.findings.push(finding(
            None,
            "no_purge",
            format!("run {run_id} has no purge summary for table {table}: {why}"),
        ));
    }
    let rewinds = cdc_checkpoint::rewind_records(store, table).await?;
    let mut chains: BTreeMap<i32, Result<Vec<Checkpoint>, String>> = BTreeMap::new();
    for c in purge["checkpoints"].as_array().into_iter().flatten() {
        let status = c["status"].as_str().unwrap_or_default();
        if status != "purged" && status != "interrupted" {
            continue;
        }
        if status == "interrupted" {
            report.interrupted_deleted += c["counts"]["deleted"].as_u64().unwrap_or(0);
        }
        let (Some(partition), Some(first)) = (
            c["partition"].as_i64().and_then(|p| i32::try_from(p).ok()),
            c["first_offset"].as_i64(),
        ) else {
            report.findings.push(finding(
                None,
                "report_unreadable",
                format!("a checkpoint line of the run report without partition/first_offset: {c}"),
            ));
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(v) = chains.entry(partition) {
            v.insert(
                cdc_checkpoint::read_chain(store, table, partition)
                    .await
                    .map(|chain| chain.checkpoints)
                    .map_err(|e| e.to_string()),
            );
        }
        let audited = audit_checkpoint(
            store,
            &mut report,
            (partition, first, status),
            c,
            &chains[&partition],
            &rewinds,
        )
        .await?;
        report.checkpoints.push(audited);
    }
    // Records of this run's purger that its report does not list.
    if let Some(purger) = report.purger_id.clone() {
        for partition in cdc_checkpoint::partitions(store, table).await? {
            for first in cdc_checkpoint::purged_firsts(store, table, partition, None).await? {
                if report
                    .checkpoints
                    .iter()
                    .any(|c| (c.partition, c.first_offset) == (partition, first))
                {
                    continue;
                }
                let record =
                    match cdc_checkpoint::read_purge_record(store, table, partition, first).await {
                        Ok(r) => r,
                        Err(e @ CheckpointError::Malformed { .. }) => {
                            report.findings.push(finding(
                                Some(partition),
                                "record_unreadable",
                                e.to_string(),
                            ));
                            None
                        }
                        Err(e) => return Err(e),
                    };
                if let Some(r) = record {
                    if r.purger_id == purger {
                        report.findings.push(finding(
                            Some(partition),
                            "record_not_reported",
                            format!(
                                "{}: a purge record of this run's purger ({} rows deleted) that the run's report does not list",
                                r.path(),
                                r.deleted
                            ),
                        ));
                    }
                }
            }
        }
    }
    if report.recorded_deleted + report.interrupted_deleted != report.reported_deleted {
        report.findings.push(finding(
            None,
            "totals_mismatch",
            format!(
                "the run reported {} rows deleted ({} of them in checkpoints it left interrupted), its purge records {}",
                report.reported_deleted, report.interrupted_deleted, report.recorded_deleted
            ),
        ));
    }
    Ok(Some(report))
}

async fn audit_checkpoint(
    store: &ArchiveStore,
    report: &mut AuditReport,
    (partition, first, status): (i32, i64, &str),
    line: &serde_json::Value,
    chain: &Result<Vec<Checkpoint>, String>,
    rewinds: &[RewindRecord],
) -> Result<AuditedCheckpoint, CheckpointError> {
    let table = report.table.clone();
    let name = layout::checkpoint_path(&table, partition, first);
    let mut audited = AuditedCheckpoint {
        partition,
        first_offset: first,
        status: status.to_owned(),
        segment: None,
        segment_rows: None,
        record_purger: None,
        deleted: 0,
        accounted: 0,
        superseded_by_rewind: None,
    };
    let p = Some(partition);
    let mut record: Option<PurgeRecord> =
        match cdc_checkpoint::read_purge_record(store, &table, partition, first).await {
            Ok(r) => r,
            Err(e @ CheckpointError::Malformed { .. }) => {
                report
                    .findings
                    .push(finding(p, "record_unreadable", e.to_string()));
                None
            }
            Err(e) => return Err(e),
        };
    // Not this run's record where the chain keeps it: a later rewind may
    // have moved this run's checkpoint and record aside.
    let mut moved_checkpoint = None;
    if record
        .as_ref()
        .is_none_or(|r| Some(&r.purger_id) != report.purger_id.as_ref())
    {
        for rw in rewinds.iter().rev() {
            let Some(s) = cdc_checkpoint::superseded(store, rw, partition, first).await? else {
                continue;
            };
            let ours = s.record.as_ref().is_some_and(|r| {
                status == "interrupted" || Some(&r.purger_id) == report.purger_id.as_ref()
            });
            if ours {
                audited.superseded_by_rewind = Some(s.rewind_id);
                record = s.record;
                moved_checkpoint = Some(s.checkpoint);
                break;
            }
        }
    }
    match (&record, status) {
        (None, "interrupted") => report.findings.push(finding(
            p,
            "interrupted",
            format!("{name}: interrupted by the run and not completed since (the next purge completes it)"),
        )),
        (None, _) => report.findings.push(finding(
            p,
            "record_missing",
            format!("{name}: the run reports it purged, it has no purge record"),
        )),
        (Some(r), "purged") if Some(&r.purger_id) != report.purger_id.as_ref() => {
            report.findings.push(finding(
                p,
                "record_mismatch",
                format!(
                    "{name}: purge record written by {}, the run's purger is {:?}",
                    r.purger_id, report.purger_id
                ),
            ))
        }
        (Some(r), "purged") => {
            report.recorded_deleted += r.deleted;
            let reported = line["counts"]["deleted"].as_u64().unwrap_or(0);
            if reported != r.deleted {
                report.findings.push(finding(
                    p,
                    "record_mismatch",
                    format!(
                        "{name}: the run reported {reported} rows deleted, its record {}",
                        r.deleted
                    ),
                ));
            }
        }
        (Some(_), _) => {}
    }
    let cp = match (&moved_checkpoint, chain) {
        (Some(moved), _) => moved.as_ref(),
        (None, Ok(chain)) => chain.iter().find(|c| c.first_offset == first),
        (None, Err(e)) => {
            report.findings.push(finding(
                p,
                "chain_broken",
                format!("partition {partition}: {e}"),
            ));
            return Ok(audited);
        }
    };
    let Some(cp) = cp.filter(|c| c.merged.is_none()) else {
        report.findings.push(finding(
            p,
            "not_in_chain",
            format!("{name}: the run purged it, the chain has no such checkpoint"),
        ));
        return Ok(audited);
    };
    audited.segment = cp.segment.as_ref().map(|s| s.path.clone());
    if let Some(r) = &record {
        audited.record_purger = Some(r.purger_id.clone());
        audited.deleted = r.deleted;
        audited.accounted = r.accounted_rows();
        if r.segment != audited.segment {
            report.findings.push(finding(
                p,
                "record_mismatch",
                format!(
                    "{name}: the purge record names segment {:?}, the checkpoint {:?}",
                    r.segment, audited.segment
                ),
            ));
        }
    }
    let mut files = VerifyReport::default();
    verify_files(store, cp, &mut files).await?;
    if files.segments == 1 && files.findings.is_empty() {
        report.segments_verified += 1;
        audited.segment_rows = Some(files.rows);
        if record.is_some() && audited.accounted != files.rows {
            report.findings.push(finding(
                p,
                "counts_mismatch",
                format!(
                    "{name}: its purge record accounts for {} rows, its segment holds {}",
                    audited.accounted, files.rows
                ),
            ));
        }
    }
    report.findings.extend(files.findings);
    Ok(audited)
}

/// Stores `report` as `<table>/audits/<run-id>/<audited-at>.json` and its
/// SHA-256 beside it (`….json.sha256`), never overwriting. Returns the
/// report's path and hash.
pub async fn record_audit(
    store: &ArchiveStore,
    report: &AuditReport,
) -> Result<(String, String), CheckpointError> {
    let body = serde_json::to_vec_pretty(report).expect("an audit report always serialises");
    let sha = cdc_checkpoint::sha256_hex(&body);
    let stamp: String = report
        .audited_at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let path = layout::audit_path(&report.table, &report.run_id, &stamp);
    cdc_checkpoint::create_new(store, &path, body).await?;
    cdc_checkpoint::create_new(
        store,
        &format!("{path}.sha256"),
        format!("{sha}\n").into_bytes(),
    )
    .await?;
    Ok((path, sha))
}
