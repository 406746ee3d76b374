//! Per-segment key filters, so that a look-up by primary key reads only
//! the segments that can hold the key.
//!
//! The filter is part of the archive format and must stay readable for
//! years by any tool, so it is specified here rather than delegated to a
//! crate whose internal hashing may change between versions:
//!
//! - text form: `bloom1:<k>:<m>:<base64 of the m-bit array, little-endian bit order>`
//! - the hashed bytes are the key's *canonical text* ([`canonical_key`]):
//!   the JSON array of key values, compact (`["2025-06-10","8a1f…"]`),
//!   numbers with their exact text, strings escaped as serde_json does;
//! - `h1`, `h2` = the first and second little-endian u64 of SHA-256(canonical
//!   text); probe `i` (0-based, `i < k`) sets bit `(h1 + i·h2) mod m`.
//!
//! A filter never answers "no" for a key it holds; it answers "maybe" for
//! about 1% of the keys it does not hold (sized for that rate).

use base64::Engine as _;
use cdc_changefeed::Value;
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

/// A Bloom filter over canonical key texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    k: u32,
    bits: Vec<u8>,
    m: u64,
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
            f.insert(&canonical_of(key));
        }
        f
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
            "bloom1:{}:{}:{}",
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
        if parts.next()? != "bloom1" {
            return None;
        }
        let k: u32 = parts.next()?.parse().ok()?;
        let m: u64 = parts.next()?.parse().ok()?;
        let bits = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        if k == 0 || m == 0 || bits.len() as u64 * 8 != m {
            return None;
        }
        Some(Self { k, bits, m })
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
        assert!(text.starts_with("bloom1:"));
        assert_eq!(KeyFilter::decode(&text), Some(f));
        assert_eq!(KeyFilter::decode("bloom2:1:8:AA=="), None);
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
        let f = KeyFilter::from_keys(
            [r#"["2025-06-10","8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b"]"#].into_iter(),
        );
        assert_eq!(f.encode(), "bloom1:16:64:ERERQURERBQ=");
    }
}
