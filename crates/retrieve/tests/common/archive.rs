//! Builds a real archive the way the sink does: each flushed run of
//! events becomes an Avro segment of its rows and an Avro delete file of
//! its deletes (the real `cdc_segment` encoders) uploaded to a real object
//! store (the local file system), then its checkpoint (the real
//! `cdc_checkpoint::create`, with the sink's key filter over the rows),
//! offsets contiguous per partition. Shared by the retrieve and run tests
//! (`#[path]`-included), so both build archives one way.
#![allow(dead_code)]

use std::collections::BTreeMap;

use cdc_changefeed::{Hlc, Op, Value};
use cdc_checkpoint::key_filter::KeyFilter;
use cdc_checkpoint::{Checkpoint, Counts, DeletesRef, SegmentRef};
use cdc_common::storage::ArchiveStore;
use cdc_segment::{ArchivedRow, DeletedRow, RecordMeta, SegmentMeta};
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

/// One event of a flushed range, in offset order.
pub enum Event {
    /// A row version, archived in the segment.
    Row(ArchivedRow),
    /// A delete, recorded in the delete file.
    Delete(DeletedRow),
}

/// An event's metadata; topic, partition and offset are assigned when it
/// is written.
fn meta(key_json: &str, updated: Hlc, xid: Option<u64>) -> RecordMeta {
    RecordMeta {
        key_json: key_json.to_owned(),
        updated: Some(updated),
        mvcc_timestamp: None,
        pg_xid: xid,
        topic: String::new(),
        partition: 0,
        offset: 0,
    }
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
        meta: meta(key_json, updated, xid),
        columns: columns
            .iter()
            .map(|(c, v)| ((*c).to_owned(), v.clone()))
            .collect(),
    }
}

/// A delete by transaction `xid`, with the deleted row when the sink
/// keeps it (`before`: the columns of the archived version it deleted);
/// the offset is assigned when it is written.
pub fn deleted(key_json: &str, updated: Hlc, xid: u64, before: Option<&ArchivedRow>) -> DeletedRow {
    DeletedRow {
        meta: meta(key_json, updated, Some(xid)),
        before: before.map(|row| row.columns.clone()),
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
        let events = rows.into_iter().map(Event::Row).collect();
        self.flush_events(partition, events, resolved).await
    }

    /// Writes `events` (at least one) as the next range of `partition`: its
    /// rows as a segment, its deletes as a delete file (each only if there
    /// is one), then the checkpoint naming them, like the sink.
    pub async fn flush_events(
        &mut self,
        partition: i32,
        events: Vec<Event>,
        resolved: Option<Hlc>,
    ) -> Checkpoint {
        let first = self.next_offset(partition);
        let last = first + events.len() as i64 - 1;
        let (mut rows, mut deletes) = (Vec::new(), Vec::new());
        for (i, event) in events.into_iter().enumerate() {
            let offset = first + i as i64;
            match event {
                Event::Row(mut r) => {
                    let m = &mut r.meta;
                    (m.topic, m.partition, m.offset) = (self.table.clone(), partition, offset);
                    rows.push(r);
                }
                Event::Delete(mut d) => {
                    let m = &mut d.meta;
                    (m.topic, m.partition, m.offset) = (self.table.clone(), partition, offset);
                    deletes.push(d);
                }
            }
        }
        let meta = SegmentMeta {
            table: self.table.clone(),
            topic: self.table.clone(),
            partition,
            first_offset: first,
            last_offset: last,
        };
        let mut segment = None;
        if !rows.is_empty() {
            let body = cdc_segment::encode_segment(&meta, &rows).expect("encodable rows");
            let path =
                cdc_checkpoint::layout::segment_path(&self.table, partition, first, last, "test");
            self.upload(&path, &body).await;
            let columns = rows[0].columns.iter().map(|(c, _)| c.clone()).collect();
            segment = Some(SegmentRef::describe(
                path,
                &body,
                rows.len() as u64,
                columns,
            ));
        }
        let mut deletes_ref = None;
        if !deletes.is_empty() {
            let body = cdc_segment::encode_deletes(&meta, &deletes).expect("encodable deletes");
            let path =
                cdc_checkpoint::layout::deletes_path(&self.table, partition, first, last, "test");
            self.upload(&path, &body).await;
            deletes_ref = Some(DeletesRef::describe(path, &body, deletes.len() as u64));
        }
        let counts = Counts {
            events: (last - first + 1) as u64,
            rows_archived: rows.len() as u64,
            deletes: deletes.len() as u64,
            ..Counts::default()
        };
        self.checkpoint(
            partition,
            (first, last),
            &rows,
            segment,
            deletes_ref,
            counts,
            resolved,
        )
        .await
    }

    /// Writes a checkpoint of `deletes` delete events and nothing else, as
    /// the sink did before delete files existed: it counts them only.
    pub async fn flush_unrecorded_deletes(
        &mut self,
        partition: i32,
        deletes: u64,
        resolved: Option<Hlc>,
    ) -> Checkpoint {
        let first = self.next_offset(partition);
        let last = first + deletes as i64 - 1;
        let counts = Counts {
            events: deletes,
            deletes,
            ..Counts::default()
        };
        self.checkpoint(partition, (first, last), &[], None, None, counts, resolved)
            .await
    }

    async fn upload(&self, path: &str, body: &[u8]) {
        self.store
            .store
            .put(&self.store.path(path), PutPayload::from(body.to_vec()))
            .await
            .expect("upload");
    }

    /// Creates the checkpoint of offsets `range` and advances the chain.
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint(
        &mut self,
        partition: i32,
        (first, last): (i64, i64),
        rows: &[ArchivedRow],
        segment: Option<SegmentRef>,
        deletes: Option<DeletesRef>,
        counts: Counts,
        resolved: Option<Hlc>,
    ) -> Checkpoint {
        if let Some(r) = resolved {
            self.last_resolved.insert(partition, r);
        }
        let key_filter = (!rows.is_empty()).then(|| {
            KeyFilter::from_key_json(rows.iter().map(|r| r.meta.key_json.as_str())).encode()
        });
        let cp = Checkpoint {
            partitions: self.partitions,
            segment,
            counts,
            min_updated: rows.iter().filter_map(|r| r.meta.updated).min(),
            max_updated: rows.iter().filter_map(|r| r.meta.updated).max(),
            resolved: self.last_resolved.get(&partition).copied(),
            writer_id: "retrieve-test".into(),
            created_at: cdc_checkpoint::now_rfc3339(),
            key_filter,
            deletes,
            ..cdc_checkpoint::fixtures::checkpoint(&self.table, partition, first, last)
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

    /// The delete file of a checkpoint on disk.
    pub fn deletes_file_of(&self, cp: &Checkpoint) -> std::path::PathBuf {
        self.dir
            .path()
            .join(&cp.deletes.as_ref().expect("delete file").path)
    }
}
