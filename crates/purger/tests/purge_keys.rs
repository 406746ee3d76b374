//! Primary keys whose archived text must be cast back exactly: `char(n)`
//! and `bit(n)` keys (a cast that keeps the column's modifier, or worse
//! names `character`/`bit` without one, cuts the text), and primary keys
//! with INCLUDE columns (not key columns, and not in the archived keys).

mod common;

use cdc_common::ident::{quote_ident, TableName};
use cdc_purger::{PurgeError, PurgeOptions, PurgerConfig};
use cdc_segment::{ArchivedRow, RecordMeta};
use common::Fixture;

fn opts() -> PurgeOptions {
    PurgeOptions::default()
}

/// A table with a one-column key `k` of type `key_type` and `archived`.
struct KeyTable {
    client: tokio_postgres::Client,
    name: String,
    store: cdc_common::storage::ArchiveStore,
    _dir: tempfile::TempDir,
    cfg: PurgerConfig,
    offset: i64,
}

impl KeyTable {
    async fn new(prefix: &str, key_type: &str) -> Self {
        let client = cdc_tests::pg().await;
        let name = cdc_tests::unique(prefix);
        client
            .batch_execute(&format!(
                "CREATE TABLE {} (k {key_type} PRIMARY KEY, archived BOOLEAN NOT NULL DEFAULT false)",
                quote_ident(&name)
            ))
            .await
            .unwrap();
        let (store, dir) = cdc_tests::local_archive();
        let mut cfg = PurgerConfig::new(TableName::parse(&format!("public.{name}")).unwrap());
        cfg.database_url = cdc_tests::pg_url();
        cfg.storage.url = store.url.clone();
        cfg.batching.batch_size = 8;
        cfg.batching.min_batch_size = 2;
        Self {
            client,
            name,
            store,
            _dir: dir,
            cfg,
            offset: 0,
        }
    }

    fn q(&self) -> String {
        quote_ident(&self.name)
    }

    /// Inserts `keys` (SQL literals), marked, in ONE transaction: one xmin.
    async fn insert_one_transaction(&self, keys: &[&str]) {
        let values: Vec<String> = keys.iter().map(|k| format!("({k}, true)")).collect();
        self.client
            .batch_execute(&format!(
                "INSERT INTO {} (k, archived) VALUES {}",
                self.q(),
                values.join(", ")
            ))
            .await
            .unwrap();
    }

    /// Every row: (key as the changefeed's JSON array, xmin).
    async fn rows(&self) -> Vec<(String, u64)> {
        self.client
            .query(
                // to_json uses the type's output function, as wal2json
                // does: char(3) 'a' is "a  ".
                &format!(
                    "SELECT json_build_array(k)::text, xmin::text FROM {} ORDER BY k",
                    self.q()
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get::<_, String>(1).parse().unwrap()))
            .collect()
    }

    /// Archives the current versions of the rows whose key JSON is in
    /// `keys`, as one checkpoint.
    async fn archive(&mut self, keys: &[&str]) {
        let rows = self.rows().await;
        let events: Vec<ArchivedRow> = keys
            .iter()
            .map(|k| {
                let (key_json, xmin) = rows
                    .iter()
                    .find(|(j, _)| j == k)
                    .unwrap_or_else(|| panic!("no row {k} in {rows:?}"))
                    .clone();
                self.offset += 1;
                ArchivedRow {
                    op: cdc_changefeed::Op::Update,
                    meta: RecordMeta {
                        key_json: key_json.clone(),
                        updated: Some(cdc_changefeed::Hlc::new(
                            1_700_000_000_000_000_000 + self.offset,
                            0,
                        )),
                        mvcc_timestamp: None,
                        pg_xid: Some(xmin),
                        topic: self.name.clone(),
                        partition: 0,
                        offset: self.offset - 1,
                    },
                    columns: vec![
                        (
                            "k".into(),
                            cdc_changefeed::Value::String(
                                serde_json::from_str::<Vec<String>>(&key_json).unwrap()[0].clone(),
                            ),
                        ),
                        ("archived".into(), cdc_changefeed::Value::Bool(true)),
                    ],
                }
            })
            .collect();
        let first = events[0].meta.offset;
        common::write_checkpoint_to(&self.store, &self.name, 0, first, &events, None).await;
    }

    async fn purge(&self) -> cdc_purger::PurgeSummary {
        cdc_purger::purge(
            &self.cfg,
            &self.store,
            tokio_util::sync::CancellationToken::new(),
            &opts(),
        )
        .await
        .unwrap()
    }

    async fn keys_left(&self) -> Vec<String> {
        self.rows().await.into_iter().map(|(k, _)| k).collect()
    }

    async fn drop(self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.q()))
            .await;
    }
}

#[tokio::test]
async fn char_n_keys_delete_exactly_the_archived_key_never_a_shorter_one() {
    let mut t = KeyTable::new("codes", "CHAR(3)").await;
    // Each pair shares one xmin: the version guard alone cannot tell 'a'
    // from 'abc'; only the key comparison can.
    t.insert_one_transaction(&["'a'", "'abc'"]).await;
    t.insert_one_transaction(&["'b'", "'bcd'"]).await;
    t.insert_one_transaction(&["'c'", "'cde'"]).await;
    t.insert_one_transaction(&["'d'", "'def'"]).await;
    // Three versions in one batch (the paired statement), then one key on
    // its own (the uniform statement).
    t.archive(&["[\"abc\"]", "[\"bcd\"]", "[\"cde\"]"]).await;
    t.archive(&["[\"def\"]"]).await;
    let s = t.purge().await;
    assert!(s.ok(), "{}", s.render());
    assert_eq!(
        (
            s.totals.deleted,
            s.totals.already_gone,
            s.totals.skipped_changed
        ),
        (4, 0, 0),
        "{}",
        s.render()
    );
    assert_eq!(
        t.keys_left().await,
        ["[\"a  \"]", "[\"b  \"]", "[\"c  \"]", "[\"d  \"]"],
        "the archived 3-character keys are deleted, the 1-character ones kept"
    );
    // The blank-padded text the changefeed archives for 'a' deletes 'a'.
    t.archive(&["[\"a  \"]"]).await;
    let s = t.purge().await;
    assert_eq!(s.totals.deleted, 1, "{}", s.render());
    assert_eq!(t.keys_left().await, ["[\"b  \"]", "[\"c  \"]", "[\"d  \"]"]);
    t.drop().await;
}

#[tokio::test]
async fn bit_n_keys_are_read_at_their_full_length() {
    let mut t = KeyTable::new("flags", "BIT(3)").await;
    t.insert_one_transaction(&["B'100'", "B'101'"]).await;
    t.insert_one_transaction(&["B'110'", "B'111'"]).await;
    t.archive(&["[\"101\"]"]).await;
    t.archive(&["[\"110\"]", "[\"111\"]"]).await;
    let s = t.purge().await;
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.totals.deleted, 3, "{}", s.render());
    assert_eq!(t.keys_left().await, ["[\"100\"]"]);
    t.drop().await;
}

/// Replaces the fixture table's primary key with `PRIMARY KEY (id)
/// INCLUDE (payload)`.
async fn primary_key_with_include(f: &Fixture) {
    let pkey: String = f
        .client
        .query_one(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p'",
            &[&f.q()],
        )
        .await
        .unwrap()
        .get(0);
    f.sql(&format!(
        "ALTER TABLE {{t}} DROP CONSTRAINT {}, ADD PRIMARY KEY (id) INCLUDE (payload)",
        quote_ident(&pkey)
    ))
    .await;
}

#[tokio::test]
async fn include_columns_of_the_primary_key_are_not_key_columns() {
    let f = Fixture::new(20).await;
    primary_key_with_include(&f).await;
    f.mark(1, 20).await;
    f.archive(0, 0, 1, 20, true).await;
    let s = f.purge(&opts()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(s.totals.deleted, 20, "{}", s.render());
    assert!(f.snapshot().await.is_empty());
    f.drop().await;
}

#[tokio::test]
async fn an_index_that_only_includes_a_foreign_key_column_does_not_serve_it() {
    let f = Fixture::archived(5).await;
    f.sql("ALTER TABLE {t} ADD UNIQUE (id, payload)").await;
    let child = cdc_tests::unique("child");
    let qc = quote_ident(&child);
    // The foreign key is (pid, ppay); the index searches pid only and
    // merely stores ppay.
    f.sql(&format!(
        "CREATE TABLE {qc} (id INT PRIMARY KEY, pid BIGINT, ppay TEXT, \
         FOREIGN KEY (pid, ppay) REFERENCES {{t}} (id, payload));
         CREATE INDEX ON {qc} (pid) INCLUDE (ppay);"
    ))
    .await;
    let err = f.dry_run(&opts()).await.unwrap_err();
    let expected =
        format!("CREATE INDEX CONCURRENTLY ON \"public\".\"{child}\" (\"pid\", \"ppay\");");
    assert!(
        matches!(err, PurgeError::UnindexedForeignKeys { .. })
            && err.to_string().contains(&expected),
        "{err}"
    );
    // An index with both as key columns serves it (in either order).
    f.sql(&format!("CREATE INDEX ON {qc} (ppay, pid)")).await;
    let s = f.dry_run(&opts()).await.unwrap();
    assert_eq!(s.totals.would_delete, 5);
    assert!(s.preflight.referencing[0].indexed);
    f.sql(&format!("DROP TABLE {qc}")).await;
    f.drop().await;
}
