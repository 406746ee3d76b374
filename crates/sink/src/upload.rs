//! Object store writes of the sink: segments (single or multipart) and
//! quarantine records, with retries for transient errors.

use crate::metric;
use backon::Retryable as _;
use base64::Engine as _;
use bytes::Bytes;
use cdc_changefeed::DecodeError;
use cdc_checkpoint::CheckpointError;
use cdc_common::retry::{Retrier, RetryConfig, Retryable};
use cdc_common::storage::ArchiveStore;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use crate::config::SinkConfig;
use crate::crash::CrashPoints;
use crate::SinkError;

fn storage_err<'a>(
    op: &'static str,
    path: &'a str,
) -> impl FnOnce(object_store::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Storage {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Uploads a segment; large ones in parts. The name is unique per upload,
/// so a retry or another writer never replaces a trusted object.
pub(crate) async fn put_segment(
    store: &ArchiveStore,
    config: &SinkConfig,
    relative: &str,
    body: Vec<u8>,
    crash: &mut CrashPoints,
) -> Result<(), SinkError> {
    let path = store.path(relative);
    let body = Bytes::from(body);
    if (body.len() as u64) < config.multipart_threshold {
        crash.hit("mid_upload");
        (|| async { store.store.put(&path, PutPayload::from(body.clone())).await })
            .retry(config.retry.backoff())
            .when(Retryable::is_retryable)
            .await
            .map_err(storage_err("put", relative))?;
        return Ok(());
    }
    // Multipart: a failed upload is aborted (so its parts do not linger,
    // billed, on S3) and restarted whole (parts cannot be re-sent
    // individually through WriteMultipart).
    let part = usize::try_from(config.multipart_part_size)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut retrier = Retrier::new(&config.retry);
    loop {
        let result = upload_parts(store, &path, &body, part, crash).await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => match retrier.next_delay(&e) {
                Some(delay) => {
                    tracing::warn!(path = relative, error = %e, attempt = retrier.retries(), ?delay,
                        "multipart upload failed; retrying");
                    Retrier::wait(delay, None).await;
                }
                None => return Err(storage_err("put_multipart", relative)(e).into()),
            },
        }
    }
}

/// One multipart attempt. On any failure the upload is aborted before the
/// error is returned (`WriteMultipart::finish` aborts by itself when the
/// last parts or the completion fail).
async fn upload_parts(
    store: &ArchiveStore,
    path: &object_store::path::Path,
    body: &Bytes,
    part: usize,
    crash: &mut CrashPoints,
) -> Result<(), object_store::Error> {
    let upload = store.store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut chunks = body.chunks(part);
    if let Some(first) = chunks.next() {
        writer.write(first);
        if let Err(e) = writer.wait_for_capacity(0).await {
            abort(writer, path).await;
            return Err(e);
        }
        crash.hit("mid_upload");
    }
    for chunk in chunks {
        writer.write(chunk);
    }
    writer.finish().await.inspect_err(|_| {
        // `finish` aborted the upload itself.
        metrics::counter!(metric::MULTIPART_ABORTS).increment(1);
    })?;
    Ok(())
}

async fn abort(writer: WriteMultipart, path: &object_store::path::Path) {
    metrics::counter!(metric::MULTIPART_ABORTS).increment(1);
    if let Err(e) = writer.abort().await {
        // Left for the bucket's lifecycle rule (AbortIncompleteMultipartUpload).
        tracing::warn!(%path, error = %e, "aborting a failed multipart upload failed");
    }
}

/// Writes `<table>/quarantine/p<partition>/<offset>.json` with the raw
/// bytes (base64), the offset and the error.
pub(crate) async fn quarantine(
    store: &ArchiveStore,
    retry: &RetryConfig,
    table: &str,
    err: &DecodeError,
    writer_id: &str,
) -> Result<(), SinkError> {
    let b64 = |b: &Option<Vec<u8>>| {
        b.as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    };
    let record = serde_json::json!({
        "table": table,
        "topic": err.topic,
        "partition": err.partition,
        "offset": err.offset,
        "error": err.to_string(),
        "key_base64": b64(&err.key),
        "value_base64": b64(&err.value),
        "writer_id": writer_id,
        "created_at": cdc_checkpoint::now_rfc3339(),
    });
    let relative = cdc_checkpoint::layout::quarantine_path(table, err.partition, err.offset);
    let path = store.path(&relative);
    let body = Bytes::from(serde_json::to_vec_pretty(&record).expect("json"));
    // Overwrite is fine: the same offset always holds the same bytes.
    (|| async { store.store.put(&path, PutPayload::from(body.clone())).await })
        .retry(retry.backoff())
        .when(Retryable::is_retryable)
        .await
        .map_err(storage_err("put", &relative))?;
    Ok(())
}
