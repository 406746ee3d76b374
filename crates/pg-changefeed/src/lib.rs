//! A changefeed for PostgreSQL. It reads a logical replication slot with the
//! wal2json output plugin and publishes to Kafka the messages a CockroachDB
//! changefeed (`WITH updated, resolved[, diff]`) would publish: the key is the
//! JSON array of the primary key, the value the wrapped envelope with
//! `after`, `before` (only for `REPLICA IDENTITY FULL` tables), an
//! HLC-shaped `updated`, and two PostgreSQL extras the purger needs:
//! `pg_xid` (the writing transaction's 64-bit id, `epoch << 32 | xid`, as a
//! decimal string; its low 32 bits are the row version's `xmin`; left out
//! when the row is not known to be complete, see [`feed`]) and `pg_lsn`
//! (the commit LSN).
//!
//! Guarantees kept:
//! - **At least once, never skipped**: the slot is advanced only to the end
//!   of a transaction whose every message Kafka has acknowledged; a crash
//!   re-sends from the last advanced position.
//! - **Per-key order**: one key always goes to one partition (CockroachDB's
//!   FNV-1a partitioner), messages are produced in commit order by an
//!   idempotent producer.
//! - **Resolved**: a resolved timestamp `T` is sent to a partition only when
//!   every transaction that will ever get an `updated <= T` has been
//!   published and acknowledged (see [`feed`] for the argument).
//! - **Bounded memory**: changes are streamed from the server and the number
//!   of unacknowledged messages is capped, however large a transaction is.
//!
//! Layout:
//! - [`feed`]: the loop that wires the parts below (peek, publish, await
//!   acknowledgements, advance the slot, send resolved timestamps).
//! - `slot`: create and check the replication slot, refuse a lost one,
//!   advance it, write heartbeats.
//! - `reader`: peek changes through wal2json (streamed, cancellable), probe
//!   the plugin's options, resolve the filtered replication origins.
//! - `assembler`: a transaction's wal2json changes to Kafka records
//!   (`updated`, `pg_xid`, `pg_lsn`; unversioned rows counted).
//! - `publisher`: the Kafka producer, acknowledgements, resolved timestamps,
//!   the clock floor read back from the topics.
//! - [`catalog`]: the table facts checked at start-up, re-read before peeks.
//! - [`config`]: the `[pg_changefeed]` configuration.
//! - [`encode`]: values, keys and envelopes as CockroachDB writes them.
//! - [`error`]: [`ChangefeedError`] and what is retried.
//! - [`hlc`]: the strictly increasing `updated` clock.
//! - [`metric`]: the Prometheus metric names.
//! - [`partition`]: CockroachDB's key-to-partition hash.
//! - [`wal2json`]: the wal2json v2 messages and options.
//! - [`xid`]: 32-bit xids widened to 64-bit `pg_xid`.

mod assembler;
pub mod catalog;
pub mod config;
pub mod encode;
pub mod error;
pub mod feed;
pub mod hlc;
pub mod metric;
pub mod partition;
mod publisher;
mod reader;
mod slot;
pub mod wal2json;
pub mod xid;

pub use config::{PgChangefeedConfig, TableConfig};
pub use error::ChangefeedError;
pub use feed::run;
