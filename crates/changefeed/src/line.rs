//! Text dumps of Kafka records, one JSON object per line, as read by
//! `cdc-archiver changefeed decode` and the tests: `kcat -C -J` output
//! (`{"topic", "partition", "offset", "key", "payload", …}`) and the
//! fixtures' form (`{"topic", "partition", "key", "value"}`). Pure parsing;
//! the caller does the reading.

use serde::Deserialize;

use crate::RawRecord;

/// A record that owns its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset (the line number when the line has none).
    pub offset: i64,
    /// Key bytes; `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` for a null value.
    pub value: Option<Vec<u8>>,
}

impl OwnedRecord {
    /// Borrows the record for [`crate::decode`].
    pub fn as_raw(&self) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
        }
    }
}

/// A line that is not a record in either form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: not a record line (kcat -J or {{topic, partition, key, value}}): {reason}")]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

// kcat adds tstype, ts, broker, headers…: unknown fields are ignored.
#[derive(Deserialize)]
struct Line {
    topic: String,
    partition: i32,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

/// Parses one line; `line_number` (1-based) stands in for a missing
/// offset and is reported in errors.
pub fn parse_line(line: &str, line_number: u64) -> Result<OwnedRecord, LineError> {
    let err = |reason: String| LineError {
        line: line_number,
        reason,
    };
    let l: Line = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
    if l.value.is_some() && l.payload.is_some() {
        return Err(err("both \"value\" and \"payload\"".to_owned()));
    }
    let offset = match l.offset {
        Some(o) => o,
        None => i64::try_from(line_number).map_err(|_| err("line number too large".to_owned()))?,
    };
    Ok(OwnedRecord {
        topic: l.topic,
        partition: l.partition,
        offset,
        key: l.key.map(String::into_bytes),
        value: l.value.or(l.payload).map(String::into_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kcat_lines() {
        let line = r#"{"topic":"t","partition":2,"offset":5,"tstype":"create","ts":1749715200412,"broker":0,"headers":["a","b"],"key":"[1]","payload":"{\"after\": null}"}"#;
        let r = parse_line(line, 9).unwrap();
        assert_eq!(r.topic, "t");
        assert_eq!((r.partition, r.offset), (2, 5));
        assert_eq!(r.key.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"{\"after\": null}"[..]));
    }

    #[test]
    fn reads_fixture_lines_with_line_number_as_offset() {
        let line = r#"{"topic": "payments", "partition": 0, "key": null, "value": "{\"resolved\":\"1.0000000000\"}"}"#;
        let r = parse_line(line, 3).unwrap();
        assert_eq!(r.offset, 3);
        assert_eq!(r.key, None);
        assert_eq!(
            r.value.as_deref(),
            Some(&b"{\"resolved\":\"1.0000000000\"}"[..])
        );
    }

    #[test]
    fn rejects_non_records() {
        assert_eq!(parse_line("nope", 4).unwrap_err().line, 4);
        assert!(parse_line(r#"{"partition": 0}"#, 1).is_err());
        assert!(parse_line(
            r#"{"topic":"t","partition":0,"value":"a","payload":"b"}"#,
            1
        )
        .is_err());
    }
}
