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
//! the answer, and reports how many segments it actually read.

mod query;
mod restore;

pub use query::{
    parse_key_arg, retrieve, to_json_line, Found, Predicate, Query, RetrieveError, RetrieveStats,
    Selector,
};
pub use restore::{restore, RestoreError, RestoreOptions, RestoreSummary};
