//! The target of the wait: the moment the marker's last write corresponds
//! to, as an HLC that every change the marker committed precedes. On
//! CockroachDB the full HLC (wall time *and* logical counter) of the
//! marker's write position; on PostgreSQL the server clock read at the same
//! moment.

use cdc_changefeed::Hlc;
use cdc_marker::{MarkSummary, WritePosition};

/// The moment the marker's last write corresponds to, as an HLC: every
/// change the marker committed has an `updated` before it.
///
/// CockroachDB: the full HLC of `cluster_logical_timestamp()` read after
/// the last batch committed (wall time *and* logical counter), so a
/// resolved timestamp in the same wall nanosecond is compared correctly.
/// PostgreSQL (and a CockroachDB position that does not parse): the
/// server clock read at the same moment.
pub fn target_of(mark: &MarkSummary) -> Option<Hlc> {
    if let Some(WritePosition::CrdbHlc(text)) = &mark.last_write_position {
        match parse_decimal_hlc(text) {
            Some(h) => return Some(h),
            None => tracing::warn!(
                position = %text,
                "the marker's CockroachDB write position is not an HLC; waiting on its clock instead"
            ),
        }
    }
    let at = mark.last_write_at?;
    let wall = at.timestamp_nanos_opt()?;
    Some(Hlc { wall, logical: 0 })
}

/// Parses `cluster_logical_timestamp()` as text: the canonical HLC
/// (`<wall>.<10-digit logical>`), or the same DECIMAL with a shorter
/// fraction (`<wall>.<logical digits>`, the logical counter being the
/// fraction times 10^10) or none.
pub fn parse_decimal_hlc(text: &str) -> Option<Hlc> {
    let text = text.trim();
    if let Ok(h) = text.parse::<Hlc>() {
        return Some(h);
    }
    let (wall, frac) = text.split_once('.').unwrap_or((text, ""));
    if wall.is_empty()
        || !wall.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 10
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let logical = format!("{frac:0<10}").parse().ok()?;
    Some(Hlc {
        wall: wall.parse().ok()?,
        logical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(kind: &str, value: &str) -> MarkSummary {
        serde_json::from_value(serde_json::json!({
            "table": "public.t", "dialect": "cockroach", "stop_reason": "completed",
            "rows_marked": 1, "batches": 1, "retries": 0, "batch_size_decreases": 0,
            "batch_size_target": 10, "batch_size_smallest": 10, "batch_size_final": 10,
            "eligible_at_start": 1, "rows_skipped_locked": 0, "rows_left_locked": 0,
            "started_at": "2025-06-12T08:00:00Z", "elapsed_secs": 1.0, "rows_per_second": 1.0,
            "last_write_at": "2025-06-12T08:00:31.873209Z",
            "last_write_position": {"kind": kind, "value": value},
        }))
        .unwrap()
    }

    #[test]
    fn the_target_is_the_markers_full_hlc_on_cockroachdb() {
        let crdb = summary("crdb_hlc", "1749715231873209112.0000000002");
        assert_eq!(
            target_of(&crdb),
            Some(Hlc::new(1_749_715_231_873_209_112, 2))
        );
        // PostgreSQL, or a position that does not parse: the server clock.
        let clock = Some(Hlc::new(1_749_715_231_873_209_000, 0));
        let pg = summary("pg_lsn", "0/16B3748");
        assert_eq!(target_of(&pg), clock);
        let odd = summary("crdb_hlc", "soon");
        assert_eq!(target_of(&odd), clock);
    }

    #[test]
    fn cockroach_positions_parse_as_full_hlcs() {
        let h = parse_decimal_hlc("1749715231873209112.0000000002").unwrap();
        assert_eq!(h, Hlc::new(1_749_715_231_873_209_112, 2));
        assert_eq!(
            parse_decimal_hlc("1749715231873209112.00000001"),
            Some(Hlc::new(1_749_715_231_873_209_112, 100))
        );
        assert_eq!(
            parse_decimal_hlc("1749715231873209112"),
            Some(Hlc::new(1_749_715_231_873_209_112, 0))
        );
        for bad in ["", "x.1", "1.00000000001", "1.-1", "-5.0000000000x"] {
            assert_eq!(parse_decimal_hlc(bad), None, "{bad:?}");
        }
    }
}
