//! Test fixtures for this crate's and other crates' tests (feature
//! `test-fixtures`): varied row versions, segment metadata, and a rewriter
//! for tampering with an Avro container file. Not part of the release
//! build.

use apache_avro::types::Value as Avro;
use cdc_types::{Hlc, Op, Value};

use crate::{ArchivedRow, RecordMeta, SegmentMeta};

/// `bytes` written again (uncompressed) with metadata changed by `md`
/// (`None` removes the entry) and every record passed through `rec`.
pub fn rewrite(
    bytes: &[u8],
    md: &[(&str, Option<&str>)],
    mut rec: impl FnMut(&mut Vec<(String, Avro)>),
) -> Vec<u8> {
    let reader = apache_avro::Reader::new(bytes).unwrap();
    let schema = reader.writer_schema().clone();
    let mut meta: Vec<(String, Vec<u8>)> = reader
        .user_metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in md {
        meta.retain(|(key, _)| key != k);
        if let Some(v) = v {
            meta.push(((*k).to_owned(), v.as_bytes().to_vec()));
        }
    }
    let records: Vec<Avro> = reader.map(Result::unwrap).collect();
    let mut w = apache_avro::Writer::with_codec(&schema, Vec::new(), apache_avro::Codec::Null);
    for (k, v) in meta {
        w.add_user_metadata(k, v).unwrap();
    }
    for r in records {
        let Avro::Record(mut fields) = r else {
            panic!("a record")
        };
        rec(&mut fields);
        w.append(Avro::Record(fields)).unwrap();
    }
    w.into_inner().unwrap()
}

/// A varied row version at offset `1000 + i` (every value kind, NULLs,
/// optional metadata present and absent).
pub fn row(i: i64) -> ArchivedRow {
    ArchivedRow {
        op: if i % 3 == 0 { Op::Insert } else { Op::Update },
        meta: RecordMeta {
            key_json: format!("[{i}, \"k\\\"{i}\"]"),
            updated: (i % 5 != 0).then(|| Hlc::new(1_700_000_000_000_000_000 + i, (i % 4) as u32)),
            mvcc_timestamp: (i % 2 == 0).then(|| Hlc::new(1_600_000_000_000_000_000 + i, 7)),
            pg_xid: (i % 7 != 0).then_some((3u64 << 32) | i as u64),
            topic: "topic".into(),
            partition: 2,
            offset: 1000 + i,
        },
        columns: vec![
            ("id".into(), Value::Number(i.to_string())),
            (
                "note".into(),
                if i % 4 == 0 {
                    Value::Null
                } else {
                    Value::String("x".repeat(i as usize % 50))
                },
            ),
            ("flag".into(), Value::Bool(i % 2 == 0)),
            ("doc".into(), Value::Json(format!("{{\"a\": [{i}, null]}}"))),
        ],
    }
}

/// Metadata of a segment of table `t`, partition 2, offsets 1000..=5000.
pub fn meta() -> SegmentMeta {
    SegmentMeta {
        table: "t".into(),
        topic: "topic".into(),
        partition: 2,
        first_offset: 1000,
        last_offset: 5000,
    }
}
