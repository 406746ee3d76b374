//! Builds archive state the way the sink would, against the real stack:
//! rows in PostgreSQL, marked, their `xmin` read back, written as a segment
//! plus checkpoint into a real (local file system) object store.
#![allow(dead_code)]

use std::collections::BTreeMap;

use cdc_changefeed::{Hlc, Op, Value};
use cdc_checkpoint::{Checkpoint, Counts, SegmentRef};
use cdc_common::ident::{quote_ident, TableName};
use cdc_common::storage::ArchiveStore;
use cdc_purger::PurgerConfig;
use cdc_segment::{ArchivedRow, RecordMeta, SegmentMeta};
use object_store::{ObjectStoreExt, PutPayload};

/// One row as read from the table: every column as text (NULL as None).
pub type Snapshot = BTreeMap<i64, (Option<String>, Option<String>, bool, String)>;

/// The ids in `before` that are not in `after`.
pub fn deleted_ids(before: &Snapshot, after: &Snapshot) -> std::collections::BTreeSet<i64> {
    before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect()
}

pub struct Fixture {
    pub client: tokio_postgres::Client,
    pub table: String,
    pub store: ArchiveStore,
    pub dir: tempfile::TempDir,
    pub cfg: PurgerConfig,
}

impl Fixture {
    /// A table `(id bigint pk, payload text, amount numeric, archived bool)`
    /// with `rows` rows, ids 1..=rows, none marked.
    pub async fn new(rows: i64) -> Self {
        let client = cdc_tests::pg().await;
        let table = cdc_tests::unique("purge");
        let q = quote_ident(&table);
        client
            .batch_execute(&format!(
                "CREATE TABLE {q} (id BIGINT PRIMARY KEY, payload TEXT, amount NUMERIC(12,2), archived BOOLEAN NOT NULL DEFAULT false);
                 INSERT INTO {q} (id, payload, amount) SELECT g, 'row ' || g, g * 1.25 FROM generate_series(1, {rows}) g;"
            ))
            .await
            .unwrap();
        let (store, dir) = cdc_tests::local_archive();
        let mut cfg = PurgerConfig::new(TableName::parse(&format!("public.{table}")).unwrap());
        cfg.database_url = cdc_tests::pg_url();
        cfg.storage.url = store.url.clone();
        cfg.batching.batch_size = 8;
        cfg.batching.min_batch_size = 2;
        Self {
            client,
            table,
            store,
            dir,
            cfg,
        }
    }

    /// [`Fixture::new`] with every row marked and archived as one
    /// checkpoint of partition 0 at offset 0 (events with a version).
    pub async fn archived(rows: i64) -> Self {
        let f = Self::new(rows).await;
        f.mark(1, rows).await;
        f.archive(0, 0, 1, rows, true).await;
        f
    }

    /// The purge record of the checkpoint `partition`/`first_offset`, if
    /// one was written.
    pub async fn purge_record(
        &self,
        partition: i32,
        first_offset: i64,
    ) -> Option<cdc_checkpoint::PurgeRecord> {
        cdc_checkpoint::read_purge_record(&self.store, &self.table, partition, first_offset)
            .await
            .unwrap()
    }

    /// Creates a unique table `(id int pk, parent_id bigint)` whose
    /// `parent_id` references this table `ON DELETE <on_delete>`, then runs
    /// `then` (with `{c}` replaced by its quoted name). Returns the child's
    /// name and quoted name.
    pub async fn child_table(&self, on_delete: &str, then: &str) -> (String, String) {
        let child = cdc_tests::unique("child");
        let qc = quote_ident(&child);
        self.client
            .batch_execute(&format!(
                "CREATE TABLE {qc} (id INT PRIMARY KEY, parent_id BIGINT REFERENCES {} (id) ON DELETE {on_delete});{}",
                self.q(),
                then.replace("{c}", &qc)
            ))
            .await
            .unwrap();
        (child, qc)
    }

    /// [`Fixture::purge`] with `dry_run` set on top of `opts`.
    pub async fn dry_run(
        &self,
        opts: &cdc_purger::PurgeOptions,
    ) -> Result<cdc_purger::PurgeSummary, cdc_purger::PurgeError> {
        self.purge(&cdc_purger::PurgeOptions {
            dry_run: true,
            ..opts.clone()
        })
        .await
    }

    /// Runs `sql` with `{t}` replaced by the quoted table name.
    pub async fn sql(&self, sql: &str) {
        self.client
            .batch_execute(&sql.replace("{t}", &self.q()))
            .await
            .unwrap();
    }

    /// Runs the purger over this fixture's table and archive.
    pub async fn purge(
        &self,
        opts: &cdc_purger::PurgeOptions,
    ) -> Result<cdc_purger::PurgeSummary, cdc_purger::PurgeError> {
        let token = tokio_util::sync::CancellationToken::new();
        cdc_purger::purge(&self.cfg, &self.store, token, opts).await
    }

    pub fn q(&self) -> String {
        quote_ident(&self.table)
    }

    /// The purger's session gives up on a row lock after `ms` (SQLSTATE
    /// 55P03, retryable), and retries quickly and (nearly) without limit.
    pub fn lock_timeout_ms(&mut self, ms: u64) {
        let sep = if self.cfg.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        self.cfg.database_url = format!(
            "{}{sep}options=-c%20lock_timeout%3D{ms}",
            self.cfg.database_url
        );
        self.cfg.retry.initial_delay = std::time::Duration::from_millis(20);
        self.cfg.retry.max_delay = std::time::Duration::from_millis(100);
        self.cfg.retry.max_retries = 1000;
    }

    /// Marks ids `from..=to` archived (one transaction).
    pub async fn mark(&self, from: i64, to: i64) {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET archived = true WHERE id BETWEEN $1 AND $2",
                    self.q()
                ),
                &[&from, &to],
            )
            .await
            .unwrap();
    }

    /// Every row: id -> (payload, amount text, archived, xmin text).
    pub async fn snapshot(&self) -> Snapshot {
        self.client
            .query(
                &format!(
                    "SELECT id, payload, amount::text, archived, xmin::text FROM {} ORDER BY id",
                    self.q()
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
            .collect()
    }

    /// Archives the current versions of ids `from..=to` (which must be
    /// marked) as one segment + checkpoint of `partition` starting at
    /// `first_offset`, one Kafka offset per row. `with_xid = false` writes
    /// events without a version. Returns the checkpoint.
    pub async fn archive(
        &self,
        partition: i32,
        first_offset: i64,
        from: i64,
        to: i64,
        with_xid: bool,
    ) -> Checkpoint {
        let snap = self.snapshot().await;
        self.archive_from(&snap, partition, first_offset, from, to, with_xid)
            .await
    }

    /// [`Fixture::archive`] from a snapshot taken earlier.
    pub async fn archive_from(
        &self,
        snap: &Snapshot,
        partition: i32,
        first_offset: i64,
        from: i64,
        to: i64,
        with_xid: bool,
    ) -> Checkpoint {
        let rows: Vec<ArchivedRow> = (from..=to)
            .enumerate()
            .map(|(i, id)| {
                let xid = with_xid.then(|| snap[&id].3.parse().unwrap());
                self.event(snap, id, partition, first_offset + i as i64, xid)
            })
            .collect();
        self.write_checkpoint(partition, first_offset, &rows).await
    }

    /// The archived event of row `id` as it is in `snap` (which must show
    /// it marked), at Kafka `offset` (its `updated` grows with the offset),
    /// recording `pg_xid` as the event's transaction id.
    pub fn event(
        &self,
        snap: &Snapshot,
        id: i64,
        partition: i32,
        offset: i64,
        pg_xid: Option<u64>,
    ) -> ArchivedRow {
        let (payload, amount, archived, _xmin) =
            snap.get(&id).cloned().expect("row to archive exists");
        assert!(archived, "row {id} must be marked before it is archived");
        ArchivedRow {
            op: Op::Update,
            meta: RecordMeta {
                key_json: format!("[{id}]"),
                updated: Some(Hlc::new(1_700_000_000_000_000_000 + offset, 0)),
                mvcc_timestamp: None,
                pg_xid,
                topic: self.table.clone(),
                partition,
                offset,
            },
            columns: vec![
                ("id".into(), Value::Number(id.to_string())),
                ("payload".into(), payload.map_or(Value::Null, Value::String)),
                ("amount".into(), amount.map_or(Value::Null, Value::Number)),
                ("archived".into(), Value::Bool(true)),
            ],
        }
    }

    /// The `xmin` of row `id` in `snap`, as the PostgreSQL changefeed
    /// records it (32-bit form).
    pub fn xmin(snap: &Snapshot, id: i64) -> u64 {
        snap[&id].3.parse().unwrap()
    }

    /// Writes `rows` as a segment and its checkpoint (the sink's order:
    /// segment first, then the checkpoint).
    pub async fn write_checkpoint(
        &self,
        partition: i32,
        first_offset: i64,
        rows: &[ArchivedRow],
    ) -> Checkpoint {
        self.write_checkpoint_with(partition, first_offset, rows, None)
            .await
    }

    /// [`Fixture::write_checkpoint`] of a checkpoint that ends inside the
    /// source transaction `open_tail_xid` (the sink could not fit all of
    /// its events).
    pub async fn write_checkpoint_with(
        &self,
        partition: i32,
        first_offset: i64,
        rows: &[ArchivedRow],
        open_tail_xid: Option<u64>,
    ) -> Checkpoint {
        write_checkpoint_to(
            &self.store,
            &self.table,
            partition,
            first_offset,
            rows,
            open_tail_xid,
        )
        .await
    }

    /// The archived rows of a checkpoint, decoded back from storage.
    pub async fn archived_rows(&self, cp: &Checkpoint) -> Vec<ArchivedRow> {
        let bytes = cdc_checkpoint::verify_segment(&self.store, cp.segment.as_ref().unwrap())
            .await
            .unwrap();
        cdc_segment::decode_segment(&bytes).unwrap().rows
    }

    pub async fn drop(self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", self.q()))
            .await;
    }
}

/// The archived row's columns as the snapshot's text form.
pub fn as_snapshot_values(r: &ArchivedRow) -> (Option<String>, Option<String>) {
    let text = |name: &str| match r.columns.iter().find(|(c, _)| c == name).map(|(_, v)| v) {
        Some(Value::String(s)) | Some(Value::Number(s)) => Some(s.clone()),
        _ => None,
    };
    (text("payload"), text("amount"))
}

/// Writes `rows` as a segment of `table` and its checkpoint (the sink's
/// order: segment first, then the checkpoint). The checkpoint's offsets
/// start at `first_offset` and span the rows' offsets.
pub async fn write_checkpoint_to(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first_offset: i64,
    rows: &[ArchivedRow],
    open_tail_xid: Option<u64>,
) -> Checkpoint {
    let last_offset = rows
        .iter()
        .map(|r| r.meta.offset)
        .max()
        .unwrap()
        .max(first_offset + rows.len() as i64 - 1);
    let meta = SegmentMeta {
        table: table.to_owned(),
        topic: table.to_owned(),
        partition,
        first_offset,
        last_offset,
    };
    let bytes = cdc_segment::encode_segment(&meta, rows).unwrap();
    let path =
        cdc_checkpoint::layout::segment_path(table, partition, first_offset, last_offset, "t");
    store
        .store
        .put(&store.path(&path), PutPayload::from(bytes.clone()))
        .await
        .unwrap();
    let columns = rows[0].columns.iter().map(|(c, _)| c.clone()).collect();
    let cp = Checkpoint {
        partitions: 1,
        segment: Some(SegmentRef::describe(
            path,
            &bytes,
            rows.len() as u64,
            columns,
        )),
        counts: Counts {
            events: (last_offset - first_offset + 1) as u64,
            rows_archived: rows.len() as u64,
            ..Counts::default()
        },
        min_updated: rows.iter().filter_map(|r| r.meta.updated).min(),
        max_updated: rows.iter().filter_map(|r| r.meta.updated).max(),
        writer_id: "purger-test".into(),
        created_at: cdc_checkpoint::now_rfc3339(),
        open_tail_xid,
        ..cdc_checkpoint::fixtures::checkpoint(table, partition, first_offset, last_offset)
    };
    cdc_checkpoint::create(store, &cp).await.unwrap();
    cp
}
