//! The purger's side of reading a segment. Reading and verifying are
//! `cdc_segment`'s ([`cdc_segment::versions`]: the key/version reader and
//! the full decode; [`cdc_segment::reader`]: whether the segment is the one
//! its checkpoint describes, for the purger, `retrieve` and `restore`
//! alike). What is purger-specific stays here: the checkpoint's facts as
//! the reader's [`Expected`] ([`expected`]). A decoded record is the
//! segment reader's own `RowVersion` (the purger's `ArchivedVersion`).
//!
//! Guarantee: [`check_checkpoint`] makes exactly the checks of
//! [`cdc_segment::reader`] against the checkpoint's own table, partition,
//! offset range, row count and column names, so a segment the purger
//! accepts is one `retrieve` accepts for that checkpoint too.

use cdc_checkpoint::Checkpoint;
use cdc_segment::reader::{Expected, OpenError};
pub use cdc_segment::versions::{
    full_versions as full, versions, DecodeError, Fast, SegmentVersions,
};

/// What `cp` records about its segment, for [`cdc_segment::reader`]. A
/// checkpoint without a segment gives no size, checksum, count or columns
/// (those are then not checked).
pub fn expected(cp: &Checkpoint) -> Expected {
    let seg = cp.segment.as_ref();
    Expected {
        checkpoint: cp.path(),
        path: seg.map(|s| s.path.clone()).unwrap_or_default(),
        size: seg.map_or(0, |s| s.size),
        sha256: seg.map(|s| s.sha256.clone()).unwrap_or_default(),
        table: cp.table.clone(),
        partition: cp.partition,
        first_offset: cp.first_offset,
        last_offset: cp.last_offset,
        records: seg.map(|s| s.rows),
        columns: seg.map(|s| s.columns.clone()),
    }
}

/// Whether the segment is the one `cp` describes: the same table,
/// partition and offset range in its metadata, the row count and column
/// names the checkpoint recorded, and every record's offset in the range.
/// A segment that disagrees (another table's or partition's, an older
/// upload of another range, a rewritten file whose checksum was recorded
/// anyway) is not proof of anything for this checkpoint. (Its size and
/// sha256 are checked when it is fetched: `cdc_checkpoint::verify_segment`.)
pub fn check_checkpoint(seg: &SegmentVersions, cp: &Checkpoint) -> Result<(), OpenError> {
    cdc_segment::reader::check_versions(seg, &expected(cp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_segment::fixtures::{meta, row};
    use cdc_segment::ArchivedRow;

    fn checkpoint(bytes: &[u8], rows: u64) -> Checkpoint {
        let m = meta();
        Checkpoint {
            segment: Some(cdc_checkpoint::SegmentRef::describe(
                "t/segments/p2/x.avro".into(),
                bytes,
                rows,
                ["id", "note", "flag", "doc"].map(String::from).to_vec(),
            )),
            ..serde_json::from_value(serde_json::json!({
                "format_version": cdc_checkpoint::FORMAT_VERSION,
                "table": m.table, "topic": m.topic, "partition": m.partition, "partitions": 4,
                "first_offset": m.first_offset, "last_offset": m.last_offset, "segment": null,
                "counts": cdc_checkpoint::Counts::default(),
                "min_updated": null, "max_updated": null, "resolved": null, "key_filter": null,
                "writer_id": "w", "created_at": "2024-01-01T00:00:00Z"
            }))
            .unwrap()
        }
    }

    #[test]
    fn the_segment_must_be_the_one_the_checkpoint_describes() {
        let rows: Vec<ArchivedRow> = (0..20).map(row).collect();
        let bytes = cdc_segment::encode_segment(&meta(), &rows).unwrap();
        let Fast::Versions(seg) = versions(&bytes).unwrap() else {
            panic!("known layout")
        };
        let cp = checkpoint(&bytes, 20);
        check_checkpoint(&seg, &cp).unwrap();
        let refused = |cp: Checkpoint, what: &str| {
            let e = check_checkpoint(&seg, &cp).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        };
        refused(
            Checkpoint {
                table: "u".into(),
                ..cp.clone()
            },
            "cdc.table",
        );
        refused(
            Checkpoint {
                partition: 1,
                ..cp.clone()
            },
            "cdc.partition",
        );
        refused(
            Checkpoint {
                first_offset: 999,
                ..cp.clone()
            },
            "cdc.first_offset",
        );
        refused(
            Checkpoint {
                last_offset: 5001,
                ..cp.clone()
            },
            "cdc.last_offset",
        );
        refused(checkpoint(&bytes, 21), "20 records (checkpoint: 21)");
        let mut other_columns = cp.clone();
        other_columns.segment.as_mut().unwrap().columns.pop();
        refused(other_columns, "cdc.columns");
        // Records outside the range the metadata claims.
        let mut narrow = meta();
        narrow.last_offset = 1010;
        let bytes = cdc_segment::encode_segment(&narrow, &rows).unwrap();
        let Fast::Versions(seg) = versions(&bytes).unwrap() else {
            panic!("known layout")
        };
        let cp = Checkpoint {
            last_offset: 1010,
            ..checkpoint(&bytes, 20)
        };
        let e = check_checkpoint(&seg, &cp).unwrap_err().to_string();
        assert!(e.contains("outside the checkpoint's range"), "{e}");
        assert!(e.starts_with(&format!("checkpoint {}: segment t/segments/p2/x.avro: the segment is not the one the checkpoint describes: ", cp.path())), "{e}");
    }
}
