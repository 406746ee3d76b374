//! A multipart segment upload that fails is aborted, on the stack's
//! S3-compatible server: no incomplete upload (whose parts S3 keeps, and
//! bills, until aborted) is left behind, and no checkpoint names anything.

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use cdc_changefeed::line::OwnedRecord;
use cdc_common::retry::RetryConfig;
use cdc_sink::SinkConfig;
use common::*;
use tokio_util::sync::CancellationToken;

/// `ListMultipartUploads` under `prefix`, straight over HTTP (the local
/// server does not check signatures): the keys of uploads in progress.
fn uploads_in_progress(prefix: &str) -> Vec<String> {
    let endpoint = cdc_tests::s3_endpoint();
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{}?uploads&prefix={prefix}/ HTTP/1.0\r\nHost: {host}\r\n\r\n",
        cdc_tests::s3_bucket()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("ListMultipartUploadsResult"), "{out}");
    out.split("<Key>")
        .skip(1)
        .filter_map(|p| p.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_multipart_upload_is_aborted() {
    let topic = cdc_tests::unique("mpu");
    cdc_tests::create_topic(&topic, 1).await;
    let records: Vec<OwnedRecord> = (0..40)
        .map(|o| OwnedRecord {
            topic: topic.clone(),
            partition: 0,
            offset: o,
            key: Some(format!("[{o}]").into_bytes()),
            value: Some(
                format!(
                    r#"{{"after": {{"archived": true, "id": {o}, "pad": "{}"}}, "updated": "1.0000000000"}}"#,
                    "x".repeat(200)
                )
                .into_bytes(),
            ),
        })
        .collect();
    produce(&records).await;
    let prefix = cdc_tests::unique("sinkmpu");
    let (storage, store) = s3_storage(&prefix);
    // Parts of 512 bytes: S3 (and the local server) refuse to complete an
    // upload whose non-last parts are under 5 MiB (EntityTooSmall).
    let cfg = SinkConfig {
        multipart_threshold: 1,
        multipart_part_size: 512,
        retry: RetryConfig {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retries: 2,
        },
        ..config(&topic, storage)
    };
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        cdc_sink::run(&cfg, CancellationToken::new()),
    )
    .await
    .expect("the sink gives up on the upload");
    let err = result.expect_err("the segment cannot be uploaded");
    assert!(err.to_string().contains("put_multipart"), "{err}");
    // Every attempt was aborted: nothing is left in progress.
    assert_eq!(uploads_in_progress(&prefix), Vec::<String>::new());
    assert!(cdc_checkpoint::read_chain(&store, &topic, 0)
        .await
        .unwrap()
        .checkpoints
        .is_empty());
}
