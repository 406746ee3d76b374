//! The sessions `restore` writes on: the caller's client (retried while
//! its connection lives) or connections of its own to a URL, re-opened
//! after a drop; [`with_retry`] retries what [`Retryable`] allows through
//! the shared [`Retrier`].

use std::future::Future;
use std::sync::Arc;

use cdc_common::retry::{Retrier, RetryConfig, Retryable};
use tokio_postgres::Client;

use super::{RestoreError, APPLICATION_NAME};

/// A session handed in by the caller, or one this module opens (and
/// re-opens after the connection dropped).
pub(super) enum Session<'a> {
    Borrowed(&'a Client),
    Owned {
        url: &'a str,
        client: Option<Arc<Client>>,
    },
}

/// A usable client from a [`Session`].
#[derive(Clone)]
pub(super) enum ClientRef<'a> {
    Borrowed(&'a Client),
    Owned(Arc<Client>),
}

impl std::ops::Deref for ClientRef<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        match self {
            ClientRef::Borrowed(c) => c,
            ClientRef::Owned(c) => c,
        }
    }
}

impl<'a> Session<'a> {
    pub(super) async fn client(&mut self) -> Result<ClientRef<'a>, RestoreError> {
        match self {
            Session::Borrowed(c) => Ok(ClientRef::Borrowed(c)),
            Session::Owned { url, client } => {
                if let Some(c) = client.as_ref().filter(|c| !c.is_closed()) {
                    return Ok(ClientRef::Owned(Arc::clone(c)));
                }
                let c = Arc::new(cdc_common::db::connect(url, APPLICATION_NAME).await?);
                *client = Some(Arc::clone(&c));
                Ok(ClientRef::Owned(c))
            }
        }
    }

    /// Whether another attempt can succeed on this session: a caller's
    /// client whose connection is gone cannot be re-opened here.
    pub(super) fn can_retry(&self) -> bool {
        match self {
            Session::Borrowed(c) => !c.is_closed(),
            Session::Owned { .. } => true,
        }
    }
}

/// Runs `op` on the session, retrying what [`Retryable`] allows with the
/// shared jittered backoff.
pub(super) async fn with_retry<'a, T, F, Fut>(
    session: &mut Session<'a>,
    retry: &RetryConfig,
    retries: &mut u64,
    what: &str,
    mut op: F,
) -> Result<T, RestoreError>
where
    F: FnMut(ClientRef<'a>) -> Fut,
    Fut: Future<Output = Result<T, RestoreError>>,
{
    let mut retrier = Retrier::new(retry);
    loop {
        let result = match session.client().await {
            Ok(c) => op(c).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if session.can_retry() && e.is_retryable() => match retrier.next_delay(&e) {
                Some(d) => {
                    *retries += 1;
                    tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "restore: {what}: retrying");
                    Retrier::wait(d, None).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}
