//! Shared helpers for the tests that run against the local stack
//! (`scripts/stack up`). Each service is found through one environment
//! variable with a working default; a service that does not answer is a
//! test failure that says which service and how to start it, never a skip.

use std::time::Duration;

/// PostgreSQL (wal_level=logical, wal2json). Default: the stack's own cluster.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:54329/postgres";
/// Kafka broker. Default: the stack's Apache Kafka.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// S3-compatible server. Default: the stack's moto server.
pub const DEFAULT_S3_ENDPOINT: &str = "http://127.0.0.1:9000";

/// `CDC_PG_URL` or the default.
pub fn pg_url() -> String {
    std::env::var("CDC_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// `CDC_KAFKA_BROKERS` or the default.
pub fn kafka_brokers() -> String {
    std::env::var("CDC_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_KAFKA_BROKERS.to_owned())
}

/// `CDC_S3_ENDPOINT` or the default.
pub fn s3_endpoint() -> String {
    std::env::var("CDC_S3_ENDPOINT").unwrap_or_else(|_| DEFAULT_S3_ENDPOINT.to_owned())
}

/// A name no other test (or earlier run) uses: `prefix_<8 hex>`. Safe as
/// an identifier, a topic and a path segment.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Connects to the stack's PostgreSQL or panics with the fix.
pub async fn pg() -> tokio_postgres::Client {
    let url = pg_url();
    match cdc_common::db::connect(&url, "cdc-tests").await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {} ({e}). Start the local stack with `scripts/stack up` \
             or point CDC_PG_URL at a server with wal_level=logical and wal2json.",
            cdc_common::db::redact_url(&url)
        ),
    }
}

/// Creates `name` with `partitions` partitions on the stack's broker, or
/// panics with the fix.
pub async fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("Kafka admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = tokio::time::timeout(Duration::from_secs(30), admin.create_topics([&topic], &opts))
        .await
        .unwrap_or_else(|_| {
            panic!("the Kafka broker at {brokers} did not answer CreateTopics within 30s: run `scripts/stack up`")
        })
        .unwrap_or_else(|e| panic!("CreateTopics on {brokers} failed ({e}): run `scripts/stack up`"));
    for r in res {
        if let Err((t, e)) = r {
            panic!("cannot create topic {t}: {e}");
        }
    }
}

/// Raises the partition count of topic `name` to `total` (Kafka's
/// CreatePartitions), or panics with the fix.
pub async fn grow_topic(name: &str, total: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("Kafka admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = admin
        .create_partitions([&NewPartitions::new(name, total)], &opts)
        .await
        .unwrap_or_else(|e| {
            panic!("CreatePartitions on {brokers} failed ({e}): run `scripts/stack up`")
        });
    for r in res {
        if let Err((t, e)) = r {
            panic!("cannot add partitions to topic {t}: {e}");
        }
    }
}

/// The bucket the stack's S3 server serves (`CDC_S3_BUCKET`, default `cdc-archiver`).
pub fn s3_bucket() -> String {
    std::env::var("CDC_S3_BUCKET").unwrap_or_else(|_| "cdc-archiver".to_owned())
}

/// An archive on the stack's S3-compatible server under a fresh prefix.
/// The local test server accepts any credentials; real deployments take
/// them from the `AWS_*` environment (see `cdc_common::storage`).
pub fn s3_archive(prefix: &str) -> cdc_common::storage::ArchiveStore {
    use object_store::aws::AmazonS3Builder;
    let endpoint = s3_endpoint();
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name(s3_bucket())
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()
        .expect("S3 client for the local test server");
    // Scoped to the prefix, as `ArchiveStore::open` scopes an S3 URL's.
    let store = object_store::prefix::PrefixStore::new(store, prefix);
    cdc_common::storage::ArchiveStore {
        store: std::sync::Arc::new(store),
        url: format!("s3://{}/{prefix} (endpoint {endpoint})", s3_bucket()),
    }
}

/// An archive on the local file system in a fresh temporary directory,
/// removed when the returned guard drops.
pub fn local_archive() -> (cdc_common::storage::ArchiveStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = cdc_common::storage::ArchiveStore::open(&cdc_common::storage::StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..Default::default()
    })
    .expect("local archive");
    (store, dir)
}
