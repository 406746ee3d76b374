//! Turns a peek's wal2json messages, transaction by transaction, into the
//! Kafka records a CockroachDB changefeed would publish. Every transaction,
//! in the order the slot decodes them (commit order), gets the next
//! `updated` of the one [`HlcClock`] (strictly increasing) and its 64-bit
//! xid; its commit becomes the outcome's `last_commit` only after every
//! record of the transaction was handed to the publisher. A row change
//! becomes zero records (filtered out, or a delete with `emit_deletes =
//! false`), one, or two (an update that changed the primary key: a delete
//! of the old key, then the new row, as CockroachDB emits). An insert or
//! update whose new row is not known to be complete (a catalog column is
//! missing, or a float/numeric `null` may be a NaN or an infinity that
//! wal2json dropped) is sent without `pg_xid`, counted in
//! `cdc_pgcf_unversioned_rows_total` and logged once per table and peek. A
//! wal2json line that does not parse is reported without quoting it (it
//! is row data).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::catalog::TableInfo;
use crate::config::TableConfig;
use crate::encode::{self, Origin};
use crate::error::ChangefeedError;
use crate::hlc::{Hlc, HlcClock};
use crate::partition::partition_for_key;
use crate::publisher::Publisher;
use crate::wal2json::{self, Column, Message};
use crate::xid;

/// A fed table: catalog facts plus where its messages go.
pub(crate) struct Table {
    pub(crate) info: TableInfo,
    pub(crate) cfg: TableConfig,
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    /// The "needs REPLICA IDENTITY FULL" warning was logged (after an
    /// `ALTER TABLE` while running).
    pub(crate) toast_warned: bool,
}

/// What every change of one peek is decoded against.
pub(crate) struct PeekContext<'a> {
    pub(crate) tables: &'a HashMap<(String, String), Table>,
    /// wal2json sends numbers as strings (NaN/Infinity survive). Turned off
    /// for the session if a number arrives bare after all (a wal2json that
    /// ignored the option instead of refusing it).
    pub(crate) numeric_as_string: AtomicBool,
    /// A full transaction id read just before the peek: the epoch source.
    pub(crate) xid_reference: u64,
}

/// The transaction being decoded.
pub(crate) struct Txn {
    origin: Origin,
}

#[derive(Default)]
pub(crate) struct PeekOutcome {
    pub(crate) rows: usize,
    /// End LSN and `updated` of the last transaction fully decoded (and so
    /// fully handed to the producer).
    pub(crate) last_commit: Option<(String, Hlc)>,
    /// Per table: row versions sent without `pg_xid` in this peek.
    unversioned: BTreeMap<String, Unversioned>,
}

/// Row versions of one table sent without `pg_xid` during one peek.
#[derive(Default)]
struct Unversioned {
    count: u64,
    /// LSN of the first such change.
    first_lsn: String,
    /// Columns missing from the new row.
    missing: std::collections::BTreeSet<String>,
    /// Float/numeric columns whose `null` may be a dropped NaN/Infinity.
    maybe_special: std::collections::BTreeSet<String>,
}

/// Logs (once per table and peek) the row versions sent without `pg_xid`.
pub(crate) fn report_unversioned(outcome: &PeekOutcome) {
    for (table, u) in &outcome.unversioned {
        warn!(
            table = %table,
            rows = u.count,
            first_lsn = %u.first_lsn,
            missing_columns = ?u.missing,
            maybe_nan_or_infinity = ?u.maybe_special,
            "row versions sent without pg_xid: their new row is not known to be complete \
             (an unchanged out-of-line value was left out: set REPLICA IDENTITY FULL; or a \
             float/numeric null may be a NaN/Infinity this wal2json cannot send: upgrade to \
             wal2json 2.6+), so the purger keeps those rows"
        );
    }
}

fn bad(lsn: &str, reason: impl Into<String>) -> ChangefeedError {
    ChangefeedError::Wal2json {
        lsn: lsn.to_owned(),
        reason: reason.into(),
    }
}

pub(crate) async fn handle_message(
    data: &str,
    lsn: &str,
    ctx: &PeekContext<'_>,
    clock: &mut HlcClock,
    txn: &mut Option<Txn>,
    outcome: &mut PeekOutcome,
    publisher: &mut Publisher,
) -> Result<(), ChangefeedError> {
    // Never the line itself in the error: it is row data.
    let msg =
        wal2json::parse(data).map_err(|e| bad(lsn, wal2json::describe_parse_error(data, &e)))?;
    match msg.action {
        "B" => {
            let xid32 = msg
                .xid
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(lsn, "begin without a 32-bit xid"))?;
            let xid = xid::widen(xid32, ctx.xid_reference).ok_or_else(|| {
                bad(
                    lsn,
                    format!(
                        "xid {xid32} cannot be placed in an epoch near the next xid {}",
                        ctx.xid_reference
                    ),
                )
            })?;
            let ts = msg
                .timestamp
                .as_deref()
                .ok_or_else(|| bad(lsn, "begin without timestamp"))?;
            let wall = wal2json::parse_commit_timestamp(ts)
                .ok_or_else(|| bad(lsn, format!("bad timestamp {ts:?}")))?;
            let commit_lsn = msg.lsn.as_deref().unwrap_or(lsn).to_owned();
            *txn = Some(Txn {
                origin: Origin {
                    updated: clock.next(wall),
                    xid,
                    commit_lsn,
                },
            });
        }
        "C" => {
            let t = txn.take().ok_or_else(|| bad(lsn, "commit without begin"))?;
            // The peek's own LSN of a commit row is the end of the commit
            // record: where decoding of the next transaction starts.
            let end = msg.nextlsn.as_deref().unwrap_or(lsn).to_owned();
            outcome.last_commit = Some((end, t.origin.updated));
        }
        "I" | "U" | "D" => {
            let t = txn
                .as_ref()
                .ok_or_else(|| bad(lsn, "change outside a transaction"))?;
            let key = (
                msg.schema.clone().unwrap_or_default(),
                msg.table.clone().unwrap_or_default(),
            );
            if let Some(table) = ctx.tables.get(&key) {
                let enc = encode_change(
                    &msg,
                    table,
                    &t.origin,
                    ctx.numeric_as_string.load(Ordering::Relaxed),
                )
                .map_err(|r| bad(lsn, r))?;
                if enc.numbers_were_bare && ctx.numeric_as_string.swap(false, Ordering::Relaxed) {
                    warn!(
                        %lsn,
                        "wal2json accepted `{}` but still writes numbers bare: NaN/Infinity may \
                         arrive as null, so rows with a null float/numeric value are sent without \
                         pg_xid from now on",
                        wal2json::NUMERIC_AS_STRING
                    );
                }
                if let Some(inc) = enc.incomplete {
                    let name = table.cfg.name.to_string();
                    let reason = if inc.missing.is_empty() {
                        "maybe_nan_or_infinity"
                    } else {
                        "missing_column"
                    };
                    metrics::counter!(crate::metric::UNVERSIONED_ROWS, "table" => name.clone(), "reason" => reason)
                        .increment(1);
                    let u = outcome.unversioned.entry(name).or_default();
                    if u.count == 0 {
                        u.first_lsn = lsn.to_owned();
                    }
                    u.count += 1;
                    u.missing.extend(inc.missing);
                    u.maybe_special.extend(inc.maybe_special);
                }
                for out in enc.outs {
                    let partition = partition_for_key(out.key.as_bytes(), table.partitions);
                    publisher
                        .send(
                            &table.topic,
                            partition,
                            Some(out.key.as_bytes()),
                            out.value.as_bytes(),
                        )
                        .await?;
                }
            }
        }
        // Logical messages (our heartbeats) and truncates: nothing to send.
        // A TRUNCATE is not a row change in CockroachDB either.
        _ => {}
    }
    Ok(())
}

/// One Kafka record.
#[derive(Debug, PartialEq)]
pub struct Out {
    /// Key bytes (JSON array).
    pub key: String,
    /// Value bytes (wrapped envelope).
    pub value: String,
}

type Cols = BTreeMap<String, String>;

fn to_cols(cols: &[Column<'_>]) -> Cols {
    cols.iter()
        .map(|c| (c.name.clone(), encode::map_value(c.typeoid, c.value)))
        .collect()
}

fn key_of(cols: &Cols, pk: &[String]) -> Result<String, String> {
    let mut vals = Vec::with_capacity(pk.len());
    for k in pk {
        vals.push(
            cols.get(k)
                .ok_or_else(|| format!("primary-key column {k:?} missing from the change"))?
                .as_str(),
        );
    }
    Ok(encode::key_array(&vals))
}

/// Why a row version was sent without `pg_xid`.
#[derive(Debug, Default, PartialEq)]
struct Incomplete {
    /// Catalog columns the new row lacks (after filling from the old row).
    missing: Vec<String>,
    /// Float/numeric columns with a `null` that may be a NaN or an
    /// infinity dropped by a wal2json without numeric strings.
    maybe_special: Vec<String>,
}

/// What one wal2json row change becomes.
#[derive(Debug, Default)]
struct Encoded {
    outs: Vec<Out>,
    /// Set when the new row was sent without `pg_xid`.
    incomplete: Option<Incomplete>,
    /// Numbers were expected as strings but a number column came bare.
    numbers_were_bare: bool,
}

fn is_null(c: &Column<'_>) -> bool {
    c.value.is_none_or(|v| v.get() == "null")
}

/// The records one wal2json row change becomes (zero when filtered, two
/// when an update changed the primary key: a delete of the old key and the
/// new row, as CockroachDB emits). An insert or update whose new row is
/// not known to be complete is sent without `pg_xid`.
fn encode_change(
    msg: &Message<'_>,
    table: &Table,
    origin: &Origin,
    numeric_as_string: bool,
) -> Result<Encoded, String> {
    let pk = &table.info.primary_key;
    let full = table.info.full_identity;
    let old_cols = msg.identity.as_deref();
    let old = old_cols.map(to_cols);
    let mut enc = Encoded::default();
    let delete = |old: &Cols, out: &mut Vec<Out>| -> Result<(), String> {
        if table.cfg.emit_deletes {
            let before = full.then(|| Some(encode::row_object(old)));
            out.push(Out {
                key: key_of(old, pk)?,
                value: encode::envelope(None, before.as_ref().map(|b| b.as_deref()), origin, true),
            });
        }
        Ok(())
    };
    match msg.action {
        "D" => {
            let old = old.ok_or("delete without identity (old key)")?;
            delete(&old, &mut enc.outs)?;
        }
        _ => {
            let cols = msg
                .columns
                .as_deref()
                .ok_or("insert/update without columns")?;
            let mut new = to_cols(cols);
            // Trust "numbers as strings" only as long as wal2json keeps to it.
            let bare = |c: &Column<'_>| {
                encode::is_number_type(c.typeoid)
                    && c.value.is_some_and(|v| !v.get().starts_with(['"', 'n']))
            };
            if numeric_as_string && cols.iter().chain(old_cols.unwrap_or_default()).any(bare) {
                enc.numbers_were_bare = true;
            }
            let numeric_as_string = numeric_as_string && !enc.numbers_were_bare;
            // A `null` that may stand for a NaN or an infinity.
            let mut maybe_special: Vec<String> = Vec::new();
            let mut check_special = |c: &Column<'_>| {
                if !numeric_as_string && encode::has_special_values(c.typeoid) && is_null(c) {
                    maybe_special.push(c.name.clone());
                }
            };
            cols.iter().for_each(&mut check_special);
            // Unchanged out-of-line (TOASTed) values are left out of
            // `columns`; an old row logged whole (REPLICA IDENTITY FULL) has
            // them, whether or not the key changed. (A DEFAULT identity
            // only logs key columns, which the new row has.)
            for c in old_cols.unwrap_or_default() {
                if !new.contains_key(&c.name) {
                    check_special(c);
                    new.insert(c.name.clone(), encode::map_value(c.typeoid, c.value));
                }
            }
            let key = key_of(&new, pk)?;
            let mut before: Option<Option<String>> = full.then_some(None);
            if let Some(old) = &old {
                if key_of(old, pk)? != key {
                    delete(old, &mut enc.outs)?;
                } else if full {
                    before = Some(Some(encode::row_object(old)));
                }
            }
            let passes = match &table.cfg.filter_column {
                Some(col) => new.get(col).map(String::as_str) == Some("true"),
                None => true,
            };
            if passes {
                let missing: Vec<String> = table
                    .info
                    .columns
                    .iter()
                    .filter(|c| !new.contains_key(*c))
                    .cloned()
                    .collect();
                let versioned = missing.is_empty() && maybe_special.is_empty();
                if !versioned {
                    enc.incomplete = Some(Incomplete {
                        missing,
                        maybe_special,
                    });
                }
                let after = encode::row_object(&new);
                enc.outs.push(Out {
                    key,
                    value: encode::envelope(
                        Some(&after),
                        before.as_ref().map(|b| b.as_deref()),
                        origin,
                        versioned,
                    ),
                });
            }
        }
    }
    Ok(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(full: bool, filter: Option<&str>, emit_deletes: bool) -> Table {
        Table {
            info: TableInfo {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                primary_key: vec!["b".into(), "a".into()],
                full_identity: full,
                columns: vec!["a".into(), "b".into()],
                toastable: vec![],
            },
            cfg: TableConfig {
                name: cdc_common::ident::TableName::parse("t").unwrap(),
                topic: None,
                filter_column: filter.map(str::to_owned),
                emit_deletes,
            },
            topic: "t".into(),
            partitions: 3,
            toast_warned: false,
        }
    }

    fn origin() -> Origin {
        Origin {
            updated: Hlc {
                wall: 5,
                logical: 1,
            },
            xid: 42,
            commit_lsn: "0/10".into(),
        }
    }

    const META: &str = r#""pg_lsn": "0/10", "pg_xid": "42", "updated": "5.0000000001"}"#;
    /// The metadata of a row version sent without `pg_xid`.
    const UNVERSIONED: &str = r#""pg_lsn": "0/10", "updated": "5.0000000001"}"#;

    fn encode_full(json: &str, t: &Table, numeric_as_string: bool) -> Encoded {
        encode_change(
            &wal2json::parse(json).unwrap(),
            t,
            &origin(),
            numeric_as_string,
        )
        .unwrap()
    }

    fn encode(json: &str, t: &Table) -> Vec<Out> {
        let enc = encode_full(json, t, true);
        assert_eq!(enc.incomplete, None, "{json}");
        enc.outs
    }

    #[test]
    fn key_follows_primary_key_order_not_column_order() {
        let out = encode(
            r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"}]}"#,
            &table(false, None, true),
        );
        assert_eq!(
            out,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": {{"a": 1, "b": "x"}}, {META}"#)
            }]
        );
    }

    #[test]
    fn filter_and_deletes() {
        let t = table(false, Some("archived"), false);
        let ins = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"archived","typeoid":16,"value":false}]}"#;
        assert!(encode(ins, &t).is_empty(), "not archived: filtered out");
        let upd = ins.replace("false", "true");
        assert_eq!(encode(&upd, &t).len(), 1);
        let del = r#"{"action":"D","identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        assert!(encode(del, &t).is_empty(), "emit_deletes = false");
        let out = encode(del, &table(false, Some("archived"), true));
        assert_eq!(
            out,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": null, {META}"#)
            }]
        );
    }

    #[test]
    fn full_identity_gives_before_and_fills_unchanged_toast() {
        let t = table(true, None, true);
        let upd = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"big","value":"old"}]}"#;
        let out = encode(upd, &t);
        assert_eq!(
            out[0].value,
            format!(
                r#"{{"after": {{"a": 1, "b": "x", "big": "old"}}, "before": {{"a": 1, "b": "x", "big": "old"}}, {META}"#
            )
        );
        let ins = r#"{"action":"I","columns":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        assert_eq!(
            encode(ins, &t)[0].value,
            format!(r#"{{"after": {{"a": 1, "b": "x"}}, "before": null, {META}"#)
        );
    }

    #[test]
    fn primary_key_change_is_delete_then_insert() {
        let upd = r#"{"action":"U","columns":[{"name":"a","value":2},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        let out = encode(upd, &table(false, None, true));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            Out {
                key: r#"["x", 1]"#.into(),
                value: format!(r#"{{"after": null, {META}"#)
            }
        );
        assert_eq!(out[1].key, r#"["x", 2]"#);
    }

    #[test]
    fn missing_key_column_is_an_error() {
        let msg = wal2json::parse(r#"{"action":"I","columns":[{"name":"a","value":1}]}"#).unwrap();
        let err = encode_change(&msg, &table(false, None, true), &origin(), true).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
    }

    /// An update that lacks a column of the table (an unchanged TOASTed
    /// value under DEFAULT identity) is sent, but without `pg_xid`: the
    /// purger cannot delete a row by an incomplete copy.
    #[test]
    fn incomplete_row_is_sent_without_pg_xid() {
        let mut t = table(false, Some("archived"), true);
        t.info.columns = vec!["a".into(), "archived".into(), "b".into(), "big".into()];
        let upd = r#"{"action":"U","columns":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"archived","typeoid":16,"value":true}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"}]}"#;
        let enc = encode_full(upd, &t, true);
        assert_eq!(
            enc.outs,
            vec![Out {
                key: r#"["x", 1]"#.into(),
                value: format!(
                    r#"{{"after": {{"a": 1, "archived": true, "b": "x"}}, {UNVERSIONED}"#
                )
            }]
        );
        assert_eq!(
            enc.incomplete,
            Some(Incomplete {
                missing: vec!["big".into()],
                maybe_special: vec![]
            })
        );
        // The same row complete: versioned.
        let complete = upd.replace(
            r#"{"name":"archived","typeoid":16,"value":true}"#,
            r#"{"name":"archived","typeoid":16,"value":true},{"name":"big","typeoid":25,"value":"v"}"#,
        );
        let enc = encode_full(&complete, &t, true);
        assert_eq!(enc.incomplete, None);
        assert!(enc.outs[0].value.contains(r#""pg_xid": "42""#));
        // Filtered out: nothing sent, nothing to report.
        let not_archived = upd.replace("true}]", "false}]");
        let enc = encode_full(&not_archived, &t, true);
        assert!(enc.outs.is_empty() && enc.incomplete.is_none());
    }

    /// Under FULL identity the old row fills unchanged values, also when
    /// the primary key changed (the new key's insert is complete).
    #[test]
    fn full_identity_fills_on_key_change_too() {
        let mut t = table(true, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "big".into()];
        let upd = r#"{"action":"U","columns":[{"name":"a","value":2},{"name":"b","value":"x"}],
                      "identity":[{"name":"a","value":1},{"name":"b","value":"x"},{"name":"big","value":"old"}]}"#;
        let enc = encode_full(upd, &t, true);
        assert_eq!(enc.incomplete, None);
        assert_eq!(enc.outs.len(), 2);
        assert_eq!(
            enc.outs[1].value,
            format!(r#"{{"after": {{"a": 2, "b": "x", "big": "old"}}, "before": null, {META}"#)
        );
    }

    /// A wal2json that ignored `numeric-data-types-as-string` (numbers
    /// still bare): its nulls are not trusted either.
    #[test]
    fn bare_numbers_despite_the_option_are_not_trusted() {
        let mut t = table(false, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "f".into()];
        let ins = r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"},
                      {"name":"f","typeoid":701,"value":null}]}"#;
        let enc = encode_full(ins, &t, true);
        assert!(enc.numbers_were_bare);
        assert!(enc.incomplete.is_some() && !enc.outs[0].value.contains("pg_xid"));
        let strings = ins.replace(r#""value":1}"#, r#""value":"1"}"#);
        let enc = encode_full(&strings, &t, true);
        assert!(!enc.numbers_were_bare && enc.incomplete.is_none());
        assert!(enc.outs[0].key == r#"["x", 1]"#, "{:?}", enc.outs);
    }

    /// Without numeric strings (wal2json < 2.6), a null float/numeric value
    /// may be a NaN or an infinity that wal2json dropped: no `pg_xid`.
    #[test]
    fn null_numbers_are_unversioned_without_numeric_strings() {
        let mut t = table(false, None, true);
        t.info.columns = vec!["a".into(), "b".into(), "f".into(), "n".into()];
        let ins = r#"{"action":"I","columns":[{"name":"a","typeoid":23,"value":1},{"name":"b","typeoid":25,"value":"x"},
                      {"name":"f","typeoid":701,"value":null},{"name":"n","typeoid":1700,"value":2.5}]}"#;
        let enc = encode_full(ins, &t, false);
        assert_eq!(
            enc.incomplete,
            Some(Incomplete {
                missing: vec![],
                maybe_special: vec!["f".into()]
            })
        );
        assert!(!enc.outs[0].value.contains("pg_xid"));
        // With numeric strings a null is a SQL NULL.
        let strings = ins
            .replace(r#""value":1}"#, r#""value":"1"}"#)
            .replace(r#""value":2.5}"#, r#""value":"2.5"}"#);
        let enc = encode_full(&strings, &t, true);
        assert_eq!(enc.incomplete, None);
        assert!(enc.outs[0].value.contains(r#""n": 2.5"#), "{:?}", enc.outs);
        // A null text column is always a SQL NULL.
        let text_null = ins
            .replace(
                r#""typeoid":701,"value":null"#,
                r#""typeoid":701,"value":1.5"#,
            )
            .replace(
                r#""typeoid":25,"value":"x""#,
                r#""typeoid":25,"value":"x"},{"name":"z","typeoid":25,"value":null"#,
            );
        assert_eq!(encode_full(&text_null, &t, false).incomplete, None);
    }
}
