//! Tests of the key/version reader: it reads what the full decode reads
//! (across blocks, from rewritten files), refuses what the full decode
//! refuses, and gives an error, never a partial result, for truncated or
//! altered bytes or a layout it does not know.

use super::*;
use crate::fixtures::{meta, rewrite, row};
use crate::ArchivedRow;
use apache_avro::types::Value as Avro;

#[test]
fn matches_the_full_decode_across_blocks() {
    // Enough rows for several 256 KiB blocks.
    let rows: Vec<ArchivedRow> = (0..6000).map(row).collect();
    let bytes = crate::encode_segment(&meta(), &rows).unwrap();
    let Fast::Versions(fast) = versions(&bytes).unwrap() else {
        panic!("the segment layout is the one the reader knows");
    };
    let mut full = full_versions(&bytes).unwrap();
    assert_eq!(fast.rows.len(), rows.len());
    // The full decode also keeps the values (for the content guard);
    // everything else is the same.
    for (r, original) in full.rows.iter_mut().zip(&rows) {
        assert_eq!(r.columns, original.columns);
        r.columns.clear();
    }
    assert_eq!(fast, full);
    assert_eq!(fast.meta, meta());
    assert_eq!(fast.columns, ["id", "note", "flag", "doc"]);
}

fn field<'a>(fields: &'a mut [(String, Avro)], name: &str) -> &'a mut Avro {
    &mut fields.iter_mut().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn segments_the_full_decode_refuses_are_refused_here_too() {
    let rows: Vec<ArchivedRow> = (0..20).map(row).collect();
    let bytes = crate::encode_segment(&meta(), &rows).unwrap();
    // Rewritten unchanged: still read, by both.
    let same = rewrite(&bytes, &[], |_| {});
    assert!(matches!(versions(&same).unwrap(), Fast::Versions(_)));
    assert!(full_versions(&same).is_ok());

    let columns = r#"[{"field":"id","name":"id","encoding":"json"},{"field":"note","name":"note","encoding":"string"},{"field":"flag","name":"flag","encoding":"boolean"}]"#;
    let swapped = r#"[{"field":"id","name":"id","encoding":"json"},{"field":"note","name":"note","encoding":"string"},{"field":"flag","name":"flag","encoding":"json"},{"field":"doc","name":"doc","encoding":"boolean"}]"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "no cdc.columns",
            rewrite(&bytes, &[("cdc.columns", None)], |_| {}),
        ),
        (
            "cdc.columns not JSON",
            rewrite(&bytes, &[("cdc.columns", Some("[{"))], |_| {}),
        ),
        (
            "cdc.columns one short",
            rewrite(&bytes, &[("cdc.columns", Some(columns))], |_| {}),
        ),
        (
            "cdc.columns encodings the types cannot hold",
            rewrite(&bytes, &[("cdc.columns", Some(swapped))], |_| {}),
        ),
        (
            "no cdc.table",
            rewrite(&bytes, &[("cdc.table", None)], |_| {}),
        ),
        (
            "no cdc.topic",
            rewrite(&bytes, &[("cdc.topic", None)], |_| {}),
        ),
        (
            "no cdc.partition",
            rewrite(&bytes, &[("cdc.partition", None)], |_| {}),
        ),
        (
            "cdc.first_offset not a number",
            rewrite(&bytes, &[("cdc.first_offset", Some("x"))], |_| {}),
        ),
        (
            "no cdc.last_offset",
            rewrite(&bytes, &[("cdc.last_offset", None)], |_| {}),
        ),
        (
            "bad JSON in a JSON-encoded column",
            rewrite(&bytes, &[], |f| {
                *field(f, "doc") = Avro::Union(1, Box::new(Avro::String("{\"a\": [1,".into())));
            }),
        ),
        (
            "a bad escape in a JSON string value",
            rewrite(&bytes, &[], |f| {
                *field(f, "id") = Avro::Union(1, Box::new(Avro::String(r#""\ud800x""#.into())));
            }),
        ),
        (
            "an unknown _op",
            rewrite(&bytes, &[], |f| {
                *field(f, "_op") = Avro::String("merge".into())
            }),
        ),
    ];
    for (what, b) in &cases {
        assert!(
            full_versions(b).is_err(),
            "{what}: the full decode refuses it"
        );
        assert!(
            versions(b).is_err(),
            "{what}: so must the key/version reader"
        );
    }
    // A record of another partition: refused by both readers here.
    let other = rewrite(&bytes, &[], |f| *field(f, "_partition") = Avro::Int(3));
    assert!(versions(&other).is_err());
    assert!(full_versions(&other).is_err());
}

#[test]
fn truncated_or_altered_bytes_are_errors_never_partial_results() {
    let rows: Vec<ArchivedRow> = (0..50).map(row).collect();
    let bytes = crate::encode_segment(&meta(), &rows).unwrap();
    for cut in [bytes.len() - 1, bytes.len() - 17, bytes.len() / 2, 10] {
        assert!(versions(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut sync = bytes.clone();
    let n = sync.len();
    sync[n - 3] ^= 0xff;
    assert!(versions(&sync).is_err());
    assert!(versions(b"not avro").is_err());
}

#[test]
fn another_layout_is_left_to_the_full_decode() {
    let schema = apache_avro::Schema::parse_str(
        r#"{"type": "record", "name": "r", "fields": [{"name": "a", "type": "long"}]}"#,
    )
    .unwrap();
    let mut w = apache_avro::Writer::new(&schema, Vec::new());
    w.add_user_metadata("cdc.format_version".into(), "1")
        .unwrap();
    w.append(apache_avro::types::Value::Record(vec![(
        "a".into(),
        apache_avro::types::Value::Long(1),
    )]))
    .unwrap();
    let bytes = w.into_inner().unwrap();
    assert!(matches!(versions(&bytes).unwrap(), Fast::Unsupported(_)));
    let mut w = apache_avro::Writer::new(&schema, Vec::new());
    w.add_user_metadata("cdc.format_version".into(), "2")
        .unwrap();
    assert!(matches!(
        versions(&w.into_inner().unwrap()).unwrap(),
        Fast::Unsupported(_)
    ));
}
