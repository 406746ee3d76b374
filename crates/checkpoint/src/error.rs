//! Errors reading or writing the archive's bookkeeping. Only a failed
//! transport is retryable; a [`CheckpointError::Conflict`] (another writer
//! extended the chain first) and a [`CheckpointError::Broken`] chain never
//! are.

use cdc_common::retry::Retryable;
use object_store::path::Path;

/// Errors reading or writing the archive's bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The object store failed; retryable when the transport failed.
    #[error("object store {op} {path}: {source}")]
    Storage {
        /// What we were doing (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Another writer already created this checkpoint: the caller lost the
    /// partition (or is a zombie) and must abandon its buffered work and
    /// reload the chain. Not retryable.
    #[error("checkpoint {path} already exists (written by {existing_writer:?}): another sink owns this partition")]
    Conflict {
        /// The checkpoint object.
        path: String,
        /// Who wrote the existing one, when readable.
        existing_writer: Option<String>,
    },
    /// Two consecutive checkpoints do not join up (gap or overlap), or a
    /// checkpoint does not match its name. Needs an operator.
    #[error(
        "checkpoint chain {table}/p{partition} is broken between {previous} and {next}: {reason}"
    )]
    Broken {
        /// Archive table.
        table: String,
        /// Partition.
        partition: i32,
        /// The earlier object (or the same object when it contradicts its name).
        previous: String,
        /// The later object.
        next: String,
        /// What does not match.
        reason: String,
    },
    /// An operation on the archive (a rewind) cannot be done as asked; the
    /// message says what to ask instead. Not retryable.
    #[error("{what}: {reason}")]
    Refused {
        /// What was asked (`rewind of payments/p0`, a path).
        what: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// An object is not the JSON we expect.
    #[error("{path} is not a valid checkpoint/purge record: {source}")]
    Malformed {
        /// The object.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint names a segment that is not in the store.
    #[error("segment {path} named by a checkpoint is missing")]
    SegmentMissing {
        /// The segment path (relative to the archive root).
        path: String,
    },
    /// A segment's size or sha256 differs from what its checkpoint says.
    #[error("segment {path} is corrupt: expected {expected}, found {actual}")]
    SegmentCorrupt {
        /// The segment path (relative to the archive root).
        path: String,
        /// `size=… sha256=…` from the checkpoint.
        expected: String,
        /// `size=… sha256=…` of the object.
        actual: String,
    },
}

impl Retryable for CheckpointError {
    fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Storage { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

pub(crate) fn storage<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(object_store::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Storage {
        op,
        path: path.to_string(),
        source,
    }
}
