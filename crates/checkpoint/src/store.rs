//! Creates and reads the archive's JSON objects. Creates are conditional
//! and never overwrite: an identical existing object (our own earlier
//! attempt whose response was lost) counts as success, a different one is
//! returned to the caller, so only one writer can extend a chain at a
//! given offset.

use bytes::Bytes;
use cdc_common::storage::ArchiveStore;
use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use crate::error::storage;
use crate::{layout, Checkpoint, CheckpointError};

pub(crate) async fn get_bytes(
    store: &ArchiveStore,
    path: &Path,
) -> Result<Option<Bytes>, CheckpointError> {
    match store.store.get(path).await {
        Ok(r) => Ok(Some(r.bytes().await.map_err(storage("get", path))?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage("get", path)(e)),
    }
}

/// The object at `relative` (a path under the archive root), `None` if
/// there is none.
pub async fn get_object(
    store: &ArchiveStore,
    relative: &str,
) -> Result<Option<Bytes>, CheckpointError> {
    get_bytes(store, &store.path(relative)).await
}

/// The JSON object at `relative`, parsed; `None` if there is none.
pub(crate) async fn read_json<T: for<'de> Deserialize<'de>>(
    store: &ArchiveStore,
    relative: &str,
) -> Result<Option<T>, CheckpointError> {
    let path = store.path(relative);
    get_bytes(store, &path)
        .await?
        .map(|b| parse(&path, &b))
        .transpose()
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, CheckpointError> {
    serde_json::from_slice(bytes).map_err(|source| CheckpointError::Malformed {
        path: path.to_string(),
        source,
    })
}

/// Outcome of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// We created the object.
    Created,
    /// An identical object was already there (our own earlier attempt whose
    /// response was lost, or an idempotent repeat).
    AlreadyThere,
}

/// Creates `relative` with `body` unless it exists. If it exists with the
/// same bytes, that is our own earlier attempt: success. Otherwise
/// returns the existing bytes.
pub(crate) async fn create_object(
    store: &ArchiveStore,
    relative: &str,
    body: Vec<u8>,
) -> Result<Result<Created, Bytes>, CheckpointError> {
    let path = store.path(relative);
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .store
        .put_opts(&path, PutPayload::from(body.clone()), opts)
        .await
    {
        Ok(_) => Ok(Ok(Created::Created)),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {
            let existing = get_bytes(store, &path).await?.unwrap_or_default();
            if existing.as_ref() == body.as_slice() {
                Ok(Ok(Created::AlreadyThere))
            } else {
                Ok(Err(existing))
            }
        }
        Err(e) => Err(storage("put", &path)(e)),
    }
}

/// Checks that the store refuses to create an object that exists (a
/// conditional create: `If-None-Match: *` on S3): the chain's single-writer
/// guarantee (a zombie sink's checkpoint is refused) rests on it, and some
/// S3-compatible stores ignore the condition and overwrite. Writes two
/// different bodies to one probe object under `_probe/`, expects the
/// second refused, and removes the probe. `Ok(false)`: the store
/// overwrote.
pub async fn conditional_create_holds(store: &ArchiveStore) -> Result<bool, CheckpointError> {
    let relative = format!(
        "_probe/conditional-create-{}",
        uuid::Uuid::new_v4().simple()
    );
    let first = create_object(store, &relative, b"first".to_vec()).await?;
    let second = create_object(store, &relative, b"second".to_vec()).await?;
    let path = store.path(&relative);
    let kept = get_bytes(store, &path).await?;
    let _ = store.store.delete(&path).await;
    Ok(matches!(first, Ok(Created::Created))
        && second.is_err()
        && kept.as_deref() == Some(b"first".as_slice()))
}

/// Creates `relative` with `body`, never overwriting: an identical
/// existing object is success ([`Created::AlreadyThere`]), a different one
/// a [`CheckpointError::Conflict`]. For the archive's records that no
/// second writer may replace (manifests, gc, replay and audit records).
pub async fn create_new(
    store: &ArchiveStore,
    relative: &str,
    body: Vec<u8>,
) -> Result<Created, CheckpointError> {
    create_object(store, relative, body)
        .await?
        .map_err(|_| CheckpointError::Conflict {
            path: relative.to_owned(),
            existing_writer: None,
        })
}

/// Creates the checkpoint, never overwriting. An existing different
/// checkpoint at the same first offset is a [`CheckpointError::Conflict`]:
/// another writer extended the chain first. Safe to retry: an identical
/// existing checkpoint (our own lost response) counts as success.
pub async fn create(
    store: &ArchiveStore,
    checkpoint: &Checkpoint,
) -> Result<Created, CheckpointError> {
    let relative = checkpoint.path();
    match create_object(store, &relative, checkpoint.to_json()).await? {
        Ok(created) => Ok(created),
        Err(existing) => Err(CheckpointError::Conflict {
            existing_writer: serde_json::from_slice::<Checkpoint>(&existing)
                .ok()
                .map(|c| c.writer_id),
            path: relative,
        }),
    }
}

/// Reads one checkpoint, `None` if absent.
pub async fn read(
    store: &ArchiveStore,
    table: &str,
    partition: i32,
    first_offset: i64,
) -> Result<Option<Checkpoint>, CheckpointError> {
    read_json(
        store,
        &layout::checkpoint_path(table, partition, first_offset),
    )
    .await
}

/// Lists the objects under a relative prefix (recursively).
pub(crate) async fn list(
    store: &ArchiveStore,
    prefix: &str,
) -> Result<Vec<object_store::ObjectMeta>, CheckpointError> {
    let path = store.path(prefix);
    store
        .store
        .list(Some(&path))
        .try_collect()
        .await
        .map_err(storage("list", &path))
}
