//! CockroachDB's Kafka partitioner, so that a key lands in the partition a
//! CockroachDB changefeed would put it in (and one key in one partition).

/// 32-bit FNV-1a of `bytes`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `abs(int32(FNV-1a-32(key)) % partitions)`: sarama's hash partitioner as
/// built by CockroachDB's `newChangefeedPartitioner` (Go's `%` truncates,
/// like Rust's, so the sign handling matches).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    // Reinterpreting the hash as i32 is the point: Go does `int32(h)`.
    let h = fnv1a32(key) as i32;
    (h % partitions).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    /// Every keyed record of the CockroachDB fixtures is in the partition
    /// this function computes.
    #[test]
    fn reproduces_fixture_partitions() {
        // The repository's own copy of the fixtures.
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/cockroachdb-changefeed"
        );
        let mut checked = 0;
        for entry in
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fixture directory {dir}: {e}"))
        {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                continue;
            }
            for line in std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                let rec: serde_json::Value = serde_json::from_str(line).unwrap();
                let Some(key) = rec["key"].as_str() else {
                    continue;
                };
                let want = rec["partition"].as_i64().unwrap() as i32;
                assert_eq!(
                    partition_for_key(key.as_bytes(), 3),
                    want,
                    "{} {key}",
                    path.display()
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} keyed fixture records found");
        // The README's table, stated explicitly.
        assert_eq!(
            partition_for_key(
                br#"["2025-06-10", "8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b"]"#,
                3
            ),
            2
        );
        assert_eq!(
            partition_for_key(
                br#"["2025-06-10", "3c9e2a71-0f4b-4d88-b1e2-7a6c5d4e3f21"]"#,
                3
            ),
            0
        );
        assert_eq!(
            partition_for_key(
                br#"["2025-06-11", "f0e1d2c3-b4a5-4968-8776-655443322110"]"#,
                3
            ),
            1
        );
    }
}
