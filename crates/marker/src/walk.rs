//! The keyset walk in primary-key order (never OFFSET, never a rescan
//! from the start), one short statement per batch. On PostgreSQL, rows
//! locked by a foreground writer are skipped without waiting and put aside
//! for the revisit; once too many are aside, the walk stops advancing past
//! them instead, so no skipped key is lost. On CockroachDB, candidates are
//! read in the past and the write re-checks every condition.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::key::{self, Key};
use crate::sql::TableSql;
use crate::{CrdbReadAsOf, MarkError};

/// Keys put aside because a foreground writer held them; beyond this the
/// walk stops advancing past locked rows instead (bounded memory).
const MAX_DEFERRED: usize = 100_000;

/// What one batch did.
pub(crate) struct BatchOutcome {
    pub(crate) marked: u64,
    /// The walk is at the end.
    pub(crate) done: bool,
}

/// The walk's state between batches.
pub(crate) struct Walk {
    pub(crate) cursor: Option<Key>,
    pub(crate) deferred: Vec<Key>,
    pub(crate) skipped_locked: u64,
}

impl Walk {
    /// Moves the cursor past a PostgreSQL window (keys in order, each with
    /// whether it was marked). Keys not marked were locked (or changed
    /// since the window was read): they are put aside for the revisit and
    /// the walk moves on; once `max_deferred` keys are aside, the cursor
    /// instead stops just before the first unmarked key, so the next window
    /// starts at it again. Either way no skipped key is lost.
    fn advance(&mut self, mut window: Vec<(Key, bool)>, max_deferred: usize) {
        let skipped: Vec<usize> = window
            .iter()
            .enumerate()
            .filter(|(_, (_, m))| !*m)
            .map(|(i, _)| i)
            .collect();
        self.skipped_locked += skipped.len() as u64;
        if skipped.is_empty() || self.deferred.len() + skipped.len() <= max_deferred {
            for &i in &skipped {
                self.deferred.push(window[i].0.clone());
            }
            if let Some((k, _)) = window.pop() {
                self.cursor = Some(k);
            }
        } else if skipped[0] > 0 {
            self.cursor = Some(window.swap_remove(skipped[0] - 1).0);
        }
    }
}

fn params<'a>(
    value: &'a String,
    limit: &'a i64,
    keys: impl IntoIterator<Item = &'a Key>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![value, limit];
    for k in keys {
        p.extend(k.iter().map(|part| part as &(dyn ToSql + Sync)));
    }
    p
}

/// PostgreSQL batch: window, lock what is free, mark, advance.
pub(crate) async fn pg_batch(
    client: &Client,
    table: &TableSql,
    value: &String,
    limit: u32,
    walk: &mut Walk,
) -> Result<BatchOutcome, MarkError> {
    let sql = table.pg_batch(walk.cursor.is_some());
    let limit = i64::from(limit);
    let rows = client
        .query(&sql, &params(value, &limit, walk.cursor.iter()))
        .await
        .map_err(|source| MarkError::Db {
            context: format!("marking a batch of table {}", table.qualified()),
            source,
        })?;
    if rows.is_empty() {
        return Ok(BatchOutcome {
            marked: 0,
            done: true,
        });
    }
    let n = table.key_len();
    let mut window = Vec::with_capacity(rows.len());
    for r in &rows {
        let k = key::key_from_row(r, n).map_err(|source| MarkError::Db {
            context: "reading keys".into(),
            source,
        })?;
        window.push((k, r.get::<_, bool>(n)));
    }
    let marked = window.iter().filter(|(_, m)| *m).count() as u64;
    walk.advance(window, MAX_DEFERRED);
    Ok(BatchOutcome {
        marked,
        done: false,
    })
}

/// CockroachDB batch: read candidates in the past, then mark the range.
pub(crate) async fn crdb_batch(
    client: &Client,
    table: &TableSql,
    as_of: CrdbReadAsOf,
    value: &String,
    limit: u32,
    walk: &mut Walk,
) -> Result<BatchOutcome, MarkError> {
    let context = || format!("marking a batch of table {}", table.qualified());
    let limit_i = i64::from(limit);
    let with_cursor = walk.cursor.is_some();
    let rows = client
        .query(
            &table.crdb_window(with_cursor, as_of),
            &params(value, &limit_i, walk.cursor.iter()),
        )
        .await
        .map_err(|source| MarkError::Db {
            context: context(),
            source,
        })?;
    let Some(last) = rows.last() else {
        return Ok(BatchOutcome {
            marked: 0,
            done: true,
        });
    };
    let n = table.key_len();
    let hi = key::key_from_row(last, n).map_err(|source| MarkError::Db {
        context: "reading keys".into(),
        source,
    })?;
    let written = client
        .query(
            &table.crdb_write(with_cursor),
            &params(value, &limit_i, walk.cursor.iter().chain([&hi])),
        )
        .await
        .map_err(|source| MarkError::Db {
            context: context(),
            source,
        })?;
    let (marked, last_marked) = match written.first() {
        Some(r) => (
            r.get::<_, i64>(n).max(0) as u64,
            Some(key::key_from_row(r, n).map_err(|source| MarkError::Db {
                context: "reading keys".into(),
                source,
            })?),
        ),
        None => (0, None),
    };
    // A full batch may have stopped short of the window's end (rows
    // inserted since the past read): continue from the last key marked.
    walk.cursor = if marked >= u64::from(limit) {
        last_marked.or(Some(hi))
    } else {
        Some(hi)
    };
    Ok(BatchOutcome {
        marked,
        done: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::Type;

    fn k(n: i64) -> Key {
        vec![key::RawKeyPart::new(Type::INT8, n.to_be_bytes().to_vec())]
    }

    fn window(keys: &[(i64, bool)]) -> Vec<(Key, bool)> {
        keys.iter().map(|&(n, m)| (k(n), m)).collect()
    }

    fn walk() -> Walk {
        Walk {
            cursor: None,
            deferred: Vec::new(),
            skipped_locked: 0,
        }
    }

    #[test]
    fn a_fully_marked_window_moves_to_its_end() {
        let mut w = walk();
        w.advance(window(&[(1, true), (2, true), (3, true)]), 10);
        assert_eq!(w.cursor, Some(k(3)));
        assert!(w.deferred.is_empty());
    }

    #[test]
    fn skipped_keys_are_put_aside_and_the_walk_moves_on() {
        let mut w = walk();
        w.advance(window(&[(1, true), (2, false), (3, true), (4, false)]), 10);
        assert_eq!(w.cursor, Some(k(4)));
        assert_eq!(w.deferred, vec![k(2), k(4)]);
        assert_eq!(w.skipped_locked, 2);
    }

    #[test]
    fn past_the_bound_the_cursor_stops_before_the_first_skipped_key() {
        let mut w = walk();
        w.cursor = Some(k(0));
        w.deferred = vec![k(-1)];
        w.advance(window(&[(1, true), (2, false), (3, true)]), 1);
        assert_eq!(w.cursor, Some(k(1)), "key 2 must be read again");
        assert_eq!(w.deferred, vec![k(-1)]);
        // The skipped key heads the next window: the cursor stays put.
        w.advance(window(&[(2, false), (3, true)]), 1);
        assert_eq!(w.cursor, Some(k(1)));
        assert_eq!(w.skipped_locked, 2);
    }
}
