//! `decode` must never panic, and an error must carry the record's exact
//! bytes. The input is split into a key and a value so that both halves
//! get fuzzed: first byte = key length (0xff: null key), then key, then
//! value.
//!
//! Run (stable toolchain; the seeds are the fixture records in this
//! format, new finds go to the git-ignored `corpus/decode`):
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode corpus/decode seeds/decode -- -max_total_time=60`

#![no_main]

use cdc_changefeed::{decode, decode_with, DecodeOptions, Event, RawRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.split_first() {
        None => (None, data),
        Some((&0xff, rest)) => (None, rest),
        Some((&n, rest)) => {
            let n = usize::from(n).min(rest.len());
            (Some(&rest[..n]), &rest[n..])
        }
    };
    let record = RawRecord {
        topic: "fuzz",
        partition: 3,
        offset: 7,
        key,
        value: Some(value),
    };
    match decode(&record) {
        Ok(Event::Row(row)) => {
            // Re-encoding must not panic either, and must keep the key text.
            assert_eq!(Some(row.key_json.as_bytes()), key);
            for (_, v) in row
                .after
                .iter()
                .chain(row.before.iter())
                .flat_map(|r| r.0.iter())
            {
                let _ = v.to_json_text();
            }
        }
        Ok(Event::Resolved(_)) => {}
        Err(e) => {
            assert_eq!(e.key.as_deref(), key);
            assert_eq!(e.value.as_deref(), Some(value));
            let _ = e.to_string();
        }
    }
    let _ = decode_with(
        &record,
        &DecodeOptions {
            bare_op_column: None,
        },
    );
});
