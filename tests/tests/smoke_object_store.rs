//! Smoke test: object_store against the local file system and the stack's
//! S3-compatible server: put, get, list, and a conditional create that
//! refuses to overwrite (what keeps the checkpoint chain single-writer).

use cdc_common::storage::ArchiveStore;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

async fn round_trip(archive: &ArchiveStore) {
    let a = archive.path("smoke/segments/p0/00000000000000000000.avro");
    let b = archive.path("smoke/segments/p0/00000000000000000010.avro");
    archive
        .store
        .put(&a, PutPayload::from_static(b"first"))
        .await
        .expect("put a");
    archive
        .store
        .put(&b, PutPayload::from_static(b"second"))
        .await
        .expect("put b");

    let got = archive
        .store
        .get(&a)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.as_ref(), b"first");

    let listed: Vec<_> = archive
        .store
        .list(Some(&archive.path("smoke/segments")))
        .map_ok(|m| archive.relative(&m.location))
        .try_collect()
        .await
        .expect("list");
    let mut listed = listed;
    listed.sort();
    assert_eq!(
        listed,
        vec![
            "smoke/segments/p0/00000000000000000000.avro".to_owned(),
            "smoke/segments/p0/00000000000000000010.avro".to_owned()
        ]
    );

    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let c = archive.path("smoke/checkpoints/p0/00000000000000000000.json");
    archive
        .store
        .put_opts(
            &c,
            PutPayload::from_static(b"{\"writer\":\"one\"}"),
            create.clone(),
        )
        .await
        .expect("first conditional create succeeds");
    let second = archive
        .store
        .put_opts(&c, PutPayload::from_static(b"{\"writer\":\"two\"}"), create)
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "a second conditional create must be refused, got {second:?}"
    );
    let kept = archive
        .store
        .get(&c)
        .await
        .expect("get checkpoint")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        kept.as_ref(),
        b"{\"writer\":\"one\"}",
        "the first writer's object must survive"
    );
}

#[tokio::test]
async fn local_file_system_round_trip() {
    let (archive, _dir) = cdc_tests::local_archive();
    round_trip(&archive).await;
}

#[tokio::test]
async fn s3_server_round_trip() {
    let archive = cdc_tests::s3_archive(&cdc_tests::unique("smoke"));
    // A clear failure when the server is down, instead of a retry storm.
    let probe = reqwest_like_probe(&cdc_tests::s3_endpoint()).await;
    assert!(
        probe,
        "the S3-compatible server at {} does not answer: run `scripts/stack up`",
        cdc_tests::s3_endpoint()
    );
    round_trip(&archive).await;
}

async fn reqwest_like_probe(endpoint: &str) -> bool {
    let addr = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let addr = addr.split('/').next().unwrap_or(addr).to_owned();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false)
}

/// An archive opened from `s3://bucket/prefix` reads, writes and lists only
/// under its prefix: what it writes lands at `prefix/…` in the bucket, its
/// listings name paths relative to the prefix, and an object beside the
/// prefix is invisible to it.
#[tokio::test]
async fn an_s3_archive_is_scoped_to_its_prefix() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        // The local test server accepts any credentials.
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let prefix = cdc_tests::unique("scoped");
    let archive = ArchiveStore::open(&cdc_common::storage::StorageConfig {
        url: format!("s3://{}/{prefix}/archive", cdc_tests::s3_bucket()),
        s3_endpoint: Some(cdc_tests::s3_endpoint()),
        allow_http: true,
    })
    .expect("open the S3 archive");
    // The whole prefix, unscoped, as another tool would see the bucket.
    let outside = cdc_tests::s3_archive(&prefix);
    outside
        .store
        .put(
            &outside.path("beside/t/checkpoints/p0/x.json"),
            PutPayload::from_static(b"not ours"),
        )
        .await
        .unwrap();

    let inside = archive.path("t/checkpoints/p0/00000000000000000000.json");
    archive
        .store
        .put(&inside, PutPayload::from_static(b"ours"))
        .await
        .unwrap();
    let raw = outside
        .store
        .get(&outside.path("archive/t/checkpoints/p0/00000000000000000000.json"))
        .await
        .expect("written under the archive's prefix")
        .bytes()
        .await
        .unwrap();
    assert_eq!(raw.as_ref(), b"ours");
    let listed: Vec<String> = archive
        .store
        .list(None)
        .map_ok(|m| archive.relative(&m.location))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, ["t/checkpoints/p0/00000000000000000000.json"]);
}
