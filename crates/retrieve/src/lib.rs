//! Reading the archive back: [`retrieve`] finds archived row versions by
//! primary key, key prefix, `updated` time range or a simple column
//! predicate; [`retrieve_deletes`] lists, with the same selectors, the
//! delete events recorded at the source; [`restore`] writes row versions
//! back into a table.
//!
//! The guarantee kept here is that the archive is read only through the
//! checkpoint chain: a segment is read only if a checkpoint names it, its
//! size and SHA-256 match, and it is that checkpoint's (its table,
//! partition, offset range, row count and columns, and every record's
//! offset within the range: `cdc_segment::reader`, the purger's checks).
//! Orphans and damaged or foreign segments are never trusted, and a
//! damaged or foreign one is an error naming the segment, the checkpoint
//! and what differs, not an empty answer; so is everything built on a
//! look-up ([`restore`] included). To stay
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
//!
//! # Rows and deletes never mix
//!
//! The sink keeps a checkpoint's delete events in a *delete file* of their
//! own, never in its segment. [`retrieve`] reads segments only, so its
//! answer holds row versions only, and so does everything built on it
//! ([`restore`], the row outputs). Deletes are a separate question with a
//! separate answer: [`retrieve_deletes`] reads delete files only and
//! returns [`FoundDelete`]s, another type than a row's [`Found`], so a
//! delete cannot be restored or printed as a row by mistake (its outputs,
//! [`delete_to_json_line`] and [`write_deletes_csv`], say `_op = "delete"`
//! on every record). The same rules hold for delete files as for segments:
//! read only when a checkpoint names one, after its size and SHA-256 match
//! (damage is an error), and only if it decodes as that checkpoint's; a
//! redelivered copy of one delete (same key and version) is listed once,
//! and a delete lies in an `updated` range when its first delivery does.
//! A column predicate is checked on the deleted row (`before`), which the
//! sink keeps only for rows that were marked archived: a delete without
//! it matches no predicate, and [`DeleteStats::without_before`] counts
//! those left out for that reason.
//!
//! What a delete listing cannot tell: checkpoints record no key filter or
//! `updated` range over their deletes, so every delete file is read (they
//! exist only for ranges with deletes); checkpoints written before delete
//! files existed only count their deletes ([`DeleteStats::deletes_unrecorded`]);
//! and on PostgreSQL the purger's own deletes flow through the changefeed
//! (on CockroachDB they do not, with `disable_changefeed_replication`, the
//! purger's default), so there a delete of an archived row may be the
//! purge itself. The purge records (`<table>/purged/…`) say when each
//! checkpoint was purged, not which rows, so they cannot tell the two
//! apart either.

mod deletes;
pub mod inspect;
mod output;
mod query;
mod read;
mod restore;

pub use deletes::{retrieve_deletes, DeleteStats, FoundDelete};
pub use output::{
    delete_to_json_line, to_json_line, write_csv, write_deletes_csv, CSV_DELETE_COLUMNS,
    CSV_DELETE_META_COLUMNS, CSV_META_COLUMNS,
};
pub use query::{
    parse_key_arg, retrieve, Found, Predicate, Query, RetrieveError, RetrieveStats, Selector,
};
pub use restore::{restore, restore_url, RestoreError, RestoreOptions, RestoreSummary};
