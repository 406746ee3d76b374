//! Column values that keep their exact JSON text.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

/// One column value as the changefeed encoded it.
///
/// Numbers and nested JSON keep their exact text (a DECIMAL `1250.00` stays
/// `1250.00`, `1E+2` stays `1E+2`, a 27-digit number keeps all its digits):
/// they never pass through `f64`. Strings are unescaped, and come back as
/// JSON through [`Value::to_json_text`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// JSON `null` (SQL NULL).
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// The exact text of a JSON number (INT, FLOAT, DECIMAL).
    Number(String),
    /// An unescaped JSON string (STRING, UUID, DATE, TIMESTAMP, BYTES as
    /// `\x…`, DECIMAL NaN/Infinity, …).
    String(String),
    /// The exact text of a JSON object or array (JSONB, ARRAY).
    Json(String),
}

impl Value {
    /// Classifies one JSON value by its first byte and keeps its text.
    ///
    /// The text is already valid JSON (a `RawValue` is validated when it is
    /// parsed); only strings need decoding, the rest is copied verbatim.
    pub fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get().trim_matches(|c: char| c.is_ascii_whitespace());
        Ok(match text.as_bytes().first() {
            Some(b'n') => Value::Null,
            Some(b't') => Value::Bool(true),
            Some(b'f') => Value::Bool(false),
            Some(b'"') => Value::String(serde_json::from_str(text)?),
            Some(b'{' | b'[') => Value::Json(text.to_owned()),
            _ => Value::Number(text.to_owned()),
        })
    }

    /// The value as JSON text: numbers and nested JSON exactly as received,
    /// strings re-escaped (the way `serde_json` escapes: `"`, `\` and
    /// control characters only).
    pub fn to_json_text(&self) -> String {
        match self {
            Value::Null => "null".to_owned(),
            Value::Bool(true) => "true".to_owned(),
            Value::Bool(false) => "false".to_owned(),
            Value::Number(t) | Value::Json(t) => t.clone(),
            Value::String(s) => {
                serde_json::to_string(s).expect("serialising a str to JSON cannot fail")
            }
        }
    }

    /// `true` for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The string, for [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The exact number text, for [`Value::Number`].
    pub fn as_number_text(&self) -> Option<&str> {
        match self {
            Value::Number(s) => Some(s),
            _ => None,
        }
    }
}

/// Serialises as the natural JSON value; numbers and nested JSON are
/// written through `RawValue`, so their exact text survives when the
/// serializer is `serde_json`.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::String(s) => serializer.serialize_str(s),
            Value::Number(t) | Value::Json(t) => {
                // The text came from a validated RawValue; a Value built by
                // hand with invalid text is reported, not written.
                let raw: &RawValue = serde_json::from_str(t).map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
        }
    }
}

/// A row: `(column, value)` pairs in message order (CockroachDB sorts
/// columns alphabetically).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    /// The value of `col`, if the row has that column.
    pub fn get(&self, col: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| c == col).map(|(_, v)| v)
    }

    /// Column names in message order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(c, _)| c.as_str())
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when the row has no column.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes `col` and returns its value.
    pub fn remove(&mut self, col: &str) -> Option<Value> {
        let i = self.0.iter().position(|(c, _)| c == col)?;
        Some(self.0.remove(i).1)
    }
}

/// Serialises as a JSON object in column order.
impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (c, v) in &self.0 {
            map.serialize_entry(c, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        Value::from_raw(serde_json::from_str::<&RawValue>(text).unwrap()).unwrap()
    }

    #[test]
    fn keeps_exact_number_text() {
        for t in [
            "1250.00",
            "-15.50",
            "1E+2",
            "123456789012345678901234567",
            "0",
            "-0.0",
        ] {
            assert_eq!(v(t), Value::Number(t.to_owned()));
            assert_eq!(v(t).to_json_text(), t);
            assert_eq!(serde_json::to_string(&v(t)).unwrap(), t);
        }
    }

    #[test]
    fn classifies_scalars_and_nested() {
        assert_eq!(v("null"), Value::Null);
        assert_eq!(v("true"), Value::Bool(true));
        assert_eq!(v("false"), Value::Bool(false));
        assert_eq!(v(r#""NaN""#), Value::String("NaN".into()));
        assert_eq!(v(r#""\\x0aff""#), Value::String("\\x0aff".into()));
        assert_eq!(v(r#""a\"b\u00e9""#), Value::String("a\"bé".into()));
        let nested = r#"{"a": [1, 2.50, {"b": null}], "c": "d"}"#;
        assert_eq!(v(nested), Value::Json(nested.into()));
        assert_eq!(serde_json::to_string(&v(nested)).unwrap(), nested);
        assert_eq!(v("[1, 2]"), Value::Json("[1, 2]".into()));
    }

    #[test]
    fn row_serialises_in_order() {
        let mut row = Row(vec![
            ("b".into(), Value::Number("1.0".into())),
            ("a".into(), Value::String("x".into())),
            ("op".into(), Value::String("insert".into())),
        ]);
        assert_eq!(row.remove("op"), Some(Value::String("insert".into())));
        assert_eq!(row.get("a"), Some(&Value::String("x".into())));
        assert_eq!(row.get("zz"), None);
        assert_eq!(serde_json::to_string(&row).unwrap(), r#"{"b":1.0,"a":"x"}"#);
    }
}
