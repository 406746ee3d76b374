//! The marker against a real PostgreSQL (the local stack, or CDC_PG_URL).
//! Every table records each `archived` flip in a side table through a
//! trigger, so "marked exactly once" is counted by the database itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_common::ident::{quote_ident, TableName};
use cdc_common::retry::RetryConfig;
use cdc_marker::{
    mark, CutoffConfig, MarkError, MarkSummary, MarkerConfig, Progress, StopReason, WritePosition,
};
use tokio_util::sync::CancellationToken;

/// Rows are created one second apart from this instant; `id` seconds.
const EPOCH: &str = "2020-01-01T00:00:00Z";

/// A test table `id bigint pk, created_at, archived, payload` with `rows`
/// rows, plus `<t>_flips` filled by a trigger on every false->true flip.
struct Fixture {
    client: tokio_postgres::Client,
    table: String,
}

impl Fixture {
    async fn new(prefix: &str, rows: i64) -> Self {
        let client = cdc_tests::pg().await;
        let table = cdc_tests::unique(prefix);
        let t = quote_ident(&table);
        let flips = quote_ident(&format!("{table}_flips"));
        let func = quote_ident(&format!("{table}_flip_fn"));
        client
            .batch_execute(&format!(
                "CREATE TABLE {t} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, \
                   archived boolean NOT NULL DEFAULT false, payload int NOT NULL DEFAULT 0);
                 CREATE TABLE {flips} (id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
                 CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $f$
                   BEGIN INSERT INTO {flips} (id) VALUES (NEW.id); RETURN NEW; END $f$;
                 CREATE TRIGGER flip AFTER UPDATE ON {t} FOR EACH ROW
                   WHEN (NEW.archived AND NOT OLD.archived) EXECUTE FUNCTION {func}();
                 INSERT INTO {t} (id, created_at)
                   SELECT g, '{EPOCH}'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g;
                 ANALYZE {t};"
            ))
            .await
            .expect("create fixture table");
        Self { client, table }
    }

    /// Rows with id <= `n` are eligible under this cutoff.
    fn cfg(&self, eligible_up_to: i64) -> MarkerConfig {
        let mut cfg =
            MarkerConfig::new(TableName::parse(&format!("public.{}", self.table)).unwrap());
        cfg.cutoff = Some(CutoffConfig {
            column: "created_at".into(),
            older_than: None,
            before: Some(instant(eligible_up_to)),
        });
        cfg
    }

    async fn count(&self, condition: &str) -> i64 {
        self.client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE {condition}",
                    quote_ident(&self.table)
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// (total flips, ids flipped more than once).
    async fn flips(&self) -> (i64, i64) {
        let flips = quote_ident(&format!("{}_flips", self.table));
        let r = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {flips}), \
                            (SELECT count(*) FROM (SELECT id FROM {flips} GROUP BY id HAVING count(*) > 1) d)"
                ),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// Installs a statement trigger that runs `action` on the marker's
    /// UPDATE statements whose ordinal (counted by a sequence that
    /// failures do not roll back) satisfies `nth`, e.g. `"% 3 = 0"`.
    /// Returns the sequence's quoted name.
    async fn on_marker_update(&self, nth: &str, action: &str) -> String {
        let t = quote_ident(&self.table);
        let seq = quote_ident(&format!("{}_seq", self.table));
        let func = quote_ident(&format!("{}_fail_fn", self.table));
        self.client
            .batch_execute(&format!(
                "CREATE SEQUENCE {seq};
                 CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $f$
                   BEGIN
                     IF current_setting('application_name') = 'cdc-marker' AND nextval('{seq_lit}') {nth} THEN
                       {action};
                     END IF;
                     RETURN NULL;
                   END $f$;
                 CREATE TRIGGER fail BEFORE UPDATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {func}();",
                seq_lit = seq.replace('\'', "''"),
            ))
            .await
            .expect("install the failure trigger");
        seq
    }

    async fn drop(self) {
        let t = &self.table;
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {} CASCADE; DROP TABLE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}() CASCADE; \
                 DROP SEQUENCE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}() CASCADE;",
                quote_ident(t),
                quote_ident(&format!("{t}_flips")),
                quote_ident(&format!("{t}_flip_fn")),
                quote_ident(&format!("{t}_seq")),
                quote_ident(&format!("{t}_fail_fn")),
            ))
            .await
            .unwrap();
    }
}

/// The instant just after row `id` was created.
fn instant(id: i64) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(EPOCH).unwrap()
        + chrono::Duration::milliseconds(id * 1000 + 500);
    t.to_rfc3339()
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
        max_retries: 8,
    }
}

async fn run(cfg: &MarkerConfig) -> Result<MarkSummary, MarkError> {
    mark(&cdc_tests::pg_url(), cfg, CancellationToken::new(), |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marks_every_eligible_row_exactly_once_under_foreground_writes() {
    const ROWS: i64 = 100_000;
    const ELIGIBLE: i64 = 60_000;
    let fx = Fixture::new("mark_load", ROWS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut writers = Vec::new();
    // Inserter: new rows (ineligible: created now), and a few old-dated ones.
    {
        let (stop, ops, errors, t) = (
            stop.clone(),
            ops.clone(),
            errors.clone(),
            quote_ident(&fx.table),
        );
        writers.push(tokio::spawn(async move {
            let c = cdc_tests::pg().await;
            let mut id = 1_000_000i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sql = format!(
                    "INSERT INTO {t} (id, created_at) VALUES ($1, now()), ($1 + 500000000, now())"
                );
                if let Err(e) = c.execute(&sql, &[&id]).await {
                    errors.lock().unwrap().push(e.to_string());
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Updaters: touch random rows (eligible or not) in short transactions
    // that hold the row lock for a few milliseconds.
    for seed in 0..3u64 {
        let (stop, ops, errors, t) = (
            stop.clone(),
            ops.clone(),
            errors.clone(),
            quote_ident(&fx.table),
        );
        writers.push(tokio::spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut c = cdc_tests::pg().await;
            while !stop.load(Ordering::Relaxed) {
                let id: i64 = rng.random_range(1..=ROWS);
                let res = async {
                    let tx = c.transaction().await?;
                    tx.execute(
                        &format!("UPDATE {t} SET payload = payload + 1 WHERE id = $1"),
                        &[&id],
                    )
                    .await?;
                    tx.execute("SELECT pg_sleep(0.002)", &[]).await?;
                    tx.commit().await
                }
                .await;
                if let Err(e) = res {
                    errors.lock().unwrap().push(e.to_string());
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut cfg = fx.cfg(ELIGIBLE);
    cfg.batching.batch_size = 500;
    let ops_at_start = ops.load(Ordering::Relaxed);
    let summary = run(&cfg).await.expect("marker run");
    let ops_during = ops.load(Ordering::Relaxed) - ops_at_start;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    assert!(
        errors.lock().unwrap().is_empty(),
        "foreground writers failed: {:?}",
        errors.lock().unwrap()
    );
    assert!(
        ops_during > 0,
        "the foreground writers did not run during the marker"
    );
    assert_eq!(summary.stop_reason, StopReason::Completed);
    assert_eq!(summary.eligible_at_start, Some(ELIGIBLE as u64));
    assert_eq!(summary.rows_left_locked, 0);
    assert_eq!(summary.rows_marked, ELIGIBLE as u64, "{summary:?}");
    assert_eq!(
        fx.count(&format!("id <= {ELIGIBLE} AND NOT archived"))
            .await,
        0,
        "eligible rows left unmarked"
    );
    assert_eq!(
        fx.count(&format!(
            "archived AND created_at >= '{}'",
            instant(ELIGIBLE)
        ))
        .await,
        0,
        "ineligible rows marked"
    );
    let (flips, twice) = fx.flips().await;
    assert_eq!(flips, ELIGIBLE, "each eligible row flipped exactly once");
    assert_eq!(twice, 0, "no row flipped twice");
    assert!(summary.batches >= (ELIGIBLE / 500) as u64, "{summary:?}");
    assert!(
        matches!(summary.last_write_position, Some(WritePosition::PgLsn(_))),
        "{summary:?}"
    );
    assert!(summary.last_write_at.is_some());
    fx.drop().await;
}

#[tokio::test]
async fn locked_rows_are_skipped_without_waiting_and_marked_by_a_later_run() {
    let fx = Fixture::new("mark_locked", 1000).await;
    let mut holder = cdc_tests::pg().await;
    let tx = holder.transaction().await.unwrap();
    let locked = tx
        .query(
            &format!(
                "SELECT id FROM {} WHERE id BETWEEN 100 AND 110 FOR UPDATE",
                quote_ident(&fx.table)
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(locked.len(), 11);

    let mut cfg = fx.cfg(1000);
    cfg.batching.batch_size = 50;
    cfg.batching.min_batch_size = 5;
    cfg.revisit_rounds = 2;
    // A marker that waited on the lock would never finish while `tx` is open.
    let first = tokio::time::timeout(Duration::from_secs(120), run(&cfg))
        .await
        .expect("the marker waited on rows locked by another session")
        .unwrap();
    assert_eq!(first.rows_marked, 989, "{first:?}");
    assert_eq!(first.rows_left_locked, 11, "{first:?}");
    assert!(first.rows_skipped_locked >= 11, "{first:?}");
    assert_eq!(fx.count("id BETWEEN 100 AND 110 AND archived").await, 0);
    tx.commit().await.unwrap();

    let second = run(&cfg).await.unwrap();
    assert_eq!(second.rows_marked, 11, "{second:?}");
    assert_eq!(second.rows_left_locked, 0);
    assert_eq!(fx.count("NOT archived").await, 0);
    assert_eq!(fx.flips().await, (1000, 0));
    fx.drop().await;
}

/// Marks with `cfg` while another session holds `FOR UPDATE` locks on the
/// rows `ids`, released once `release_at` rows are marked (the walk has
/// passed them; the revisit rounds, with growing pauses, may find them free).
async fn mark_with_locks_released_at(
    fx: &Fixture,
    cfg: &MarkerConfig,
    ids: &str,
    release_at: u64,
) -> MarkSummary {
    let holder = cdc_tests::pg().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM {} WHERE id IN ({ids}) FOR UPDATE",
            quote_ident(&fx.table)
        ))
        .await
        .unwrap();
    let released = Arc::new(tokio::sync::Notify::new());
    let r = released.clone();
    let committer = tokio::spawn(async move {
        r.notified().await;
        holder.batch_execute("COMMIT").await.unwrap();
    });
    let once = std::sync::Once::new();
    let summary = mark(&cdc_tests::pg_url(), cfg, CancellationToken::new(), |p| {
        if let Progress::Batch { total, .. } = p {
            if *total >= release_at {
                once.call_once(|| released.notify_one());
            }
        }
    })
    .await
    .unwrap();
    committer.await.unwrap();
    summary
}

#[tokio::test]
async fn rows_unlocked_during_the_run_are_revisited() {
    let fx = Fixture::new("mark_revisit", 2000).await;
    let mut cfg = fx.cfg(2000);
    cfg.batching.batch_size = 100;
    cfg.revisit_rounds = 50;
    let summary = mark_with_locks_released_at(&fx, &cfg, "7, 1500", 1998).await;
    assert_eq!(summary.rows_marked, 2000, "{summary:?}");
    assert_eq!(summary.rows_left_locked, 0);
    assert_eq!(summary.rows_skipped_locked, 2);
    assert_eq!(fx.flips().await, (2000, 0));
    fx.drop().await;
}

#[tokio::test]
async fn serialization_failures_are_retried_and_shrink_the_batch() {
    let fx = Fixture::new("mark_40001", 5000).await;
    // Every third UPDATE statement from the marker fails with 40001. The
    // sequence is not rolled back with the failed statement, so it counts
    // attempts.
    let seq = fx
        .on_marker_update(
            "% 3 = 0",
            "RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001'",
        )
        .await;
    let mut cfg = fx.cfg(4000);
    cfg.batching.batch_size = 400;
    cfg.batching.min_batch_size = 10;
    cfg.retry = fast_retry();
    let retrying = Mutex::new(0u64);
    let summary = mark(&cdc_tests::pg_url(), &cfg, CancellationToken::new(), |p| {
        if matches!(p, Progress::Retrying { .. }) {
            *retrying.lock().unwrap() += 1;
        }
    })
    .await
    .unwrap();
    let attempts: i64 = fx
        .client
        .query_one(&format!("SELECT last_value FROM {seq}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(summary.rows_marked, 4000, "{summary:?}");
    assert_eq!(
        summary.retries,
        (attempts / 3) as u64,
        "{summary:?} after {attempts} attempts"
    );
    assert!(summary.retries >= 3, "{summary:?}");
    assert_eq!(*retrying.lock().unwrap(), summary.retries);
    assert!(summary.batch_size_decreases >= 1, "{summary:?}");
    assert!(summary.batch_size_smallest <= 200, "{summary:?}");
    assert_eq!(fx.count("id > 4000 AND archived").await, 0);
    assert_eq!(fx.flips().await, (4000, 0));
    fx.drop().await;
}

#[tokio::test]
async fn a_dropped_connection_is_reconnected_and_retried() {
    let fx = Fixture::new("mark_drop", 3000).await;
    // The marker's 2nd and 5th UPDATE statements kill their own session.
    fx.on_marker_update(
        "IN (2, 5)",
        "PERFORM pg_terminate_backend(pg_backend_pid())",
    )
    .await;
    let mut cfg = fx.cfg(3000);
    cfg.batching.batch_size = 500;
    cfg.retry = fast_retry();
    let summary = run(&cfg).await.unwrap();
    assert_eq!(summary.rows_marked, 3000, "{summary:?}");
    assert_eq!(summary.retries, 2, "{summary:?}");
    assert_eq!(fx.flips().await, (3000, 0));
    fx.drop().await;
}

/// `max_rows` bounds the whole run, the revisit of rows that were locked
/// during the walk included: a row freed after the limit was reached is
/// left for the next run.
#[tokio::test]
async fn the_revisit_of_locked_rows_respects_max_rows() {
    let fx = Fixture::new("mark_revisit_limit", 2000).await;
    let mut cfg = fx.cfg(2000);
    cfg.batching.batch_size = 100;
    cfg.revisit_rounds = 50;
    cfg.max_rows = Some(1000);
    let summary = mark_with_locks_released_at(&fx, &cfg, "7", 1000).await;
    assert_eq!(summary.stop_reason, StopReason::MaxRows);
    assert_eq!(summary.rows_marked, 1000, "{summary:?}");
    assert_eq!(fx.count("archived").await, 1000);
    assert_eq!(
        fx.count("id = 7 AND NOT archived").await,
        1,
        "the deferred row waits for the next run"
    );
    fx.drop().await;
}

#[tokio::test]
async fn limits_stop_the_run_and_a_restart_resumes() {
    let fx = Fixture::new("mark_limits", 1000).await;
    let mut cfg = fx.cfg(900);
    cfg.batching.batch_size = 100;
    cfg.max_rows = Some(250);
    let s = run(&cfg).await.unwrap();
    assert_eq!(s.stop_reason, StopReason::MaxRows);
    assert_eq!(s.rows_marked, 250);
    assert_eq!(fx.count("archived").await, 250);
    assert_eq!(
        fx.count("id <= 250 AND archived").await,
        250,
        "walks in key order"
    );

    // Shutdown after the first batch: that batch completes, nothing more.
    cfg.max_rows = None;
    let token = CancellationToken::new();
    let t2 = token.clone();
    let s = mark(&cdc_tests::pg_url(), &cfg, token, |p| {
        if matches!(p, Progress::Batch { .. }) {
            t2.cancel();
        }
    })
    .await
    .unwrap();
    assert_eq!(s.stop_reason, StopReason::Shutdown);
    assert_eq!(s.rows_marked, 100);
    assert_eq!(s.eligible_at_start, Some(650));

    // Rate-limited to the end.
    cfg.batching.max_rows_per_second = Some(100_000);
    let s = run(&cfg).await.unwrap();
    assert_eq!(s.stop_reason, StopReason::Completed);
    assert_eq!(s.rows_marked, 550);
    assert_eq!(fx.flips().await, (900, 0));

    // Nothing left: a run marks nothing and reports no write position.
    let s = run(&cfg).await.unwrap();
    assert_eq!((s.rows_marked, s.eligible_at_start), (0, Some(0)));
    assert_eq!(s.last_write_position, None);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["stop_reason"], "completed");
    assert_eq!(json["dialect"], "postgres");
    fx.drop().await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_names_the_missing_index() {
    let fx = Fixture::new("mark_dry", 50_000).await;
    let t = quote_ident(&fx.table);
    // Most rows already archived: the primary key alone is a poor way to
    // find the last thousand, and the planner reads the whole table.
    fx.client
        .batch_execute(&format!("UPDATE {t} SET archived = true WHERE id <= 49000"))
        .await
        .unwrap();
    fx.client
        .batch_execute(&format!("VACUUM ANALYZE {t}"))
        .await
        .unwrap();
    let cfg = fx.cfg(50_000);
    let dry = cdc_marker::dry_run(&cdc_tests::pg_url(), &cfg)
        .await
        .unwrap();
    assert_eq!(dry.eligible, 1000);
    assert_eq!(fx.count("archived").await, 49_000, "dry run wrote");
    assert!(
        dry.statements[0].contains("FOR NO KEY UPDATE SKIP LOCKED"),
        "{}",
        dry.statements[0]
    );
    assert!(dry.full_scan, "{}", dry.plan);
    // A sequential scan, or the primary key walked with the flag filtered
    // row by row (the planner picks either, by its statistics).
    assert!(
        dry.plan.contains("Seq Scan on") || dry.plan.contains("Filter: ((NOT archived)"),
        "{}",
        dry.plan
    );
    let idx = dry.suggested_index.clone().unwrap();
    assert_eq!(
        idx,
        format!(
            "CREATE INDEX CONCURRENTLY {} ON \"public\".{t} (\"id\") INCLUDE (\"created_at\") WHERE NOT \"archived\";",
            quote_ident(&format!("{}_cdc_mark_idx", fx.table)),
        )
    );
    let text = dry.to_string();
    assert!(text.contains("eligible rows: 1000"), "{text}");
    assert!(text.contains("WARNING") && text.contains(&idx), "{text}");

    // The suggested index is what the plan needed.
    fx.client.batch_execute(&idx).await.unwrap();
    fx.client
        .batch_execute(&format!("ANALYZE {t}"))
        .await
        .unwrap();
    let dry = cdc_marker::dry_run(&cdc_tests::pg_url(), &cfg)
        .await
        .unwrap();
    assert!(!dry.full_scan, "{}", dry.plan);
    assert!(dry.suggested_index.is_none());
    assert!(!dry.to_string().contains("WARNING"));
    assert_eq!(fx.count("archived").await, 49_000, "dry run wrote");

    // Once the table has a holds table (a real run created it), the plan
    // also reads it once per statement: that is not a full scan of the
    // table, and no index is suggested.
    let holds = cdc_common::holds::ddl("public", &fx.table);
    fx.client.batch_execute(&holds).await.unwrap();
    let dry = cdc_marker::dry_run(&cdc_tests::pg_url(), &cfg)
        .await
        .unwrap();
    assert!(dry.plan.contains("holds:"), "{}", dry.plan);
    assert!(!dry.full_scan, "{}", dry.plan);
    assert!(!dry.to_string().contains("WARNING"));
    fx.client
        .batch_execute(&format!(
            "DROP TABLE {}",
            cdc_common::holds::qualified("public", &fx.table)
        ))
        .await
        .unwrap();
    fx.drop().await;
}

#[tokio::test]
async fn configuration_and_schema_errors_name_the_culprit() {
    let fx = Fixture::new("mark_errors", 10).await;
    let url = cdc_tests::pg_url();

    let mut cfg = fx.cfg(10);
    cfg.cutoff = None;
    let e = cdc_marker::dry_run(&url, &cfg).await.unwrap_err();
    assert!(matches!(e, MarkError::MissingCutoff { .. }), "{e}");
    assert!(
        e.to_string().contains(&fx.table) && e.to_string().contains("cutoff"),
        "{e}"
    );
    let e = run(&cfg).await.unwrap_err();
    assert!(matches!(e, MarkError::MissingCutoff { .. }), "{e}");

    let mut cfg = fx.cfg(10);
    cfg.table = TableName::parse("public.no_such_table_xyz").unwrap();
    let e = run(&cfg).await.unwrap_err().to_string();
    assert!(
        e.contains("no_such_table_xyz") && e.contains("not found"),
        "{e}"
    );

    type Change = fn(&mut MarkerConfig);
    let cases: [(Change, &[&str]); 4] = [
        (
            |c| c.cutoff.as_mut().unwrap().column = "made_when".into(),
            &["made_when", "cutoff.column"],
        ),
        (
            |c| c.archived_column = "gone".into(),
            &["\"gone\"", "archived_column"],
        ),
        (
            |c| c.archived_column = "payload".into(),
            &["payload", "boolean"],
        ),
        (
            |c| c.cutoff.as_mut().unwrap().older_than = Some("90 dayz".into()),
            &["older_than", "90 dayz"],
        ),
    ];
    for (change, expected) in cases {
        let mut cfg = fx.cfg(10);
        change(&mut cfg);
        if cfg.cutoff.as_ref().unwrap().older_than.is_some() {
            cfg.cutoff.as_mut().unwrap().before = None;
        }
        let e = run(&cfg).await.unwrap_err().to_string();
        for word in expected {
            assert!(e.contains(word), "{word:?} not in: {e}");
        }
    }

    let nopk = cdc_tests::unique("mark_nopk");
    fx.client
        .batch_execute(&format!(
            "CREATE TABLE {} (id bigint, created_at timestamptz, archived boolean NOT NULL DEFAULT false)",
            quote_ident(&nopk)
        ))
        .await
        .unwrap();
    let mut cfg = fx.cfg(10);
    cfg.table = TableName::parse(&nopk).unwrap();
    let e = run(&cfg).await.unwrap_err();
    assert!(matches!(e, MarkError::NoPrimaryKey { .. }), "{e}");
    assert!(
        e.to_string().contains(&nopk) && e.to_string().contains("primary key"),
        "{e}"
    );
    fx.client
        .batch_execute(&format!("DROP TABLE {}", quote_ident(&nopk)))
        .await
        .unwrap();

    // Nothing was written by any of the failed runs.
    assert_eq!(fx.count("archived").await, 0);
    fx.drop().await;
}

#[tokio::test]
async fn hostile_identifiers_and_composite_keys_work() {
    let client = cdc_tests::pg().await;
    let schema = format!("{} Sch\"ema", cdc_tests::unique("mark"));
    let table = "Odd \"Table\"; DROP TABLE x; --";
    let qt = format!("{}.{}", quote_ident(&schema), quote_ident(table));
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {qt} (\"Tenant Name\" text NOT NULL, \"Key Col\" bigint NOT NULL,
               \"When\" timestamptz NOT NULL, \"Is \"\"Archived\"\"\" boolean NOT NULL DEFAULT false,
               PRIMARY KEY (\"Tenant Name\", \"Key Col\"));
             INSERT INTO {qt} (\"Tenant Name\", \"Key Col\", \"When\")
               SELECT t, g, now() - (g || ' days')::interval + interval '12 hours'
               FROM unnest(ARRAY['acme', 'O''Brien & Co', 'skip me', 'Ünïcode']) t, generate_series(1, 300) g;",
            s = quote_ident(&schema)
        ))
        .await
        .unwrap();
    let mut cfg = MarkerConfig::new(TableName {
        schema: Some(schema.clone()),
        name: table.to_owned(),
    });
    cfg.archived_column = "Is \"Archived\"".into();
    cfg.cutoff = Some(CutoffConfig {
        column: "When".into(),
        older_than: Some("100 days".into()),
        before: None,
    });
    cfg.predicate = Some("\"Tenant Name\" <> 'skip me'".into());
    cfg.batching.batch_size = 37;
    cfg.batching.min_batch_size = 3;
    // The config round-trips through its string form too.
    let text = serde_json::to_string(&cfg).unwrap();
    let cfg: MarkerConfig = serde_json::from_str(&text).unwrap();

    let dry = cdc_marker::dry_run(&cdc_tests::pg_url(), &cfg)
        .await
        .unwrap();
    // 3 tenants x days 101..300 (day 100 is a hair younger than the cutoff).
    assert_eq!(dry.eligible, 3 * 200, "{dry}");
    let s = run(&cfg).await.unwrap();
    assert_eq!(s.rows_marked, 600, "{s:?}");
    let count = |cond: &'static str| {
        let (client, qt) = (&client, &qt);
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {qt} WHERE {cond}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("\"Is \"\"Archived\"\"\"").await, 600);
    assert_eq!(
        count("\"Is \"\"Archived\"\"\" AND \"Tenant Name\" = 'skip me'").await,
        0
    );
    assert_eq!(
        count("\"Is \"\"Archived\"\"\" AND \"Key Col\" <= 100").await,
        0
    );
    assert_eq!(
        count("NOT \"Is \"\"Archived\"\"\" AND \"Key Col\" > 100 AND \"Tenant Name\" <> 'skip me'")
            .await,
        0
    );
    client
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
        .await
        .unwrap();
}

#[tokio::test]
async fn foreign_key_checks_of_child_inserts_neither_block_nor_are_skipped() {
    let fx = Fixture::new("mark_fk", 200).await;
    let child = cdc_tests::unique("mark_fk_child");
    fx.client
        .batch_execute(&format!(
            "CREATE TABLE {c} (id serial PRIMARY KEY, parent bigint NOT NULL REFERENCES {p} (id))",
            c = quote_ident(&child),
            p = quote_ident(&fx.table)
        ))
        .await
        .unwrap();
    // An open transaction that inserted a child row holds FOR KEY SHARE on
    // parent 5. The marker's lock (FOR NO KEY UPDATE) does not conflict
    // with it, so row 5 is marked in the walk, not skipped.
    let writer = cdc_tests::pg().await;
    writer
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {} (parent) VALUES (5)",
            quote_ident(&child)
        ))
        .await
        .unwrap();
    let mut cfg = fx.cfg(200);
    cfg.batching.batch_size = 50;
    cfg.revisit_rounds = 1;
    let s = tokio::time::timeout(Duration::from_secs(120), run(&cfg))
        .await
        .expect("the marker waited on a foreign-key share lock")
        .unwrap();
    assert_eq!(
        (s.rows_marked, s.rows_skipped_locked, s.rows_left_locked),
        (200, 0, 0),
        "{s:?}"
    );
    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fx.flips().await, (200, 0));
    fx.client
        .batch_execute(&format!("DROP TABLE {}", quote_ident(&child)))
        .await
        .unwrap();
    fx.drop().await;
}

/// `char(3)` keys (short ones blank-padded, so `'a'` sorts and compares
/// with `'a  '`) in a `PRIMARY KEY (code) INCLUDE (payload)`: the walk
/// uses only the key column (information_schema lists key columns only),
/// carries each key from batch to batch in its binary form (never cast
/// from text, so never cut to `character(1)`), and marks every eligible
/// row exactly once.
#[tokio::test]
async fn char_keys_with_include_columns_are_walked_exactly() {
    let fx = Fixture::new("mark_chark", 0).await;
    let t = quote_ident(&fx.table);
    let pkey: String = fx
        .client
        .query_one(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p'",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    // Keys 'a', 'aa', 'aaa', 'b', 'bb', ...: prefixes of each other, the
    // shorter ones padded. `id` stays unique for the flip counter.
    fx.client
        .batch_execute(&format!(
            "ALTER TABLE {t} DROP CONSTRAINT {pk}, ADD COLUMN code char(3);
             INSERT INTO {t} (id, created_at, code)
               SELECT row_number() OVER (), '{EPOCH}'::timestamptz + interval '1 second', repeat(l, n)
               FROM unnest(string_to_array('abcdefghij', NULL)) l, generate_series(1, 3) n;
             ALTER TABLE {t} ALTER COLUMN code SET NOT NULL, ADD PRIMARY KEY (code) INCLUDE (payload);",
            pk = quote_ident(&pkey)
        ))
        .await
        .unwrap();
    let mut cfg = fx.cfg(5);
    cfg.batching.batch_size = 4;
    cfg.batching.min_batch_size = 2;
    let s = run(&cfg).await.unwrap();
    assert_eq!(s.rows_marked, 30, "{s:?}");
    assert_eq!(fx.count("archived").await, 30);
    assert_eq!(fx.flips().await, (30, 0), "every row flipped exactly once");
    fx.drop().await;
}
