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
//! it; runs of checkpoints that name no file merged into one entry).
//! "+ gc": then `checkpoints gc --yes` (the checkpoint objects the
//! manifests hold removed).
//!
//! Measured (median of 5; of 3 on S3): the watermark (what `run` waits
//! on, and all it reads when it finds nothing new), reading every chain (a
//! sink's start-up, the purger), `retrieve --key` of one key, `retrieve
//! --from/--to` over the day of the busy period, `checkpoints verify
//! --since 1d` (chains whole; no file is that new here) and `checkpoints
//! list` (every checkpoint object, on purpose), and a purge that finds
//! nothing new (a real `cdc_purger::purge` against an empty table in the
//! stack's PostgreSQL; every busy checkpoint has the purge record a daily
//! run wrote, so it reads chains and records and deletes nothing; after
//! compaction the manifest folds the records). Each as time, ratio to the
//! archive with no history (target for issue 15: within 2x at 365 days,
//! except a full verify), and object-store requests of one call (LIST
//! pages of up to 1,000 names, GET, HEAD, PUT), counted by a wrapper
//! around the store. On the local file system always; on the stack's S3
//! server too when `CDC_S3_ENDPOINT` is set (there, only the archives
//! without history and at 365 days, which are uploaded first). Not part of
//! `cargo test`: `scripts/bench history`. Prints tables and writes
//! `target/bench/history.json`.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

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
        partitions: PARTITIONS,
        counts: Counts {
            events: (last - first + 1) as u64,
            resolved: (last - first + 1) as u64,
            ..Counts::default()
        },
        resolved: Some(Hlc::new(resolved, 0)),
        writer_id: "bench".into(),
        ..cdc_checkpoint::fixtures::checkpoint(TABLE, p, first, last)
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
            // The daily run that purged it.
            let record = cdc_checkpoint::PurgeRecord {
                segment: cp.segment.as_ref().map(|s| s.path.clone()),
                deleted: rows.len() as u64,
                ..cdc_checkpoint::fixtures::purge_record(TABLE, p, first, last)
            };
            write(
                dir,
                &record.path(),
                &serde_json::to_vec_pretty(&record).unwrap(),
            );
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

/// Requests one command sent to the store.
#[derive(Debug, Default)]
struct Requests {
    list: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
}

impl Requests {
    fn take(&self) -> [u64; 4] {
        [&self.list, &self.get, &self.head, &self.put].map(|c| c.swap(0, Ordering::SeqCst))
    }
}

/// Counts the requests sent through it (a LIST page per 1,000 names, as S3
/// bills them).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    requests: Arc<Requests>,
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl Counting {
    fn pages(
        &self,
        stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let requests = self.requests.clone();
        requests.list.fetch_add(1, Ordering::SeqCst);
        let mut n = 0u64;
        stream
            .inspect(move |_| {
                n += 1;
                if n > 1 && n % 1000 == 1 {
                    requests.list.fetch_add(1, Ordering::SeqCst);
                }
            })
            .boxed()
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.requests.put.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.requests.put.fetch_add(1, Ordering::SeqCst);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let counter = if options.head {
            &self.requests.head
        } else {
            &self.requests.get
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.requests
            .get
            .fetch_add(ranges.len() as u64, Ordering::SeqCst);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.pages(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.pages(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.requests.list.fetch_add(1, Ordering::SeqCst);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.requests.put.fetch_add(1, Ordering::SeqCst);
        self.inner.copy_opts(from, to, options).await
    }
}

const NAMES: [&str; 7] = [
    "watermark",
    "read chains",
    "retrieve --key",
    "retrieve --from/--to",
    "verify --since 1d",
    "checkpoints list",
    "purge (nothing new)",
];

/// The purger of the bench's table: an empty table in the stack's
/// PostgreSQL whose archive table is the bench's.
fn purger() -> cdc_purger::PurgerConfig {
    toml::from_str(&format!(
        r#"database_url = "{pg}"
           table = "public.history_bench"
           archive_table = "{TABLE}"
           [storage]
           url = "file:///unused""#,
        pg = cdc_tests::pg_url(),
    ))
    .unwrap()
}

struct Row {
    backend: &'static str,
    label: String,
    objects: usize,
    times: [Duration; 7],
    requests: [[u64; 4]; 7],
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    AsWritten,
    Compacted,
    Collected,
}

/// The seven commands against `store`, each timed (median of `rounds`) and
/// then counted once.
async fn commands(
    store: &ArchiveStore,
    requests: &Requests,
    rounds: usize,
) -> ([Duration; 7], [[u64; 4]; 7]) {
    let key = Query {
        table: TABLE.into(),
        selector: Selector::Key(vec![Value::Number("1".into()), Value::Number("777".into())]),
        all_versions: false,
        limit: None,
    };
    let day = Query {
        table: TABLE.into(),
        selector: Selector::Updated {
            from: Some(Hlc::new(T0, 0)),
            to: Some(Hlc::new(T0 + 8_640 * TEN_SECONDS, 0)),
        },
        all_versions: false,
        limit: None,
    };
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let mut times = [Duration::ZERO; 7];
    let mut counts = [[0; 4]; 7];
    for (i, slot) in times.iter_mut().enumerate() {
        let once = || async {
            match i {
                0 => {
                    cdc_checkpoint::watermark(store, TABLE)
                        .await
                        .unwrap()
                        .unwrap();
                }
                1 => {
                    for p in 0..PARTITIONS {
                        cdc_checkpoint::read_chain(store, TABLE, p).await.unwrap();
                    }
                }
                2 => {
                    let (found, _) = cdc_retrieve::retrieve(store, &key).await.unwrap();
                    assert_eq!(found.len(), 1);
                }
                3 => {
                    let (found, _) = cdc_retrieve::retrieve(store, &day).await.unwrap();
                    assert_eq!(
                        found.len() as i64,
                        PARTITIONS as i64 * BUSY_CHECKPOINTS * ROWS_PER_SEGMENT
                    );
                }
                4 => {
                    let r = cdc_retrieve::inspect::verify(store, TABLE, Some(since))
                        .await
                        .unwrap();
                    assert!(r.findings.is_empty(), "{:?}", r.findings);
                }
                6 => {
                    let s = cdc_purger::purge(
                        &purger(),
                        store,
                        tokio_util::sync::CancellationToken::new(),
                        &cdc_purger::PurgeOptions::default(),
                    )
                    .await
                    .unwrap();
                    let before = s.purged_before + s.checkpoints.len() as u64;
                    assert!(
                        s.ok() && s.totals.deleted == 0 && before == 30,
                        "{}",
                        s.render()
                    );
                }
                _ => {
                    cdc_retrieve::inspect::list(
                        store,
                        TABLE,
                        ListOptions {
                            unpurged_older_than: Duration::from_secs(3600 * 24 * 365 * 100),
                        },
                    )
                    .await
                    .unwrap();
                }
            }
        };
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            once().await;
            samples.push(t.elapsed());
        }
        samples.sort();
        *slot = samples[rounds / 2];
        requests.take();
        once().await;
        counts[i] = requests.take();
    }
    (times, counts)
}

/// Builds the archive in a local folder (`days` of idle history after the
/// busy period), compacts and collects it as `mode` says, and measures it
/// there and, with `s3`, uploaded to the S3 server.
async fn measure(label: &str, days: i64, format: Format, mode: Mode, s3: bool) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let next = busy(dir.path());
    idle(dir.path(), next, days, format);
    let local = ArchiveStore::open(&StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..StorageConfig::default()
    })
    .unwrap();
    if mode != Mode::AsWritten {
        // `checkpoints compact --yes`: a manifest per partition.
        for p in 0..PARTITIONS {
            let m = cdc_checkpoint::plan_manifest(&local, TABLE, p)
                .await
                .unwrap()
                .unwrap();
            cdc_checkpoint::write_manifest(&local, &m).await.unwrap();
        }
    }
    if mode == Mode::Collected {
        // `checkpoints gc --older-than 0s --yes`.
        let plan = cdc_checkpoint::plan_gc(&local, TABLE, Duration::ZERO)
            .await
            .unwrap();
        cdc_checkpoint::run_gc(&local, &plan, "bench")
            .await
            .unwrap();
    }
    let objects = objects(dir.path());
    let mut backends = vec![("local FS", local.store.clone(), 5)];
    if s3 {
        let remote = cdc_tests::s3_archive(&cdc_tests::unique("history"));
        upload(&local, &remote).await;
        backends.push(("S3 server", remote.store.clone(), 3));
    }
    let mut rows = Vec::new();
    for (backend, inner, rounds) in backends {
        let requests = Arc::new(Requests::default());
        let store = ArchiveStore {
            store: Arc::new(Counting {
                inner,
                requests: requests.clone(),
            }),
            url: backend.into(),
        };
        let (times, requests) = commands(&store, &requests, rounds).await;
        rows.push(Row {
            backend,
            label: label.to_owned(),
            objects,
            times,
            requests,
        });
    }
    rows
}

/// Copies every object of `from` to `to`, 64 at a time.
async fn upload(from: &ArchiveStore, to: &ArchiveStore) {
    let metas: Vec<ObjectMeta> = from.store.list(None).try_collect().await.unwrap();
    futures::stream::iter(metas)
        .map(|m| async move {
            let bytes = from
                .store
                .get_opts(&m.location, GetOptions::default())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            to.store
                .put_opts(&m.location, PutPayload::from(bytes), PutOptions::default())
                .await
                .unwrap();
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        cdc_tests::pg()
            .await
            .batch_execute(
                "DROP TABLE IF EXISTS history_bench;
                 CREATE TABLE history_bench (id bigint PRIMARY KEY, note text,
                   archived bool NOT NULL DEFAULT false)",
            )
            .await
            .unwrap();
    });
    let s3 = std::env::var_os("CDC_S3_ENDPOINT").is_some();
    let cases: [(&str, i64, Format, Mode, bool); 8] = [
        ("none", 0, Format::Idle, Mode::AsWritten, s3),
        (
            "1 day, before (a checkpoint per 10 s)",
            1,
            Format::Chain,
            Mode::AsWritten,
            false,
        ),
        (
            "1 day, before, compacted",
            1,
            Format::Chain,
            Mode::Compacted,
            false,
        ),
        (
            "1 day, now (idle progress)",
            1,
            Format::Idle,
            Mode::AsWritten,
            false,
        ),
        ("30 days, now", 30, Format::Idle, Mode::AsWritten, false),
        ("365 days, now", 365, Format::Idle, Mode::AsWritten, false),
        // Collected before compacted: the S3 stand-in (moto) lists by
        // filtering every key of the bucket, so the 26,000 objects the
        // compacted case uploads would slow every later listing.
        (
            "365 days, now, compacted + gc",
            365,
            Format::Idle,
            Mode::Collected,
            s3,
        ),
        (
            "365 days, now, compacted",
            365,
            Format::Idle,
            Mode::Compacted,
            s3,
        ),
    ];
    let rows: Vec<Row> = cases
        .iter()
        .flat_map(|(label, days, f, m, s3)| rt.block_on(measure(label, *days, *f, *m, *s3)))
        .collect();
    let mut json = Vec::new();
    for backend in ["local FS", "S3 server"] {
        let Some(base) = rows.iter().find(|r| r.backend == backend) else {
            println!("(S3 server: set CDC_S3_ENDPOINT, e.g. `eval \"$(scripts/stack env)\"`, to measure it too)");
            continue;
        };
        let base = base.times;
        println!("\narchive history, {backend} (3 partitions, busy period 60,000 rows), time (ratio to none)");
        println!(
            "{:<32} {:>8} {}",
            "idle history",
            "objects",
            NAMES.map(|n| format!("{n:>22}")).join("")
        );
        for r in rows.iter().filter(|r| r.backend == backend) {
            let cells: Vec<String> = r
                .times
                .iter()
                .zip(base)
                .map(|(t, b)| {
                    format!(
                        "{:>22}",
                        format!(
                            "{:.1} ms ({:.1}x)",
                            t.as_secs_f64() * 1e3,
                            t.as_secs_f64() / b.as_secs_f64()
                        )
                    )
                })
                .collect();
            println!("{:<32} {:>8} {}", r.label, r.objects, cells.join(""));
        }
        println!("requests of one call, LIST pages/GET/HEAD/PUT");
        for r in rows.iter().filter(|r| r.backend == backend) {
            let cells: Vec<String> = r
                .requests
                .iter()
                .map(|[l, g, h, p]| format!("{:>22}", format!("{l}/{g}/{h}/{p}")))
                .collect();
            println!("{:<32} {:>8} {}", r.label, r.objects, cells.join(""));
        }
        for r in rows.iter().filter(|r| r.backend == backend) {
            json.push(serde_json::json!({
                "backend": backend,
                "history": r.label,
                "objects": r.objects,
                "ms": NAMES.iter().zip(r.times).map(|(n, t)| (n.to_string(), serde_json::json!(t.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
                "ratio_to_none": NAMES.iter().zip(r.times.iter().zip(base)).map(|(n, (t, b))| (n.to_string(), serde_json::json!(t.as_secs_f64() / b.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
                "requests_list_get_head_put": NAMES.iter().zip(r.requests).map(|(n, q)| (n.to_string(), serde_json::json!(q))).collect::<serde_json::Map<_, _>>(),
            }));
        }
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
