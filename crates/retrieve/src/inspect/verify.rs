//! `checkpoints verify`: re-reads a table's whole archive. Every chain's
//! continuity; every segment and delete file its checkpoints name, fetched
//! and checked against the checkpoint (size, SHA-256, then through
//! `cdc_segment::reader`: table, partition, offset range, record count,
//! columns, every record's offset in the range). One file at a time, so
//! memory is bounded by the largest file.

use cdc_checkpoint::{Checkpoint, CheckpointError};
use cdc_common::storage::ArchiveStore;
use cdc_segment::reader::Expected;
use serde::Serialize;

use super::{checkpoints_of, Finding};
use crate::read::expected;

/// What `verify` read, and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Archive table.
    pub table: String,
    /// Checkpoints read (their chain's continuity checked).
    pub checkpoints: u64,
    /// Segments verified.
    pub segments: u64,
    /// Row versions in them.
    pub rows: u64,
    /// Delete files verified.
    pub delete_files: u64,
    /// Delete records in them.
    pub deletes: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything that failed.
    pub findings: Vec<Finding>,
}

/// Verifies `table`'s archive (see the module notes): every chain's
/// continuity, and the files of the checkpoints written at or after
/// `since` (all of them with `None`). A damaged file is a finding, not an
/// error; errors are storage failures that stopped the read.
pub async fn verify(
    store: &ArchiveStore,
    table: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<VerifyReport, CheckpointError> {
    let mut report = VerifyReport {
        table: table.to_owned(),
        ..VerifyReport::default()
    };
    for p in cdc_checkpoint::partitions(store, table).await? {
        let (checkpoints, found) = checkpoints_of(store, table, p).await?;
        report.findings.extend(found);
        for c in &checkpoints {
            report.checkpoints += c.checkpoint_count();
            let written = chrono::DateTime::parse_from_rfc3339(&c.created_at).ok();
            // A checkpoint whose time does not parse is verified.
            if since.is_some_and(|s| written.is_some_and(|w| w < s)) {
                continue;
            }
            verify_files(store, c, &mut report).await?;
        }
    }
    Ok(report)
}

/// A fetch failure that says the file is damaged or gone (a finding), or
/// the error that stopped the read.
fn damaged(partition: i32, e: CheckpointError) -> Result<Finding, CheckpointError> {
    match e {
        CheckpointError::SegmentMissing { path } => Ok(Finding {
            partition: Some(partition),
            kind: "segment_missing",
            detail: format!("{path}: named by its checkpoint, not in the archive"),
        }),
        CheckpointError::SegmentCorrupt {
            path,
            expected,
            actual,
        } => Ok(Finding {
            partition: Some(partition),
            kind: "segment_corrupt",
            detail: format!("{path}: checkpoint says {expected}, the file is {actual}"),
        }),
        e => Err(e),
    }
}

fn mismatch(partition: i32, e: impl std::fmt::Display) -> Finding {
    Finding {
        partition: Some(partition),
        kind: "segment_mismatch",
        detail: e.to_string(),
    }
}

pub(super) async fn verify_files(
    store: &ArchiveStore,
    c: &Checkpoint,
    report: &mut VerifyReport,
) -> Result<(), CheckpointError> {
    if let Some(seg) = &c.segment {
        match cdc_checkpoint::verify_segment(store, seg).await {
            Ok(bytes) => {
                report.bytes += bytes.len() as u64;
                let e = Expected {
                    records: Some(seg.rows),
                    columns: Some(seg.columns.clone()),
                    ..expected(c, &seg.path, seg.size, &seg.sha256)
                };
                match cdc_segment::reader::open(&bytes, &e) {
                    Ok(s) => {
                        report.segments += 1;
                        report.rows += s.rows.len() as u64;
                    }
                    Err(e) => report.findings.push(mismatch(c.partition, e)),
                }
            }
            Err(e) => report.findings.push(damaged(c.partition, e)?),
        }
    }
    if let Some(d) = &c.deletes {
        match cdc_checkpoint::verify_deletes(store, d).await {
            Ok(bytes) => {
                report.bytes += bytes.len() as u64;
                let e = Expected {
                    records: Some(d.records),
                    ..expected(c, &d.path, d.size, &d.sha256)
                };
                match cdc_segment::reader::open_deletes(&bytes, &e) {
                    Ok(del) => {
                        report.delete_files += 1;
                        report.deletes += del.deletes.len() as u64;
                    }
                    Err(e) => report.findings.push(mismatch(c.partition, e)),
                }
            }
            Err(e) => report.findings.push(damaged(c.partition, e)?),
        }
    }
    Ok(())
}
