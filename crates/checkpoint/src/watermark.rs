//! The table's archive watermark, computed from object storage alone:
//! the minimum over ALL partitions `0..partitions` (the count recorded in
//! the checkpoints) of each chain's latest resolved timestamp (raised by
//! the partition's idle progress when that extends the chain); `None` when
//! any partition has none yet. Every change at or before it, in every
//! partition, is archived.

use std::collections::BTreeMap;

use cdc_common::storage::ArchiveStore;
use cdc_types::Hlc;

use crate::{latest, partitions, raise, read_idle_progress, CheckpointError};

/// Where each partition's chain stands: what the watermark is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The topic's partition count: the largest that any partition's latest
    /// checkpoint recorded (0 when no partition has a checkpoint).
    pub partitions: i32,
    /// Latest resolved timestamp of each partition `0..partitions` that has
    /// a checkpoint (`None`: its chain has no resolved timestamp yet).
    /// A partition missing from the map has no checkpoint at all.
    pub resolved: BTreeMap<i32, Option<Hlc>>,
}

impl Progress {
    /// The minimum over ALL partitions `0..partitions` of each chain's
    /// latest resolved timestamp; `None` when any has none yet.
    pub fn watermark(&self) -> Option<Hlc> {
        if self.partitions == 0 {
            return None;
        }
        let mut min: Option<Hlc> = None;
        for p in 0..self.partitions {
            let r = self.resolved.get(&p).copied().flatten()?;
            min = Some(min.map_or(r, |m| m.min(r)));
        }
        min
    }

    /// Partitions `0..partitions` whose latest resolved timestamp is not
    /// past `target` (missing or no resolved timestamp included), with it.
    pub fn behind(&self, target: Hlc) -> Vec<(i32, Option<Hlc>)> {
        (0..self.partitions)
            .map(|p| (p, self.resolved.get(&p).copied().flatten()))
            .filter(|(_, r)| r.is_none_or(|r| r <= target))
            .collect()
    }
}

/// Reads every partition's latest checkpoint and idle progress (which
/// raises the resolved timestamp only from inside the chain: see
/// [`crate::raise`]): see [`Progress`].
pub async fn progress(store: &ArchiveStore, table: &str) -> Result<Progress, CheckpointError> {
    let mut out = Progress::default();
    for p in partitions(store, table).await? {
        if let Some(c) = latest(store, table, p).await? {
            // Optional: one that does not parse only leaves the chain's
            // (lower, still true) resolved timestamp.
            let idle = match read_idle_progress(store, table, p).await {
                Ok(i) => i,
                Err(CheckpointError::Malformed { .. }) => None,
                Err(e) => return Err(e),
            };
            let counted = idle.as_ref().filter(|i| i.extends(&c));
            out.partitions = out
                .partitions
                .max(c.partitions)
                .max(counted.map_or(0, |i| i.partitions))
                .max(p + 1);
            out.resolved.insert(p, raise(&c, idle.as_ref()));
        }
    }
    Ok(out)
}

/// The table's archive watermark: every change at or before it, in every
/// partition, is archived. The minimum over ALL partitions `0..partitions`
/// (the count recorded in the checkpoints) of each chain's latest resolved
/// timestamp; `None` when any partition has none yet.
pub async fn watermark(store: &ArchiveStore, table: &str) -> Result<Option<Hlc>, CheckpointError> {
    Ok(progress(store, table).await?.watermark())
}
