//! Purge throughput against a baseline measured in the same run, on two
//! tables with the same physical history:
//!
//! - baseline: a plain loop of `DELETE … WHERE id IN (…)` over the same
//!   keys with the same batch size, no version guard, no archived check,
//!   no segment verification, no purge records;
//! - purger: `cdc_purger::purge` over checkpoints covering every row
//!   (start-up, catalog checks, segment verification and decoding
//!   included: that is its real cost).
//!
//! Both tables are created the same way in every round: the same rows
//! inserted, then marked by the same `UPDATE … SET archived = true` (so
//! both carry the marking's dead versions: same heap and index size), then
//! `VACUUM ANALYZE`, autovacuum off, a `CHECKPOINT` before each timed run.
//! The order alternates between rounds (baseline first, then purger first)
//! and the medians are reported, so neither side profits from running
//! second on a warmer (or busier) server.
//!
//! Target: purger rows/s ≥ 0.80 × baseline rows/s (ratio of the medians).
//! Prints a table and writes `target/bench/purge.json`. Not part of
//! `cargo test`; run with `cargo bench -p cdc-purger` against the local
//! stack (`CDC_PG_URL`). `CDC_BENCH_ROWS` (default 100000),
//! `CDC_BENCH_BATCH` (default 500) and `CDC_BENCH_ROUNDS` (default 5)
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

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One round's two tables: the fixture's (purged by the purger) and its
/// baseline twin.
struct Round {
    f: common::Fixture,
    qb: String,
}

async fn setup(rows: i64) -> Round {
    let f = common::Fixture::new(rows).await;
    let qb = quote_ident(&format!("{}_baseline", f.table));
    let qt = f.q();
    // Same inserts, same marking UPDATE, same vacuum: the same physical
    // history (heap pages, dead versions, index size) for both tables.
    f.client
        .batch_execute(&format!(
            "CREATE TABLE {qb} (LIKE {qt} INCLUDING ALL);
             INSERT INTO {qb} SELECT * FROM {qt} ORDER BY id;
             ALTER TABLE {qt} SET (autovacuum_enabled = false);
             ALTER TABLE {qb} SET (autovacuum_enabled = false);
             UPDATE {qt} SET archived = true WHERE id BETWEEN 1 AND {rows};
             UPDATE {qb} SET archived = true WHERE id BETWEEN 1 AND {rows};"
        ))
        .await
        .unwrap();
    for t in [&qt, &qb] {
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
    Round { f, qb }
}

async fn sizes(r: &Round) -> (i64, i64) {
    let q = "SELECT pg_relation_size($1::text::regclass) + pg_indexes_size($1::text::regclass)";
    let a: i64 = r.f.client.query_one(q, &[&r.f.q()]).await.unwrap().get(0);
    let b: i64 = r.f.client.query_one(q, &[&r.qb]).await.unwrap().get(0);
    (a, b)
}

/// The cron job's DELETE, same keys, same batch size. Returns seconds.
async fn baseline(r: &Round, rows: i64, batch: usize) -> f64 {
    let client = &r.f.client;
    client.batch_execute("CHECKPOINT").await.unwrap();
    let key = KeyColumn {
        name: "id".into(),
        sql_type: "bigint".into(),
    };
    let ids: Vec<String> = (1..=rows).map(|i| i.to_string()).collect();
    let t = Instant::now();
    let stmt = client
        .prepare(&baseline_delete(&r.qb, &key, batch))
        .await
        .unwrap();
    let mut deleted = 0;
    for chunk in ids.chunks(batch) {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = chunk
            .iter()
            .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        deleted += if chunk.len() == batch {
            client.execute(&stmt, &params).await.unwrap()
        } else {
            let sql = baseline_delete(&r.qb, &key, chunk.len());
            client.execute(&sql, &params).await.unwrap()
        };
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(deleted, rows as u64);
    secs
}

/// The purger over the round's checkpoints. Returns seconds and batches.
async fn purger(r: &mut Round, rows: i64, batch: u32) -> (f64, u64) {
    r.f.client.batch_execute("CHECKPOINT").await.unwrap();
    r.f.cfg.batching.batch_size = batch;
    r.f.cfg.batching.min_batch_size = (batch / 10).max(1);
    r.f.cfg.batching.target_batch_latency = std::time::Duration::from_secs(2);
    r.f.cfg.pipeline_depth = env_num("CDC_BENCH_PIPELINE", r.f.cfg.pipeline_depth.into()) as u32;
    let t = Instant::now();
    let s = r.f.purge(&PurgeOptions::default()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(s.totals.deleted, rows as u64, "{}", s.render());
    (secs, s.batches)
}

#[tokio::main]
async fn main() {
    if let Ok(level) = std::env::var("CDC_BENCH_LOG") {
        cdc_common::telemetry::init_logging(cdc_common::telemetry::LogFormat::Text, &level);
    }
    let rows = env_num("CDC_BENCH_ROWS", 100_000);
    let batch = env_num("CDC_BENCH_BATCH", 500) as u32;
    let rounds = env_num("CDC_BENCH_ROUNDS", 5).max(1) as usize;

    let mut base_secs = Vec::new();
    let mut purge_secs = Vec::new();
    let mut per_round = Vec::new();
    let mut read_secs = 0.0;
    let mut fast_secs = 0.0;
    let mut batches = 0;
    let mut size_pair = (0, 0);
    for round in 0..rounds {
        let mut r = setup(rows).await;
        size_pair = sizes(&r).await;
        if round == 0 {
            // For the reader: how much of the purger's time is reading and
            // verifying the archive (full decode; not part of the ratio).
            let t = Instant::now();
            for cp in cdc_checkpoint::read_chain(&r.f.store, &r.f.table, 0)
                .await
                .unwrap()
                .checkpoints
            {
                let bytes =
                    cdc_checkpoint::verify_segment(&r.f.store, cp.segment.as_ref().unwrap())
                        .await
                        .unwrap();
                assert!(!cdc_segment::decode_segment(&bytes).unwrap().rows.is_empty());
            }
            read_secs = t.elapsed().as_secs_f64();
            // What the purger does instead: keys and versions only, then
            // the plan (latest version per key, sorted).
            let t = Instant::now();
            for cp in cdc_checkpoint::read_chain(&r.f.store, &r.f.table, 0)
                .await
                .unwrap()
                .checkpoints
            {
                let bytes =
                    cdc_checkpoint::verify_segment(&r.f.store, cp.segment.as_ref().unwrap())
                        .await
                        .unwrap();
                let cdc_purger::decode::Fast::Versions(v) =
                    cdc_purger::decode::versions(&bytes).unwrap()
                else {
                    panic!("the purger's reader knows this layout");
                };
                cdc_purger::decode::check_checkpoint(&v, &cp).unwrap();
                let rows: Vec<cdc_purger::versions::ArchivedVersion> = v.rows;
                let plan = cdc_purger::versions::plan(&rows, cdc_common::db::Dialect::Postgres, 1)
                    .unwrap();
                assert_eq!(plan.targets.len(), rows.len());
            }
            fast_secs = t.elapsed().as_secs_f64();
        }
        let (b, p) = if round % 2 == 0 {
            let b = baseline(&r, rows, batch as usize).await;
            let p = purger(&mut r, rows, batch).await;
            (b, p)
        } else {
            let p = purger(&mut r, rows, batch).await;
            let b = baseline(&r, rows, batch as usize).await;
            (b, p)
        };
        batches = p.1;
        println!(
            "round {round} ({} first): baseline {b:.3}s, purger {:.3}s, ratio {:.3}",
            if round % 2 == 0 { "baseline" } else { "purger" },
            p.0,
            b / p.0
        );
        base_secs.push(b);
        purge_secs.push(p.0);
        per_round.push(serde_json::json!({"baseline_seconds": b, "purger_seconds": p.0, "baseline_first": round % 2 == 0}));
        let _ =
            r.f.client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", r.qb))
                .await;
        r.f.drop().await;
    }

    let baseline_secs = median(&base_secs);
    let purger_secs = median(&purge_secs);
    let baseline_rps = rows as f64 / baseline_secs;
    let purger_rps = rows as f64 / purger_secs;
    let ratio = purger_rps / baseline_rps;
    let ratios: Vec<f64> = base_secs
        .iter()
        .zip(&purge_secs)
        .map(|(b, p)| b / p)
        .collect();
    println!(
        "purge benchmark: {rows} rows, batch {batch}, {} checkpoints, {rounds} rounds (order alternating), medians",
        (rows + ROWS_PER_CHECKPOINT - 1) / ROWS_PER_CHECKPOINT
    );
    println!(
        "table + index bytes before the run: purger's {}, baseline's {}",
        size_pair.0, size_pair.1
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
        "  verify + full decode (not used)", read_secs
    );
    println!(
        "{:<34} {:>10.3}",
        "  verify + key/version read + plan", fast_secs
    );
    println!(
        "ratio {ratio:.3} (per round: min {:.3}, median {:.3}, max {:.3}; target ≥ {TARGET_RATIO:.2}): {}",
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        median(&ratios),
        ratios.iter().copied().fold(0.0, f64::max),
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
        "rounds": rounds,
        "checkpoints": (rows + ROWS_PER_CHECKPOINT - 1) / ROWS_PER_CHECKPOINT,
        "archive_full_decode_seconds": read_secs,
        "archive_key_version_read_and_plan_seconds": fast_secs,
        "table_bytes": { "purger": size_pair.0, "baseline": size_pair.1 },
        "baseline": { "median_seconds": baseline_secs, "rows_per_second": baseline_rps },
        "purger": { "median_seconds": purger_secs, "rows_per_second": purger_rps, "batches": batches },
        "per_round": per_round,
        "ratio": ratio,
        "ratio_per_round_median": median(&ratios),
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
}
