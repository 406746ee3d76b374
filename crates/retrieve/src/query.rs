//! `retrieve`: find archived row versions.

use std::cmp::Ordering;
use std::collections::HashMap;

use cdc_changefeed::{Hlc, Value};
use cdc_checkpoint::key_filter::{canonical_key, canonical_of, parse_key, KeyFilter};
use cdc_checkpoint::{Checkpoint, CheckpointError, SegmentRef};
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use cdc_segment::ArchivedRow;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

/// Segments fetched and decoded at once. Bounds memory to a few segments.
const PARALLEL_SEGMENTS: usize = 4;

/// What to look for.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Exactly this primary key (values in key-column order).
    Key(Vec<Value>),
    /// Keys whose first values are these (e.g. every payment of one day
    /// when the key is `(booking_date, id)`).
    KeyPrefix(Vec<Value>),
    /// Versions whose `updated` lies in `[from, to)`; either bound optional.
    Updated {
        /// Inclusive lower bound.
        from: Option<Hlc>,
        /// Exclusive upper bound.
        to: Option<Hlc>,
    },
    /// A simple predicate on one column.
    Column(Predicate),
}

/// `column <op> value`, compared on the archived value's text (numbers
/// numerically when both sides are numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// SQL column name.
    pub column: String,
    /// One of `=`, `!=`, `<`, `<=`, `>`, `>=`.
    pub op: String,
    /// The value's text (a JSON string's contents, or a number's text).
    pub value: String,
}

impl Predicate {
    /// Parses `column=value`, `column>=value`, … (the first operator wins).
    pub fn parse(text: &str) -> Option<Self> {
        for op in ["!=", "<=", ">=", "=", "<", ">"] {
            if let Some(i) = text.find(op) {
                let column = text[..i].trim();
                if column.is_empty() {
                    return None;
                }
                return Some(Self {
                    column: column.to_owned(),
                    op: op.to_owned(),
                    value: text[i + op.len()..].trim().to_owned(),
                });
            }
        }
        None
    }

    fn matches(&self, v: &Value) -> bool {
        let text = match v {
            Value::Null => return false,
            Value::Bool(b) => b.to_string(),
            Value::String(s) => s.clone(),
            Value::Number(t) | Value::Json(t) => t.clone(),
        };
        let ord = match (text.parse::<f64>(), self.value.parse::<f64>(), v) {
            // Ordering only: equality below stays exact on the text.
            (Ok(a), Ok(b), Value::Number(_)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            _ => text.as_str().cmp(self.value.as_str()),
        };
        let exact_eq =
            text == self.value || (matches!(v, Value::Number(_)) && ord == Ordering::Equal);
        match self.op.as_str() {
            "=" => exact_eq,
            "!=" => !exact_eq,
            "<" => ord == Ordering::Less,
            "<=" => ord != Ordering::Greater,
            ">" => ord == Ordering::Greater,
            ">=" => ord != Ordering::Less,
            _ => false,
        }
    }
}

/// A retrieval request.
#[derive(Debug, Clone)]
pub struct Query {
    /// Archive table name.
    pub table: String,
    /// What to look for.
    pub selector: Selector,
    /// Every archived version of each key instead of the latest only.
    pub all_versions: bool,
    /// Stop after this many rows. Default: none.
    pub limit: Option<usize>,
}

/// One archived row version and where it lives.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The row version.
    #[serde(skip)]
    pub row: ArchivedRow,
    /// Segment path, relative to the archive root.
    pub segment: String,
    /// First offset of the checkpoint that names the segment.
    pub checkpoint_first_offset: i64,
}

/// What a look-up cost.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RetrieveStats {
    /// Checkpoints read.
    pub checkpoints: usize,
    /// Segments named by those checkpoints.
    pub segments_total: usize,
    /// Segments actually fetched, verified and decoded.
    pub segments_read: usize,
    /// Rows decoded from them.
    pub rows_scanned: usize,
    /// Redelivered copies of a version already found, dropped.
    pub duplicates_dropped: usize,
    /// Rows returned.
    pub rows_returned: usize,
}

/// Errors of a look-up.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The archive's bookkeeping could not be read, or a segment named by a
    /// checkpoint is missing or damaged.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A segment passed its checksum but is not a readable segment.
    #[error("segment {path} cannot be decoded: {source}")]
    Segment {
        /// The segment.
        path: String,
        /// Why.
        #[source]
        source: cdc_segment::SegmentError,
    },
    /// The query itself is malformed.
    #[error("{0}")]
    BadQuery(String),
}

impl Retryable for RetrieveError {
    fn is_retryable(&self) -> bool {
        match self {
            RetrieveError::Checkpoint(e) => e.is_retryable(),
            RetrieveError::Segment { .. } | RetrieveError::BadQuery(_) => false,
        }
    }
}

/// Parses a `--key` argument (a JSON array) for [`Selector::Key`] or
/// [`Selector::KeyPrefix`].
pub fn parse_key_arg(text: &str) -> Result<Vec<Value>, RetrieveError> {
    parse_key(text).ok_or_else(|| {
        RetrieveError::BadQuery(format!(
            "key {text:?} is not a JSON array of primary-key values, e.g. '[\"2022-05-14\", \"078678a4-…\"]'"
        ))
    })
}

/// Whether a checkpoint's segment can hold rows matching `selector`.
fn may_match(
    cp: &Checkpoint,
    seg: &SegmentRef,
    selector: &Selector,
    canonical: Option<&str>,
) -> bool {
    match selector {
        Selector::Key(_) => match (
            canonical,
            cp.key_filter.as_deref().and_then(KeyFilter::decode),
        ) {
            (Some(k), Some(f)) => f.may_contain(k),
            _ => true,
        },
        Selector::Updated { from, to } => {
            let below = matches!((cp.max_updated, from), (Some(max), Some(from)) if max < *from);
            let above = matches!((cp.min_updated, to), (Some(min), Some(to)) if min >= *to);
            !(below || above) && seg.rows > 0
        }
        Selector::KeyPrefix(_) | Selector::Column(_) => seg.rows > 0,
    }
}

fn row_matches(row: &ArchivedRow, selector: &Selector, canonical: Option<&str>) -> bool {
    match selector {
        Selector::Key(_) => Some(canonical_of(&row.key_json).as_str()) == canonical,
        Selector::KeyPrefix(prefix) => parse_key(&row.key_json)
            .map(|k| {
                k.len() >= prefix.len()
                    && k.iter()
                        .zip(prefix)
                        .all(|(a, b)| a.to_json_text() == b.to_json_text())
            })
            .unwrap_or(false),
        Selector::Updated { from, to } => match row.updated {
            Some(u) => from.is_none_or(|f| u >= f) && to.is_none_or(|t| u < t),
            None => false,
        },
        Selector::Column(p) => row
            .columns
            .iter()
            .find(|(name, _)| *name == p.column)
            .is_some_and(|(_, v)| p.matches(v)),
    }
}

/// The identity of a row version: redelivered copies share it.
fn version_id(row: &ArchivedRow) -> (String, Option<Hlc>, Option<Hlc>, Option<u64>) {
    (
        row.key_json.clone(),
        row.updated,
        row.mvcc_timestamp,
        row.pg_xid,
    )
}

/// Runs `query` against the archive.
pub async fn retrieve(
    store: &ArchiveStore,
    query: &Query,
) -> Result<(Vec<Found>, RetrieveStats), RetrieveError> {
    let mut stats = RetrieveStats::default();
    let canonical = match &query.selector {
        Selector::Key(k) => Some(canonical_key(k)),
        _ => None,
    };

    // Every segment that a checkpoint names, pruned by checkpoint metadata.
    let mut candidates = Vec::new();
    for partition in cdc_checkpoint::partitions(store, &query.table).await? {
        let chain = cdc_checkpoint::read_chain(store, &query.table, partition).await?;
        for cp in chain.checkpoints {
            stats.checkpoints += 1;
            let Some(seg) = cp.segment.clone() else {
                continue;
            };
            stats.segments_total += 1;
            if may_match(&cp, &seg, &query.selector, canonical.as_deref()) {
                candidates.push((cp.first_offset, seg));
            }
        }
    }

    let selector = &query.selector;
    let canonical_ref = canonical.as_deref();
    let mut results =
        futures::stream::iter(candidates.into_iter().map(|(first, seg)| async move {
            let bytes = cdc_checkpoint::verify_segment(store, &seg).await?;
            let decoded =
                cdc_segment::decode_segment(&bytes).map_err(|source| RetrieveError::Segment {
                    path: seg.path.clone(),
                    source,
                })?;
            let scanned = decoded.rows.len();
            let hits: Vec<Found> = decoded
                .rows
                .into_iter()
                .filter(|r| row_matches(r, selector, canonical_ref))
                .map(|row| Found {
                    row,
                    segment: seg.path.clone(),
                    checkpoint_first_offset: first,
                })
                .collect();
            Ok::<_, RetrieveError>((scanned, hits))
        }))
        .buffer_unordered(PARALLEL_SEGMENTS);

    let mut by_version: HashMap<_, Found> = HashMap::new();
    while let Some((scanned, hits)) = results.try_next().await? {
        stats.segments_read += 1;
        stats.rows_scanned += scanned;
        for f in hits {
            match by_version.entry(version_id(&f.row)) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    stats.duplicates_dropped += 1;
                    // Keep the earliest copy: the first time it was archived.
                    if f.row.offset < e.get().row.offset && f.row.partition == e.get().row.partition
                    {
                        e.insert(f);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(f);
                }
            }
        }
    }

    let mut found: Vec<Found> = by_version.into_values().collect();
    if !query.all_versions {
        // The latest archived version of each key.
        let mut latest: HashMap<String, Found> = HashMap::new();
        for f in found {
            let key = canonical_of(&f.row.key_json);
            match latest.get(&key) {
                Some(prev)
                    if (prev.row.updated, prev.row.offset) >= (f.row.updated, f.row.offset) => {}
                _ => {
                    latest.insert(key, f);
                }
            }
        }
        found = latest.into_values().collect();
    }
    found.sort_by(|a, b| {
        a.row
            .key_json
            .cmp(&b.row.key_json)
            .then(a.row.updated.cmp(&b.row.updated))
            .then(a.row.offset.cmp(&b.row.offset))
    });
    if let Some(limit) = query.limit {
        found.truncate(limit);
    }
    stats.rows_returned = found.len();
    tracing::debug!(?stats, table = %query.table, "retrieve finished");
    Ok((found, stats))
}

/// The row as one JSON object: `{"column": value, …}` with exact values,
/// plus `_archive` metadata when `with_meta`.
pub fn to_json_line(found: &Found, with_meta: bool) -> String {
    let mut out = String::from("{");
    for (i, (name, v)) in found.row.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        out.push_str(&v.to_json_text());
    }
    if with_meta {
        let meta = serde_json::json!({
            "segment": found.segment,
            "topic": found.row.topic,
            "partition": found.row.partition,
            "offset": found.row.offset,
            "key": found.row.key_json,
            "updated": found.row.updated.map(|h| h.to_string()),
            "mvcc_timestamp": found.row.mvcc_timestamp.map(|h| h.to_string()),
            "pg_xid": found.row.pg_xid,
        });
        if !found.row.columns.is_empty() {
            out.push(',');
        }
        out.push_str("\"_archive\":");
        out.push_str(&meta.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_parse_and_compare_exactly() {
        let p = Predicate::parse("amount>=100").unwrap();
        assert_eq!(
            (p.column.as_str(), p.op.as_str(), p.value.as_str()),
            ("amount", ">=", "100")
        );
        assert!(p.matches(&Value::Number("1250.00".into())));
        assert!(!p.matches(&Value::Number("99.95".into())));
        let eq = Predicate::parse("currency = EUR").unwrap();
        assert!(eq.matches(&Value::String("EUR".into())));
        assert!(!eq.matches(&Value::String("USD".into())));
        assert!(!eq.matches(&Value::Null));
        let num_eq = Predicate::parse("amount=1250").unwrap();
        assert!(
            num_eq.matches(&Value::Number("1250.00".into())),
            "numbers compare by value"
        );
        assert!(Predicate::parse("=5").is_none());
    }

    #[test]
    fn key_args_must_be_arrays() {
        assert!(parse_key_arg("[\"a\", 1]").is_ok());
        let e = parse_key_arg("a,1").unwrap_err().to_string();
        assert!(e.contains("JSON array"), "{e}");
    }
}
