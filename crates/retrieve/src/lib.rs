//! Reading the archive back: [`retrieve`] finds archived row versions by
//! primary key, key prefix, `updated` time range or a simple column
//! predicate; [`restore`] writes them back into a table.
//!
//! The guarantee kept here is that the archive is read only through the
//! checkpoint chain: a segment is read only if a checkpoint names it and
//! its size and SHA-256 match (orphans and damaged segments are never
//! trusted, and a damaged one is an error, not an empty answer). To stay
//! fast on a large archive, a look-up skips every segment whose
//! checkpoint metadata (key filter, `updated` range) proves it cannot hold
//! the answer, and reports how many segments it actually read. A key
//! look-up uses each checkpoint's key filter (a Bloom filter the sink
//! writes); an `updated` range uses its min/max `updated`. A key prefix or
//! a column predicate reads every segment: checkpoints record no key range
//! or column statistics.
//!
//! Redelivered copies of one row version are returned once: a version is
//! named by its canonical key and its MVCC timestamp (CockroachDB), else
//! its transaction id (the PostgreSQL changefeed, whose re-sent events
//! carry a new `updated`), else its `updated`. A version lies in an
//! `updated` range when its first delivery does (so the segments before
//! the range that may hold an earlier copy of a PostgreSQL version found
//! in it are read too). Selectors combine with [`Selector::All`], e.g. a
//! key and an `updated` range.

mod output;
mod query;
mod restore;

pub use output::{to_json_line, write_csv, CSV_META_COLUMNS};
pub use query::{
    parse_key_arg, retrieve, Found, Predicate, Query, RetrieveError, RetrieveStats, Selector,
};
pub use restore::{restore, restore_url, RestoreError, RestoreOptions, RestoreSummary};
