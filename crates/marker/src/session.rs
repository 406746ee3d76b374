//! The marker's one session to the database, reopened after a drop, and
//! the retry wrapper for the one-off statements around the walk: retryable
//! errors (40001, timeouts, dropped connections) are retried with backoff,
//! reconnecting when the session is gone; anything else is returned. Also
//! the preparation every run and dry run starts with: connect, resolve the
//! table, ready its holds table.

use std::sync::Arc;
use std::time::Duration;

use cdc_common::db::Dialect;
use cdc_common::retry::{Retrier, RetryConfig, Retryable};
use tokio_postgres::Client;

use crate::config::{Cutoff, MarkerConfig};
use crate::sql::TableSql;
use crate::{catalog, MarkError, APPLICATION_NAME};

/// Whether `e` means the session is gone (so the next attempt needs a new
/// one): the server ended it (57P0x), the connection broke (08xxx), or
/// the driver saw the socket close before the client noticed.
pub(crate) fn session_lost(e: &MarkError) -> bool {
    match e {
        MarkError::Connect(_) => true,
        MarkError::Db { source, .. } => match source.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57P")
            }
            None => true,
        },
        _ => false,
    }
}

/// One session to the database, reopened after a drop.
pub(crate) struct Session {
    url: String,
    statement_timeout: Duration,
    pub(crate) client: Option<Arc<Client>>,
}

impl Session {
    pub(crate) async fn client(&mut self) -> Result<Arc<Client>, MarkError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        self.client = None;
        let c = cdc_common::db::connect(&self.url, APPLICATION_NAME).await?;
        // An integer (milliseconds) from a Duration, not operator text.
        let ms = self
            .statement_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128);
        c.batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|source| MarkError::Db {
                context: "setting statement_timeout".into(),
                source,
            })?;
        let c = Arc::new(c);
        self.client = Some(c.clone());
        Ok(c)
    }
}

/// Retries `f` on retryable errors (backoff from `retry`), reconnecting as
/// needed. For the one-off statements around the walk.
pub(crate) async fn with_retry<T, F, Fut>(
    session: &mut Session,
    retry: &RetryConfig,
    context: &str,
    retries: &mut u64,
    mut f: F,
) -> Result<T, MarkError>
where
    F: FnMut(Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut retrier = Retrier::new(retry);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = match session.client().await {
            Ok(c) => f(c).await.map_err(|source| MarkError::Db {
                context: context.to_owned(),
                source,
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match retrier.next_delay(&e) {
                Some(d) => {
                    if session_lost(&e) {
                        session.client = None;
                    }
                    *retries += 1;
                    tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "{context}: retrying");
                    Retrier::wait(d, None).await;
                }
                None => {
                    return Err(MarkError::RetriesExhausted {
                        context: context.to_owned(),
                        attempts,
                        last: Box::new(e),
                    })
                }
            },
            Err(e) => return Err(e),
        }
    }
}

/// Connects, resolves the table and readies its holds table (created if
/// missing; a dry run, which writes nothing, only looks: without one there
/// is no hold to honour, and the statements it shows leave the clause out).
pub(crate) async fn prepare(
    url: &str,
    cfg: &MarkerConfig,
    dry_run: bool,
) -> Result<(Session, Dialect, TableSql, Cutoff), MarkError> {
    let cutoff = cfg.validate()?;
    let mut session = Session {
        url: url.to_owned(),
        statement_timeout: cfg.statement_timeout,
        client: None,
    };
    let mut retries = 0;
    let client = with_retry(
        &mut session,
        &cfg.retry,
        "connecting",
        &mut retries,
        |c| async move { Ok(c) },
    )
    .await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    let mut table = catalog::resolve(&client, cfg, &cutoff).await?;
    table.holds =
        cdc_common::holds::prepare(&client, &table.schema, &table.table, !dry_run).await?;
    Ok((session, dialect, table, cutoff))
}
