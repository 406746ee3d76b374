//! Pure path builders for the archive layout, and their inverses.
//!
//! Every path is relative to the archive root (`ArchiveStore::path` adds
//! the root). Offsets are zero-padded to 20 digits so that lexical order is
//! offset order, which is what object store listings return.

/// `<table>/segments/p<partition>/`
pub fn segments_dir(table: &str, partition: i32) -> String {
    format!("{table}/segments/p{partition}/")
}

/// `<table>/segments/<first:020>-<last:020>.<nonce>.avro`.
///
/// The nonce (unique per upload) means two writers that flush the same
/// offset range (a zombie after a rebalance, a restart after a crash
/// between upload and checkpoint) never overwrite each other's object: the
/// segment a checkpoint names, with its sha256, can never be replaced.
pub fn segment_path(table: &str, partition: i32, first: i64, last: i64, nonce: &str) -> String {
    format!("{table}/segments/p{partition}/{first:020}-{last:020}.{nonce}.avro")
}

/// `<table>/deletes/p<partition>/<first:020>-<last:020>.<nonce>.avro`: the
/// delete events of the checkpoint covering `first..=last` (named the way
/// segments are, and for the same reason).
pub fn deletes_path(table: &str, partition: i32, first: i64, last: i64, nonce: &str) -> String {
    format!("{table}/deletes/p{partition}/{first:020}-{last:020}.{nonce}.avro")
}

/// `<table>/deletes/`
pub fn deletes_root(table: &str) -> String {
    format!("{table}/deletes/")
}

/// `<table>/checkpoints/p<partition>/`
pub fn checkpoints_dir(table: &str, partition: i32) -> String {
    format!("{table}/checkpoints/p{partition}/")
}

/// `<table>/checkpoints/` (one `p<partition>` folder per partition).
pub fn checkpoints_root(table: &str) -> String {
    format!("{table}/checkpoints/")
}

/// `<table>/segments/`
pub fn segments_root(table: &str) -> String {
    format!("{table}/segments/")
}

/// `<table>/checkpoints/p<partition>/<first:020>.json`
pub fn checkpoint_path(table: &str, partition: i32, first: i64) -> String {
    format!("{table}/checkpoints/p{partition}/{first:020}.json")
}

/// `<table>/purged/p<partition>/<first:020>.json`: the purge record of the
/// checkpoint that starts at `first`.
pub fn purged_path(table: &str, partition: i32, first: i64) -> String {
    format!("{table}/purged/p{partition}/{first:020}.json")
}

/// `<table>/replays/<replay-id>/p<partition>/<first:020>.json`: what a
/// replay of the purger did for the checkpoint that starts at `first` (a
/// new object per replay; the checkpoint's purge record is never
/// rewritten).
pub fn replay_record_path(table: &str, replay_id: &str, partition: i32, first: i64) -> String {
    format!("{table}/replays/{replay_id}/p{partition}/{first:020}.json")
}

/// `<table>/purged/p<partition>/`
pub fn purged_dir(table: &str, partition: i32) -> String {
    format!("{table}/purged/p{partition}/")
}

/// `<table>/manifests/p<partition>/`
pub fn manifests_dir(table: &str, partition: i32) -> String {
    format!("{table}/manifests/p{partition}/")
}

/// `<table>/manifests/p<partition>/<last:020>-<tail_first:020>.json`: the
/// chain up to `last` in one object; `tail_first` is the first offset of
/// its last checkpoint (so that the latest checkpoint can be read without
/// reading the manifest).
pub fn manifest_path(table: &str, partition: i32, last: i64, tail_first: i64) -> String {
    format!("{table}/manifests/p{partition}/{last:020}-{tail_first:020}.json")
}

/// `<last:020>-<tail_first:020>.json` -> (last, tail_first).
pub fn parse_manifest_name(path: &str) -> Option<(i64, i64)> {
    let stem = file_name(path).strip_suffix(".json")?;
    let (last, first) = stem.split_once('-')?;
    Some((offset(last)?, offset(first)?))
}

/// A new id for a run, a gc, a replay or a rewind, which names its objects:
/// `<UTC time to the second>-<8 random hex digits>` (ids sort by time).
pub fn new_id(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{}",
        at.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `<table>/audits/<run-id>/<stamp>.json`: one audit of a run (its
/// SHA-256 beside it, `….json.sha256`).
pub fn audit_path(table: &str, run_id: &str, stamp: &str) -> String {
    format!("{table}/audits/{run_id}/{stamp}.json")
}

/// `<table>/gc/<gc-id>.json`: the record of one gc (what it removed).
pub fn gc_path(table: &str, gc_id: &str) -> String {
    format!("{table}/gc/{gc_id}.json")
}

/// `<table>/rewinds/`: rewind records (`<id>.json`) and the objects each
/// moved aside (`<id>/…`).
pub fn rewinds_dir(table: &str) -> String {
    format!("{table}/rewinds/")
}

/// `<table>/rewinds/<rewind-id>.json`: the record of one rewind.
pub fn rewind_path(table: &str, rewind_id: &str) -> String {
    format!("{table}/rewinds/{rewind_id}.json")
}

/// `<table>/progress/p<partition>.json`: the partition's idle progress
/// (one object per partition, replaced in place).
pub fn progress_path(table: &str, partition: i32) -> String {
    format!("{table}/progress/p{partition}.json")
}

/// `<table>/quarantine/p<partition>/<offset:020>.json`
pub fn quarantine_path(table: &str, partition: i32, offset: i64) -> String {
    format!("{table}/quarantine/p{partition}/{offset:020}.json")
}

/// `<table>/quarantine/p<partition>/`
pub fn quarantine_dir(table: &str, partition: i32) -> String {
    format!("{table}/quarantine/p{partition}/")
}

/// `<table>/runs/<run-id>.json`
pub fn run_path(table: &str, run_id: &str) -> String {
    format!("{table}/runs/{run_id}.json")
}

fn offset(digits: &str) -> Option<i64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The last `/`-separated part of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `<first:020>.json` -> first (works on a full path too). Also used for
/// purge and quarantine records, which are named the same way.
pub fn parse_checkpoint_name(path: &str) -> Option<i64> {
    offset(file_name(path).strip_suffix(".json")?)
}

/// `<table>/checkpoints/p<partition>/<first:020>.json` -> (table,
/// partition, first); a leading `/` is ignored.
pub fn parse_checkpoint_path(path: &str) -> Option<(&str, i32, i64)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [table, "checkpoints", p, name] => {
            Some((table, parse_partition_dir(p)?, parse_checkpoint_name(name)?))
        }
        _ => None,
    }
}

/// `<first:020>-<last:020>[.<nonce>].avro` -> (first, last).
pub fn parse_segment_name(path: &str) -> Option<(i64, i64)> {
    let stem = file_name(path).strip_suffix(".avro")?;
    let range = stem.split_once('.').map_or(stem, |(r, _nonce)| r);
    let (first, last) = range.split_once('-')?;
    Some((offset(first)?, offset(last)?))
}

/// `p<partition>` -> partition.
pub fn parse_partition_dir(part: &str) -> Option<i32> {
    let digits = part.strip_prefix('p')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let s = segment_path("payments", 3, 0, 1234, "ab12cd34");
        assert_eq!(
            s,
            "payments/segments/p3/00000000000000000000-00000000000000001234.ab12cd34.avro"
        );
        assert_eq!(parse_segment_name(&s), Some((0, 1234)));
        let d = deletes_path("payments", 3, 0, 1234, "ab12cd34");
        assert_eq!(
            d,
            "payments/deletes/p3/00000000000000000000-00000000000000001234.ab12cd34.avro"
        );
        assert_eq!(parse_segment_name(&d), Some((0, 1234)));
        assert_eq!(
            parse_segment_name("00000000000000000007-00000000000000000009.avro"),
            Some((7, 9))
        );
        let c = checkpoint_path("payments", 3, 1235);
        assert_eq!(c, "payments/checkpoints/p3/00000000000000001235.json");
        assert_eq!(parse_checkpoint_name(&c), Some(1235));
        assert_eq!(
            parse_checkpoint_name(&purged_path("t", 0, i64::MAX)),
            Some(i64::MAX)
        );
        assert_eq!(
            quarantine_path("t", 1, 42),
            "t/quarantine/p1/00000000000000000042.json"
        );
        assert_eq!(run_path("t", "r1"), "t/runs/r1.json");
        assert_eq!(progress_path("t", 3), "t/progress/p3.json");
        let m = manifest_path("t", 2, 119, 110);
        assert_eq!(
            m,
            "t/manifests/p2/00000000000000000119-00000000000000000110.json"
        );
        assert_eq!(parse_manifest_name(&m), Some((119, 110)));
        assert_eq!(parse_manifest_name("t/manifests/p2/x.json"), None);
        assert_eq!(parse_partition_dir("p17"), Some(17));
    }

    #[test]
    fn rejects_foreign_names() {
        assert_eq!(parse_checkpoint_name("t/checkpoints/p0/12.json"), None);
        assert_eq!(
            parse_checkpoint_name("t/checkpoints/p0/0000000000000000001x.json"),
            None
        );
        assert_eq!(
            parse_checkpoint_name("t/checkpoints/p0/00000000000000000012.json#1"),
            None
        );
        assert_eq!(parse_segment_name("t/segments/p0/x.avro"), None);
        assert_eq!(parse_partition_dir("p"), None);
        assert_eq!(parse_partition_dir("q1"), None);
        assert_eq!(parse_partition_dir("p-1"), None);
    }
}
