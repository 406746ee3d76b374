//! Builds a real archive the way the sink does: each flushed run of rows
//! becomes an Avro segment (the real `cdc_segment` encoder) uploaded to a
//! real object store (the local file system), then its checkpoint (the
//! real `cdc_checkpoint::create`, with the sink's key filter), offsets
//! contiguous per partition. Shared by the retrieve and run tests
//! (`#[path]`-included), so both build archives one way.
#![allow(dead_code)]

use std::collections::BTreeMap;

use cdc_changefeed::{Hlc, Op, Value};
use cdc_checkpoint::key_filter::KeyFilter;
use cdc_checkpoint::{Checkpoint, Counts, SegmentRef};
use cdc_common::storage::ArchiveStore;
use cdc_segment::{ArchivedRow, SegmentMeta};
use object_store::{ObjectStoreExt, PutPayload};

/// An archive under construction in a fresh temporary directory.
pub struct Archive {
    pub store: ArchiveStore,
    pub table: String,
    /// The archive's directory on disk (removed on drop).
    pub dir: tempfile::TempDir,
    /// Partitions of the topic, recorded in every checkpoint.
    pub partitions: i32,
    next_offset: BTreeMap<i32, i64>,
    last_resolved: BTreeMap<i32, Hlc>,
}

/// A row version to archive; the offset is assigned when it is written.
pub fn version(
    key_json: &str,
    updated: Hlc,
    xid: Option<u64>,
    columns: &[(&str, Value)],
) -> ArchivedRow {
    ArchivedRow {
        op: Op::Update,
        key_json: key_json.to_owned(),
        updated: Some(updated),
        mvcc_timestamp: None,
        pg_xid: xid,
        topic: String::new(),
        partition: 0,
        offset: 0,
        columns: columns
            .iter()
            .map(|(c, v)| ((*c).to_owned(), v.clone()))
            .collect(),
    }
}

impl Archive {
    /// An empty archive for `table` with `partitions` partitions.
    pub fn new(table: &str, partitions: i32) -> Self {
        let (store, dir) = cdc_tests::local_archive();
        Self {
            store,
            table: table.to_owned(),
            dir,
            partitions,
            next_offset: BTreeMap::new(),
            last_resolved: BTreeMap::new(),
        }
    }

    /// Offsets the next checkpoint of `partition` starts at.
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.next_offset.get(&partition).copied().unwrap_or(0)
    }

    /// Writes `rows` (at least one) as the next segment of `partition` and
    /// then its checkpoint, carrying `resolved` (or the partition's last
    /// one) like the sink. Returns the checkpoint.
    pub async fn flush(
        &mut self,
        partition: i32,
        rows: Vec<ArchivedRow>,
        resolved: Option<Hlc>,
    ) -> Checkpoint {
        let first = self.next_offset(partition);
        let rows: Vec<ArchivedRow> = rows
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.topic.clone_from(&self.table);
                r.partition = partition;
                r.offset = first + i as i64;
                r
            })
            .collect();
        let last = first + rows.len() as i64 - 1;
        let meta = SegmentMeta {
            table: self.table.clone(),
            topic: self.table.clone(),
            partition,
            first_offset: first,
            last_offset: last,
        };
        let body = cdc_segment::encode_segment(&meta, &rows).expect("encodable rows");
        let path =
            cdc_checkpoint::layout::segment_path(&self.table, partition, first, last, "test");
        self.store
            .store
            .put(&self.store.path(&path), PutPayload::from(body.clone()))
            .await
            .expect("segment upload");
        let filter = KeyFilter::from_key_json(rows.iter().map(|r| r.key_json.as_str()));
        if let Some(r) = resolved {
            self.last_resolved.insert(partition, r);
        }
        let columns = rows[0].columns.iter().map(|(c, _)| c.clone()).collect();
        let cp = Checkpoint {
            format_version: cdc_checkpoint::FORMAT_VERSION,
            table: self.table.clone(),
            topic: self.table.clone(),
            partition,
            partitions: self.partitions,
            first_offset: first,
            last_offset: last,
            segment: Some(SegmentRef::describe(
                path,
                &body,
                rows.len() as u64,
                columns,
            )),
            counts: Counts {
                events: rows.len() as u64,
                rows_archived: rows.len() as u64,
                ..Counts::default()
            },
            min_updated: rows.iter().filter_map(|r| r.updated).min(),
            max_updated: rows.iter().filter_map(|r| r.updated).max(),
            resolved: self.last_resolved.get(&partition).copied(),
            writer_id: "retrieve-test".into(),
            created_at: cdc_checkpoint::now_rfc3339(),
            key_filter: Some(filter.encode()),
            deletes: None,
            open_tail_xid: None,
        };
        cdc_checkpoint::create(&self.store, &cp)
            .await
            .expect("checkpoint create");
        self.next_offset.insert(partition, last + 1);
        cp
    }

    /// The file of a segment on disk.
    pub fn file_of(&self, cp: &Checkpoint) -> std::path::PathBuf {
        self.dir
            .path()
            .join(&cp.segment.as_ref().expect("segment").path)
    }
}
