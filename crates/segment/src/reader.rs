//! Opening the segment (or delete file) that a checkpoint names: the one
//! way the purger, `retrieve` and `restore` read archived records.
//!
//! Guarantee: no record is handed out unless the bytes are the
//! checkpoint's. Their size and SHA-256 are the ones the checkpoint
//! recorded; the file decodes completely (an error, never a partial
//! result); its `cdc.table`, `cdc.partition`, `cdc.first_offset` and
//! `cdc.last_offset` are the checkpoint's; its record count and column
//! names are the ones the checkpoint recorded; and every record's offset
//! lies within the checkpoint's offset range. A segment that disagrees
//! (another table's or partition's, an older upload of another range, a
//! rewritten file whose checksum was recorded anyway) is an
//! [`OpenError::NotTheCheckpoints`] naming the checkpoint, the segment
//! and every fact that differs, never a silent skip. The checkpoint's
//! facts come as a plain [`Expected`] that callers fill from their
//! checkpoint, so this crate needs neither `cdc-checkpoint` nor its
//! storage dependencies.

use sha2::{Digest, Sha256};

use crate::versions::{check_partitions, SegmentVersions};
use crate::{Deletes, Segment, SegmentError, SegmentMeta};

/// What a checkpoint records about the file it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The checkpoint's path (for messages).
    pub checkpoint: String,
    /// The file's path relative to the archive root.
    pub path: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Archive table name.
    pub table: String,
    /// Kafka partition.
    pub partition: i32,
    /// First Kafka offset of the checkpoint's range.
    pub first_offset: i64,
    /// Last Kafka offset of the checkpoint's range (inclusive).
    pub last_offset: i64,
    /// Records the checkpoint counted in the file (`None`: not checked).
    pub records: Option<u64>,
    /// A segment's SQL column names, in order (`None`: not checked).
    pub columns: Option<Vec<String>>,
}

/// Why a segment named by a checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not the one the checkpoint describes.
    #[error("checkpoint {checkpoint}: segment {path}: the segment is not the one the checkpoint describes: {}", differences.join(", "))]
    NotTheCheckpoints {
        /// The checkpoint.
        checkpoint: String,
        /// The segment.
        path: String,
        /// Each fact that differs, as `found (checkpoint: recorded)`.
        differences: Vec<String>,
    },
    /// The bytes are the checkpoint's but not a readable segment.
    #[error("checkpoint {checkpoint}: segment {path} does not decode: {source}")]
    Decode {
        /// The checkpoint.
        checkpoint: String,
        /// The segment.
        path: String,
        /// Why.
        #[source]
        source: SegmentError,
    },
}

/// Why a delete file named by a checkpoint cannot be used. The texts are
/// the reasons `retrieve` reports for the file.
#[derive(Debug, thiserror::Error)]
pub enum DeletesError {
    /// Not a readable delete file.
    #[error("{0}")]
    Decode(SegmentError),
    /// Not the checkpoint's delete file: what differs.
    #[error("not this checkpoint's delete file: {0}")]
    NotTheCheckpoints(String),
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The size and SHA-256 difference, if any.
fn bytes_difference(bytes: &[u8], e: &Expected) -> Option<String> {
    let sha = sha256_hex(bytes);
    (bytes.len() as u64 != e.size || sha != e.sha256).then(|| {
        format!(
            "size={} sha256={sha} (checkpoint: size={} sha256={})",
            bytes.len(),
            e.size,
            e.sha256
        )
    })
}

fn not_the_checkpoints(e: &Expected, differences: Vec<String>) -> Result<(), OpenError> {
    if differences.is_empty() {
        Ok(())
    } else {
        Err(OpenError::NotTheCheckpoints {
            checkpoint: e.checkpoint.clone(),
            path: e.path.clone(),
            differences,
        })
    }
}

/// The bytes' size and SHA-256 are the checkpoint's.
pub fn check_bytes(bytes: &[u8], e: &Expected) -> Result<(), OpenError> {
    not_the_checkpoints(e, bytes_difference(bytes, e).into_iter().collect())
}

/// Every fact of a decoded segment that differs from the checkpoint's.
fn differences(
    m: &SegmentMeta,
    columns: &[String],
    records: usize,
    mut offsets: impl Iterator<Item = i64>,
    e: &Expected,
) -> Vec<String> {
    let mut wrong = Vec::new();
    if m.table != e.table {
        wrong.push(format!(
            "cdc.table {:?} (checkpoint: {:?})",
            m.table, e.table
        ));
    }
    if m.partition != e.partition {
        wrong.push(format!(
            "cdc.partition {} (checkpoint: {})",
            m.partition, e.partition
        ));
    }
    if m.first_offset != e.first_offset {
        wrong.push(format!(
            "cdc.first_offset {} (checkpoint: {})",
            m.first_offset, e.first_offset
        ));
    }
    if m.last_offset != e.last_offset {
        wrong.push(format!(
            "cdc.last_offset {} (checkpoint: {})",
            m.last_offset, e.last_offset
        ));
    }
    if let Some(n) = e.records {
        if records as u64 != n {
            wrong.push(format!("{records} records (checkpoint: {n})"));
        }
    }
    if let Some(c) = &e.columns {
        if columns != c.as_slice() {
            wrong.push(format!("cdc.columns {columns:?} (checkpoint: {c:?})"));
        }
    }
    if let Some(o) = offsets.find(|&o| o < e.first_offset || o > e.last_offset) {
        wrong.push(format!(
            "a record at offset {o}, outside the checkpoint's range {}..={}",
            e.first_offset, e.last_offset
        ));
    }
    wrong
}

/// Whether a segment read by either key/version reader is the one the
/// checkpoint describes (everything but the bytes: see [`check_bytes`]).
pub fn check_versions(seg: &SegmentVersions, e: &Expected) -> Result<(), OpenError> {
    not_the_checkpoints(
        e,
        differences(
            &seg.meta,
            &seg.columns,
            seg.rows.len(),
            seg.rows.iter().map(|r| r.offset),
            e,
        ),
    )
}

/// Opens the segment a checkpoint names: checks its bytes, decodes it
/// completely (values included), and checks that it is the checkpoint's.
/// The rows come back in file order.
pub fn open(bytes: &[u8], e: &Expected) -> Result<Segment, OpenError> {
    check_bytes(bytes, e)?;
    let decode = |source| OpenError::Decode {
        checkpoint: e.checkpoint.clone(),
        path: e.path.clone(),
        source,
    };
    let seg = crate::decode_segment(bytes).map_err(decode)?;
    check_partitions(&seg).map_err(|m| decode(SegmentError::Format(m)))?;
    let columns: Vec<String> = seg.columns.iter().map(|c| c.name.clone()).collect();
    not_the_checkpoints(
        e,
        differences(
            &seg.meta,
            &columns,
            seg.rows.len(),
            seg.rows.iter().map(|r| r.meta.offset),
            e,
        ),
    )?;
    Ok(seg)
}

/// Opens the delete file a checkpoint names: checks its bytes, decodes
/// it, and checks that its metadata, record count and every record's
/// partition and offset are the checkpoint's ([`Expected::columns`] is
/// not used). The first difference found is reported.
pub fn open_deletes(bytes: &[u8], e: &Expected) -> Result<Deletes, DeletesError> {
    if let Some(d) = bytes_difference(bytes, e) {
        return Err(DeletesError::NotTheCheckpoints(d));
    }
    let decoded = crate::decode_deletes(bytes).map_err(DeletesError::Decode)?;
    let m = &decoded.meta;
    let mismatch = if m.table != e.table {
        Some(format!("cdc.table {} (checkpoint: {})", m.table, e.table))
    } else if (m.partition, m.first_offset, m.last_offset)
        != (e.partition, e.first_offset, e.last_offset)
    {
        Some(format!(
            "partition {} offsets {}..={} (checkpoint: partition {} offsets {}..={})",
            m.partition, m.first_offset, m.last_offset, e.partition, e.first_offset, e.last_offset
        ))
    } else if e.records.is_some_and(|n| decoded.deletes.len() as u64 != n) {
        Some(format!(
            "{} records (checkpoint: {})",
            decoded.deletes.len(),
            e.records.unwrap_or_default()
        ))
    } else {
        decoded
            .deletes
            .iter()
            .map(|d| &d.meta)
            .find(|r| {
                r.partition != e.partition || !(e.first_offset..=e.last_offset).contains(&r.offset)
            })
            .map(|r| {
                format!(
                    "a record at partition {} offset {}, outside the checkpoint's range",
                    r.partition, r.offset
                )
            })
    };
    match mismatch {
        Some(reason) => Err(DeletesError::NotTheCheckpoints(reason)),
        None => Ok(decoded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_deletes, encode_segment, ArchivedRow, DeletedRow, RecordMeta};
    use cdc_types::{Op, Value};

    fn meta() -> SegmentMeta {
        SegmentMeta {
            table: "t".into(),
            topic: "topic".into(),
            partition: 2,
            first_offset: 100,
            last_offset: 200,
        }
    }

    fn row(offset: i64) -> ArchivedRow {
        ArchivedRow {
            op: Op::Insert,
            meta: RecordMeta {
                key_json: format!("[{offset}]"),
                updated: None,
                mvcc_timestamp: None,
                pg_xid: Some(7),
                topic: "topic".into(),
                partition: 2,
                offset,
            },
            columns: vec![("id".into(), Value::Number(offset.to_string()))],
        }
    }

    fn expected(bytes: &[u8], records: u64) -> Expected {
        let m = meta();
        Expected {
            checkpoint: "t/checkpoints/p2/100.json".into(),
            path: "t/segments/p2/x.avro".into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            table: m.table,
            partition: m.partition,
            first_offset: m.first_offset,
            last_offset: m.last_offset,
            records: Some(records),
            columns: Some(vec!["id".into()]),
        }
    }

    #[test]
    fn a_segment_opens_only_as_its_checkpoints() {
        let rows: Vec<ArchivedRow> = (100..110).map(row).collect();
        let bytes = encode_segment(&meta(), &rows).unwrap();
        let e = expected(&bytes, 10);
        assert_eq!(open(&bytes, &e).unwrap().rows, rows);

        let refused = |e: Expected, what: &str| {
            let err = open(&bytes, &e).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
            assert!(err.contains("t/checkpoints/p2/100.json"), "{err}");
            assert!(err.contains("t/segments/p2/x.avro"), "{err}");
        };
        refused(
            Expected {
                size: 1,
                ..e.clone()
            },
            "size=",
        );
        refused(
            Expected {
                sha256: "00".into(),
                ..e.clone()
            },
            "sha256=",
        );
        refused(
            Expected {
                first_offset: 101,
                ..e.clone()
            },
            "cdc.first_offset 100 (checkpoint: 101)",
        );
        refused(
            Expected {
                table: "u".into(),
                ..e.clone()
            },
            "cdc.table",
        );
        refused(expected(&bytes, 11), "10 records (checkpoint: 11)");
        // Records outside the range the metadata claims.
        let narrow = SegmentMeta {
            last_offset: 105,
            ..meta()
        };
        let bytes = encode_segment(&narrow, &rows).unwrap();
        let e = Expected {
            last_offset: 105,
            ..expected(&bytes, 10)
        };
        let err = open(&bytes, &e).unwrap_err().to_string();
        assert!(
            err.contains("a record at offset 106, outside the checkpoint's range 100..=105"),
            "{err}"
        );
        // A delete file is not a segment.
        let deletes = encode_deletes(&meta(), &[deleted(100)]).unwrap();
        assert!(matches!(
            open(&deletes, &expected(&deletes, 1)),
            Err(OpenError::Decode { .. })
        ));
    }

    fn deleted(offset: i64) -> DeletedRow {
        DeletedRow {
            meta: RecordMeta {
                key_json: format!("[{offset}]"),
                updated: None,
                mvcc_timestamp: None,
                pg_xid: Some(9),
                topic: "topic".into(),
                partition: 2,
                offset,
            },
            before: None,
        }
    }

    #[test]
    fn a_delete_file_opens_only_as_its_checkpoints() {
        let dels = vec![deleted(100), deleted(150)];
        let bytes = encode_deletes(&meta(), &dels).unwrap();
        let e = Expected {
            columns: None,
            ..expected(&bytes, 2)
        };
        assert_eq!(open_deletes(&bytes, &e).unwrap().deletes, dels);
        let err = open_deletes(&bytes, &expected(&bytes, 3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not this checkpoint's delete file: 2 records (checkpoint: 3)"
        );
        let err = open_deletes(
            &bytes,
            &Expected {
                partition: 1,
                ..e.clone()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("partition 2 offsets 100..=200"));
        let segment = encode_segment(&meta(), &[row(100)]).unwrap();
        assert!(matches!(
            open_deletes(&segment, &expected(&segment, 1)),
            Err(DeletesError::Decode(_))
        ));
    }
}
