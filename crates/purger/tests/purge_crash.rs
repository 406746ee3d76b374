//! A purger killed mid-run (the process aborts right after a committed
//! batch, like `kill -9`: no cleanup, no purge record for the checkpoint in
//! progress), then rerun: it completes, deletes nothing twice, and the
//! counts reconcile with the archive.

mod common;

use cdc_common::storage::ArchiveStore;
use cdc_purger::{purge, CheckpointStatus, PurgeOptions, PurgerConfig};
use common::Fixture;
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "CDC_PURGE_TEST_CHILD_CONFIG";

/// Not a test of its own: the body of the child process that
/// `killed_mid_run_then_rerun_completes_and_reconciles` starts (it returns
/// at once when not started that way).
#[tokio::test]
#[ignore = "child process of killed_mid_run_then_rerun_completes_and_reconciles"]
async fn crashing_child() {
    let Ok(json) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg: PurgerConfig = serde_json::from_str(&json).unwrap();
    let store = ArchiveStore::open(&cfg.storage).unwrap();
    let after: u64 = std::env::var("CDC_PURGE_CRASH_AFTER_BATCHES")
        .unwrap()
        .parse()
        .unwrap();
    let opts = PurgeOptions {
        crash_after_batches: Some(after),
        ..PurgeOptions::default()
    };
    let s = purge(&cfg, &store, CancellationToken::new(), &opts)
        .await
        .unwrap();
    panic!(
        "the purger should have aborted after {after} batches, but finished: {}",
        s.render()
    );
}

#[tokio::test]
async fn killed_mid_run_then_rerun_completes_and_reconciles() {
    let f = Fixture::new(100).await;
    f.mark(1, 100).await;
    let snap = f.snapshot().await;
    f.archive_from(&snap, 0, 0, 1, 30, true).await;
    f.archive_from(&snap, 0, 30, 31, 60, true).await;
    f.archive_from(&snap, 0, 60, 61, 100, true).await;

    // Batches of 8: the first checkpoint takes 4 batches (30 rows), the 5th
    // batch is the first of the second checkpoint; the process dies right
    // after committing it, before that checkpoint's purge record.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crashing_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&f.cfg).unwrap())
        .env("CDC_PURGE_CRASH_AFTER_BATCHES", "5")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(6),
            "the child aborted (SIGABRT), it did not just fail: {status:?}"
        );
    }
    assert_eq!(
        f.snapshot().await.len(),
        100 - 38,
        "4 batches of the first checkpoint + 1 of the second"
    );
    let first = f.purge_record(0, 0).await.unwrap();
    assert_eq!(first.deleted, 30);
    assert!(f.purge_record(0, 30).await.is_none());

    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    let statuses: Vec<_> = s.checkpoints.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            CheckpointStatus::AlreadyPurged,
            CheckpointStatus::Purged,
            CheckpointStatus::Purged
        ]
    );
    assert_eq!(
        (
            s.checkpoints[1].counts.deleted,
            s.checkpoints[1].counts.already_gone
        ),
        (22, 8)
    );
    assert_eq!(
        (
            s.checkpoints[2].counts.deleted,
            s.checkpoints[2].counts.already_gone
        ),
        (40, 0)
    );
    assert!(f.snapshot().await.is_empty());

    // Reconcile from the purge records alone: every archived row was
    // deleted exactly once (deleted + already_gone == archived rows, and
    // the rows the crashed run deleted are exactly the already_gone ones).
    let mut deleted = 0;
    let mut gone = 0;
    for first_offset in [0, 30, 60] {
        let r = f.purge_record(0, first_offset).await.unwrap();
        assert_eq!((r.skipped_changed, r.skipped_unmarked), (0, 0));
        deleted += r.deleted;
        gone += r.already_gone;
    }
    assert_eq!((deleted, gone), (92, 8));
    assert_eq!(deleted + gone, 100);
    f.drop().await;
}

/// The crash hook on the pipelined retry path: batch 1 fails (a row lock
/// times out) while batch 2 is in flight, and is redone in smaller
/// batches. The hook (after 2 batches) must not fire while batch 2 is
/// still unaccounted for (its DELETE has run on the server by then): it
/// fires once batch 1 is redone completely and batch 2's result is in,
/// so the rows gone are exactly those of the batches the purger counted.
#[tokio::test]
async fn the_crash_hook_waits_for_batches_in_flight_on_the_retry_path() {
    let mut f = Fixture::archived(40).await;
    f.cfg.pipeline_depth = 2;
    f.lock_timeout_ms(100);
    // Row 3 (batch 1 = rows 1..=8) is locked for a second: batch 1 and its
    // first smaller retries fail; batch 2 (rows 9..=16) runs meanwhile.
    let mut holder = cdc_tests::pg().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {} WHERE id = 3 FOR UPDATE", f.q()),
        &[],
    )
    .await
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crashing_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&f.cfg).unwrap())
        .env("CDC_PURGE_CRASH_AFTER_BATCHES", "2")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    tx.commit().await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "the child aborted: {status:?}");
    }
    #[cfg(not(unix))]
    assert!(!status.success());
    assert_eq!(
        f.snapshot().await.keys().copied().collect::<Vec<_>>(),
        (17..=40).collect::<Vec<_>>(),
        "batch 1 redone completely and batch 2 accounted for before the abort, nothing after"
    );
    // The rerun finishes and reconciles: 16 already gone, 24 deleted.
    let s = f.purge(&PurgeOptions::default()).await.unwrap();
    assert!(s.ok(), "{}", s.render());
    assert_eq!(
        (s.totals.deleted, s.totals.already_gone),
        (24, 16),
        "{}",
        s.render()
    );
    f.drop().await;
}
