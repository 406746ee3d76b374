//! The purger: the last step of cdc-archiver. It reads the archive's
//! checkpoints (never Kafka) and deletes from the source table exactly the
//! row versions they prove are archived, in small, retried, rate-limited
//! batches.
//!
//! The guarantee kept here is the project's invariant: **a row version is
//! deleted only if that exact version is in a durable segment named by a
//! durable checkpoint.** A checkpoint is trusted only after its segment's
//! size and sha256 are verified; every DELETE carries a version guard
//! (`crdb_internal_mvcc_timestamp` on CockroachDB, `xmin` on PostgreSQL)
//! equal to the archived event's version, plus `AND archived`, so a row
//! changed or un-marked after it was archived is kept. An archived event
//! without a version is never deleted. A purge record is written per
//! checkpoint after its last batch, so reruns skip finished checkpoints and
//! a crashed one is completed (its deleted rows then count as already gone).
//!
//! Layout (one concern per module):
//! - `driver.rs`: [`purge`] and its [`PurgeOptions`]: one run end to end,
//!   checkpoint by checkpoint in chain order, up to the [`PurgeSummary`].
//! - `preflight.rs`: the foreign-key and holds checks that must pass before
//!   anything is deleted.
//! - `loader.rs`: reads the chains and purge records, and verifies, decodes
//!   and plans each segment one checkpoint ahead of the deletes.
//! - `session.rs`: [`open_session`] with every session setting, and the
//!   connection with the batch statements prepared on it.
//! - `executor.rs`: one checkpoint's batches (sequential or pipelined),
//!   retries, adaptive size, rate limit, then its purge record.
//! - `batch.rs`: one batch: its statement shape and parameters, the guarded
//!   DELETE, the probe, and the accounting of kept rows.
//! - `kept_rows.rs`: [`retouch`], [`hold`] and [`retouch_marked`].
//! - [`catalog`], [`config`], [`decode`], `error.rs`, [`origin`], [`sql`],
//!   [`summary`], [`versions`]: the table's catalog, the configuration,
//!   segment decoding, errors, replication origins, statement text, the
//!   summary, and the planning of which versions to delete. Reading a
//!   segment and checking it against its checkpoint is `cdc_segment`'s
//!   (`reader`, `versions`), shared with `retrieve` and `restore`.

mod batch;
pub mod catalog;
pub mod config;
pub mod decode;
mod driver;
mod error;
mod executor;
mod kept_rows;
mod loader;
pub mod origin;
mod preflight;
mod session;
pub mod sql;
pub mod summary;
pub mod versions;

pub use config::PurgerConfig;
pub use driver::{purge, PurgeOptions, Replay};
pub use error::PurgeError;
pub use kept_rows::{hold, retouch, retouch_marked};
pub use origin::OriginSetup;
pub use session::{open_session, OpenedSession, SessionUse};
pub use summary::{CheckpointReport, CheckpointStatus, PurgeSummary, Refusal, RowCounts};
