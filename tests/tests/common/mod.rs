//! The real pipeline, in-process, for end-to-end tests: a table in the
//! stack's PostgreSQL, the PostgreSQL changefeed publishing it to a fresh
//! topic on the stack's broker, and the sink archiving that topic to a
//! fresh local-file-system archive. Stages are started and stopped
//! separately, so a test can, for example, change a row while the sink is
//! down and check what the purger does with the stale archive.

#![allow(dead_code)] // each test binary uses a different part of it

use std::time::{Duration, Instant};

use cdc_common::ident::quote_ident;
use cdc_common::storage::ArchiveStore;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any wait of the harness may take before the test fails.
pub const LIMIT: Duration = Duration::from_secs(180);

/// A long-running stage (changefeed or sink) started in-process.
struct Stage {
    cancel: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

impl Stage {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(f(cancel.clone()));
        Self { cancel, task }
    }

    /// Stops the stage the way SIGTERM does and waits for it to drain.
    async fn stop(self, what: &str) {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the {what} failed: {e}"),
            Ok(Err(e)) => panic!("the {what} panicked: {e}"),
            Err(_) => panic!("the {what} did not stop within 60s of its shutdown signal"),
        }
    }
}

/// One table and the pipeline around it.
pub struct Pipeline {
    /// A session on the stack's PostgreSQL.
    pub client: tokio_postgres::Client,
    /// The table's unquoted name (in schema `public`).
    pub table: String,
    /// The table's name, quoted.
    pub qt: String,
    /// The archive (local file system).
    pub archive: ArchiveStore,
    /// The archive's directory.
    pub dir: tempfile::TempDir,
    pub feed_cfg: cdc_pg_changefeed::PgChangefeedConfig,
    pub sink_cfg: cdc_sink::SinkConfig,
    feed: Option<Stage>,
    sink: Option<Stage>,
}

impl Pipeline {
    /// Creates the table with `ddl` (`{t}` stands for the quoted table
    /// name), a topic of `partitions` partitions, and starts the changefeed
    /// (filtered on `archived`, like a CockroachDB CDC query `WHERE
    /// archived`) and the sink, which cuts a segment every `flush_rows`
    /// rows. Returns once the changefeed's slot exists: every change after
    /// that reaches the archive.
    pub async fn start(prefix: &str, ddl: &str, partitions: i32, flush_rows: usize) -> Self {
        Self::start_with(prefix, ddl, partitions, flush_rows, |_| {}).await
    }

    /// [`Pipeline::start`], with `configure` applied to the changefeed's
    /// configuration before it starts.
    pub async fn start_with(
        prefix: &str,
        ddl: &str,
        partitions: i32,
        flush_rows: usize,
        configure: impl FnOnce(&mut cdc_pg_changefeed::PgChangefeedConfig),
    ) -> Self {
        let mut p = Self::create(prefix, ddl, partitions, flush_rows).await;
        configure(&mut p.feed_cfg);
        p.start_feed().await;
        p.start_sink();
        p
    }

    /// The table, the topic and both stages' configurations, with no stage
    /// started (a test that runs them as processes starts them itself).
    pub async fn create(prefix: &str, ddl: &str, partitions: i32, flush_rows: usize) -> Self {
        let client = cdc_tests::pg().await;
        let table = cdc_tests::unique(prefix);
        let qt = quote_ident(&table);
        client
            .batch_execute(&ddl.replace("{t}", &qt))
            .await
            .unwrap_or_else(|e| panic!("creating {table}: {e}"));
        let topic = cdc_tests::unique(&format!("{prefix}_topic"));
        cdc_tests::create_topic(&topic, partitions).await;
        let (archive, dir) = cdc_tests::local_archive();
        let slot = cdc_tests::unique(&format!("{prefix}_slot"));
        let feed_cfg: cdc_pg_changefeed::PgChangefeedConfig = toml::from_str(&format!(
            r#"database_url = "{pg}"
               brokers = "{brokers}"
               slot_name = "{slot}"
               resolved_interval = "300ms"
               poll_interval = "100ms"
               tables = [{{ name = "public.{table}", topic = "{topic}", filter_column = "archived" }}]"#,
            pg = cdc_tests::pg_url(),
            brokers = cdc_tests::kafka_brokers(),
        ))
        .expect("changefeed config");
        let sink_cfg: cdc_sink::SinkConfig = toml::from_str(&format!(
            r#"brokers = "{brokers}"
               group_id = "{group}"
               topics = [{{ name = "{topic}", table = "{table}" }}]
               flush_rows = {flush_rows}
               flush_age = "300ms"
               resolved_checkpoint_interval = "300ms"
               group_check_interval = "1s"
               [storage]
               url = "{url}""#,
            brokers = cdc_tests::kafka_brokers(),
            group = cdc_tests::unique(&format!("{prefix}_group")),
            url = archive.url,
        ))
        .expect("sink config");
        Self {
            client,
            table,
            qt,
            archive,
            dir,
            feed_cfg,
            sink_cfg,
            feed: None,
            sink: None,
        }
    }

    /// Starts the changefeed and waits for its replication slot.
    pub async fn start_feed(&mut self) {
        let cfg = self.feed_cfg.clone();
        self.feed = Some(Stage::spawn(|c| async move {
            cdc_pg_changefeed::run(&cfg, c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
        let slot = self.feed_cfg.slot_name.clone();
        self.until("the changefeed's replication slot", || async {
            let n: i64 = self
                .client
                .query_one(
                    // Listed before it is consistent: changes committed
                    // until it has a confirmed position may be missed.
                    "SELECT count(*) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            n == 1
        })
        .await;
    }

    /// Ends the changefeed as abruptly as `kill -9` does to the process:
    /// its task is aborted, nothing is drained or advanced.
    pub async fn kill_feed(&mut self) {
        if let Some(f) = self.feed.take() {
            f.task.abort();
            let _ = f.task.await;
        }
    }

    /// Starts (or restarts) the sink, in the same consumer group.
    pub fn start_sink(&mut self) {
        let cfg = self.sink_cfg.clone();
        self.sink = Some(Stage::spawn(|c| async move {
            cdc_sink::run(&cfg, c).await.map(|_| ()).map_err(|e| {
                // Said at once: a test waiting on the archive would
                // otherwise only see it stall.
                eprintln!("the sink stopped with an error: {e:#}");
                e.to_string()
            })
        }));
    }

    /// Stops the sink (it flushes and checkpoints what it buffered).
    pub async fn stop_sink(&mut self) {
        if let Some(s) = self.sink.take() {
            s.stop("sink").await;
        }
    }

    /// Stops both stages and drops the slot and the table.
    pub async fn stop(mut self) {
        self.stop_sink().await;
        if let Some(f) = self.feed.take() {
            f.stop("changefeed").await;
        }
        let _ = self
            .client
            .execute(
                "SELECT pg_drop_replication_slot($1)",
                &[&self.feed_cfg.slot_name],
            )
            .await;
        let _ = self
            .client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {} CASCADE; DROP TABLE IF EXISTS {}; DROP FUNCTION IF EXISTS {}()",
                self.qt,
                quote_ident(&format!("{}_deleted", self.table)),
                quote_ident(&format!("{}_deleted_fn", self.table)),
            ))
            .await;
    }

    /// Polls `done` until it holds, failing the test after [`LIMIT`].
    pub async fn until<F, Fut>(&self, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !done().await {
            assert!(start.elapsed() < LIMIT, "gave up waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current time on the database server: every change committed
    /// before this call has an `updated` before it.
    pub async fn db_now(&self) -> DateTime<Utc> {
        let micros: i64 = self
            .client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        DateTime::from_timestamp_micros(micros).expect("a date in range")
    }

    /// Waits until the archive's watermark (from its checkpoints alone) has
    /// passed `t`: everything committed before `t` is archived.
    pub async fn wait_archived(&self, t: DateTime<Utc>) {
        let target = t.timestamp_nanos_opt().expect("a date in range");
        let start = Instant::now();
        loop {
            let progress = cdc_checkpoint::progress(&self.archive, &self.table).await;
            if let Ok(p) = &progress {
                if p.watermark().is_some_and(|w| w.wall > target) {
                    return;
                }
            }
            if start.elapsed() >= LIMIT {
                let mut idle = Vec::new();
                for part in 0..8 {
                    idle.push(
                        cdc_checkpoint::read_idle_progress(&self.archive, &self.table, part)
                            .await
                            .ok()
                            .flatten()
                            .map(|i| (part, i.base_last_offset, i.last_offset, i.resolved)),
                    );
                }
                panic!(
                    "gave up waiting for the archive watermark past {target}: {progress:?}; idle progress: {idle:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A marker configuration for this table: `column` older than `age`.
    pub fn marker(&self, column: &str, age: &str, batch_size: u32) -> cdc_marker::MarkerConfig {
        toml::from_str(&format!(
            r#"table = "public.{t}"
               cutoff = {{ column = "{column}", older_than = "{age}" }}
               batch_size = {batch_size}"#,
            t = self.table
        ))
        .expect("marker config")
    }

    /// Where this pipeline's sink consumes, for a run's wait reports.
    pub fn sink_watch(&self) -> cdc_run::SinkWatch {
        cdc_run::SinkWatch {
            brokers: self.sink_cfg.brokers.clone(),
            group_id: self.sink_cfg.group_id.clone(),
            topic: self.sink_cfg.topics[0].name.clone(),
            kafka: self.sink_cfg.kafka.clone(),
        }
    }

    /// A purger configuration for this table and archive.
    pub fn purger(&self, batch_size: u32) -> cdc_purger::PurgerConfig {
        toml::from_str(&format!(
            r#"database_url = "{pg}"
               table = "public.{t}"
               batch_size = {batch_size}
               [storage]
               url = "{url}""#,
            pg = cdc_tests::pg_url(),
            t = self.table,
            url = self.archive.url,
        ))
        .expect("purger config")
    }

    /// Marks with `cfg` and returns the summary.
    pub async fn mark(&self, cfg: &cdc_marker::MarkerConfig) -> cdc_marker::MarkSummary {
        cdc_marker::mark(&cdc_tests::pg_url(), cfg, CancellationToken::new(), |_| {})
            .await
            .expect("marking")
    }

    /// Purges with `cfg` (no flags) and returns the summary.
    pub async fn purge(&self, cfg: &cdc_purger::PurgerConfig) -> cdc_purger::PurgeSummary {
        cdc_purger::purge(
            cfg,
            &self.archive,
            CancellationToken::new(),
            &cdc_purger::PurgeOptions::default(),
        )
        .await
        .expect("purging")
    }

    /// `SELECT count(*) FROM t WHERE <condition>`.
    pub async fn count(&self, condition: &str) -> i64 {
        self.client
            .query_one(
                &format!("SELECT count(*) FROM {} WHERE {condition}", self.qt),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Every archived row version, read back from the segments, as the
    /// text of `columns` (strings unquoted, numbers with their exact
    /// digits, `None` for NULL), the form PostgreSQL's `::text` prints.
    pub async fn archived_text(&self, columns: &[&str]) -> Vec<Vec<Option<String>>> {
        let (found, _) = cdc_retrieve::retrieve(
            &self.archive,
            &cdc_retrieve::Query {
                table: self.table.clone(),
                selector: cdc_retrieve::Selector::KeyPrefix(vec![]),
                all_versions: true,
                limit: None,
            },
        )
        .await
        .expect("reading the archive back");
        found
            .iter()
            .map(|f| {
                columns
                    .iter()
                    .map(|c| {
                        let (_, v) = f
                            .row
                            .columns
                            .iter()
                            .find(|(name, _)| name == c)
                            .unwrap_or_else(|| panic!("archived row without column {c}"));
                        match v {
                            cdc_changefeed::Value::Null => None,
                            cdc_changefeed::Value::String(s) => Some(s.clone()),
                            other => Some(other.to_json_text()),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// `SELECT c1::text, c2::text, … FROM relation`.
    pub async fn db_text(&self, relation: &str, columns: &[&str]) -> Vec<Vec<Option<String>>> {
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        self.client
            .query(&format!("SELECT {} FROM {relation}", list.join(", ")), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
            .collect()
    }

    /// The delete events the sink recorded: the sum of the checkpoints'
    /// `counts.deletes`, and the key of every entry of their delete files
    /// (each verified against its checkpoint), in chain order.
    pub async fn recorded_deletes(&self) -> (u64, Vec<String>) {
        let (mut counted, mut keys) = (0, Vec::new());
        for part in cdc_checkpoint::partitions(&self.archive, &self.table)
            .await
            .unwrap()
        {
            let chain = cdc_checkpoint::read_chain(&self.archive, &self.table, part)
                .await
                .unwrap();
            for cp in chain.checkpoints {
                counted += cp.counts.deletes;
                if let Some(d) = &cp.deletes {
                    let bytes = cdc_checkpoint::verify_deletes(&self.archive, d)
                        .await
                        .unwrap();
                    let decoded = cdc_segment::decode_deletes(&bytes).unwrap();
                    keys.extend(decoded.deletes.into_iter().map(|d| d.meta.key_json));
                }
            }
        }
        (counted, keys)
    }

    /// Every row of the witness table (see [`Pipeline::witness_deletes`]) is
    /// archived with exactly the values of `columns` it was deleted with;
    /// returns how many rows were deleted.
    pub async fn deleted_rows_are_archived_exactly(
        &self,
        witness: &str,
        columns: &[&str],
    ) -> usize {
        let deleted = self.db_text(witness, columns).await;
        let archived: std::collections::HashSet<Vec<Option<String>>> =
            self.archived_text(columns).await.into_iter().collect();
        for row in &deleted {
            assert!(
                archived.contains(row),
                "deleted row {row:?} is not in the archive with those values"
            );
        }
        deleted.len()
    }

    /// The sink's consumer group as the broker describes it.
    pub fn group(&self) -> cdc_sink::group::GroupView {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cdc_tests::kafka_brokers())
            .create()
            .unwrap();
        cdc_sink::group::describe(
            rdkafka::consumer::Consumer::client(&c),
            &self.sink_cfg.group_id,
            std::slice::from_ref(&self.sink_cfg.topics[0].name),
            Duration::from_secs(10),
        )
        .expect("describe the group")
    }

    /// Records every row the purger deletes, exactly as it was deleted, in
    /// `<table>_deleted` (a trigger: the database's own witness). Returns
    /// that table's quoted name.
    pub async fn witness_deletes(&self) -> String {
        let w = quote_ident(&format!("{}_deleted", self.table));
        let f = quote_ident(&format!("{}_deleted_fn", self.table));
        self.client
            .batch_execute(&format!(
                "CREATE TABLE {w} AS SELECT * FROM {t} WITH NO DATA;
                 CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $x$
                   BEGIN INSERT INTO {w} SELECT OLD.*; RETURN OLD; END $x$;
                 CREATE TRIGGER witness AFTER DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}();",
                t = self.qt
            ))
            .await
            .expect("creating the delete witness");
        w
    }
}

/// `CDC_PG_URL` with `user` instead of its user (the stack trusts local
/// connections, so no password).
pub fn pg_url_as(user: &str) -> String {
    let url = cdc_tests::pg_url();
    let (scheme, rest) = url
        .split_once("://")
        .expect("CDC_PG_URL is a postgres:// URL");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

/// Drops the replication origins `names` that exist, one by one, waiting
/// (up to 20s each) for a session that still holds one to end: an origin
/// that was used holds a replication-state entry (`max_replication_slots`)
/// until it is dropped.
pub async fn drop_origins(client: &tokio_postgres::Client, names: &[String]) {
    for name in names {
        let start = Instant::now();
        loop {
            match client
                .execute(
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
                    &[name],
                )
                .await
            {
                Ok(_) => break,
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    eprintln!("replication origin {name} still in use, retrying the drop: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("dropping replication origin {name}: {e}"),
            }
        }
    }
}
