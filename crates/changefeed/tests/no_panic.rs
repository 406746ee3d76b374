//! `decode` never panics, whatever the bytes (the CI-friendly sibling of
//! the cargo-fuzz target), and every error keeps the exact record bytes.

use cdc_changefeed::{decode, RawRecord};
use proptest::prelude::*;

type Records = Vec<(Option<Vec<u8>>, Vec<u8>)>;

fn fixture_records() -> &'static Records {
    static RECORDS: std::sync::OnceLock<Records> = std::sync::OnceLock::new();
    RECORDS.get_or_init(load_fixture_records)
}

fn load_fixture_records() -> Records {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cockroachdb-changefeed");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ndjson") {
            for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                let r = cdc_changefeed::line::parse_line(line, i as u64 + 1).unwrap();
                out.push((r.key, r.value.unwrap()));
            }
        }
    }
    assert!(out.len() > 40, "fixtures found: {}", out.len());
    out
}

fn check(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), TestCaseError> {
    let rec = RawRecord {
        topic: "t",
        partition: 1,
        offset: 9,
        key,
        value,
    };
    if let Err(e) = decode(&rec) {
        prop_assert_eq!(e.key.as_deref(), key);
        prop_assert_eq!(e.value.as_deref(), value);
        prop_assert_eq!((e.partition, e.offset), (1, 9));
        prop_assert!(!e.to_string().is_empty());
    }
    Ok(())
}

/// Byte edits applied to a fixture value: (position, kind, byte).
fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 1..6)
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, kind, b) in edits {
        let at = pos % (bytes.len() + 1);
        match kind {
            0 => bytes.insert(at, b),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ if at < bytes.len() => bytes[at] = b,
            _ => bytes.push(b),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes(key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
                       value in prop::option::of(prop::collection::vec(any::<u8>(), 0..256))) {
        check(key.as_deref(), value.as_deref())?;
    }

    #[test]
    fn json_ish_text(value in "[{}\\[\\]\":, a-z0-9._\\\\-]{0,80}") {
        check(Some(b"[1]"), Some(value.as_bytes()))?;
        check(None, Some(value.as_bytes()))?;
    }

    #[test]
    fn mutated_fixture_lines(pick in any::<prop::sample::Index>(), value_edits in edits(), key_edits in edits(), edit_key in any::<bool>()) {
        let records = fixture_records();
        let (key, value) = &records[pick.index(records.len())];
        let value = mutate(value.clone(), &value_edits);
        let key = key.clone().map(|k| if edit_key { mutate(k, &key_edits) } else { k });
        check(key.as_deref(), Some(&value))?;
    }
}
