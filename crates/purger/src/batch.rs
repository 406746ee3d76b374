//! One batch: which guarded DELETE it uses (`Shape`), its parameters, the
//! DELETE itself, the probe that says why rows were kept, and the dry
//! run's classification of every key.
//!
//! What it guarantees: a batch is a single statement over targets in key
//! order with the full guard (see [`crate::sql`]); what it deleted is the
//! DELETE's own row count (no RETURNING), and the probe that explains the
//! rest is a separate read. Every target is counted exactly once: deleted,
//! already gone, or kept as un-marked, changed or referenced, even when a
//! deleted key was inserted again before the probe read it. Held rows
//! count as un-marked and are not held again; the keys of rows kept
//! because child rows reference them, or because they were un-marked, are
//! handed back for the executor to act on.

use tokio_postgres::types::ToSql;

use crate::session::Session;
use crate::sql::{self, ContentColumn};
use crate::versions::Target;
use crate::RowCounts;

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchResult {
    pub(crate) deleted: u64,
    pub(crate) would_delete: u64,
    pub(crate) already_gone: u64,
    pub(crate) skipped_changed: u64,
    pub(crate) skipped_unmarked: u64,
    pub(crate) skipped_referenced: u64,
    /// Keys of the rows kept for a reason that is acted on once the purge
    /// is done (as the probe returned them).
    pub(crate) kept_keys: KeptKeys,
}

/// Keys of kept rows that the purge acts on when it is done.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct KeptKeys {
    /// Referenced by child rows: re-touched ([`crate::retouch`]).
    pub(crate) referenced: Vec<Vec<String>>,
    /// Un-marked after they were archived: held ([`crate::hold`]).
    pub(crate) unmarked: Vec<Vec<String>>,
}

impl KeptKeys {
    pub(crate) fn extend(&mut self, other: KeptKeys) {
        self.referenced.extend(other.referenced);
        self.unmarked.extend(other.unmarked);
    }
}

impl BatchResult {
    pub(crate) fn add_to(&self, c: &mut RowCounts) {
        c.deleted += self.deleted;
        c.would_delete += self.would_delete;
        c.already_gone += self.already_gone;
        c.skipped_changed += self.skipped_changed;
        c.skipped_unmarked += self.skipped_unmarked;
        c.skipped_referenced += self.skipped_referenced;
    }
}

/// Which guarded DELETE a batch uses (see [`sql::PurgeSql`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Every target has the same archived version: one version parameter.
    Uniform,
    /// Each key with its own archived version.
    Paired,
}

/// The next batch from the front of `rest`, at most `n` targets: where the
/// uniform statement exists (`uniform`, CockroachDB), the run of targets
/// sharing the first one's archived version, with the uniform statement,
/// when that run is at least half of `n` (the usual case: the marker marks
/// a batch of neighbouring rows in one transaction); otherwise all `n` with
/// the paired statement. Either way one statement, in key order, with the
/// full guard.
pub(crate) fn next_batch(rest: &[Target], n: usize, uniform: bool) -> (usize, Shape) {
    if !uniform {
        return (n, Shape::Paired);
    }
    let first = &rest[0].version;
    let run = rest[..n].iter().take_while(|t| &t.version == first).count();
    if 2 * run >= n {
        (run, Shape::Uniform)
    } else {
        (n, Shape::Paired)
    }
}

/// What a batch's parameters are made of: the key columns, then on
/// CockroachDB the versions, on PostgreSQL one array per content column
/// and the table's name and column signature.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Primary-key columns.
    pub(crate) keys: usize,
    /// PostgreSQL: the columns the content guard compares (empty on
    /// CockroachDB).
    pub(crate) content: Vec<ContentColumn>,
    /// `"schema"."table"`.
    pub(crate) table: String,
}

/// Owned statement parameters (pipelined batches move them into a task).
pub(crate) type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// One `text[]` parameter (NULL elements for SQL NULL).
type Column = Vec<Option<String>>;

/// A batch's parameters: the arrays, then (PostgreSQL) the table's name
/// and column signature ([`sql::column_set_check`]).
struct BatchParams {
    arrays: Vec<Column>,
    scalars: Vec<String>,
}

impl BatchParams {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        let arrays = self.arrays.iter().map(|c| c as &(dyn ToSql + Sync));
        arrays
            .chain(self.scalars.iter().map(|s| s as &(dyn ToSql + Sync)))
            .collect()
    }
}

/// The DELETE's parameters for `shape`: [`params`], or for a uniform batch
/// (CockroachDB) the key columns and the one version (`text`).
pub(crate) fn delete_params(batch: &[Target], layout: &Layout, shape: Shape) -> Params {
    let BatchParams {
        mut arrays,
        scalars,
    } = params(batch, layout);
    if shape == Shape::Uniform {
        arrays.pop();
    }
    let mut out: Params = arrays
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn ToSql + Sync + Send>)
        .collect();
    if shape == Shape::Uniform {
        out.push(Box::new(batch[0].version.clone()));
    }
    out.extend(
        scalars
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn ToSql + Sync + Send>),
    );
    out
}

/// The batch as the statements' parameters: one `text[]` per key column,
/// then the versions (CockroachDB) or one `text[]` per content column
/// (PostgreSQL) and the scalars of the column-set check.
fn params(targets: &[Target], layout: &Layout) -> BatchParams {
    let extra = if layout.content.is_empty() {
        1
    } else {
        layout.content.len()
    };
    let mut cols: Vec<Column> = (0..layout.keys + extra)
        .map(|_| Vec::with_capacity(targets.len()))
        .collect();
    for t in targets {
        for (i, v) in t.key.iter().enumerate() {
            cols[i].push(Some(v.clone()));
        }
        if layout.content.is_empty() {
            cols[layout.keys].push(Some(t.version.clone()));
        } else {
            for (i, v) in t.content.iter().enumerate() {
                cols[layout.keys + i].push(v.clone());
            }
        }
    }
    let scalars = if layout.content.is_empty() {
        Vec::new()
    } else {
        vec![layout.table.clone(), sql::signature(&layout.content)]
    };
    BatchParams {
        arrays: cols,
        scalars,
    }
}

/// One batch: a single guarded DELETE statement, which is its own short
/// transaction (on CockroachDB an implicit transaction the server can
/// retry by itself) and one round trip; the deleted count is its row
/// count (no RETURNING: it made the statement a third slower). Only when
/// some keys were not deleted does [`explain_kept`] say why, as a separate
/// read that is retried on its own. If the connection drops after the
/// DELETE committed but before its count arrived, the retry finds those
/// rows gone and counts them as already gone, so the totals still
/// reconcile.
pub(crate) async fn delete(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
    shape: Shape,
) -> Result<u64, tokio_postgres::Error> {
    let p = delete_params(batch, layout, shape);
    s.client.execute_raw(s.delete_statement(shape), p).await
}

/// The batch's result once its DELETE removed `deleted` rows: when some
/// keys were not deleted, one SELECT says why (see [`kept`]).
pub(crate) async fn explain_kept(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
    deleted: u64,
) -> Result<BatchResult, tokio_postgres::Error> {
    let mut present = Kept::default();
    let mut kept_keys = KeptKeys::default();
    if batch.len() as u64 > deleted {
        let cols = params(batch, layout);
        for r in s.client.query(&s.probe, &cols.refs()).await? {
            if r.get("present") {
                let key = || (0..layout.keys).map(|i| r.get::<_, String>(i)).collect();
                if r.get("held") {
                    present.unmarked += 1;
                } else if !r.get::<_, bool>("marked") {
                    present.unmarked += 1;
                    kept_keys.unmarked.push(key());
                } else if r.get("referenced") && r.get("same_version") {
                    present.referenced += 1;
                    kept_keys.referenced.push(key());
                } else {
                    present.changed += 1;
                }
            }
        }
    }
    Ok(BatchResult {
        kept_keys,
        ..kept(batch.len() as u64, deleted, present)
    })
}

/// Accounts for a batch of `batch` targets whose DELETE removed `deleted`
/// rows, given what the probe (a later statement) found of the batch's
/// keys: `unmarked` rows present with `archived = false`, `changed` rows
/// present and marked (their version is not the archived one, or the
/// DELETE would have removed them). The rows still present say why they
/// were kept; the other targets not deleted were gone before.
///
/// The probe runs after the DELETE committed, so a deleted key inserted
/// again in between is present too: then more rows are present than were
/// kept. The DELETE's count is exact (those archived versions are gone),
/// and the re-inserted rows cannot be told from kept ones, so the excess
/// is taken off `unmarked` first (a new row is normally inserted
/// unmarked), then `changed`, and nothing counts as already gone. Every
/// target is counted exactly once: `deleted + already_gone +
/// skipped_unmarked + skipped_changed = batch`.
fn kept(batch: u64, deleted: u64, found: Kept) -> BatchResult {
    let Kept {
        unmarked,
        changed,
        referenced,
    } = found;
    let not_deleted = batch.saturating_sub(deleted);
    let mut r = BatchResult {
        deleted,
        skipped_unmarked: unmarked,
        skipped_changed: changed,
        skipped_referenced: referenced,
        ..BatchResult::default()
    };
    let present = unmarked + changed + referenced;
    if present <= not_deleted {
        r.already_gone = not_deleted - present;
    } else {
        let excess = present - not_deleted;
        tracing::warn!(
            deleted,
            present,
            kept = not_deleted,
            "rows deleted by this batch were inserted again before the probe read them; \
             counting the excess as deleted, not as kept"
        );
        let off_unmarked = excess.min(unmarked);
        r.skipped_unmarked -= off_unmarked;
        let off_changed = (excess - off_unmarked).min(changed);
        r.skipped_changed -= off_changed;
        r.skipped_referenced -= excess - off_unmarked - off_changed;
    }
    r
}

/// The rows of a batch the probe found still present, by why they stayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Kept {
    /// Present with `archived = false`.
    unmarked: u64,
    /// Present and marked, but not the archived state (or, on CockroachDB,
    /// not the archived version).
    changed: u64,
    /// Present, marked, the archived state, and referenced by a child row.
    referenced: u64,
}

/// Dry run: classify every key, deleting nothing.
pub(crate) async fn probe(
    s: &Session,
    layout: &Layout,
    batch: &[Target],
) -> Result<BatchResult, tokio_postgres::Error> {
    let cols = params(batch, layout);
    let mut result = BatchResult::default();
    for r in s.client.query(&s.probe, &cols.refs()).await? {
        classify(
            &mut result,
            r.get("present"),
            r.get::<_, bool>("marked") && !r.get::<_, bool>("held"),
            r.get("same_version"),
            r.get("referenced"),
        );
    }
    Ok(result)
}

fn classify(
    result: &mut BatchResult,
    present: bool,
    marked: bool,
    same_version: bool,
    referenced: bool,
) {
    if !present {
        result.already_gone += 1;
    } else if !marked {
        result.skipped_unmarked += 1;
    } else if same_version && referenced {
        result.skipped_referenced += 1;
    } else if same_version {
        result.would_delete += 1;
    } else {
        result.skipped_changed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: i64, version: &str) -> Target {
        Target {
            key: vec![key.to_string()],
            version: version.into(),
            columns: Vec::new(),
            content: Vec::new(),
        }
    }

    #[test]
    fn batches_take_the_uniform_statement_for_a_long_run_of_one_version() {
        let all_one: Vec<Target> = (0..10).map(|k| t(k, "7")).collect();
        assert_eq!(next_batch(&all_one, 8, true), (8, Shape::Uniform));
        assert_eq!(next_batch(&all_one[8..], 2, true), (2, Shape::Uniform));
        // Where there is no uniform statement (PostgreSQL), always paired.
        assert_eq!(next_batch(&all_one, 8, false), (8, Shape::Paired));
        // A version change after half the batch: the run alone, uniform.
        let mut two = all_one.clone();
        for x in &mut two[5..] {
            x.version = "9".into();
        }
        assert_eq!(next_batch(&two, 8, true), (5, Shape::Uniform));
        assert_eq!(next_batch(&two[5..], 5, true), (5, Shape::Uniform));
        // Mixed versions: the whole batch, paired.
        let mixed: Vec<Target> = (0..10).map(|k| t(k, &(k % 3).to_string())).collect();
        assert_eq!(next_batch(&mixed, 8, true), (8, Shape::Paired));
        assert_eq!(next_batch(&mixed, 1, true), (1, Shape::Uniform));
        // Parameters: keys, then the one version or every version.
        let crdb = Layout {
            keys: 1,
            content: Vec::new(),
            table: "\"t\"".into(),
        };
        assert_eq!(delete_params(&two[..5], &crdb, Shape::Uniform).len(), 2);
        assert_eq!(delete_params(&mixed[..8], &crdb, Shape::Paired).len(), 2);
        // PostgreSQL: keys, then one array per content column.
        let pg = Layout {
            keys: 1,
            table: "\"public\".\"t\"".into(),
            content: vec![
                ContentColumn {
                    name: "id".into(),
                    typeoid: 20,
                },
                ContentColumn {
                    name: "note".into(),
                    typeoid: 25,
                },
            ],
        };
        let mut rows = mixed[..2].to_vec();
        rows[0].content = vec![Some("0".into()), None];
        rows[1].content = vec![Some("1".into()), Some("n".into())];
        assert_eq!(
            params(&rows, &pg).arrays,
            vec![
                vec![Some("0".to_owned()), Some("1".to_owned())],
                vec![Some("0".to_owned()), Some("1".to_owned())],
                vec![None, Some("n".to_owned())],
            ]
        );
    }

    /// Every target the batch accounted for, as the summary adds it up.
    fn total(r: &BatchResult) -> u64 {
        let mut c = RowCounts::default();
        r.add_to(&mut c);
        c.accounted()
    }

    /// A batch that deleted `deleted` and kept the rest for these reasons.
    fn result(
        deleted: u64,
        skipped_unmarked: u64,
        skipped_changed: u64,
        already_gone: u64,
    ) -> BatchResult {
        BatchResult {
            deleted,
            skipped_unmarked,
            skipped_changed,
            already_gone,
            ..BatchResult::default()
        }
    }

    fn found(unmarked: u64, changed: u64, referenced: u64) -> Kept {
        Kept {
            unmarked,
            changed,
            referenced,
        }
    }

    #[test]
    fn kept_rows_are_classified_and_every_target_counted_once() {
        // 10 targets, 6 deleted; of the 4 kept, 1 un-marked, 1 changed and
        // 1 referenced by a child row are still there, 1 was gone before.
        let r = kept(10, 6, found(1, 1, 1));
        assert_eq!(
            r,
            BatchResult {
                skipped_referenced: 1,
                ..result(6, 1, 1, 1)
            }
        );
        assert_eq!(total(&r), 10);
        // Everything deleted: nothing else.
        let r = kept(10, 10, found(0, 0, 0));
        assert_eq!((r.deleted, total(&r)), (10, 10));
        // Nothing deleted, nothing there: all gone before.
        assert_eq!(kept(4, 0, found(0, 0, 0)).already_gone, 4);
    }

    #[test]
    fn keys_inserted_again_between_the_delete_and_the_probe_are_not_counted_twice() {
        // 10 targets, 9 deleted, 1 kept (un-marked); two deleted keys were
        // inserted again before the probe: 3 present, 2 of them new rows.
        let r = kept(10, 9, found(3, 0, 0));
        assert_eq!(r, result(9, 1, 0, 0));
        assert_eq!(total(&r), 10);
        // The excess is taken off un-marked first, then changed.
        let r = kept(10, 8, found(1, 3, 0));
        assert_eq!(r, result(8, 0, 2, 0));
        assert_eq!(total(&r), 10);
        for batch in 0..6 {
            for deleted in 0..=batch {
                for unmarked in 0..=batch {
                    for changed in 0..=batch - unmarked {
                        for referenced in 0..=batch - unmarked - changed {
                            let r = kept(batch, deleted, found(unmarked, changed, referenced));
                            assert_eq!(
                                total(&r),
                                batch,
                                "{batch} {deleted} {unmarked} {changed} {referenced}"
                            );
                            assert_eq!(r.deleted, deleted);
                        }
                    }
                }
            }
        }
    }
}
