//! The PostgreSQL changefeed's Prometheus metric names, in one place (the
//! crate's README lists them with their labels).

/// Counter `{table, reason}`: rows sent without a version because wal2json
/// could not say what they hold (`maybe_nan_or_infinity`, `missing_column`).
pub const UNVERSIONED_ROWS: &str = "cdc_pgcf_unversioned_rows_total";
