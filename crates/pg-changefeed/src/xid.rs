//! 64-bit transaction ids. wal2json reports the 32-bit `xid`, which wraps
//! around every 2^32 transactions; the changefeed records the 64-bit form
//! (`xid8`, `epoch << 32 | xid`) in `pg_xid`, so that a version recorded
//! before a wraparound can never be mistaken for a row written after it.
//! (`xmin`, the purger's guard, is the low 32 bits.)
//!
//! The epoch is not in the WAL stream; it is taken from a full transaction
//! id read on the feed's session around the time of the peek (the "next
//! xid" of a snapshot: `pg_snapshot_xmax(pg_current_snapshot())` on
//! PostgreSQL 13+, `txid_snapshot_xmax(txid_current_snapshot())` before;
//! neither assigns a transaction id, unlike `pg_current_xact_id()`).

/// SQL giving a full transaction id near "now" without assigning one, for
/// a server of `server_version_num`.
pub fn reference_sql(server_version_num: i32) -> &'static str {
    if server_version_num >= 130_000 {
        "pg_snapshot_xmax(pg_current_snapshot())::text::int8"
    } else {
        "txid_snapshot_xmax(txid_current_snapshot())"
    }
}

const WRAP: i128 = 1 << 32;
const HALF: i128 = 1 << 31;

/// The 64-bit id of the transaction whose 32-bit id is `xid`, given
/// `reference`, a full transaction id read close to when the transaction
/// ran (the next xid at the peek).
///
/// The answer is the full id congruent to `xid` modulo 2^32 that is
/// nearest to `reference`: PostgreSQL's wraparound protection keeps every
/// transaction a slot can still decode within 2^31 of the next xid (the
/// slot's `catalog_xmin` holds freezing back), and a transaction that
/// started just after `reference` was read is only a little above it. In
/// the usual case this is "the epoch of `reference`, or the one before if
/// that would put `xid` above `reference`". `None` for the ids that no
/// transaction can have (0-2) or that would fall before epoch 0.
pub fn widen(xid: u32, reference: u64) -> Option<u64> {
    if xid < 3 {
        return None;
    }
    let reference = i128::from(reference);
    let mut full = (reference & !(WRAP - 1)) | i128::from(xid);
    if full - reference > HALF {
        full -= WRAP;
    } else if reference - full > HALF {
        full += WRAP;
    }
    u64::try_from(full).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 1 << 32;

    #[test]
    fn same_epoch() {
        assert_eq!(widen(700, 1000), Some(700));
        assert_eq!(widen(999, 1000), Some(999));
        assert_eq!(widen(700, 5 * E + 1000), Some(5 * E + 700));
        assert_eq!(widen(1000, 5 * E + 1000), Some(5 * E + 1000));
    }

    #[test]
    fn epoch_boundary() {
        // The reference has just wrapped into epoch 5; the transaction ran
        // at the end of epoch 4.
        assert_eq!(widen(u32::MAX - 10, 5 * E + 20), Some(5 * E - 11));
        assert_eq!(widen(u32::MAX, 5 * E + 3), Some(5 * E - 1));
        // The transaction started just after the reference was read, and
        // the counter wrapped in between: it belongs to the next epoch.
        assert_eq!(widen(3, 5 * E - 2), Some(5 * E + 3));
        assert_eq!(widen(10, 6 * E - 5), Some(6 * E + 10));
        // The low bits are always the 32-bit xid, which the purger's
        // `xmin` guard compares.
        for (xid, r) in [(u32::MAX - 10, 5 * E + 20), (3, 5 * E - 2), (77, E + 9)] {
            assert_eq!(widen(xid, r).unwrap() & 0xFFFF_FFFF, u64::from(xid));
        }
    }

    #[test]
    fn far_but_valid_and_impossible() {
        // 2^31 - 1 behind the reference: still the same epoch.
        let r = 7 * E + (1 << 31) + 100;
        assert_eq!(widen(101, r), Some(7 * E + 101));
        // Before epoch 0 there is nothing.
        assert_eq!(widen(u32::MAX - 5, 100), None);
        assert_eq!(widen(0, 100), None);
        assert_eq!(widen(2, 5 * E), None);
    }

    #[test]
    fn reference_sql_by_version() {
        assert!(reference_sql(150_004).starts_with("pg_snapshot_xmax"));
        assert!(reference_sql(120_000).starts_with("txid_snapshot_xmax"));
    }
}
