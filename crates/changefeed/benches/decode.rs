//! Decoder throughput against a baseline measured in the same run: parsing
//! the same key and value into `serde_json::Value` (what a naive, lossy
//! consumer would do). Prints the ratio; no absolute threshold.
//!
//! `cargo bench -p cdc-changefeed --bench decode`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cdc_changefeed::{decode, line::parse_line, line::OwnedRecord};

fn records() -> Vec<OwnedRecord> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cockroachdb-changefeed");
    let mut out = Vec::new();
    for name in [
        "01-wrapped-updated-diff.ndjson",
        "04-key-in-value-mvcc-timestamp.ndjson",
        "05-cdc-query-bare.ndjson",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).expect("fixture");
        for (i, l) in text.lines().enumerate() {
            out.push(parse_line(l, i as u64 + 1).expect("fixture line"));
        }
    }
    out
}

/// Best of several rounds, per record.
fn measure(records: &[OwnedRecord], rounds: usize, f: impl Fn(&OwnedRecord)) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for r in records {
            f(r);
        }
        best = best.min(start.elapsed());
    }
    best / records.len() as u32
}

fn main() {
    let base = records();
    let records: Vec<OwnedRecord> = base.iter().cycle().take(20_000).cloned().collect();
    let naive = measure(&records, 10, |r| {
        if let Some(k) = &r.key {
            black_box(serde_json::from_slice::<serde_json::Value>(k).ok());
        }
        if let Some(v) = &r.value {
            black_box(serde_json::from_slice::<serde_json::Value>(v).ok());
        }
    });
    let exact = measure(&records, 10, |r| {
        black_box(decode(&r.as_raw()).expect("fixture decodes"));
    });
    println!(
        "decode: {:?}/record; serde_json::Value baseline: {:?}/record; ratio {:.2}",
        exact,
        naive,
        exact.as_secs_f64() / naive.as_secs_f64()
    );
}
