//! The table's maintenance lease (`<table>/maintenance.lease`): at most one
//! of `checkpoints compact --yes`, `checkpoints gc --yes` and
//! `sink rewind --yes` changes a table's bookkeeping at a time. A gc
//! planned while a rewind moves manifests, or a compaction that writes a
//! manifest the rewind did not plan for, would otherwise leave a chain that
//! ends before the rewind's target or undo the rewind.
//!
//! Guarantee: the lease is taken with a conditional create, so two
//! takers of a free lease never both hold it. A lease past its expiry (its
//! holder died; [`MAINTENANCE_LEASE_TTL`]) is taken over by removing it and
//! creating it again; that step is not atomic (object stores have no
//! conditional delete), so two processes that find the same expired lease
//! at the same moment may both proceed: the operations check their own
//! result too (a rewind reads the chain again at its end). Dropping a
//! [`Lease`] does not release it (no async drop): call [`Lease::release`].

use std::time::Duration;

use cdc_common::storage::ArchiveStore;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::storage;
use crate::store::{create_object, parse};
use crate::CheckpointError;

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// What holds it (`gc`, `compact`, `rewind of <table>/p<N>`).
    pub what: String,
    /// Which process (host and pid).
    pub holder: String,
    /// RFC 3339.
    pub taken_at: String,
    /// RFC 3339: after this, another process may take it over.
    pub expires_at: String,
}

/// How long a maintenance lease is valid: longer than any compaction, gc
/// or rewind of one table takes.
pub const MAINTENANCE_LEASE_TTL: Duration = Duration::from_secs(3600);

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    path: String,
}

/// `<table>/maintenance.lease`
fn lease_path(table: &str) -> String {
    format!("{table}/maintenance.lease")
}

/// Takes `table`'s maintenance lease for `what`, valid for `ttl`. Another
/// live holder is a [`CheckpointError::Refused`] naming it.
pub async fn take_lease(
    store: &ArchiveStore,
    table: &str,
    what: &str,
    ttl: Duration,
) -> Result<Lease, CheckpointError> {
    let path = lease_path(table);
    let now = chrono::Utc::now();
    let info = LeaseInfo {
        what: what.to_owned(),
        holder: format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            std::process::id()
        ),
        taken_at: now.to_rfc3339(),
        expires_at: (now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
            .to_rfc3339(),
    };
    let body = serde_json::to_vec_pretty(&info).expect("a lease always serialises");
    for _ in 0..2 {
        let existing = match create_object(store, &path, body.clone()).await? {
            Ok(_) => return Ok(Lease { path }),
            Err(existing) => existing,
        };
        let held: LeaseInfo = parse(&store.path(&path), &existing)?;
        let expired =
            chrono::DateTime::parse_from_rfc3339(&held.expires_at).map_or(true, |t| t < now);
        if !expired {
            return Err(CheckpointError::Refused {
                what: format!("{what} of table {table}"),
                reason: format!(
                    "{} holds the table's maintenance lease ({}, since {}, until {}): wait for it to finish (or, if it died, for the lease to expire)",
                    held.holder, held.what, held.taken_at, held.expires_at
                ),
            });
        }
        let p = store.path(&path);
        match store.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage("delete", &p)(e)),
        }
    }
    Err(CheckpointError::Refused {
        what: format!("{what} of table {table}"),
        reason: "another process took the table's maintenance lease at the same moment; try again"
            .into(),
    })
}

impl Lease {
    /// Releases the lease.
    pub async fn release(self, store: &ArchiveStore) -> Result<(), CheckpointError> {
        let p = store.path(&self.path);
        match store.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage("delete", &p)(e)),
        }
    }
}
