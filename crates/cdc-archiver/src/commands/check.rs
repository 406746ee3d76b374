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

use crate::cli::GlobalArgs;

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

pub async fn run(_global: &GlobalArgs, args: CheckArgs) -> anyhow::Result<ExitCode> {
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
    Ok(format!("put/get/delete round trip at {}", store.url))
}
