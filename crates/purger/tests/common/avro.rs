//! Rewriting an Avro container file, for tests that tamper with segments.
//! (A copy is compiled into `cdc-segment`'s unit tests, `src/versions_tests.rs`.)

use apache_avro::types::Value as Avro;

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
