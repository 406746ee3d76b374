//! `retrieve`: find archived row versions.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use cdc_changefeed::{Hlc, Value};
use cdc_checkpoint::key_filter::{canonical_of, parse_key, value_key, value_of, KeyFilter};
use cdc_checkpoint::{Checkpoint, CheckpointError};
use cdc_common::retry::Retryable;
use cdc_common::storage::ArchiveStore;
use cdc_segment::{ArchivedRow, RecordMeta};
use serde::Serialize;

/// Key-filter probes (keys × segments) worth making to avoid reading
/// segments before an `updated` range; beyond it they are all read.
const MAX_FILTER_PROBES: usize = 250_000;

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
    /// Every one of these at once, e.g. a key and an `updated` range
    /// (`[Key(k), Updated { .. }]`). Empty: every row.
    All(Vec<Selector>),
}

/// The operators of a [`Predicate`], longest spelling first at any one
/// position (`>=` before `>`). `<>` is accepted for `!=`.
const OPERATORS: [(&str, &str); 7] = [
    ("!=", "!="),
    ("<>", "!="),
    ("<=", "<="),
    (">=", ">="),
    ("=", "="),
    ("<", "<"),
    (">", ">"),
];

/// `column <op> value`. A JSON number in the archive is compared with a
/// value that is a number *exactly*, as decimals (`1250 = 1250.00 =
/// 1.25E+3`, and two 30-digit NUMERICs that differ in the last digit are
/// different); everything else is compared on its text (a JSON string's
/// contents, a boolean's `true`/`false`, nested JSON's exact text). SQL
/// NULL matches no predicate.
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
    /// Parses `column=value`, `column>=value`, … The operator is the
    /// leftmost one in the text (so a value may contain operator
    /// characters: `note=a>=b` is `note` `=` `a>=b`), and at one position
    /// the two-character spelling wins (`>=` over `>`).
    pub fn parse(text: &str) -> Option<Self> {
        let (i, spelling, op) = text.char_indices().find_map(|(i, _)| {
            OPERATORS
                .iter()
                .find(|(spelling, _)| text[i..].starts_with(spelling))
                .map(|(spelling, op)| (i, *spelling, *op))
        })?;
        let column = text[..i].trim();
        if column.is_empty() {
            return None;
        }
        Some(Self {
            column: column.to_owned(),
            op: op.to_owned(),
            value: text[i + spelling.len()..].trim().to_owned(),
        })
    }

    fn matches(&self, v: &Value) -> bool {
        let ord = match v {
            Value::Null => return false,
            Value::Number(t) => match (Decimal::parse(t), Decimal::parse(&self.value)) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => t.as_str().cmp(self.value.as_str()),
            },
            Value::Bool(b) => (if *b { "true" } else { "false" }).cmp(self.value.as_str()),
            Value::String(s) => s.as_str().cmp(self.value.as_str()),
            Value::Json(t) => t.as_str().cmp(self.value.as_str()),
        };
        match self.op.as_str() {
            "=" => ord == Ordering::Equal,
            "!=" => ord != Ordering::Equal,
            "<" => ord == Ordering::Less,
            "<=" => ord != Ordering::Greater,
            ">" => ord == Ordering::Greater,
            ">=" => ord != Ordering::Less,
            _ => false,
        }
    }
}

/// An exact decimal: `(-1)^negative × 0.digits × 10^exponent`, normalised
/// (no leading or trailing zero in `digits`; zero has empty `digits` and
/// is never negative), so that equal values have equal fields and the
/// order is sign, then exponent, then the digit string. Any length of
/// digits, no float anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Parses a JSON number (`-12.50`, `1E+2`, `0.5e-3`), also with a
    /// leading `+` or a missing integer or fraction part (`.5`, `5.`), as
    /// people type them. `None` for anything else (`NaN`, `Infinity`, text).
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let exp: i64 = match exp {
            None => 0,
            Some(e) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !all_digits(digits) {
                    return None;
                }
                e.strip_prefix('+').unwrap_or(e).parse().ok()?
            }
        };
        let all = format!("{int}{frac}");
        let leading = all.len() - all.trim_start_matches('0').len();
        let digits = all.trim_start_matches('0').trim_end_matches('0').to_owned();
        if digits.is_empty() {
            return Some(Self {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        let point = i64::try_from(int.len()).ok()? - i64::try_from(leading).ok()?;
        Some(Self {
            negative,
            digits,
            exponent: point.checked_add(exp)?,
        })
    }

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        let magnitude = self
            .exponent
            .cmp(&other.exponent)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A retrieval request.
#[derive(Debug, Clone)]
pub struct Query {
    /// Archive table name.
    pub table: String,
    /// What to look for.
    pub selector: Selector,
    /// Every archived version of each key instead of the latest only
    /// ([`crate::retrieve_deletes`] lists every delete either way).
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

/// What selectors, de-duplication and ordering look at in an archived
/// event: a row version of a segment, or a delete of a delete file.
pub(crate) trait Event {
    /// The archived record's metadata (row versions and deletes alike).
    fn meta(&self) -> &RecordMeta;
    /// The key as the changefeed wrote it (a JSON array, any spacing).
    fn key_json(&self) -> &str {
        &self.meta().key_json
    }
    /// The event's `updated`.
    fn updated(&self) -> Option<Hlc> {
        self.meta().updated
    }
    /// CockroachDB's MVCC timestamp.
    fn mvcc_timestamp(&self) -> Option<Hlc> {
        self.meta().mvcc_timestamp
    }
    /// The PostgreSQL changefeed's transaction id.
    fn pg_xid(&self) -> Option<u64> {
        self.meta().pg_xid
    }
    /// Kafka partition and offset.
    fn position(&self) -> (i32, i64) {
        (self.meta().partition, self.meta().offset)
    }
    /// The value of a column, `None` when the event has no such column.
    fn column(&self, name: &str) -> Option<&Value>;
}

/// One archived event found, and where.
pub(crate) trait Hit {
    fn event(&self) -> &dyn Event;
    /// Sets the event's `updated` (the first delivery's, for a copy kept
    /// from a later delivery).
    fn set_updated(&mut self, updated: Option<Hlc>);
    /// Whether, of one PostgreSQL transaction's events, the last one is the
    /// version (row versions: the state the transaction left) rather than
    /// the first delivered (deletes: one per row and transaction).
    fn last_change_wins(&self) -> bool {
        true
    }
}

impl Event for ArchivedRow {
    fn meta(&self) -> &RecordMeta {
        &self.meta
    }
    fn column(&self, name: &str) -> Option<&Value> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Hit for Found {
    fn event(&self) -> &dyn Event {
        &self.row
    }
    fn set_updated(&mut self, updated: Option<Hlc>) {
        self.row.meta.updated = updated;
    }
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
    /// Older versions of a returned key left out (without `all_versions`).
    pub older_versions_omitted: usize,
    /// Rows returned.
    pub rows_returned: usize,
    /// Partitions whose checkpoint chain does not read (`p<N>: why`):
    /// skipped, so the answer may be incomplete.
    pub unreadable_partitions: Vec<String>,
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
    /// A segment passed its checksum but is not the one its checkpoint
    /// describes: names the checkpoint, the segment and what differs
    /// (always [`cdc_segment::reader::OpenError::NotTheCheckpoints`]).
    #[error(transparent)]
    NotTheCheckpoints(cdc_segment::reader::OpenError),
    /// A delete file passed its checksum but is not a readable delete
    /// file, or not the one of the checkpoint that names it.
    #[error("delete file {path} cannot be read: {reason}")]
    DeleteFile {
        /// The delete file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The query itself is malformed.
    #[error("{0}")]
    BadQuery(String),
}

impl Retryable for RetrieveError {
    fn is_retryable(&self) -> bool {
        match self {
            RetrieveError::Checkpoint(e) => e.is_retryable(),
            RetrieveError::Segment { .. }
            | RetrieveError::NotTheCheckpoints(_)
            | RetrieveError::DeleteFile { .. }
            | RetrieveError::BadQuery(_) => false,
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

/// A [`Selector`] prepared for matching: key texts made canonical once.
#[derive(Clone)]
pub(crate) enum Matcher {
    /// The key's values, and their value text (`1250` = `1250.00`).
    Key(Vec<Value>, String),
    Prefix(Vec<String>),
    Updated {
        from: Option<Hlc>,
        to: Option<Hlc>,
    },
    Column(Predicate),
    All(Vec<Matcher>),
}

/// Parts of a [`Matcher`] that [`Matcher::eval`] takes as matched.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ignoring {
    /// Any `updated` lower bound.
    pub from: bool,
    /// Every column predicate.
    pub columns: bool,
}

impl Matcher {
    pub(crate) fn new(selector: &Selector) -> Self {
        match selector {
            Selector::Key(k) => Matcher::Key(k.clone(), value_key(k)),
            Selector::KeyPrefix(p) => Matcher::Prefix(p.iter().map(Value::to_json_text).collect()),
            Selector::Updated { from, to } => Matcher::Updated {
                from: *from,
                to: *to,
            },
            Selector::Column(p) => Matcher::Column(p.clone()),
            Selector::All(parts) => Matcher::All(parts.iter().map(Matcher::new).collect()),
        }
    }

    /// The same without any `updated` lower bound: what an earlier
    /// delivery of a matching version matches. `None` when there is no
    /// lower bound.
    fn without_from(&self) -> Option<Matcher> {
        match self {
            Matcher::Updated { from: Some(_), to } => Some(Matcher::Updated {
                from: None,
                to: *to,
            }),
            Matcher::All(parts) => {
                let relaxed: Vec<Option<Matcher>> =
                    parts.iter().map(Matcher::without_from).collect();
                if relaxed.iter().all(Option::is_none) {
                    return None;
                }
                Some(Matcher::All(
                    parts
                        .iter()
                        .zip(relaxed)
                        .map(|(m, r)| r.unwrap_or_else(|| m.clone()))
                        .collect(),
                ))
            }
            _ => None,
        }
    }

    /// Whether a checkpoint's segment can hold matching rows, from the
    /// checkpoint's metadata alone: its key filter and `updated` range.
    /// Key prefixes and column predicates cannot be pruned: checkpoints
    /// record no key range or column statistics.
    fn may_match(&self, cp: &Checkpoint) -> bool {
        match self {
            Matcher::Key(k, _) => cp
                .key_filter
                .as_deref()
                .and_then(KeyFilter::decode)
                .is_none_or(|f| f.may_contain_key(k)),
            Matcher::Updated { from, to } => {
                let below =
                    matches!((cp.max_updated, from), (Some(max), Some(from)) if max < *from);
                let above = matches!((cp.min_updated, to), (Some(min), Some(to)) if min >= *to);
                !(below || above)
            }
            Matcher::Prefix(_) | Matcher::Column(_) => true,
            Matcher::All(parts) => parts.iter().all(|m| m.may_match(cp)),
        }
    }

    pub(crate) fn row_matches(&self, row: &ArchivedRow) -> bool {
        self.eval(row, Ignoring::default())
    }

    /// Whether `event` matches, taking the parts in `ignoring` as matched.
    pub(crate) fn eval(&self, event: &dyn Event, ignoring: Ignoring) -> bool {
        match self {
            Matcher::Key(_, k) => value_of(event.key_json()) == *k,
            Matcher::Prefix(prefix) => parse_key(event.key_json()).is_some_and(|k| {
                k.len() >= prefix.len() && k.iter().zip(prefix).all(|(a, b)| a.to_json_text() == *b)
            }),
            Matcher::Updated { from, to } => event.updated().is_some_and(|u| {
                (ignoring.from || from.is_none_or(|f| u >= f)) && to.is_none_or(|t| u < t)
            }),
            Matcher::Column(p) => {
                ignoring.columns || event.column(&p.column).is_some_and(|v| p.matches(v))
            }
            Matcher::All(parts) => parts.iter().all(|m| m.eval(event, ignoring)),
        }
    }

    /// Whether a column predicate is part of it.
    pub(crate) fn has_columns(&self) -> bool {
        match self {
            Matcher::Column(_) => true,
            Matcher::All(parts) => parts.iter().any(Matcher::has_columns),
            _ => false,
        }
    }
}

/// What names one row version, whichever delivery of it we read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Version {
    /// CockroachDB: the MVCC timestamp names a version exactly.
    Mvcc(Hlc),
    /// PostgreSQL changefeed: the writing transaction (the row's `xmin`).
    /// Its `updated` is not stable: events re-sent after a restart of the
    /// changefeed carry the restart time.
    Xid(u64),
    /// Neither recorded: `updated` is all there is.
    Updated(Option<Hlc>),
}

fn version_of(event: &dyn Event) -> Version {
    match (event.mvcc_timestamp(), event.pg_xid()) {
        (Some(m), _) => Version::Mvcc(m),
        (None, Some(x)) => Version::Xid(x),
        (None, None) => Version::Updated(event.updated()),
    }
}

/// Whether `new` is a better copy of one version than `old`.
///
/// A PostgreSQL transaction (`pg_xid`) may write a row several times, and
/// a delivery of it may have been cut short (the changefeed killed between
/// two of its changes) and sent again whole: the state the transaction
/// left is its last change in the last delivery, i.e. the highest Kafka
/// position (deliveries of one key follow each other in one partition),
/// whatever the deliveries' `updated` say (before the changefeed kept
/// `updated` across restarts, a re-sent copy carried the restart time).
///
/// Otherwise (one event per version: CockroachDB's MVCC timestamp) the
/// earliest delivery (smallest `updated`), and within it the first copy.
fn better_copy(new: &dyn Event, old: &dyn Event, last_change_wins: bool) -> bool {
    let position = new.position().cmp(&old.position());
    if let (Version::Xid(_), true) = (version_of(new), last_change_wins) {
        return position == Ordering::Greater;
    }
    match new.updated().cmp(&old.updated()) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => position == Ordering::Less,
    }
}

/// The order of the versions of one key, oldest first: the MVCC timestamp
/// where there is one, else the `updated` of the version's first delivery,
/// then where it was read.
fn version_rank(event: &dyn Event) -> (Option<Hlc>, Option<Hlc>, (i32, i64)) {
    (
        event.mvcc_timestamp().or(event.updated()),
        event.updated(),
        event.position(),
    )
}

/// The identity of one version: canonical key and [`Version`].
fn identity(event: &dyn Event) -> (String, Version) {
    (canonical_of(event.key_json()), version_of(event))
}

/// Keeps one copy of each row version (or delete): `(canonical key,
/// version)`, where the version is the MVCC timestamp, else the PostgreSQL
/// transaction id, else `updated`. Returns the distinct versions and how
/// many copies were dropped.
pub(crate) fn dedupe<T: Hit>(found: impl IntoIterator<Item = T>) -> (Vec<T>, usize) {
    let mut by_version: HashMap<(String, Version), T> = HashMap::new();
    let mut dropped = 0;
    for f in found {
        match by_version.entry(identity(f.event())) {
            Entry::Occupied(mut e) => {
                dropped += 1;
                // The version's `updated` is its first delivery's, whichever
                // copy's content is kept (it orders the versions of a key).
                let first = e.get().event().updated().min(f.event().updated());
                if better_copy(f.event(), e.get().event(), f.last_change_wins()) {
                    e.insert(f);
                }
                e.get_mut().set_updated(first);
            }
            Entry::Vacant(e) => {
                e.insert(f);
            }
        }
    }
    (by_version.into_values().collect(), dropped)
}

/// The latest version of each key among distinct versions (see
/// [`dedupe`]). Returns them and how many older versions were left out.
pub(crate) fn latest_per_key(versions: impl IntoIterator<Item = Found>) -> (Vec<Found>, usize) {
    let mut latest: HashMap<String, Found> = HashMap::new();
    let mut older = 0;
    for f in versions {
        match latest.entry(canonical_of(&f.row.meta.key_json)) {
            Entry::Occupied(mut e) => {
                older += 1;
                if version_rank(f.event()) > version_rank(e.get().event()) {
                    e.insert(f);
                }
            }
            Entry::Vacant(e) => {
                e.insert(f);
            }
        }
    }
    (latest.into_values().collect(), older)
}

/// Sorts by key (canonical text), then version, oldest first.
pub(crate) fn sort_by_key_and_version<T: Hit>(found: &mut [T]) {
    found.sort_by_cached_key(|f| (canonical_of(f.event().key_json()), version_rank(f.event())));
}

/// Every checkpoint of `table`'s chains, partition by partition, in chain
/// order.
pub(crate) async fn checkpoints(
    store: &ArchiveStore,
    table: &str,
) -> Result<(Vec<Checkpoint>, Vec<String>), RetrieveError> {
    let mut all = Vec::new();
    let mut unreadable = Vec::new();
    for partition in cdc_checkpoint::partitions(store, table).await? {
        match cdc_checkpoint::read_chain(store, table, partition).await {
            Ok(chain) => all.extend(chain.checkpoints),
            // One partition whose chain does not read (a gap, an unusable
            // manifest, an unreadable checkpoint) does not hide the
            // others: it is named in the answer's stats, and the answer is
            // marked incomplete. A storage failure still fails the look-up.
            Err(
                e @ (CheckpointError::Broken { .. }
                | CheckpointError::Malformed { .. }
                | CheckpointError::Refused { .. }),
            ) => unreadable.push(format!("p{partition}: {e}")),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((all, unreadable))
}

/// Runs `query` against the archive.
///
/// Redelivered copies of one row version (same canonical key and version:
/// MVCC timestamp, else transaction id, else `updated`) are returned once,
/// as their first delivery. Without
/// `all_versions`, only the latest matching version of each key is
/// returned. A version matches an `updated` range when its *first*
/// archived delivery lies in it: a copy that the PostgreSQL changefeed
/// re-sent after a restart carries a later `updated`, and is not a new
/// version of the row in that later range.
///
/// Only segments are read, never a delete file: the answer holds row
/// versions only (deletes: [`crate::retrieve_deletes`]).
pub async fn retrieve(
    store: &ArchiveStore,
    query: &Query,
) -> Result<(Vec<Found>, RetrieveStats), RetrieveError> {
    let mut stats = RetrieveStats::default();
    let matcher = Matcher::new(&query.selector);
    // With an `updated` lower bound, a copy in range may be a re-sent copy
    // of a version first delivered before the range: `relaxed` finds those
    // earlier deliveries.
    let relaxed = matcher.without_from();

    // Every segment that a checkpoint names, pruned by checkpoint metadata.
    let mut candidates = Vec::new();
    let mut before_range = Vec::new();
    let (checkpoints, unreadable) = checkpoints(store, &query.table).await?;
    stats.unreadable_partitions = unreadable;
    for cp in checkpoints {
        stats.checkpoints += 1;
        let Some(seg) = &cp.segment else { continue };
        stats.segments_total += 1;
        if seg.rows == 0 {
            continue;
        }
        if matcher.may_match(&cp) {
            candidates.push(cp);
        } else if relaxed.as_ref().is_some_and(|r| r.may_match(&cp)) {
            before_range.push(cp);
        }
    }

    let (hits, mut earlier) =
        crate::read::scan(store, candidates, &matcher, relaxed.as_ref(), &mut stats).await?;
    if let Some(relaxed) = &relaxed {
        // Only a PostgreSQL version's copies differ in `updated`; read the
        // segments before the range that may hold one of their keys.
        let keys: HashSet<String> = hits
            .iter()
            .filter(|f| matches!(version_of(&f.row), Version::Xid(_)))
            .map(|f| f.row.meta.key_json.clone())
            .collect();
        // Probing every filter for every key costs more than reading the
        // segments once the answer is large: then read them all.
        let probe = keys.len().saturating_mul(before_range.len()) <= MAX_FILTER_PROBES;
        let may_hold = |cp: &Checkpoint| {
            !probe
                || cp
                    .key_filter
                    .as_deref()
                    .and_then(KeyFilter::decode)
                    .is_none_or(|filter| keys.iter().any(|k| filter.may_contain_archived(k)))
        };
        let second: Vec<Checkpoint> = if keys.is_empty() {
            Vec::new()
        } else {
            before_range.into_iter().filter(|cp| may_hold(cp)).collect()
        };
        let (more, _) = crate::read::scan(store, second, relaxed, None, &mut stats).await?;
        earlier.extend(more);
    }
    let first_delivered_earlier: HashSet<(String, Version)> =
        earlier.iter().map(|f| identity(&f.row)).collect();
    let hits = hits
        .into_iter()
        .filter(|f| !first_delivered_earlier.contains(&identity(&f.row)));

    let (mut found, dropped) = dedupe(hits);
    stats.duplicates_dropped = dropped;
    if !query.all_versions {
        (found, stats.older_versions_omitted) = latest_per_key(found);
    }
    sort_by_key_and_version(&mut found);
    if let Some(limit) = query.limit {
        found.truncate(limit);
    }
    stats.rows_returned = found.len();
    tracing::debug!(?stats, table = %query.table, "retrieve finished");
    Ok((found, stats))
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
