//! What an archive's age costs each reader: archives with a busy period
//! (3 partitions x 10 checkpoints x 2,000 rows) followed by simulated idle
//! history, timed against the same archive with no history, built and
//! measured in one run on the local file system.
//!
//! Idle history comes in two formats: `chain` is what the sink wrote
//! before idle progress existed (a resolved-only checkpoint per partition
//! every 10 s: 8,640 a day) and `idle` is what it writes now (a
//! checkpoint per `idle_checkpoint_interval`, 1 h: 24 a day, plus one idle
//! progress object per partition). Bulk history is written as the same
//! JSON the sink writes, with plain file writes (fast to build).
//!
//! "compacted": after `checkpoints compact --yes` (a manifest per
//! partition, which readers fetch first, then only the checkpoints after
//! it).
//!
//! Measured (median of 5): the watermark (`run`'s wait), reading every
//! chain (a sink's start-up), `retrieve --key` of one key, and `checkpoints
//! list` (which reads every checkpoint object on purpose). Reported as
//! time and as a ratio to the archive with no history (target for issue
//! 15: every ratio within 2x at 365 days). Not part of
//! `cargo test`: `scripts/bench history`. Prints a table and writes
//! `target/bench/history.json`.

use std::path::Path;
use std::time::{Duration, Instant};

use cdc_changefeed::{Hlc, Op, Value};
use cdc_checkpoint::key_filter::KeyFilter;
use cdc_checkpoint::{layout, Checkpoint, Counts, IdleProgress, SegmentRef};
use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_retrieve::inspect::ListOptions;
use cdc_retrieve::{Query, Selector};
use cdc_segment::{encode_segment, ArchivedRow, RecordMeta, SegmentMeta};

const TABLE: &str = "t";
const PARTITIONS: i32 = 3;
const BUSY_CHECKPOINTS: i64 = 10;
const ROWS_PER_SEGMENT: i64 = 2_000;
const T0: i64 = 1_760_000_000_000_000_000;
const TEN_SECONDS: i64 = 10_000_000_000;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Chain,
    Idle,
}

fn checkpoint(p: i32, first: i64, last: i64, resolved: i64) -> Checkpoint {
    Checkpoint {
        format_version: cdc_checkpoint::FORMAT_VERSION,
        table: TABLE.into(),
        topic: TABLE.into(),
        partition: p,
        partitions: PARTITIONS,
        first_offset: first,
        last_offset: last,
        segment: None,
        deletes: None,
        counts: Counts {
            events: (last - first + 1) as u64,
            resolved: (last - first + 1) as u64,
            ..Counts::default()
        },
        min_updated: None,
        max_updated: None,
        resolved: Some(Hlc::new(resolved, 0)),
        writer_id: "bench".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        key_filter: None,
        open_tail_xid: None,
        last_message: None,
        merged: None,
    }
}

fn write(dir: &Path, relative: &str, body: &[u8]) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// The busy period: per partition, checkpoints of 2,000 rows each, offsets
/// `0..BUSY_CHECKPOINTS * ROWS_PER_SEGMENT`. Returns the next offset.
fn busy(dir: &Path) -> i64 {
    for p in 0..PARTITIONS {
        for c in 0..BUSY_CHECKPOINTS {
            let first = c * ROWS_PER_SEGMENT;
            let last = first + ROWS_PER_SEGMENT - 1;
            let rows: Vec<ArchivedRow> = (first..=last)
                .map(|o| ArchivedRow {
                    op: Op::Update,
                    meta: RecordMeta {
                        topic: TABLE.into(),
                        partition: p,
                        offset: o,
                        key_json: format!("[{p}, {o}]"),
                        updated: Some(Hlc::new(T0 + o, 0)),
                        mvcc_timestamp: None,
                        pg_xid: None,
                    },
                    columns: vec![
                        ("id".into(), Value::Number(o.to_string())),
                        (
                            "note".into(),
                            Value::String(format!("row {o} of partition {p}")),
                        ),
                    ],
                })
                .collect();
            let meta = SegmentMeta {
                table: TABLE.into(),
                topic: TABLE.into(),
                partition: p,
                first_offset: first,
                last_offset: last,
            };
            let body = encode_segment(&meta, &rows).unwrap();
            let path = layout::segment_path(TABLE, p, first, last, "bench0000000");
            write(dir, &path, &body);
            let mut cp = checkpoint(p, first, last, T0 + last);
            cp.counts = Counts {
                events: rows.len() as u64,
                rows_archived: rows.len() as u64,
                ..Counts::default()
            };
            cp.min_updated = Some(Hlc::new(T0 + first, 0));
            cp.max_updated = Some(Hlc::new(T0 + last, 0));
            cp.key_filter = Some(
                KeyFilter::from_key_json(rows.iter().map(|r| r.meta.key_json.as_str())).encode(),
            );
            cp.segment = Some(SegmentRef::describe(
                path,
                &body,
                rows.len() as u64,
                vec!["id".into(), "note".into()],
            ));
            write(dir, &cp.path(), &cp.to_json());
        }
    }
    BUSY_CHECKPOINTS * ROWS_PER_SEGMENT
}

/// `days` of idle history after `next` (one resolved message per 10 s).
fn idle(dir: &Path, next: i64, days: i64, format: Format) {
    let ticks = days * 8_640;
    let per_checkpoint = match format {
        Format::Chain => 1,
        Format::Idle => 360,
    };
    let t_busy = T0 + next;
    for p in 0..PARTITIONS {
        let mut first = next;
        let mut tick = 0;
        while tick + per_checkpoint <= ticks {
            tick += per_checkpoint;
            let last = next + tick - 1;
            let cp = checkpoint(p, first, last, t_busy + tick * TEN_SECONDS);
            write(dir, &cp.path(), &cp.to_json());
            first = last + 1;
        }
        if format == Format::Idle && ticks > 0 {
            let progress = IdleProgress {
                format_version: cdc_checkpoint::FORMAT_VERSION,
                table: TABLE.into(),
                topic: TABLE.into(),
                partition: p,
                partitions: PARTITIONS,
                base_last_offset: first - 1,
                last_offset: next + ticks,
                resolved: Hlc::new(t_busy + (ticks + 1) * TEN_SECONDS, 0),
                resolved_messages: 1,
                writer_id: "bench".into(),
                written_at: "2026-01-01T00:00:00Z".into(),
            };
            write(
                dir,
                &layout::progress_path(TABLE, p),
                &serde_json::to_vec_pretty(&progress).unwrap(),
            );
        }
    }
}

fn objects(dir: &Path) -> usize {
    fn walk(d: &Path) -> usize {
        std::fs::read_dir(d)
            .map(|it| {
                it.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

async fn median<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    times[2]
}

struct Row {
    label: String,
    objects: usize,
    times: [Duration; 4],
}

async fn measure(label: &str, days: i64, format: Format, compact: bool) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let next = busy(dir.path());
    idle(dir.path(), next, days, format);
    let store = ArchiveStore::open(&StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..StorageConfig::default()
    })
    .unwrap();
    let store = &store;
    if compact {
        // `checkpoints compact --yes`: a manifest per partition.
        for p in 0..PARTITIONS {
            let m = cdc_checkpoint::plan_manifest(store, TABLE, p)
                .await
                .unwrap()
                .unwrap();
            cdc_checkpoint::write_manifest(store, &m).await.unwrap();
        }
    }
    let watermark = median(|| async {
        cdc_checkpoint::watermark(store, TABLE)
            .await
            .unwrap()
            .unwrap();
    })
    .await;
    let chains = median(|| async {
        for p in 0..PARTITIONS {
            cdc_checkpoint::read_chain(store, TABLE, p).await.unwrap();
        }
    })
    .await;
    let query = Query {
        table: TABLE.into(),
        selector: Selector::Key(vec![Value::Number("1".into()), Value::Number("777".into())]),
        all_versions: false,
        limit: None,
    };
    let retrieve = median(|| async {
        let (found, _) = cdc_retrieve::retrieve(store, &query).await.unwrap();
        assert_eq!(found.len(), 1);
    })
    .await;
    let list = median(|| async {
        cdc_retrieve::inspect::list(
            store,
            TABLE,
            ListOptions {
                unpurged_older_than: Duration::from_secs(3600 * 24 * 365 * 100),
            },
        )
        .await
        .unwrap();
    })
    .await;
    Row {
        label: label.to_owned(),
        objects: objects(dir.path()),
        times: [watermark, chains, retrieve, list],
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases: [(&str, i64, Format, bool); 7] = [
        ("none", 0, Format::Idle, false),
        (
            "1 day, before (a checkpoint per 10 s)",
            1,
            Format::Chain,
            false,
        ),
        ("1 day, before, compacted", 1, Format::Chain, true),
        ("1 day, now (idle progress)", 1, Format::Idle, false),
        ("30 days, now", 30, Format::Idle, false),
        ("365 days, now", 365, Format::Idle, false),
        ("365 days, now, compacted", 365, Format::Idle, true),
    ];
    let rows: Vec<Row> = cases
        .iter()
        .map(|(label, days, f, c)| rt.block_on(measure(label, *days, *f, *c)))
        .collect();
    let base = rows[0].times;
    let names = [
        "watermark",
        "read chains",
        "retrieve --key",
        "checkpoints list",
    ];
    println!(
        "archive history (3 partitions, busy period 60,000 rows), local file system, median of 5"
    );
    println!(
        "{:<40} {:>9}  {}",
        "idle history",
        "objects",
        names.map(|n| format!("{n:>26}")).join("")
    );
    let mut json = Vec::new();
    for r in &rows {
        let cells: Vec<String> = r
            .times
            .iter()
            .zip(base)
            .map(|(t, b)| {
                format!(
                    "{:>26}",
                    format!(
                        "{:.1} ms ({:.1}x)",
                        t.as_secs_f64() * 1e3,
                        t.as_secs_f64() / b.as_secs_f64()
                    )
                )
            })
            .collect();
        println!("{:<40} {:>9}  {}", r.label, r.objects, cells.join(""));
        json.push(serde_json::json!({
            "history": r.label,
            "objects": r.objects,
            "ms": names.iter().zip(r.times).map(|(n, t)| (n.to_string(), serde_json::json!(t.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
            "ratio_to_none": names.iter().zip(r.times.iter().zip(base)).map(|(n, (t, b))| (n.to_string(), serde_json::json!(t.as_secs_f64() / b.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let out = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("history.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}
