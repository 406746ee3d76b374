//! The archive's object store: the local file system (default) or any
//! S3-compatible store, addressed by one URL.
//!
//! Writes are durable when they report success: S3 by its contract, the
//! local file system because the store fsyncs every written file and its
//! directory (see [`ArchiveStore::open`]).
//!
//! The store an [`ArchiveStore`] holds is scoped to the archive's root: an
//! S3 URL's prefix is an `object_store::prefix::PrefixStore` (a file URL's
//! directory is the local store's own prefix), so no path any command
//! builds can read, list or write outside the configured archive; paths
//! are relative to it (`<table>/checkpoints/…`), and listings return them
//! that way.
//!
//! S3 credentials come from the standard `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for non-AWS servers) and are never part of the
//! configuration file, the URL we log, or any error message we format.

use std::sync::Arc;

use object_store::prefix::PrefixStore;
use object_store::{aws::AmazonS3Builder, local::LocalFileSystem, path::Path, ObjectStore};
use serde::{Deserialize, Serialize};

/// Where the archive lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `file:///absolute/dir` or `s3://bucket/optional/prefix`.
    /// Default: `file:///var/lib/cdc-archiver/archive`.
    pub url: String,
    /// S3 endpoint for non-AWS servers (MinIO, a local test server).
    /// Default: the `AWS_ENDPOINT_URL` environment variable, else AWS.
    pub s3_endpoint: Option<String>,
    /// Allow plain-HTTP endpoints (local servers only). Default: false,
    /// but true when the endpoint is on loopback.
    pub allow_http: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/lib/cdc-archiver/archive".into(),
            s3_endpoint: None,
            allow_http: false,
        }
    }
}

/// Errors opening the archive.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL is not one we understand; not retryable.
    #[error("storage.url {url:?} is not valid: {reason}. Use file:///absolute/dir or s3://bucket/prefix")]
    BadUrl {
        /// The offending URL (never contains credentials: they come from the environment).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be built (missing region, bad endpoint...).
    #[error("cannot open object store {url}: {source}")]
    Open {
        /// The store URL.
        url: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// The local directory could not be created.
    #[error("cannot create archive directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The archive's object store, scoped to the archive's root.
#[derive(Clone, Debug)]
pub struct ArchiveStore {
    /// The store, scoped to the archive's root (paths are relative to it).
    /// Its own client retries throttling and 5xx responses.
    pub store: Arc<dyn ObjectStore>,
    /// The URL, for display. Contains no secret.
    pub url: String,
}

impl ArchiveStore {
    /// Opens the archive named by `config.url`.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        let url = url::Url::parse(&config.url).map_err(|e| StorageError::BadUrl {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| StorageError::BadUrl {
                    url: config.url.clone(),
                    reason: "a file URL needs an absolute path".into(),
                })?;
                std::fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
                    dir: dir.display().to_string(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|source| StorageError::Open {
                        url: config.url.clone(),
                        source,
                    })?
                    // Writes go to a temporary file and are renamed into
                    // place, so a crash never leaves a half-written object.
                    .with_automatic_cleanup(true)
                    // Durable like S3: every put (single, conditional create,
                    // multipart completion) fsyncs the staged file before the
                    // rename/link that publishes it and the parent directory
                    // (and any directory it created) after, before it
                    // reports success. Without this a power loss after the
                    // sink's "checkpoint written" could lose the segment or
                    // the checkpoint the purger already acted on.
                    .with_fsync(true);
                Ok(Self {
                    store: Arc::new(store),
                    url: config.url.clone(),
                })
            }
            "s3" => {
                let bucket = url.host_str().ok_or_else(|| StorageError::BadUrl {
                    url: config.url.clone(),
                    reason: "missing bucket name".into(),
                })?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = config
                    .s3_endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                if let Some(ep) = &endpoint {
                    let loopback = ep.contains("://127.0.0.1")
                        || ep.contains("://localhost")
                        || ep.contains("://[::1]");
                    builder = builder
                        .with_endpoint(ep)
                        .with_allow_http(config.allow_http || loopback)
                        .with_virtual_hosted_style_request(false);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                // Conditional create (PutMode::Create) is what keeps the
                // checkpoint chain single-writer; S3 supports it natively
                // with If-None-Match.
                builder =
                    builder.with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
                let store = builder.build().map_err(|source| StorageError::Open {
                    url: config.url.clone(),
                    source,
                })?;
                let root = Path::from(url.path().trim_matches('/'));
                let store: Arc<dyn ObjectStore> = if root.parts().count() == 0 {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, root))
                };
                Ok(Self {
                    store,
                    url: config.url.clone(),
                })
            }
            other => Err(StorageError::BadUrl {
                url: config.url.clone(),
                reason: format!("unsupported scheme {other:?}"),
            }),
        }
    }

    /// The store path of `relative`, a `/`-separated path inside the
    /// archive (empty segments dropped).
    pub fn path(&self, relative: &str) -> Path {
        Path::from_iter(relative.split('/').filter(|s| !s.is_empty()))
    }

    /// The inverse of [`ArchiveStore::path`].
    pub fn relative(&self, path: &Path) -> String {
        path.parts()
            .map(|p| p.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_schemes_with_the_fix() {
        let err = ArchiveStore::open(&StorageConfig {
            url: "ftp://x/y".into(),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("storage.url") && msg.contains("s3://bucket/prefix"),
            "{msg}"
        );
    }

    /// A `file://` archive is opened with fsync on: its writes are durable
    /// before they report success (object_store's `LocalFileSystem` fsyncs
    /// the staged file, then the directory entry that publishes it).
    #[test]
    fn local_archives_fsync_their_writes() {
        let dir = std::env::temp_dir().join(format!("cdc-fsync-{}", std::process::id()));
        let s = ArchiveStore::open(&StorageConfig {
            url: format!("file://{}", dir.display()),
            ..Default::default()
        })
        .unwrap();
        // The store's own description of its configuration.
        let described = format!("{:?}", s.store);
        assert!(
            described.contains("LocalFileSystem") && described.contains("fsync: true"),
            "{described}"
        );
        // And the durable write path works end to end on a real directory,
        // for plain puts, conditional creates and multipart uploads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
            let p = s.path("t/checkpoints/p0/00000000000000000000.json");
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            s.store
                .put_opts(&p, PutPayload::from_static(b"{}"), opts.clone())
                .await
                .unwrap();
            assert!(matches!(
                s.store
                    .put_opts(&p, PutPayload::from_static(b"{}"), opts)
                    .await,
                Err(object_store::Error::AlreadyExists { .. })
            ));
            let seg = s.path("t/segments/p0/x.avro");
            let mut w =
                WriteMultipart::new_with_chunk_size(s.store.put_multipart(&seg).await.unwrap(), 4);
            w.write(b"0123456789");
            w.finish().await.unwrap();
            let got = s.store.get(&seg).await.unwrap().bytes().await.unwrap();
            assert_eq!(got.as_ref(), b"0123456789");
        });
        assert!(dir
            .join("t/checkpoints/p0/00000000000000000000.json")
            .is_file());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn paths_are_under_the_root() {
        let dir = std::env::temp_dir().join(format!("cdc-store-{}", std::process::id()));
        let s = ArchiveStore::open(&StorageConfig {
            url: format!("file://{}", dir.display()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.path("payments/segments/p0/x.avro").as_ref(),
            "payments/segments/p0/x.avro"
        );
        assert_eq!(s.relative(&s.path("a/b")), "a/b");
        let _ = std::fs::remove_dir_all(dir);
    }
}
