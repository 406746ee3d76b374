//! What a purge does with rows it kept for a reason a later run can act
//! on ([`retouch`], [`hold`]), and `cdc-archiver retouch`
//! ([`retouch_marked`]).
//!
//! What it guarantees: re-touching writes only rows that are still marked
//! (`SET archived = true … AND t.archived`: a new version with the same
//! values, which the changefeed archives again); holding records only rows
//! that are not marked, and with no holds table it warns and holds
//! nothing rather than failing. These statements run on a session of
//! their own that hides nothing from the changefeed
//! ([`SessionUse::Visible`]: no replication origin on PostgreSQL, no
//! `disable_changefeed_replication` on CockroachDB), so the changefeed
//! sees what they write, in chunks
//! of `batch_size` keys bound as `text[]` parameters and cast to the key
//! columns' types.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::error::db;
use crate::session::{open_session, SessionUse};
use crate::{catalog, PurgeError, PurgerConfig};

/// Re-touches the rows of `table` with these primary keys that are still
/// marked: `UPDATE … SET archived = true`, a new version with the same
/// values, which the changefeed sends to the archive again, so that a later
/// run tries them again (rows kept for a reason that may pass: child rows
/// that reference them). Returns the rows updated.
pub async fn retouch(
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let opened = open_session(cfg, SessionUse::Visible).await?;
    retouch_on(&opened.client, cfg, table, keys).await
}

async fn retouch_on(
    client: &Client,
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let sql = |batch: &str, join: &str| {
        format!(
            "UPDATE {} AS t SET {archived} = true FROM {batch} WHERE {join} AND t.{archived}",
            table.qualified()
        )
    };
    for_keys(client, cfg, table, keys, "re-touching rows", sql).await
}

/// Holds the rows of `table` with these primary keys that are not marked
/// (see [`cdc_common::holds`]): they were un-marked after they were
/// archived, so someone needs them in the table; the marker never marks a
/// held row again. Returns the holds added.
pub async fn hold(
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
) -> Result<u64, PurgeError> {
    let opened = open_session(cfg, SessionUse::Visible).await?;
    if !cdc_common::holds::prepare(&opened.client, &table.schema, &table.name, true)
        .await
        .map_err(|e| PurgeError::Config(e.to_string()))?
    {
        tracing::warn!(rows = keys.len(),
            "rows un-marked after they were archived cannot be held (no holds table): they stay un-marked, \
             but a later run may mark them again");
        return Ok(0);
    }
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let key_names: Vec<String> = table.keys.iter().map(|k| k.name.clone()).collect();
    let key = cdc_common::holds::key_expr_of("t", &key_names);
    let holds = cdc_common::holds::qualified(&table.schema, &table.name);
    for_keys(
        &opened.client,
        cfg,
        table,
        keys,
        "recording holds",
        |batch, join| {
            format!(
                "INSERT INTO {holds} (hold_key, hold_reason) \
             SELECT {key}, 'un-marked after it was archived (found by the purger)' \
             FROM {} AS t, {batch} WHERE {join} AND NOT t.{archived} \
             ON CONFLICT (hold_key) DO NOTHING",
                table.qualified()
            )
        },
    )
    .await
}

/// Runs the statement `sql(batch, join)` builds over `keys` in chunks of
/// `batch_size`, where `batch` is the keys as `unnest(…) AS d(k0, …)` and
/// `join` matches them to `t`'s primary key; on a session of its own,
/// without the purger's replication origin (the changefeed must see what
/// it writes). Returns the rows affected.
async fn for_keys(
    client: &Client,
    cfg: &PurgerConfig,
    table: &catalog::TableInfo,
    keys: &[Vec<String>],
    what: &'static str,
    sql: impl Fn(&str, &str) -> String,
) -> Result<u64, PurgeError> {
    let k = table.keys.len();
    let params: Vec<String> = (1..=k).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
    let join: Vec<String> = table
        .keys
        .iter()
        .zip(&names)
        .map(|(c, n)| {
            format!(
                "t.{} = d.{n}::{}",
                cdc_common::ident::quote_ident(&c.name),
                c.sql_type
            )
        })
        .collect();
    let batch = format!("unnest({}) AS d({})", params.join(", "), names.join(", "));
    let sql = sql(&batch, &join.join(" AND "));
    let mut total = 0;
    for chunk in keys.chunks(cfg.batching.batch_size.max(1) as usize) {
        let cols: Vec<Vec<String>> = (0..k)
            .map(|i| chunk.iter().map(|key| key[i].clone()).collect())
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        total += client.execute(&sql, &refs).await.map_err(db(what))?;
    }
    Ok(total)
}

/// `cdc-archiver retouch`: gives every row of the table that is still
/// marked a new version (`UPDATE … SET archived = true`), which the
/// changefeed sends to the archive, so that the next run archives each in
/// its current state and purges it. The way out for marked rows whose
/// archived state can no longer be matched: a column added since, a
/// replication slot that was lost, a recreated topic. Walks the table in
/// primary-key order, `batch_size` rows per statement. Returns the rows
/// re-touched.
pub async fn retouch_marked(cfg: &PurgerConfig) -> Result<u64, PurgeError> {
    // No replication origin: the changefeed must see these updates.
    let opened = open_session(cfg, SessionUse::Visible).await?;
    let client = &opened.client;
    let table = catalog::resolve(client, opened.dialect, &cfg.table, &cfg.archived_column).await?;
    let k = table.keys.len();
    let cols: Vec<String> = table
        .keys
        .iter()
        .map(|c| format!("t.{}", cdc_common::ident::quote_ident(&c.name)))
        .collect();
    let texts: Vec<String> = cols.iter().map(|c| format!("{c}::text")).collect();
    let cursor: Vec<String> = table
        .keys
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::text::{}", i + 2, c.sql_type))
        .collect();
    let archived = cdc_common::ident::quote_ident(&cfg.archived_column);
    let select = |after: bool| {
        format!(
            "SELECT {} FROM {} AS t WHERE t.{archived}{} ORDER BY {} LIMIT $1",
            texts.join(", "),
            table.qualified(),
            if after {
                format!(" AND ({}) > ({})", cols.join(", "), cursor.join(", "))
            } else {
                String::new()
            },
            cols.join(", ")
        )
    };
    let (first, next) = (select(false), select(true));
    let limit = i64::from(cfg.batching.batch_size.max(1));
    let mut last: Option<Vec<String>> = None;
    let mut total = 0;
    loop {
        let rows = match &last {
            None => client.query(&first, &[&limit]).await,
            Some(key) => {
                let mut p: Vec<&(dyn ToSql + Sync)> = vec![&limit];
                p.extend(key.iter().map(|v| v as &(dyn ToSql + Sync)));
                client.query(&next, &p).await
            }
        }
        .map_err(db("reading marked rows"))?;
        if rows.is_empty() {
            return Ok(total);
        }
        let keys: Vec<Vec<String>> = rows
            .iter()
            .map(|r| (0..k).map(|i| r.get::<_, String>(i)).collect())
            .collect();
        total += retouch_on(client, cfg, &table, &keys).await?;
        last = keys.last().cloned();
    }
}
