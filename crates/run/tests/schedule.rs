//! `--schedule`: runs are taken one at a time. A run that outlasts the
//! interval makes the scheduler skip the slots that fell due meanwhile; it
//! never starts a second run next to it, and never fires the missed slots
//! back to back afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_run::Ticker;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_interval_is_never_doubled() {
    // Every second; each "run" takes 2.3 s.
    let schedule = cdc_run::parse_schedule("* * * * * *").unwrap();
    let mut ticker = Ticker::new(schedule);
    let shutdown = CancellationToken::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut starts = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..3 {
        let slot = ticker.next(&shutdown).await.expect("a next slot");
        starts.push(Instant::now());
        slots.push(slot);
        // Spawned, like a real run on the runtime: the ticker is not asked
        // again before it finished.
        let job = {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            tokio::spawn(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2_300)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
        };
        job.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two runs at once");
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(2_300),
            "started {gap:?} after the previous one"
        );
        assert!(
            gap < Duration::from_millis(3_900),
            "the next slot after the run is taken: {gap:?}"
        );
    }
    for pair in slots.windows(2) {
        let seconds = (pair[1] - pair[0]).num_seconds();
        assert!((3..=4).contains(&seconds), "slots {pair:?}");
    }
    assert!(
        ticker.skipped() >= 4,
        "two runs of 2.3 s each skip at least 2 slots: {}",
        ticker.skipped()
    );
}

#[tokio::test]
async fn shutdown_stops_the_wait_for_the_next_slot() {
    let schedule = cdc_run::parse_schedule("0 3 * * *").unwrap();
    let mut ticker = Ticker::new(schedule);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    let started = Instant::now();
    assert_eq!(ticker.next(&shutdown).await, None);
    assert!(started.elapsed() < Duration::from_secs(5));
}
