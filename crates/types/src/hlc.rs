//! Hybrid logical clock timestamps as CockroachDB prints them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CockroachDB HLC timestamp: wall time in nanoseconds since the Unix
/// epoch plus a logical counter that orders events within one wall tick.
///
/// Text form is `"<wall>.<logical as 10 digits>"` (Go `"%d.%010d"`), e.g.
/// `1749715231873209112.0000000002`. Ordering is by `(wall, logical)`, which
/// is the field order, so the derived `Ord` is the HLC order. Parsing only
/// accepts the canonical text, so `parse` then `to_string` gives back the
/// same bytes: an archive can store the string and compare it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Nanoseconds since the Unix epoch.
    pub wall: i64,
    /// Logical counter within one wall time.
    pub logical: u32,
}

impl Hlc {
    /// Builds a timestamp from its two parts.
    pub const fn new(wall: i64, logical: u32) -> Self {
        Self { wall, logical }
    }
}

/// Why a string is not a canonical HLC timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an HLC timestamp (<wall ns>.<10-digit logical>): {reason}")]
pub struct ParseHlcError {
    reason: &'static str,
}

impl ParseHlcError {
    /// The JSON value is not a string at all.
    #[doc(hidden)]
    pub const NOT_A_STRING: Self = err("not a JSON string");
}

const fn err(reason: &'static str) -> ParseHlcError {
    ParseHlcError { reason }
}

impl FromStr for Hlc {
    type Err = ParseHlcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (wall, logical) = s.split_once('.').ok_or(err("no '.'"))?;
        let digits = wall.strip_prefix('-').unwrap_or(wall);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("wall time is not a decimal integer"));
        }
        // Non-canonical spellings ("007", "-0") would not print back the
        // same, so they are refused rather than normalised.
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(err("wall time has a leading zero"));
        }
        if digits == "0" && wall.len() != digits.len() {
            return Err(err("wall time is negative zero"));
        }
        if logical.len() != 10 || !logical.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("logical part is not exactly 10 digits"));
        }
        let wall = wall
            .parse::<i64>()
            .map_err(|_| err("wall time out of range"))?;
        let logical = logical
            .parse::<u32>()
            .map_err(|_| err("logical part out of range"))?;
        Ok(Self { wall, logical })
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall, self.logical)
    }
}

impl Serialize for Hlc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Hlc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HLC timestamp string \"<wall>.<10-digit logical>\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Hlc, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_values() {
        let h: Hlc = "1749715231873209112.0000000002".parse().unwrap();
        assert_eq!(h, Hlc::new(1_749_715_231_873_209_112, 2));
        assert_eq!(h.to_string(), "1749715231873209112.0000000002");
        let z: Hlc = "0.0000000000".parse().unwrap();
        assert_eq!(z, Hlc::new(0, 0));
    }

    #[test]
    fn rejects_non_canonical_text() {
        for bad in [
            "",
            ".",
            "1",
            "1.",
            "1.000000000",
            "1.00000000000",
            "01.0000000000",
            "-0.0000000000",
            "+1.0000000000",
            "1.000000000a",
            "1 .0000000000",
            "1.4294967296",
            "9223372036854775808.0000000000",
            "1.-000000001",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn orders_by_wall_then_logical() {
        let a = Hlc::new(5, 9);
        let b = Hlc::new(6, 0);
        let c = Hlc::new(6, 1);
        assert!(a < b && b < c);
    }

    #[test]
    fn serde_uses_the_string() {
        let h = Hlc::new(1_749_715_200_412_345_678, 0);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, "\"1749715200412345678.0000000000\"");
        assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hlc>("1749715200412345678.0").is_err());
    }
}
