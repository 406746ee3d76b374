//! Scheduled runs: cron expressions (5 fields as in crontab, or the
//! 6/7-field form with seconds), and a ticker that never has two runs
//! going: a slot that falls due while a run is still going is skipped and
//! counted, not queued and not started in parallel.

use std::str::FromStr;

use cdc_common::storage::ArchiveStore;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{run_once, RunConfig, RunReport, TablePlan};

/// Errors that stop a run before any table is tried.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cron expression does not parse.
    #[error("schedule {expr:?} is not a cron expression ({reason}); use 5 fields, e.g. \"0 3 * * *\" for 03:00 daily")]
    BadSchedule {
        /// The expression.
        expr: String,
        /// Why.
        reason: String,
    },
}

/// Parses a cron expression; 5 fields (minute first, as in crontab) or the
/// 6/7-field form with seconds.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, RunError> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    };
    cron::Schedule::from_str(&full).map_err(|e| RunError::BadSchedule {
        expr: expr.to_owned(),
        reason: e.to_string(),
    })
}

/// The slots of a cron schedule, taken one at a time.
///
/// [`Ticker::next`] waits for the first slot after *now*, so a caller that
/// runs its job between two calls can never have two jobs going: a slot
/// that falls due while the job is still running is skipped (and counted
/// in [`Ticker::skipped`]), not queued and not started in parallel.
pub struct Ticker {
    schedule: cron::Schedule,
    last: Option<DateTime<Utc>>,
    skipped: u64,
}

impl Ticker {
    /// Ticks on `schedule`.
    pub fn new(schedule: cron::Schedule) -> Self {
        Self {
            schedule,
            last: None,
            skipped: 0,
        }
    }

    /// Slots skipped so far because the previous job was still running.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Waits until the next slot after now and returns it; `None` when the
    /// schedule has no future slot or on shutdown.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        if let Some(last) = self.last {
            let missed = self
                .schedule
                .after(&last)
                .take_while(|t| *t <= now)
                .take(10_000)
                .count() as u64;
            if missed > 0 {
                self.skipped += missed;
                tracing::warn!(
                    missed,
                    "scheduled run(s) skipped: the previous run was still going at their time"
                );
            }
        }
        let next = self.schedule.after(&now).next()?;
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next, "next archival run scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return None,
        }
        self.last = Some(next);
        Some(next)
    }
}

/// Runs on `schedule` until shutdown, one run at a time: a run still going
/// when the next is due is not doubled; the missed slot is skipped and the
/// next one after the run ends is taken (see [`Ticker`]).
pub async fn run_scheduled(
    schedule: &cron::Schedule,
    plans: &[TablePlan],
    cfg: &RunConfig,
    store: &ArchiveStore,
    shutdown: &CancellationToken,
    mut on_report: impl FnMut(&RunReport),
) {
    let mut ticker = Ticker::new(schedule.clone());
    while ticker.next(shutdown).await.is_some() {
        let report = run_once(plans, cfg, store, shutdown).await;
        on_report(&report);
    }
    if !shutdown.is_cancelled() {
        tracing::warn!("the schedule has no future run; stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_is_accepted() {
        let s = parse_schedule("0 3 * * *").unwrap();
        let next = s.upcoming(Utc).next().unwrap();
        assert_eq!(next.format("%H:%M:%S").to_string(), "03:00:00");
        let e = parse_schedule("every day").unwrap_err().to_string();
        assert!(e.contains("0 3 * * *"), "{e}");
    }
}
