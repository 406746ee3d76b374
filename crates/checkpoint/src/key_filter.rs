//! Per-segment key filters, so that a look-up by primary key reads only
//! the segments that can hold the key.
//!
//! The filter is part of the archive format and must stay readable for
//! years by any tool, so it is specified here rather than delegated to a
//! crate whose internal hashing may change between versions:
//!
//! - text form: `bloom2:<k>:<m>:<base64 of the m-bit array, little-endian bit order>`
//! - the hashed bytes are the key's *value text* ([`value_key`]): the JSON
//!   array of key values, compact, each value in one spelling per value:
//!   numbers as plain decimals without redundant zeros (`1250.00`, `1250`
//!   and `1.25E+3` are all `1250`), UUIDs in lower case, timestamps with a
//!   zone in UTC as `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (without a zone:
//!   `YYYY-MM-DDTHH:MM:SS[.fraction]`), fractions without trailing zeros;
//!   any other string as it is, escaped as serde_json does. So a look-up
//!   finds a key whatever spelling the changefeed or the user wrote it in.
//! - `bloom1` filters (written before `bloom2`) hash the *canonical text*
//!   ([`canonical_key`]: exact number text, strings as they are): they
//!   still answer for a key spelled as archived; a look-up whose spelling
//!   may differ from the archived one reads the segment instead;
//! - `h1`, `h2` = the first and second little-endian u64 of SHA-256(canonical
//!   text); probe `i` (0-based, `i < k`) sets bit `(h1 + i·h2) mod m`.
//!
//! A filter never answers "no" for a key it holds; it answers "maybe" for
//! about 1% of the keys it does not hold (sized for that rate).

use base64::Engine as _;
use cdc_types::Value;
use sha2::{Digest, Sha256};

/// Target false-positive rate when sizing a filter.
pub const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The canonical text of a key: compact JSON array, exact number text.
/// Two spellings of the same key (`["a", 1]` vs `["a",1]`) have one
/// canonical text.
pub fn canonical_key(values: &[Value]) -> String {
    let mut out = String::with_capacity(16 * values.len() + 2);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&v.to_json_text());
    }
    out.push(']');
    out
}

/// Parses a key written as a JSON array (`["2025-06-10", "8a1f…"]`, any
/// spacing) into its values, keeping exact number text. `None` if the text
/// is not a JSON array.
pub fn parse_key(text: &str) -> Option<Vec<Value>> {
    let raw: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(text).ok()?;
    raw.iter().map(|r| Value::from_raw(r).ok()).collect()
}

/// The canonical text of a key written as JSON (any spacing); a text that
/// is not a JSON array is its own canonical text.
pub fn canonical_of(key_json: &str) -> String {
    parse_key(key_json).map_or_else(|| key_json.to_owned(), |k| canonical_key(&k))
}

/// The value text of a key: one spelling per value (see the module docs).
/// Two keys equal as values (`[1250]`, `[1250.00]`; a UUID in upper and
/// lower case; one instant in two zones) have one value text.
pub fn value_key(values: &[Value]) -> String {
    let mut out = String::with_capacity(16 * values.len() + 2);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match v {
            Value::Number(n) => out.push_str(&normalize_number(n).unwrap_or_else(|| n.clone())),
            Value::String(s) => out.push_str(&Value::String(normalize_string(s)).to_json_text()),
            other => out.push_str(&other.to_json_text()),
        }
    }
    out.push(']');
    out
}

/// [`value_key`] of a key written as JSON (any spacing); a text that is
/// not a JSON array is its own value text.
pub fn value_of(key_json: &str) -> String {
    parse_key(key_json).map_or_else(|| key_json.to_owned(), |k| value_key(&k))
}

/// A JSON number as a plain decimal without redundant zeros; `None` if it
/// is not a JSON number (or its exponent is absurd).
fn normalize_number(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    if exponent.abs() > 10_000 {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // digits × 10^(exponent − fraction length)
    let digits = format!("{int}{frac}");
    let scale = exponent - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some("0".into());
    }
    let (int_part, frac_part) = if scale >= 0 {
        (
            format!("{digits}{}", "0".repeat(scale as usize)),
            String::new(),
        )
    } else {
        let shift = (-scale) as usize;
        if digits.len() > shift {
            let (a, b) = digits.split_at(digits.len() - shift);
            (a.to_owned(), b.to_owned())
        } else {
            (
                "0".to_owned(),
                format!("{}{digits}", "0".repeat(shift - digits.len())),
            )
        }
    };
    let frac_part = frac_part.trim_end_matches('0');
    let sign = if negative { "-" } else { "" };
    Some(if frac_part.is_empty() {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{frac_part}")
    })
}

/// A UUID in lower case; a timestamp in its one spelling; anything else as
/// it is.
fn normalize_string(s: &str) -> String {
    let b = s.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if uuid {
        return s.to_ascii_lowercase();
    }
    normalize_timestamp(s).unwrap_or_else(|| s.to_owned())
}

fn normalize_timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 19
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b[4] != b'-'
        || b[13] != b':'
    {
        return None;
    }
    let with_t = format!("{}T{}", &s[..10], &s[11..]);
    let fraction = |nanos: u32| {
        if nanos == 0 {
            String::new()
        } else {
            format!(".{:09}", nanos).trim_end_matches('0').to_owned()
        }
    };
    // With a zone: RFC 3339 (`Z`, `+02:00`) or PostgreSQL's `+02`.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.fZ"] {
        let parsed = if fmt.ends_with('Z') {
            chrono::NaiveDateTime::parse_from_str(&with_t, fmt).map(|n| n.and_utc())
        } else {
            chrono::DateTime::parse_from_str(&with_t, fmt).map(|d| d.with_timezone(&chrono::Utc))
        };
        if let Ok(t) = parsed {
            return Some(format!(
                "{}{}Z",
                t.format("%Y-%m-%dT%H:%M:%S"),
                fraction(t.timestamp_subsec_nanos())
            ));
        }
    }
    let t = chrono::NaiveDateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(format!(
        "{}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        fraction(t.and_utc().timestamp_subsec_nanos())
    ))
}

/// Whether a key has one spelling only, so that a `bloom1` filter (over
/// the archived spelling) can answer for it: no number, no UUID in
/// another case than the lower one, nothing timestamp-shaped.
fn one_spelling(values: &[Value]) -> bool {
    values.iter().all(|v| match v {
        Value::Number(_) => false,
        Value::String(s) => normalize_string(s) == *s && normalize_timestamp(s).is_none(),
        _ => true,
    })
}

/// How a filter's keys were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `bloom1`: canonical (archived) spelling.
    Spelling,
    /// `bloom2`: value text.
    Value,
}

/// A Bloom filter over key texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    k: u32,
    bits: Vec<u8>,
    m: u64,
    scheme: Scheme,
}

fn hashes(key: &str) -> (u64, u64) {
    let d = Sha256::digest(key.as_bytes());
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&d[0..8]);
    b.copy_from_slice(&d[8..16]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

impl KeyFilter {
    /// An empty filter sized for `expected` keys at [`FALSE_POSITIVE_RATE`].
    pub fn with_capacity(expected: usize) -> Self {
        let n = expected.max(1) as f64;
        let ln2 = std::f64::consts::LN_2;
        let m = (-(n * FALSE_POSITIVE_RATE.ln()) / (ln2 * ln2))
            .ceil()
            .max(64.0) as u64;
        let k = ((m as f64 / n) * ln2).round().clamp(1.0, 16.0) as u32;
        let m = m.div_ceil(8) * 8;
        Self {
            k,
            bits: vec![0; (m / 8) as usize],
            m,
            scheme: Scheme::Value,
        }
    }

    /// Builds a filter holding every key in `keys` (canonical texts).
    pub fn from_keys<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let mut f = Self::with_capacity(keys.len());
        for key in keys {
            f.insert(key);
        }
        f
    }

    /// Builds a filter from keys as the messages carry them (any spacing):
    /// what the sink stores with each segment.
    pub fn from_key_json<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let mut f = Self::with_capacity(keys.len());
        for key in keys {
            f.insert(&value_of(key));
        }
        f
    }

    /// `false` only if no key equal (as values) to `key` is in the segment.
    pub fn may_contain_key(&self, key: &[Value]) -> bool {
        match self.scheme {
            Scheme::Value => self.may_contain(&value_key(key)),
            Scheme::Spelling if one_spelling(key) => self.may_contain(&canonical_key(key)),
            // A `bloom1` filter knows the archived spelling only.
            Scheme::Spelling => true,
        }
    }

    /// `false` only if the key, spelled as it was archived (the JSON text a
    /// message carried), is certainly not in the segment.
    pub fn may_contain_archived(&self, key_json: &str) -> bool {
        match self.scheme {
            Scheme::Value => self.may_contain(&value_of(key_json)),
            Scheme::Spelling => self.may_contain(&canonical_of(key_json)),
        }
    }

    fn probes(&self, key: &str) -> impl Iterator<Item = u64> + '_ {
        let (h1, h2) = hashes(key);
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.m)
    }

    /// Adds a canonical key text.
    pub fn insert(&mut self, key: &str) {
        let idx: Vec<u64> = self.probes(key).collect();
        for bit in idx {
            self.bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }

    /// `false` only if the key is certainly not in the segment.
    pub fn may_contain(&self, key: &str) -> bool {
        self.probes(key)
            .all(|bit| self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// The text stored in a checkpoint's `key_filter`.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            match self.scheme {
                Scheme::Spelling => "bloom1",
                Scheme::Value => "bloom2",
            },
            self.k,
            self.m,
            base64::engine::general_purpose::STANDARD.encode(&self.bits)
        )
    }

    /// Parses [`KeyFilter::encode`]'s text; `None` for an unknown or damaged
    /// filter (the caller then reads the segment: a filter only ever saves
    /// work, it never hides data).
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(4, ':');
        let scheme = match parts.next()? {
            "bloom1" => Scheme::Spelling,
            "bloom2" => Scheme::Value,
            _ => return None,
        };
        let k: u32 = parts.next()?.parse().ok()?;
        let m: u64 = parts.next()?.parse().ok()?;
        let bits = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        if k == 0 || m == 0 || bits.len() as u64 * 8 != m {
            return None;
        }
        Some(Self { k, bits, m, scheme })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> String {
        canonical_key(&[
            Value::String(format!("2025-06-{:02}", i % 28 + 1)),
            Value::String(format!("id-{i}")),
        ])
    }

    #[test]
    fn never_misses_a_member_and_rarely_admits_others() {
        let members: Vec<String> = (0..10_000).map(key).collect();
        let f = KeyFilter::from_keys(members.iter().map(String::as_str));
        assert!(members.iter().all(|k| f.may_contain(k)));
        let false_pos = (10_000..30_000).filter(|&i| f.may_contain(&key(i))).count();
        assert!(false_pos < 600, "false positives {false_pos} of 20000");
    }

    #[test]
    fn text_form_round_trips_and_rejects_damage() {
        let f = KeyFilter::from_keys(["[1]", "[2]"].into_iter());
        let text = f.encode();
        assert!(text.starts_with("bloom2:"));
        assert_eq!(KeyFilter::decode(&text), Some(f));
        assert_eq!(KeyFilter::decode("bloom3:1:8:AA=="), None);
        assert_eq!(KeyFilter::decode("bloom1:3:64:AA=="), None);
    }

    #[test]
    fn parsed_keys_have_one_canonical_text() {
        let a = parse_key(r#"["2025-06-10", "x\u0041", 1E+2]"#).unwrap();
        let b = parse_key(r#"["2025-06-10","xA",1E+2]"#).unwrap();
        assert_eq!(canonical_key(&a), canonical_key(&b));
        assert_eq!(canonical_key(&a), r#"["2025-06-10","xA",1E+2]"#);
        assert!(parse_key(r#"{"a": 1}"#).is_none());
    }

    #[test]
    fn canonical_key_ignores_spacing_but_keeps_exact_numbers() {
        let a = canonical_key(&[Value::String("a".into()), Value::Number("1250.00".into())]);
        assert_eq!(a, r#"["a",1250.00]"#);
        assert_ne!(
            a,
            canonical_key(&[Value::String("a".into()), Value::Number("1250".into())])
        );
    }

    #[test]
    fn format_is_pinned_to_the_specification() {
        // The format is durable, so this value must never change. It was
        // computed by an independent implementation of the module docs'
        // specification (a dozen lines of Python with hashlib), not by
        // this code.
        let key = r#"["2025-06-10", "8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b"]"#;
        let f = KeyFilter::from_key_json([key].into_iter());
        // This key's value text is its canonical text: the same bits.
        assert_eq!(f.encode(), "bloom2:16:64:ERERQURERBQ=");
        // A `bloom1` filter of an earlier version still answers for the
        // archived spelling, and for a key with one spelling only.
        let old = KeyFilter::decode("bloom1:16:64:ERERQURERBQ=").unwrap();
        assert!(old.may_contain_archived(key));
        assert!(old.may_contain_key(&parse_key(key).unwrap()));
        assert!(!old.may_contain_key(&parse_key(r#"["2025-06-11", "x"]"#).unwrap()));
        // A number may be spelled otherwise in the archive: read the segment.
        assert!(old.may_contain_key(&parse_key("[12]").unwrap()));
    }

    #[test]
    fn equal_values_have_one_value_text() {
        let v = |json: &str| value_of(json);
        assert_eq!(v("[1250]"), v("[1250.00]"));
        assert_eq!(v("[1250]"), v("[1.25E+3]"));
        assert_eq!(v("[1250]"), "[1250]");
        assert_eq!(v("[-0.0]"), "[0]");
        assert_eq!(v("[0.000120]"), "[0.00012]");
        assert_eq!(v("[-1.5e-3]"), "[-0.0015]");
        assert_ne!(v("[1.5]"), v("[15]"));
        assert_eq!(
            v(r#"["8A1F5C3E-2B7D-4E41-9C0A-5D6E7F809A1B"]"#),
            v(r#"["8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b"]"#)
        );
        assert_eq!(
            v(r#"["2025-06-10 12:00:00.500+02"]"#),
            r#"["2025-06-10T10:00:00.5Z"]"#
        );
        assert_eq!(
            v(r#"["2025-06-10T10:00:00.500000Z"]"#),
            r#"["2025-06-10T10:00:00.5Z"]"#
        );
        assert_eq!(
            v(r#"["2025-06-10 10:00:00"]"#),
            r#"["2025-06-10T10:00:00"]"#
        );
        // Other strings are as they are (case matters).
        assert_ne!(v(r#"["Ab"]"#), v(r#"["ab"]"#));
        assert_eq!(v(r#"["2025-06-10", true]"#), r#"["2025-06-10",true]"#);
    }
}
