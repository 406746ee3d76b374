//! `cdc-archiver checkpoints list|show|verify` on real archives written by
//! the sink from the real broker, on the local file system and on the S3
//! server: a sound archive has no finding; each kind of damage (a removed
//! segment, a flipped byte, a removed checkpoint leaving a gap, an orphan,
//! a checkpoint tampered with) is reported by name, and `verify` exits 7.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cdc_common::storage::{ArchiveStore, StorageConfig};
use cdc_sink::{SinkConfig, TopicConfig};
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

const BASE: i64 = 1_700_000_000_000_000_000;
const ROWS: i64 = 30;

/// Two partitions: 30 archived rows each, a resolved message after every
/// ten, then a delete of the first row (a delete file).
async fn produce(topic: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cdc_tests::kafka_brokers())
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for p in 0..2i32 {
        let mut records: Vec<(Option<String>, String)> = Vec::new();
        for i in 0..ROWS {
            records.push((
                Some(format!("[{p}, {i}]")),
                format!(
                    r#"{{"after": {{"archived": true, "id": {i}, "note": "n{i}", "p": {p}}}, "updated": "{}.0000000000"}}"#,
                    BASE + i
                ),
            ));
            if i % 10 == 9 {
                records.push((
                    None,
                    format!(r#"{{"resolved": "{}.0000000000"}}"#, BASE + i),
                ));
            }
        }
        records.push((
            Some(format!("[{p}, 0]")),
            format!(
                r#"{{"after": null, "updated": "{}.0000000000"}}"#,
                BASE + 40
            ),
        ));
        records.push((
            None,
            format!(r#"{{"resolved": "{}.0000000000"}}"#, BASE + 41),
        ));
        for (key, value) in &records {
            let mut rec: FutureRecord<'_, str, str> =
                FutureRecord::to(topic).partition(p).payload(value);
            if let Some(k) = key {
                rec = rec.key(k.as_str());
            }
            producer
                .send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    }
}

/// Runs the sink until both partitions' chains reach the topic's end.
async fn archive(topic: &str, storage: StorageConfig, store: &ArchiveStore) {
    let cfg = SinkConfig {
        brokers: cdc_tests::kafka_brokers(),
        group_id: cdc_tests::unique("ckgrp"),
        topics: vec![TopicConfig {
            name: topic.to_owned(),
            table: None,
            op_column: None,
        }],
        flush_rows: 10,
        flush_age: Duration::from_millis(200),
        resolved_checkpoint_interval: Duration::from_millis(200),
        storage,
        metrics_addr: None,
        ..SinkConfig::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { cdc_sink::run(&cfg, cancel).await }
    });
    // Per partition: 30 rows + 3 resolved + 1 delete + 1 resolved.
    let end = Some(ROWS + 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = true;
        for p in 0..2 {
            let chain = cdc_checkpoint::read_chain(store, topic, p).await.ok();
            done &= chain.and_then(|c| c.end()) == end;
        }
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not archived in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Runs `cdc-archiver -c <config> checkpoints <args>`: exit code and stdout.
fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
        .arg("-c")
        .arg(config)
        .arg("checkpoints")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("cdc-archiver runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("exit code");
    assert!(code == 0 || code == 7, "exit {code}: {stderr}");
    (code, stdout)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.lines().next().expect("one line")).expect("JSON")
}

fn kinds(report: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

async fn get(store: &ArchiveStore, path: &str) -> Vec<u8> {
    let r = store.store.get(&store.path(path)).await.unwrap();
    r.bytes().await.unwrap().to_vec()
}

async fn put(store: &ArchiveStore, path: &str, body: Vec<u8>) {
    store
        .store
        .put(&store.path(path), PutPayload::from(body))
        .await
        .unwrap();
}

/// What `verify` finds in the damaged archive, before and after gc.
const DAMAGE_FOUND: [&str; 6] = [
    "gap",
    "hash_mismatch",
    "manifest_mismatch",
    "segment_corrupt",
    "segment_mismatch",
    "segment_missing",
];

async fn sound_then_damaged(storage: StorageConfig, store: ArchiveStore) {
    let topic = cdc_tests::unique("ckpts");
    cdc_tests::create_topic(&topic, 2).await;
    produce(&topic).await;
    archive(&topic, storage.clone(), &store).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nurl = {:?}\n{}allow_http = true\n",
            storage.url,
            storage
                .s3_endpoint
                .as_ref()
                .map_or_else(String::new, |e| format!("s3_endpoint = {e:?}\n"))
        ),
    )
    .unwrap();
    let t = topic.as_str();

    // Sound: every row counted, nothing found, verify exits 0.
    let (code, out) = cli(&config, &["list", "--table", t, "--json", "--strict"]);
    let list = json(&out);
    assert_eq!((code, kinds(&list)), (0, vec![]), "{out}");
    assert_eq!(list["partition_count"], 2);
    assert_eq!(list["watermark"], format!("{}.0000000000", BASE + 41));
    for p in list["partitions"].as_array().unwrap() {
        assert_eq!(
            (p["rows"].as_u64(), p["deletes"].as_u64()),
            (Some(30), Some(1)),
            "{p}"
        );
        assert_eq!(p["last_offset"], ROWS + 4);
    }
    let (code, out) = cli(&config, &["verify", "--table", t, "--json"]);
    let v = json(&out);
    assert_eq!((code, kinds(&v)), (0, vec![]), "{out}");
    assert_eq!(
        (v["rows"].as_u64(), v["deletes"].as_u64()),
        (Some(60), Some(2))
    );
    // The sink links each checkpoint to its predecessor's digest.
    for part in 0..2 {
        let chain = cdc_checkpoint::read_chain(&store, t, part).await.unwrap();
        assert!(chain.checkpoints.len() >= 3, "{:?}", chain.checkpoints);
        assert_eq!(chain.checkpoints[0].previous_sha256, None);
        for w in chain.checkpoints.windows(2) {
            assert_eq!(w[1].previous_sha256, Some(w[0].digest()), "{}", w[1].path());
        }
    }
    // compact: a plan without --yes (nothing written), manifests with it,
    // then nothing left to do; the archive still verifies clean.
    let (_, plan) = cli(&config, &["compact", "--table", t]);
    assert_eq!(plan.matches("would write").count(), 2, "{plan}");
    assert!(cdc_checkpoint::newest_manifest(&store, t, 0)
        .await
        .unwrap()
        .is_none());
    let (code, wrote) = cli(&config, &["compact", "--table", t, "--yes"]);
    assert_eq!((code, wrote.matches("wrote").count()), (0, 2), "{wrote}");
    let m = cdc_checkpoint::newest_manifest(&store, t, 0)
        .await
        .unwrap()
        .expect("manifest");
    assert_eq!(m.last_offset, ROWS + 4);
    let (_, again) = cli(&config, &["compact", "--table", t, "--yes"]);
    assert_eq!(again.matches("up to date").count(), 2, "{again}");
    let (code, out) = cli(&config, &["verify", "--table", t, "--json"]);
    assert_eq!((code, kinds(&json(&out))), (0, vec![]), "{out}");
    // The text form names the table and says there is nothing to fix.
    let (_, text) = cli(&config, &["list"]);
    assert!(
        text.contains(&format!("table {t}")) && text.contains("findings: none"),
        "{text}"
    );

    // Damage, one kind each.
    let chain0 = cdc_checkpoint::read_chain(&store, t, 0).await.unwrap();
    let with_rows: Vec<_> = chain0
        .checkpoints
        .iter()
        .filter(|c| c.segment.is_some())
        .collect();
    assert!(with_rows.len() >= 3, "{:?}", chain0.checkpoints);
    // p0: a segment removed; another's byte flipped.
    let removed = with_rows[0].segment.clone().unwrap();
    store
        .store
        .delete(&store.path(&removed.path))
        .await
        .unwrap();
    let flipped = with_rows[1].segment.clone().unwrap();
    let mut bytes = get(&store, &flipped.path).await;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    put(&store, &flipped.path, bytes).await;
    // p0: a copy of a third segment under another name (an orphan).
    let copy = with_rows[2].segment.clone().unwrap();
    let orphan = copy.path.replace(".avro", "x.avro");
    let orphan = {
        let (dir, name) = orphan.rsplit_once('/').unwrap();
        let (range, _) = name.split_once('.').unwrap();
        format!("{dir}/{range}.0rphan000000.avro")
    };
    put(&store, &orphan, get(&store, &copy.path).await).await;
    // p0: a checkpoint object the manifest holds altered (readers take the
    // manifest's copy; verify reports the difference).
    let altered = chain0.checkpoints[1].path();
    let mut doc: serde_json::Value = serde_json::from_slice(&get(&store, &altered).await).unwrap();
    doc["created_at"] = "2000-01-01T00:00:00Z".into();
    put(&store, &altered, serde_json::to_vec_pretty(&doc).unwrap()).await;
    // p1: its manifest removed (the chain is read from its checkpoint
    // objects again), then a middle checkpoint removed (a gap); the last
    // one with rows tampered with (its row count no longer the segment's).
    let m1 = cdc_checkpoint::newest_manifest(&store, t, 1)
        .await
        .unwrap()
        .unwrap();
    store.store.delete(&store.path(&m1.path())).await.unwrap();
    let chain1 = cdc_checkpoint::read_chain(&store, t, 1).await.unwrap();
    let middle = &chain1.checkpoints[1];
    store
        .store
        .delete(&store.path(&middle.path()))
        .await
        .unwrap();
    let tampered = chain1
        .checkpoints
        .iter()
        .rev()
        .find(|c| c.segment.is_some())
        .unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&get(&store, &tampered.path()).await).unwrap();
    let rows = doc["segment"]["rows"].as_u64().unwrap();
    doc["segment"]["rows"] = (rows + 1).into();
    put(
        &store,
        &tampered.path(),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .await;

    // (The tampered checkpoint also breaks its successor's link:
    // `hash_mismatch`.)
    let (code, out) = cli(&config, &["verify", "--table", t, "--json"]);
    let v = json(&out);
    assert_eq!(code, 7, "{out}");
    assert_eq!(kinds(&v), DAMAGE_FOUND, "{out}");
    let text = out.to_string();
    assert!(
        text.contains(&removed.path) && text.contains(&flipped.path),
        "{text}"
    );
    let (code, out) = cli(&config, &["list", "--table", t, "--json"]);
    assert_eq!(code, 0, "list reports, it does not fail without --strict");
    let list = json(&out);
    let k = kinds(&list);
    assert!(
        k.contains(&"gap".to_owned()) && k.contains(&"orphan".to_owned()),
        "{out}"
    );
    assert!(out.contains("0rphan000000"), "{out}");
    let (code, _) = cli(&config, &["list", "--table", t, "--json", "--strict"]);
    assert_eq!(code, 7);

    // show: the flipped segment's actual checksum differs from the record.
    let (code, out) = cli(&config, &["show", &with_rows[1].path()]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["segment"]["matches"], false, "{out}");
    assert_eq!(shown["segment"]["size"], flipped.size);
    assert_ne!(shown["segment"]["sha256"], flipped.sha256.as_str());
    assert_eq!(
        shown["checkpoint"]["first_offset"],
        with_rows[1].first_offset
    );
    let (code, _) = cli(&config, &["show", &middle.path()]);
    assert_eq!(code, 7, "a removed checkpoint is not found");

    // gc: nothing younger than the default safety age (7 days).
    let (code, out) = cli(&config, &["gc", "--table", t]);
    assert_eq!(code, 0);
    assert!(out.contains("would remove 0 object(s)"), "{out}");
    // With a zero safety age: p0's checkpoint objects that its manifest
    // holds, except its first, its last and the altered one, and the covered orphan;
    // nothing of p1 (no manifest). The plan first, then --yes.
    let (_, plan) = cli(
        &config,
        &["gc", "--table", t, "--older-than", "0s", "--json"],
    );
    let plan = json(&plan);
    let planned: Vec<String> = plan["plan"]["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_owned())
        .collect();
    // Kept: the chain's first (an anchor), its last, and the altered one.
    let (first0, last0) = (
        chain0.checkpoints[0].path(),
        chain0.checkpoints.last().unwrap().path(),
    );
    let mut expected: Vec<String> = chain0
        .checkpoints
        .iter()
        .map(|c| c.path())
        .filter(|p| *p != first0 && *p != last0 && *p != altered)
        .chain([orphan.clone()])
        .collect();
    expected.sort();
    assert_eq!(planned, expected);
    assert!(
        plan["plan"]["kept"].to_string().contains(&altered),
        "{plan}"
    );
    assert!(plan["record"].is_null());
    let (code, out) = cli(
        &config,
        &["gc", "--table", t, "--older-than", "0s", "--yes"],
    );
    assert_eq!(code, 0, "{out}");
    let record = out
        .lines()
        .find_map(|l| l.strip_prefix("record: "))
        .unwrap_or_else(|| panic!("{out}"));
    let stored: cdc_checkpoint::GcRecord =
        serde_json::from_slice(&get(&store, record).await).unwrap();
    let removed: Vec<&str> = stored.removed.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(removed, expected);
    for path in &expected {
        assert!(store.store.head(&store.path(path)).await.is_err(), "{path}");
    }
    // The same findings as before gc, but not the removed orphan; p0's chain still reads
    // whole, and a removed checkpoint is shown from the manifest.
    let (_, out) = cli(&config, &["verify", "--table", t, "--json"]);
    assert_eq!(kinds(&json(&out)), DAMAGE_FOUND, "{out}");
    // (p1's segment of the removed checkpoint stays: p1's chain does not
    // verify, so nothing of it counts as covered.)
    let (_, out) = cli(&config, &["list", "--table", t, "--json"]);
    assert!(!out.contains("0rphan000000"), "{out}");
    assert_eq!(
        cdc_checkpoint::read_chain(&store, t, 0).await.unwrap(),
        chain0
    );
    let (code, out) = cli(&config, &["show", &with_rows[2].path()]);
    assert_eq!(code, 0, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["from_manifest"], m.path(), "{out}");
    assert_eq!(
        shown["checkpoint"],
        serde_json::to_value(with_rows[2]).unwrap()
    );
    assert_eq!(shown["segment"]["matches"], true, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_tools_on_the_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..StorageConfig::default()
    };
    let store = ArchiveStore::open(&storage).unwrap();
    sound_then_damaged(storage, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_tools_on_the_s3_server() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let prefix = cdc_tests::unique("ckpts-s3");
    let storage = StorageConfig {
        url: format!("s3://{}/{prefix}", cdc_tests::s3_bucket()),
        s3_endpoint: Some(cdc_tests::s3_endpoint()),
        allow_http: true,
    };
    let store = cdc_tests::s3_archive(&prefix);
    sound_then_damaged(storage, store).await;
}
