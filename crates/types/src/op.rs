//! What a change did to its row.

use serde::Serialize;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A new row (wrapped with `diff` and `before: null`, or a CDC query's
    /// `event_op()` = `insert`). Initial-scan rows are inserts too.
    Insert,
    /// A changed row (wrapped with `diff` and a `before` row, or
    /// `event_op()` = `update`).
    Update,
    /// A deleted row (`after: null`, or `event_op()` = `delete`).
    Delete,
    /// Insert or update: the message cannot tell (wrapped without `diff`,
    /// or a bare row without an operation column).
    Upsert,
}
