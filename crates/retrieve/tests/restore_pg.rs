//! `restore` from a real archive (local file system) into real PostgreSQL
//! tables: the latest version of each key, exact values, idempotent,
//! column sets, and retries of 40001 and of a dropped connection.

#[path = "common/archive.rs"]
mod archive;
#[path = "common/payments.rs"]
mod payments;

use cdc_changefeed::Value;
use cdc_common::ident::{quote_ident, TableName};
use cdc_common::retry::RetryConfig;
use cdc_retrieve::{Found, RestoreError, RestoreOptions, Selector};
use payments::*;

/// Rows added after a schema change: they carry a `channel` column.
const NEW_SCHEMA_IDS: std::ops::Range<i64> = 5_000..5_003;

/// The payments archive plus one segment written after `channel` was
/// added, and every archived version of every key retrieved from it.
async fn archived_versions() -> (archive::Archive, Vec<Found>) {
    let (mut archive, _) = build("payments").await;
    let rows = NEW_SCHEMA_IDS
        .map(|n| {
            let mut cols = columns(&date_of(n), n, &amount_of(n), "EUR", "new schema");
            cols.push(("channel", Value::String("branch".into())));
            archive::version(&key_of(n), seg_base(SEGMENTS + n), Some(n as u64), &cols)
        })
        .collect();
    archive.flush(0, rows, None).await;
    let all = query(&archive, Selector::KeyPrefix(vec![]), true);
    let (found, _) = cdc_retrieve::retrieve(&archive.store, &all).await.unwrap();
    (archive, found)
}

struct Target {
    client: tokio_postgres::Client,
    name: String,
}

impl Target {
    /// The payments table, `channel` added later with a default; `extra`
    /// runs after it (with `{t}` the quoted name, `{n}` the bare one).
    async fn new(extra: &str) -> Self {
        let client = cdc_tests::pg().await;
        let name = cdc_tests::unique("restore");
        let t = quote_ident(&name);
        client
            .batch_execute(&format!(
                "CREATE TABLE {t} (booking_date DATE NOT NULL, id INT NOT NULL, amount NUMERIC NOT NULL,
                   currency TEXT NOT NULL, note TEXT, archived BOOL NOT NULL DEFAULT false,
                   channel TEXT NOT NULL DEFAULT 'web', PRIMARY KEY (booking_date, id));
                 {}",
                extra.replace("{t}", &t).replace("{n}", &name)
            ))
            .await
            .unwrap();
        Self { client, name }
    }

    fn opts(&self, batch_size: usize) -> RestoreOptions {
        RestoreOptions {
            table: TableName::parse(&format!("public.{}", self.name)).unwrap(),
            archived_column: "archived".into(),
            keep_archived_flag: false,
            batch_size,
        }
    }

    /// [`cdc_retrieve::restore_url`] into this table, default retries.
    async fn restore_url(
        &self,
        found: &[Found],
        batch_size: usize,
    ) -> Result<cdc_retrieve::RestoreSummary, RestoreError> {
        let (url, retry) = (cdc_tests::pg_url(), RetryConfig::default());
        cdc_retrieve::restore_url(&url, found, &self.opts(batch_size), &retry).await
    }

    /// Every row as PostgreSQL prints it, in key order.
    async fn snapshot(&self) -> Vec<Vec<String>> {
        let sql = format!(
            "SELECT booking_date::text, id::text, amount::text, currency, coalesce(note, 'NULL'), archived::text, channel \
             FROM {} ORDER BY booking_date, id",
            quote_ident(&self.name)
        );
        self.client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (0..7).map(|i| r.get::<_, String>(i)).collect())
            .collect()
    }

    async fn drop(self) {
        let _ = self
            .client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {} CASCADE",
                quote_ident(&self.name)
            ))
            .await;
    }
}

fn find<'a>(rows: &'a [Vec<String>], date: &str, id: i64) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == date && r[1] == id.to_string())
        .unwrap_or_else(|| panic!("row ({date}, {id}) restored"))
}

#[tokio::test]
async fn restore_writes_the_latest_version_exactly_and_a_second_restore_changes_nothing() {
    let (_archive, found) = archived_versions().await;
    let keys = (SEGMENTS * ROWS_PER_SEGMENT) as u64 + 1 + NEW_SCHEMA_IDS.count() as u64;
    assert_eq!(found.len() as u64, keys + 1, "K has two versions");
    let mut target = Target::new("").await;

    let opts = target.opts(300);
    let first = cdc_retrieve::restore(&mut target.client, &found, &opts)
        .await
        .unwrap();
    assert_eq!(first.rows, keys + 1);
    assert_eq!(first.older_versions_skipped, 1, "{first:?}");
    assert_eq!((first.inserted, first.already_present), (keys, 0));
    assert_eq!(
        first.column_sets, 2,
        "archived before and after `channel` was added"
    );
    assert_eq!(first.batches, 2001_u64.div_ceil(300) + 1);
    let rows = target.snapshot().await;
    assert_eq!(rows.len() as u64, keys);

    let k = find(&rows, "2024-02-29", 7);
    assert_eq!(k[2], "2.00", "the latest version of K, not the oldest");
    assert_eq!(
        find(&rows, &date_of(100), 100)[2],
        BIG,
        "30 digits, exactly"
    );
    assert_eq!(find(&rows, &date_of(101), 101)[2], BIG_NEIGHBOUR);
    assert_eq!(find(&rows, &date_of(102), 102)[2], "100.00");
    let seven = find(&rows, &date_of(7), 7);
    assert_eq!(seven[4], note_of(7));
    assert_eq!(
        seven[6], "web",
        "a column the archived row lacks takes its default"
    );
    let new = find(&rows, &date_of(5_000), 5_000);
    assert_eq!((new[4].as_str(), new[6].as_str()), ("new schema", "branch"));
    assert!(
        rows.iter().all(|r| r[5] == "false"),
        "restored rows are un-marked"
    );

    // Again, on sessions of its own: nothing changes.
    let again = target.restore_url(&found, 300).await.unwrap();
    assert_eq!((again.inserted, again.already_present), (0, keys));
    assert_eq!(
        target.snapshot().await,
        rows,
        "a second restore changes nothing"
    );
    target.drop().await;
}

#[tokio::test]
async fn a_missing_column_is_refused_before_anything_is_written() {
    let (_archive, found) = archived_versions().await;
    let mut target = Target::new("ALTER TABLE {t} DROP COLUMN note;").await;
    let opts = target.opts(100);
    let err = cdc_retrieve::restore(&mut target.client, &found, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RestoreError::MissingColumn { column, .. } if column == "note"),
        "{err}"
    );
    let n: i64 = target
        .client
        .query_one(
            &format!("SELECT count(*) FROM {}", quote_ident(&target.name)),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    target.drop().await;
}

/// A statement trigger that runs `action` in the first `times` INSERT
/// statements into the table (a sequence counts them: unlike the
/// statements, it is not rolled back).
fn failing_first(times: i64, action: &str) -> String {
    format!(
        "CREATE SEQUENCE {{n}}_attempts;
         CREATE FUNCTION {{n}}_fail() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('{{n}}_attempts') <= {times} THEN {action}; END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER {{n}}_fail BEFORE INSERT ON {{t}} FOR EACH STATEMENT EXECUTE FUNCTION {{n}}_fail();"
    )
}

async fn count(target: &Target) -> i64 {
    target
        .client
        .query_one(
            &format!("SELECT count(*) FROM {}", quote_ident(&target.name)),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn serialization_failures_are_retried_per_batch() {
    let (_archive, found) = archived_versions().await;
    let raise = "RAISE EXCEPTION 'injected' USING ERRCODE = '40001'";
    let mut target = Target::new(&failing_first(2, raise)).await;
    let opts = target.opts(1_000);
    let summary = cdc_retrieve::restore(&mut target.client, &found, &opts)
        .await
        .unwrap();
    assert_eq!(summary.retries, 2, "{summary:?}");
    assert_eq!(summary.inserted as i64, count(&target).await);
    assert_eq!(summary.already_present, 0);
    target.drop().await;
}

#[tokio::test]
async fn a_dropped_connection_is_reopened_by_restore_url_and_ends_restore_on_a_borrowed_client() {
    let (_archive, found) = archived_versions().await;
    let kill = "PERFORM pg_terminate_backend(pg_backend_pid())";
    let keys = found.len() as u64 - 1;

    let target = Target::new(&failing_first(1, kill)).await;
    let summary = target.restore_url(&found, 1_000).await.unwrap();
    assert!(summary.retries >= 1, "{summary:?}");
    assert_eq!((summary.inserted, summary.already_present), (keys, 0));
    assert_eq!(count(&target).await as u64, keys);
    target.drop().await;

    // The caller's own session cannot be re-opened: an error, and nothing
    // half-written by the killed batch; running it again finishes the job.
    let target = Target::new(&failing_first(1, kill)).await;
    let mut own = cdc_tests::pg().await;
    let err = cdc_retrieve::restore(&mut own, &found, &target.opts(1_000))
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::Db { .. }), "{err}");
    assert_eq!(count(&target).await, 0, "the killed batch was rolled back");
    let mut own = cdc_tests::pg().await;
    let done = cdc_retrieve::restore(&mut own, &found, &target.opts(1_000))
        .await
        .unwrap();
    assert_eq!(done.inserted, keys);
    target.drop().await;
}

/// An archived version of key `[id]` with column `v` holding `text`.
fn narrow_row(id: i64, text: &str) -> Found {
    let row = archive::version(
        &format!("[{id}]"),
        cdc_changefeed::Hlc {
            wall: 1_700_000_000_000_000_000 + id,
            logical: 0,
        },
        Some(100 + id as u64),
        &[
            ("id", Value::Number(id.to_string())),
            ("v", Value::String(text.to_owned())),
            ("archived", Value::Bool(true)),
        ],
    );
    Found {
        row,
        segment: "narrow/segments/p0/x.avro".into(),
        checkpoint_first_offset: 0,
    }
}

/// Restoring into a column narrower than the archived value (a `varchar`,
/// `char` or `bit` shortened, a `numeric` scale, `timestamp`/`time`/
/// `interval` precision reduced, also through a domain) is an error naming
/// the column and the key, and writes nothing, not even the rows of
/// earlier batches that fit. A value that fits is restored exactly
/// (`char(n)` pads, which `::text` does not show; `numeric(p,s)` shows its scale: the same value).
#[tokio::test]
async fn a_value_that_does_not_fit_a_narrowed_column_is_an_error_not_a_changed_value() {
    let client = cdc_tests::pg().await;
    let domain = cdc_tests::unique("restore_amount");
    client
        .batch_execute(&format!(
            "CREATE DOMAIN {} AS numeric(5,2)",
            quote_ident(&domain)
        ))
        .await
        .unwrap();
    // (column type, a value it would change, a value that fits, how the
    // fitting value reads back).
    let cases: Vec<(String, &str, &str, &str)> = vec![
        ("varchar(3)".into(), "abcd", "abc", "abc"),
        ("char(3)".into(), "abcd", "ab", "ab"), // stored padded; `::text` drops the blanks
        ("bit(3)".into(), "1011", "101", "101"),
        ("varbit(3)".into(), "1011", "10", "10"),
        ("numeric(5,2)".into(), "1.005", "1.5", "1.50"),
        ("numeric(5,2)".into(), "-999.999", "-999.99", "-999.99"),
        (
            "timestamp(0)".into(),
            "2025-06-10T10:00:00.6",
            "2025-06-10T10:00:01",
            "2025-06-10 10:00:01",
        ),
        (
            "timestamptz(3)".into(),
            "2025-06-10T10:00:00.1234Z",
            "2025-06-10T10:00:00.123Z",
            "2025-06-10 10:00:00.123+00",
        ),
        ("time(1)".into(), "10:00:00.25", "10:00:00.2", "10:00:00.2"),
        ("interval(0)".into(), "00:00:01.5", "00:00:02", "00:00:02"),
        ("interval day".into(), "1 day 02:00:00", "3 days", "3 days"),
        (quote_ident(&domain), "1.005", "1.5", "1.50"),
    ];
    // Batches of one (the misfit is in a later batch than a row that
    // fits) and of two (the misfit is found within its batch), in turn.
    for (n, (ty, misfit, fits, reads_back)) in cases.into_iter().enumerate() {
        let name = cdc_tests::unique("restore_narrow");
        let t = quote_ident(&name);
        client
            .batch_execute(&format!(
                "CREATE TABLE {t} (id int8 PRIMARY KEY, v {ty}, archived bool NOT NULL DEFAULT false);
                 SET TimeZone = 'UTC'"
            ))
            .await
            .unwrap();
        let opts = RestoreOptions {
            table: TableName::parse(&format!("public.{name}")).unwrap(),
            archived_column: "archived".into(),
            keep_archived_flag: false,
            batch_size: 1 + n % 2,
        };
        let rows = [narrow_row(1, fits), narrow_row(2, misfit)];
        let err =
            cdc_retrieve::restore_url(&cdc_tests::pg_url(), &rows, &opts, &RetryConfig::default())
                .await
                .expect_err(&format!("{misfit:?} into {ty} is refused"));
        match &err {
            RestoreError::DoesNotFit {
                column,
                key,
                sql_type,
                ..
            } => {
                assert_eq!((column.as_str(), key.as_str()), ("v", "[2]"), "{err}");
                assert!(!sql_type.is_empty(), "{err}");
            }
            other => panic!("{misfit:?} into {ty}: {other}"),
        }
        let written: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            written, 0,
            "{ty}: nothing written, not even the row that fits"
        );

        let summary = cdc_retrieve::restore_url(
            &cdc_tests::pg_url(),
            &rows[..1],
            &opts,
            &RetryConfig::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{fits:?} into {ty}: {e}"));
        assert_eq!(summary.inserted, 1);
        let back: String = client
            .query_one(&format!("SELECT v::text FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(back, reads_back, "{ty}");
        client
            .batch_execute(&format!("DROP TABLE {t}"))
            .await
            .unwrap();
    }
    client
        .batch_execute(&format!("DROP DOMAIN {}", quote_ident(&domain)))
        .await
        .unwrap();
}
