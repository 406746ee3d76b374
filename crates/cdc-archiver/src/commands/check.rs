//! `cdc-archiver check`: one real round trip to each dependency, so an
//! operator (or the demo) learns in seconds which one is missing.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdc_common::storage::{ArchiveStore, StorageConfig};
use clap::Args;
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// PostgreSQL / CockroachDB URL.
    #[arg(
        long,
        env = "CDC_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:54329/postgres"
    )]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "CDC_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Archive URL (file:///dir or s3://bucket/prefix).
    #[arg(
        long,
        env = "CDC_ARCHIVE_URL",
        default_value = "file:///tmp/cdc-archiver-check"
    )]
    pub archive_url: String,
}

pub async fn run(global: &GlobalArgs, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;

    match check_database(&args.database_url).await {
        Ok(info) => println!("database  ok    {info}"),
        Err(e) => {
            failed = true;
            println!("database  FAIL  {e:#}");
        }
    }
    match check_kafka(&args.brokers).await {
        Ok(info) => println!("kafka     ok    {info}"),
        Err(e) => {
            failed = true;
            println!("kafka     FAIL  {e:#}");
        }
    }
    match check_archive(&args.archive_url).await {
        Ok(info) => println!("archive   ok    {info}"),
        Err(e) => {
            failed = true;
            println!("archive   FAIL  {e:#}");
        }
    }
    // The sinks' consumer group, when the config file has a [sink] section.
    let sink: Option<cdc_sink::SinkConfig> = global.config.as_deref().and_then(|f| {
        cdc_common::config::load_section(Some(f), "sink", &["brokers", "storage"]).ok()
    });
    if let Some(sink) = sink.filter(|s| !s.topics.is_empty()) {
        match check_group(&sink).await {
            Ok((Verdict::Ok, info)) => println!("group     ok    {info}"),
            Ok((Verdict::Warn, info)) => println!("group     WARN  {info}"),
            Ok((Verdict::Fail, info)) => {
                failed = true;
                println!("group     FAIL  {info}");
            }
            Err(e) => {
                failed = true;
                println!("group     FAIL  {e:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn check_database(url: &str) -> anyhow::Result<String> {
    let client = cdc_common::db::connect(url, "cdc-archiver-check").await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    let info = match dialect {
        cdc_common::db::Dialect::Postgres => {
            let wal: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
            format!("PostgreSQL, wal_level={wal}")
        }
        cdc_common::db::Dialect::Cockroach => "CockroachDB".to_owned(),
    };
    Ok(info)
}

async fn check_kafka(brokers: &str) -> anyhow::Result<String> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("cannot create a Kafka client")?;
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("no metadata from the broker at {brokers}"))?;
        Ok(format!(
            "{} broker(s), {} topic(s) at {brokers}",
            md.brokers().len(),
            md.topics().len()
        ))
    })
    .await?
}

enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// Who consumes the sink's topics: every partition held by a member of the
/// group is ok; a group without members is a warning (no sink is running
/// yet); members that leave partitions unconsumed are a failure (nothing
/// archives those partitions although sinks run).
async fn check_group(sink: &cdc_sink::SinkConfig) -> anyhow::Result<(Verdict, String)> {
    let sink = sink.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cdc_sink::group::client_config(&sink.brokers, &sink.kafka)
            .create()
            .context("cannot create a Kafka client")?;
        let topics: Vec<String> = sink.topics.iter().map(|t| t.name.clone()).collect();
        let view = cdc_sink::group::describe(
            consumer.client(),
            &sink.group_id,
            &topics,
            Duration::from_secs(10),
        )
        .with_context(|| format!("cannot describe consumer group {}", sink.group_id))?;
        let missing: Vec<&String> = view
            .partitions
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(t, _)| t)
            .collect();
        let verdict = if !missing.is_empty() {
            return Ok((
                Verdict::Fail,
                format!("topic(s) {missing:?} do not exist on the broker"),
            ));
        } else if view.unassigned().is_empty() {
            Verdict::Ok
        } else if view.members.is_empty() {
            Verdict::Warn
        } else if view.settled() {
            Verdict::Fail
        } else {
            Verdict::Warn
        };
        let hint = match verdict {
            Verdict::Ok => "",
            Verdict::Warn if view.members.is_empty() => {
                " (no sink is running: start `cdc-archiver sink` with this config)"
            }
            Verdict::Warn => " (a rebalance is under way; check again in a few seconds)",
            Verdict::Fail => {
                " (sinks run but nothing archives these partitions: restart a sink of the group; \
                 its log says `consumed by no member`)"
            }
        };
        Ok((verdict, format!("{}{hint}", view.summary())))
    })
    .await?
}

async fn check_archive(url: &str) -> anyhow::Result<String> {
    let store = ArchiveStore::open(&StorageConfig {
        url: url.to_owned(),
        ..Default::default()
    })?;
    let path = store.path(&format!("_check/{}", uuid::Uuid::new_v4()));
    store
        .store
        .put(&path, PutPayload::from_static(b"ok"))
        .await
        .context("put")?;
    let back = store.store.get(&path).await.context("get")?.bytes().await?;
    store.store.delete(&path).await.context("delete")?;
    anyhow::ensure!(back.as_ref() == b"ok", "read back different bytes");
    anyhow::ensure!(
        cdc_checkpoint::conditional_create_holds(&store).await?,
        "the store does not honour conditional creates (a second create of one object overwrote it): \
         the sink refuses it; use a store that supports If-None-Match on PUT"
    );
    Ok(format!(
        "put/get/delete round trip and conditional create at {}",
        store.url
    ))
}
