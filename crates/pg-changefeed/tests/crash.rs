//! kill -9 in the middle of a stream, then restart: every change still
//! arrives at least once and, per key, in order. The changefeed runs as a
//! child process of the built binary (`cargo build -p cdc-archiver` first),
//! so the crash is a real SIGKILL, not a polite task abort.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{one_table, slot_then_rows, unconfirmed_changes, OneTable, Reader};

const LIMIT: Duration = Duration::from_secs(180);
const KEYS: i32 = 500;

fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/cdc-archiver");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cdc-archiver` before this test",
        bin.display()
    );
    bin
}

/// The feed process; killed if the test fails before it ends it, so that
/// no orphan keeps reading the slot `Cleanup` drops.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start(config: &std::path::Path, log: &std::path::Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(binary())
        .args(["--log-format", "text", "pg-changefeed", "--config"])
        .arg(config)
        .env("CDC_PG_URL", cdc_tests::pg_url())
        .env("CDC_KAFKA_BROKERS", cdc_tests::kafka_brokers())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc)
        .expect("start cdc-archiver pg-changefeed")
}

async fn round(pg: &tokio_postgres::Client, qt: &str) {
    pg.batch_execute(&format!("UPDATE {qt} SET v = v + 1"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_everything_in_key_order() {
    let OneTable {
        pg,
        t,
        qt,
        slot,
        cleanup: _cleanup,
    } = one_table("pgcf_crash", "k int PRIMARY KEY, v int NOT NULL", Some(3)).await;
    // The slot first, so the backlog written below is in it.
    slot_then_rows(&pg, &slot, &qt, KEYS).await;
    let backlog_rounds = 40;
    for _ in 0..backlog_rounds {
        round(&pg, &qt).await;
    }

    // Each round is one 500-row transaction, larger than one peek's
    // `max_changes_per_peek` and than `max_in_flight`: the feed must stream
    // it and advance only at its commit.
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("pg-changefeed.toml");
    let log = dir.path().join("feed.log");
    std::fs::write(
        &cfg_path,
        format!(
            "[pg_changefeed]\nslot_name = \"{slot}\"\nresolved_interval = \"300ms\"\npoll_interval = \"50ms\"\n\
             max_changes_per_peek = 50\nmax_in_flight = 8\ntables = [{{ name = \"{t}\" }}]\n"
        ),
    )
    .unwrap();

    let mut reader = Reader::new(&t, 3);
    let mut child = start(&cfg_path, &log);
    // Killed once it has published part of the backlog (Kafka's high
    // watermarks say so), long before all of it: what it sent after its
    // last advance of the slot is sent again after the restart.
    let offsets: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .create()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let published: i64 = (0..3)
            .map(|p| {
                rdkafka::consumer::Consumer::fetch_watermarks(
                    &offsets,
                    &t,
                    p,
                    Duration::from_secs(5),
                )
                .map_or(0, |(_, h)| h)
            })
            .sum();
        if published >= 3_000 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "nothing published");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.0.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.0.wait().unwrap();
    let total_changes = (KEYS * (backlog_rounds + 1)) as usize;
    let seen_at_kill = reader.topic.rows().len();
    // The killed client's backend may still hold the slot for a moment.
    while pg
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // How much of the backlog the killed process had not yet confirmed: the
    // crash must have happened mid-stream for this test to mean anything.
    let unconfirmed: i64 = unconfirmed_changes(&pg, &slot, &t).await;
    eprintln!(
        "killed after {seen_at_kill} deliveries, {unconfirmed} changes unconfirmed in the slot"
    );
    assert!(
        unconfirmed > 0,
        "the feed finished the backlog before the kill: make the backlog larger"
    );

    // Changes while the feed is down.
    let down_rounds = 5;
    for _ in 0..down_rounds {
        round(&pg, &qt).await;
    }
    let last_v = backlog_rounds + down_rounds;

    let mut child = start(&cfg_path, &log);
    let last = i64::from(last_v);
    reader
        .until(LIMIT, "every key's last version", |tp| {
            common::all_reached(tp, "v", KEYS as usize, last)
        })
        .await;
    // SIGTERM: a clean stop (flush, advance, exit 0).
    let st = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must stop the feed cleanly, got {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A change re-sent after the restart carries the `updated` of its first
    // delivery (its transaction's commit time), as CockroachDB's `updated`
    // never changes across re-deliveries.
    let mut first_updated: std::collections::HashMap<(String, Option<u64>), cdc_changefeed::Hlc> =
        std::collections::HashMap::new();
    let mut resent = 0;
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        if line.contains("clock") || line.contains("latest resolved") {
            eprintln!("feed: {line}");
        }
    }
    for r in reader.topic.rows() {
        let k = (r.meta.key_json.clone(), r.meta.pg_xid);
        match first_updated.get(&k) {
            Some(u) => {
                resent += 1;
                assert_eq!(
                    Some(*u),
                    r.meta.updated,
                    "re-sent {k:?} got another `updated`"
                );
            }
            None => {
                first_updated.insert(k, r.meta.updated.expect("updated"));
            }
        }
    }
    assert!(resent > 0, "the restart re-sent changes");
    eprintln!("{resent} re-sent change(s), each with its first delivery's `updated`");
    // And resolved timestamps stayed honest across the restart: in each
    // partition, no row event after a resolved T has `updated <= T`.
    for (p, events) in &reader.topic.events {
        let mut resolved = None;
        for (offset, _, e) in events {
            match e {
                cdc_changefeed::Event::Resolved(r) => resolved = Some(r.resolved),
                cdc_changefeed::Event::Row(r) => assert!(
                    resolved.is_none_or(|t| r.meta.updated.is_some_and(|u| u > t)),
                    "partition {p} offset {offset}: updated {:?} after resolved {resolved:?}",
                    r.meta.updated
                ),
            }
        }
    }

    // Per key, in offset order (one key, one partition): the first
    // appearance of each version must be 0, 1, 2, ... last_v. Re-sent
    // copies after the crash may repeat earlier versions, never skip one.
    let per_key = common::versions(&reader.topic, "v");
    common::assert_every_version_in_order(&per_key, KEYS as usize, last);
    let delivered: usize = per_key.values().map(Vec::len).sum();
    assert!(
        delivered >= total_changes + (KEYS * down_rounds) as usize,
        "at least once: {delivered} deliveries"
    );
    assert!(
        seen_at_kill < delivered,
        "the restart delivered more after the kill"
    );
    // The slot was advanced on the clean stop: nothing of ours is pending.
    let pending: i64 = unconfirmed_changes(&pg, &slot, &t).await;
    assert_eq!(
        pending, 0,
        "the clean stop advanced the slot past everything sent"
    );
}
