//! The purger's database session: opening it with every session setting
//! ([`open_session`]), and the connection with the batch statements
//! prepared on it (`Session`), which the executor replaces after a
//! dropped connection.
//!
//! What it guarantees: every session setting is applied in
//! [`open_session`], so a reopened session has the same ones as the first:
//! [`cdc_common::db::SESSION_SETTINGS`], and with
//! `disable_changefeed_replication` on, `SET disable_changefeed_replication
//! = true` on CockroachDB or a replication origin on PostgreSQL (a dry run
//! only checks the privileges for it). The replication origin each
//! session took, or why it could not take one, is kept for the summary.

use cdc_common::db::Dialect;
use tokio_postgres::{Client, Statement};

use crate::batch::Shape;
use crate::error::db;
use crate::sql::PurgeSql;
use crate::{origin, OriginSetup, PurgeError, PurgerConfig};

/// A purger session, as [`open_session`] opened it.
pub struct OpenedSession {
    /// The connection, with the purger's settings.
    pub client: Client,
    /// The dialect the server speaks.
    pub dialect: Dialect,
    /// PostgreSQL with `disable_changefeed_replication`: the replication
    /// origin the session took (see [`origin`]). `None` on CockroachDB and
    /// when the setting is off.
    pub origin: Option<OriginSetup>,
}

/// What a session is for, which decides whether the changefeed sees what
/// it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUse {
    /// The purge's DELETEs: hidden from the changefeed when
    /// `disable_changefeed_replication` is on.
    Purge,
    /// A dry run: writes nothing; it checks what the purge's session will
    /// need (CockroachDB: the setting; PostgreSQL: the privileges for the
    /// replication origin).
    DryRun,
    /// Writes the changefeed must see (re-touches, holds): never hidden.
    Visible,
}

/// How a session hides its writes from the changefeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hiding {
    Nothing,
    /// CockroachDB: `SET disable_changefeed_replication = true`.
    CockroachSetting,
    /// PostgreSQL: take a replication origin of the pool ([`origin`]).
    PgOrigin,
    /// PostgreSQL dry run: only check the privileges for one.
    PgOriginCheck,
}

fn hiding(dialect: Dialect, usage: SessionUse, disable_replication: bool) -> Hiding {
    match (disable_replication, usage, dialect) {
        (false, _, _) | (true, SessionUse::Visible, _) => Hiding::Nothing,
        // A dry run writes nothing, but takes the setting: it checks that
        // the server has it and the role may set it.
        (true, SessionUse::Purge | SessionUse::DryRun, Dialect::Cockroach) => {
            Hiding::CockroachSetting
        }
        (true, SessionUse::Purge, Dialect::Postgres) => Hiding::PgOrigin,
        (true, SessionUse::DryRun, Dialect::Postgres) => Hiding::PgOriginCheck,
    }
}

/// Opens a session with the purger's settings and says which dialect the
/// server speaks. Called again after a dropped connection, so every
/// session setting lives here: [`cdc_common::db::SESSION_SETTINGS`]
/// (pinned by `connect`), and, for the purge's own session when
/// `disable_changefeed_replication` is on, on CockroachDB
/// `SET disable_changefeed_replication = true`, on PostgreSQL a
/// replication origin of the configured pool ([`origin`]; a dry run,
/// which deletes nothing, only checks the privileges for it). A
/// [`SessionUse::Visible`] session hides nothing.
pub async fn open_session(
    cfg: &PurgerConfig,
    usage: SessionUse,
) -> Result<OpenedSession, PurgeError> {
    let client = cdc_common::db::connect(&cfg.database_url, "cdc-archiver-purge").await?;
    let dialect = cdc_common::db::detect_dialect(&client).await?;
    let origin = match hiding(dialect, usage, cfg.disable_changefeed_replication) {
        Hiding::Nothing => None,
        Hiding::CockroachSetting => {
            client
                .batch_execute("SET disable_changefeed_replication = true")
                .await
                .map_err(db("SET disable_changefeed_replication"))?;
            None
        }
        Hiding::PgOriginCheck => Some(origin::check(&client, cfg).await?),
        Hiding::PgOrigin => Some(origin::setup(&client, cfg).await?),
    };
    Ok(OpenedSession {
        client,
        dialect,
        origin,
    })
}

/// The replication origins of a run's sessions, for the summary.
#[derive(Debug, Default)]
pub(crate) struct OriginReport {
    pub(crate) taken: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

impl OriginReport {
    pub(crate) fn add(&mut self, o: Option<OriginSetup>) {
        match o {
            Some(OriginSetup::Taken(name)) => self.taken.push(name),
            Some(OriginSetup::Missing(why)) => self.warnings.push(why),
            Some(OriginSetup::Checked) | None => {}
        }
    }
}

/// A connection with the batch statements prepared on it. The client is
/// shared with the tasks of pipelined batches.
pub(crate) struct Session {
    pub(crate) client: std::sync::Arc<Client>,
    pub(crate) delete: Statement,
    /// CockroachDB only (see [`PurgeSql::delete_uniform`]).
    pub(crate) delete_uniform: Option<Statement>,
    pub(crate) probe: Statement,
}

impl Session {
    pub(crate) async fn open(
        cfg: &PurgerConfig,
        sql: &PurgeSql,
        dry_run: bool,
    ) -> Result<(Self, Option<OriginSetup>), PurgeError> {
        let usage = if dry_run {
            SessionUse::DryRun
        } else {
            SessionUse::Purge
        };
        let opened = open_session(cfg, usage).await?;
        Ok((Self::prepare(opened.client, sql).await?, opened.origin))
    }

    pub(crate) async fn prepare(client: Client, sql: &PurgeSql) -> Result<Self, PurgeError> {
        let prep = |what: &'static str| {
            move |source| PurgeError::Db {
                context: format!("preparing the {what} statement"),
                source,
            }
        };
        let delete = client.prepare(&sql.delete).await.map_err(prep("DELETE"))?;
        let delete_uniform = match &sql.delete_uniform {
            Some(text) => Some(client.prepare(text).await.map_err(prep("uniform DELETE"))?),
            None => None,
        };
        let probe = client.prepare(&sql.probe).await.map_err(prep("probe"))?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            delete,
            delete_uniform,
            probe,
        })
    }

    pub(crate) fn delete_statement(&self, shape: Shape) -> &Statement {
        match (shape, &self.delete_uniform) {
            (Shape::Uniform, Some(uniform)) => uniform,
            _ => &self.delete,
        }
    }

    /// Whether batches of one version may use the uniform statement.
    pub(crate) fn uniform(&self) -> bool {
        self.delete_uniform.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_purge_hides_its_writes_and_retouches_never_do() {
        use Dialect::{Cockroach, Postgres};
        use SessionUse::{DryRun, Purge, Visible};
        let cases = [
            (Cockroach, Purge, true, Hiding::CockroachSetting),
            (Cockroach, DryRun, true, Hiding::CockroachSetting),
            (Cockroach, Visible, true, Hiding::Nothing),
            (Postgres, Purge, true, Hiding::PgOrigin),
            (Postgres, DryRun, true, Hiding::PgOriginCheck),
            (Postgres, Visible, true, Hiding::Nothing),
            (Cockroach, Purge, false, Hiding::Nothing),
            (Postgres, Purge, false, Hiding::Nothing),
        ];
        for (dialect, usage, disable, want) in cases {
            assert_eq!(
                hiding(dialect, usage, disable),
                want,
                "{dialect:?} {usage:?} {disable}"
            );
        }
    }
}
