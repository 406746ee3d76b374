//! `cargo bench -p cdc-marker`: the marker's rows/s against the naive
//! batched UPDATE, measured in the same run on identical copies of a table.
//!
//! Baseline (the issue's): a plain loop of
//! `UPDATE t SET archived = true WHERE id IN (SELECT id FROM t WHERE NOT
//! archived AND created_at < $1 ORDER BY id LIMIT 500)` until it updates
//! nothing. Each batch re-reads every row already marked, so this loop
//! slows down as it goes (the reason the marker exists); the ratio against
//! it flatters the marker. So a second baseline is measured too: the same
//! loop walking the key from the last batch's end (`id > $last`), the
//! strongest plain SQL loop we know, and the ratio against it is reported
//! beside the first. Candidate: `cdc_marker::mark` with the same batch size
//! (its eligible count, retries, SKIP LOCKED and progress reporting on).
//!
//! Needs the local stack's PostgreSQL (or CDC_PG_URL). Environment:
//! `BENCH_ROWS` (default 200000), `BENCH_ROUNDS` (default 3; the order of
//! baseline and marker alternates per round; medians are reported).
//! Prints a table and writes `target/bench/marker.json`. Target ratio: at
//! least 0.90.

use std::path::PathBuf;
use std::time::Instant;

use cdc_common::ident::{quote_ident, TableName};
use cdc_marker::{CutoffConfig, MarkerConfig};
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 500;
const CUTOFF: &str = "2020-01-03T00:00:00Z";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `name` with `rows` rows, one per second from 2020-01-01: with
/// 200k rows, the first 172800 (two days) are eligible.
async fn create(client: &tokio_postgres::Client, name: &str, rows: u64) {
    let t = quote_ident(name);
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, \
               archived boolean NOT NULL DEFAULT false, payload text NOT NULL);
             INSERT INTO {t} (id, created_at, payload)
               SELECT g, '2020-01-01T00:00:00Z'::timestamptz + g * interval '1 second', md5(g::text)
               FROM generate_series(1, {rows}) g;"
        ))
        .await
        .expect("create bench table");
    client
        .batch_execute(&format!("VACUUM ANALYZE {t}"))
        .await
        .expect("vacuum");
}

async fn baseline(client: &tokio_postgres::Client, name: &str) -> (u64, f64) {
    let t = quote_ident(name);
    let sql = format!(
        "UPDATE {t} SET archived = true WHERE id IN \
         (SELECT id FROM {t} WHERE NOT archived AND created_at < $1::text::timestamptz ORDER BY id LIMIT $2)"
    );
    let cutoff = CUTOFF.to_owned();
    let start = Instant::now();
    let mut total = 0;
    loop {
        let n = client
            .execute(&sql, &[&cutoff, &BATCH])
            .await
            .expect("baseline batch");
        if n == 0 {
            break;
        }
        total += n;
    }
    (total, start.elapsed().as_secs_f64())
}

async fn keyset_baseline(client: &tokio_postgres::Client, name: &str) -> (u64, f64) {
    let t = quote_ident(name);
    let sql = format!(
        "WITH b AS (SELECT id FROM {t} WHERE id > $3 AND NOT archived AND created_at < $1::text::timestamptz \
                    ORDER BY id LIMIT $2) \
         UPDATE {t} SET archived = true FROM b WHERE {t}.id = b.id RETURNING {t}.id"
    );
    let cutoff = CUTOFF.to_owned();
    let start = Instant::now();
    let (mut total, mut last) = (0u64, i64::MIN);
    loop {
        let rows = client
            .query(&sql, &[&cutoff, &BATCH, &last])
            .await
            .expect("keyset baseline batch");
        if rows.is_empty() {
            break;
        }
        total += rows.len() as u64;
        last = rows
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .max()
            .unwrap_or(last);
    }
    (total, start.elapsed().as_secs_f64())
}

async fn marker(url: &str, name: &str) -> (u64, f64) {
    let mut cfg = MarkerConfig::new(TableName {
        schema: Some("public".into()),
        name: name.to_owned(),
    });
    cfg.cutoff = Some(CutoffConfig {
        column: "created_at".into(),
        older_than: None,
        before: Some(CUTOFF.into()),
    });
    cfg.batching.batch_size = BATCH as u32;
    // The progress machinery of `cdc-archiver mark`: a bar (hidden without
    // a terminal) fed by every batch.
    let bar = std::sync::OnceLock::new();
    let progress = |p: &cdc_marker::Progress| match p {
        cdc_marker::Progress::Started { eligible } => {
            bar.get_or_init(|| cdc_common::progress::rows_bar(*eligible, "mark"));
        }
        cdc_marker::Progress::Batch { total, .. } => {
            if let Some(b) = bar.get() {
                b.set_position(*total);
            }
        }
        cdc_marker::Progress::Retrying { .. } => {}
    };
    let start = Instant::now();
    let s = cdc_marker::mark(url, &cfg, CancellationToken::new(), progress)
        .await
        .expect("marker run");
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    (s.rows_marked, start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not,
    // and must not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("marker benchmark: run with `cargo bench -p cdc-marker`");
        return;
    }
    let rows = env_num("BENCH_ROWS", 200_000);
    let rounds = env_num("BENCH_ROUNDS", 3).max(1);
    let url = cdc_tests::pg_url();
    let client = cdc_tests::pg().await;

    let mut base_rates = Vec::new();
    let mut keyset_rates = Vec::new();
    let mut mark_rates = Vec::new();
    let mut table = Vec::new();
    for round in 0..rounds {
        let a = cdc_tests::unique("bench_base");
        let k = cdc_tests::unique("bench_keyset");
        let b = cdc_tests::unique("bench_mark");
        for t in [&a, &k, &b] {
            create(&client, t, rows).await;
        }
        // Alternate the order, so that neither side always runs on a
        // warmer (or more loaded) server.
        let (base, keyset, mark) = if round % 2 == 0 {
            let base = baseline(&client, &a).await;
            let keyset = keyset_baseline(&client, &k).await;
            (base, keyset, marker(&url, &b).await)
        } else {
            let mark = marker(&url, &b).await;
            let keyset = keyset_baseline(&client, &k).await;
            (baseline(&client, &a).await, keyset, mark)
        };
        assert_eq!(
            (base.0, keyset.0),
            (mark.0, mark.0),
            "baselines and marker marked different row counts"
        );
        let (br, kr, mr) = (
            base.0 as f64 / base.1,
            keyset.0 as f64 / keyset.1,
            mark.0 as f64 / mark.1,
        );
        table.push((round, base.0, base.1, br, mark.1, mr, kr));
        base_rates.push(br);
        keyset_rates.push(kr);
        mark_rates.push(mr);
        client
            .batch_execute(&format!(
                "DROP TABLE {}; DROP TABLE {}; DROP TABLE {};",
                quote_ident(&a),
                quote_ident(&k),
                quote_ident(&b)
            ))
            .await
            .expect("drop bench tables");
    }

    println!(
        "{:>5} {:>8} {:>10} {:>12} {:>14} {:>10} {:>12} {:>7} {:>13}",
        "round",
        "rows",
        "base s",
        "base rows/s",
        "keyset rows/s",
        "mark s",
        "mark rows/s",
        "ratio",
        "ratio/keyset"
    );
    for (round, n, bs, br, ms, mr, kr) in &table {
        println!(
            "{round:>5} {n:>8} {bs:>10.2} {br:>12.0} {kr:>14.0} {ms:>10.2} {mr:>12.0} {:>7.2} {:>13.2}",
            mr / br,
            mr / kr
        );
    }
    let (bm, km, mm) = (median(base_rates), median(keyset_rates), median(mark_rates));
    let ratio = mm / bm;
    println!(
        "median: baseline {bm:.0} rows/s, keyset baseline {km:.0} rows/s, marker {mm:.0} rows/s; \
         ratio {ratio:.2} (target >= 0.90), ratio against the keyset loop {:.2}",
        mm / km
    );

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // crates/marker -> the workspace root.
            let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .ancestors()
                .nth(2)
                .unwrap_or(manifest)
                .join("target")
        })
        .join("bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let json = serde_json::json!({
        "benchmark": "marker",
        "table_rows": rows,
        "eligible_rows": table.first().map(|r| r.1),
        "batch_size": BATCH,
        "rounds": table.iter().map(|(round, n, bs, br, ms, mr, kr)| serde_json::json!({
            "round": round, "rows": n,
            "baseline_secs": bs, "baseline_rows_per_sec": br,
            "keyset_baseline_rows_per_sec": kr,
            "marker_secs": ms, "marker_rows_per_sec": mr,
            "ratio": mr / br, "ratio_vs_keyset": mr / kr,
        })).collect::<Vec<_>>(),
        "baseline_rows_per_sec_median": bm,
        "keyset_baseline_rows_per_sec_median": km,
        "ratio_vs_keyset": mm / km,
        "marker_rows_per_sec_median": mm,
        "ratio": ratio,
        "target_ratio": 0.90,
        "meets_target": ratio >= 0.90,
    });
    let path = dir.join("marker.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).expect("write marker.json");
    println!("wrote {}", path.display());
}
