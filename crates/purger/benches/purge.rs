//! Purge throughput against a baseline measured in the same run, on
//! identical copies of one table:
//!
//! - baseline: a plain loop of `DELETE … WHERE id IN (…)` over the same
//!   keys with the same batch size, no version guard, no archived check,
//!   no segment verification, no purge records;
//! - purger: `cdc_purger::purge` over checkpoints covering every row
//!   (segment verification and decoding included: that is its real cost).
//!
//! Target: purger rows/s ≥ 0.80 × baseline rows/s. Prints a table and
//! writes `target/bench/purge.json`. Not part of `cargo test`; run with
//! `cargo bench -p cdc-purger` against the local stack (`CDC_PG_URL`).
//! `CDC_BENCH_ROWS` (default 100000) and `CDC_BENCH_BATCH` (default 500)
//! change the size.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use cdc_common::ident::quote_ident;
use cdc_purger::sql::{baseline_delete, KeyColumn};
use cdc_purger::PurgeOptions;

const TARGET_RATIO: f64 = 0.80;
const ROWS_PER_CHECKPOINT: i64 = 10_000;

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    if let Ok(level) = std::env::var("CDC_BENCH_LOG") {
        cdc_common::telemetry::init_logging(cdc_common::telemetry::LogFormat::Text, &level);
    }
    let rows = env_num("CDC_BENCH_ROWS", 100_000);
    let batch = env_num("CDC_BENCH_BATCH", 500) as u32;

    let mut f = common::Fixture::new(rows).await;
    f.mark(1, rows).await;
    let baseline_table = format!("{}_baseline", f.table);
    let qb = quote_ident(&baseline_table);
    f.client
        .batch_execute(&format!(
            "CREATE TABLE {qb} (LIKE {} INCLUDING ALL); INSERT INTO {qb} SELECT * FROM {}; ANALYZE {qb}; ANALYZE {};",
            f.q(),
            f.q(),
            f.q()
        ))
        .await
        .unwrap();
    // Same physical state for both copies: the marking UPDATE left dead
    // versions in the purger's table, the copy has none.
    for t in [f.q(), qb.clone()] {
        f.client
            .batch_execute(&format!("VACUUM ANALYZE {t}"))
            .await
            .unwrap();
    }
    let snap = f.snapshot().await;
    let mut first = 1;
    while first <= rows {
        let last = (first + ROWS_PER_CHECKPOINT - 1).min(rows);
        f.archive_from(&snap, 0, first - 1, first, last, true).await;
        first = last + 1;
    }
    drop(snap);

    // Baseline: the cron job's DELETE, same keys, same batch size.
    let key = KeyColumn {
        name: "id".into(),
        sql_type: "bigint".into(),
    };
    let ids: Vec<String> = (1..=rows).map(|i| i.to_string()).collect();
    let stmt = f
        .client
        .prepare(&baseline_delete(&qb, &key, batch as usize))
        .await
        .unwrap();
    let t = Instant::now();
    let mut baseline_deleted = 0;
    for chunk in ids.chunks(batch as usize) {
        let n = if chunk.len() == batch as usize {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = chunk
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            f.client.execute(&stmt, &params).await.unwrap()
        } else {
            let sql = baseline_delete(&qb, &key, chunk.len());
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = chunk
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            f.client.execute(&sql, &params).await.unwrap()
        };
        baseline_deleted += n;
    }
    let baseline_secs = t.elapsed().as_secs_f64();
    assert_eq!(baseline_deleted, rows as u64);

    // For the reader of the table: how much of the purger's time is
    // reading and verifying the archive (not part of the ratio).
    let t = Instant::now();
    for cp in cdc_checkpoint::read_chain(&f.store, &f.table, 0)
        .await
        .unwrap()
        .checkpoints
    {
        let bytes = cdc_checkpoint::verify_segment(&f.store, cp.segment.as_ref().unwrap())
            .await
            .unwrap();
        assert!(!cdc_segment::decode_segment(&bytes).unwrap().rows.is_empty());
    }
    let read_secs = t.elapsed().as_secs_f64();

    // The purger, over the checkpoints.
    f.cfg.batch_size = batch;
    f.cfg.min_batch_size = (batch / 10).max(1);
    f.cfg.target_batch_latency = std::time::Duration::from_secs(2);
    let t = Instant::now();
    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    let purger_secs = t.elapsed().as_secs_f64();
    assert_eq!(s.totals.deleted, rows as u64, "{}", s.render());

    let baseline_rps = rows as f64 / baseline_secs;
    let purger_rps = rows as f64 / purger_secs;
    let ratio = purger_rps / baseline_rps;
    println!(
        "purge benchmark: {rows} rows, batch {batch}, {} checkpoints",
        s.checkpoints.len()
    );
    println!("{:<34} {:>10} {:>12}", "", "seconds", "rows/s");
    println!(
        "{:<34} {:>10.3} {:>12.0}",
        "baseline DELETE … WHERE id IN (…)", baseline_secs, baseline_rps
    );
    println!(
        "{:<34} {:>10.3} {:>12.0}",
        "cdc-purger (guarded, verified)", purger_secs, purger_rps
    );
    println!(
        "{:<34} {:>10.3}",
        "  of which: verify + decode segments", read_secs
    );
    println!(
        "ratio {ratio:.3} (target ≥ {TARGET_RATIO:.2}): {}",
        if ratio >= TARGET_RATIO {
            "OK"
        } else {
            "BELOW TARGET"
        }
    );

    let json = serde_json::json!({
        "benchmark": "purge",
        "rows": rows,
        "batch_size": batch,
        "checkpoints": s.checkpoints.len(),
        "archive_read_seconds": read_secs,
        "baseline": { "seconds": baseline_secs, "rows_per_second": baseline_rps },
        "purger": { "seconds": purger_secs, "rows_per_second": purger_rps, "batches": s.batches, "retries": s.retries },
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    });
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("purge.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    println!("wrote {}", dir.join("purge.json").display());

    let _ = f
        .client
        .batch_execute(&format!("DROP TABLE IF EXISTS {qb}"))
        .await;
    f.drop().await;
}
