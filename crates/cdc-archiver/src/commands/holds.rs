//! `cdc-archiver holds`: the rows that stay in their table whatever the
//! cutoff says (see `cdc_common::holds`). `list` shows them, `add` holds a
//! row (a legal hold), `release` lets a held row be archived and purged by
//! the next run again.

use std::process::ExitCode;

use anyhow::{bail, Context};
use cdc_common::holds;
use cdc_common::ident::{quote_ident, TableName};
use clap::{Args, Subcommand};
use tokio_postgres::types::ToSql;

use crate::global::GlobalArgs;

#[derive(Debug, Args)]
pub struct HoldsArgs {
    /// PostgreSQL / CockroachDB URL (overrides `database_url`).
    #[arg(long, env = "CDC_PG_URL", global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub action: HoldsAction,
}

#[derive(Debug, Subcommand)]
pub enum HoldsAction {
    /// List the holds of one table, or of every table.
    List {
        /// `schema.table` (default: every table with holds).
        #[arg(long)]
        table: Option<String>,
        /// One JSON object per hold instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hold a row: it is un-marked (if it was marked), the marker never
    /// marks it and the purger never deletes it, until released.
    Add {
        /// `schema.table`.
        #[arg(long)]
        table: String,
        /// The row's primary key as a JSON array, in key order.
        #[arg(long)]
        key: String,
        /// Why (kept with the hold).
        #[arg(long, default_value = "held by an operator")]
        reason: String,
        /// The table's archived flag column.
        #[arg(long, default_value = "archived")]
        archived_column: String,
    },
    /// Release holds: the rows become eligible again (the next run archives
    /// and purges them if they are past the cutoff).
    Release {
        /// `schema.table`.
        #[arg(long)]
        table: String,
        /// The row's primary key as a JSON array, in key order.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        key: Option<String>,
        /// Every hold of the table.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(global: &GlobalArgs, args: HoldsArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => cdc_common::config::load::<crate::config::Shared>(global.config.as_deref())?
            .database_url
            .unwrap_or_else(|| crate::config::DEFAULT_DATABASE_URL.to_owned()),
    };
    let client = cdc_common::db::connect(&url, "cdc-archiver-holds").await?;
    let parse = |t: &str| TableName::parse(t).with_context(|| format!("--table {t:?}"));
    match args.action {
        HoldsAction::List { table, json } => {
            let tables: Vec<(String, String)> = match table {
                Some(t) => {
                    let t = parse(&t)?;
                    vec![(t.schema_or_public().to_owned(), t.name.clone())]
                }
                None => holds::tables(&client)
                    .await?
                    .into_iter()
                    .filter_map(|n| n.split_once('.').map(|(s, t)| (s.to_owned(), t.to_owned())))
                    .collect(),
            };
            let mut count = 0;
            for (schema, name) in tables {
                if !holds::exists(&client, &schema, &name).await? {
                    continue;
                }
                for (key, reason, at, by) in holds::list(&client, &schema, &name).await? {
                    count += 1;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"table": format!("{schema}.{name}"), "key": key,
                                "reason": reason, "held_at": at, "held_by": by})
                        );
                    } else {
                        println!("{schema}.{name}\t{key}\t{at}\t{by}\t{reason}");
                    }
                }
            }
            if !json {
                eprintln!("{count} hold(s)");
            }
        }
        HoldsAction::Add {
            table,
            key,
            reason,
            archived_column,
        } => {
            let t = parse(&table)?;
            let schema = t.schema_or_public();
            let pk = holds::primary_key(&client, schema, &t.name).await?;
            let values = key_values(&key, pk.len())?;
            holds::ensure(&client, schema, &t.name).await?;
            let names: Vec<String> = pk.iter().map(|(n, _)| n.clone()).collect();
            let matches: Vec<String> = pk
                .iter()
                .enumerate()
                .map(|(i, (n, ty))| format!("t.{} = ${}::text::{ty}", quote_ident(n), i + 1))
                .collect();
            // One statement: the hold, computed from the row itself, and the
            // row un-marked (so a purge pending for it keeps it too).
            let sql = format!(
                "WITH r AS (SELECT {key} AS k FROM {tq} AS t WHERE {m}), \
                 h AS (INSERT INTO {hq} (hold_key, hold_reason) SELECT k, ${r} FROM r \
                       ON CONFLICT (hold_key) DO NOTHING RETURNING 1), \
                 u AS (UPDATE {tq} AS t SET {a} = false WHERE {m} AND t.{a} RETURNING 1) \
                 SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM h), (SELECT count(*) FROM u)",
                key = holds::key_expr_of("t", &names),
                tq = t.quoted(),
                m = matches.join(" AND "),
                hq = holds::qualified(schema, &t.name),
                r = pk.len() + 1,
                a = quote_ident(&archived_column),
            );
            let mut params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            params.push(&reason);
            let row = client
                .query_one(&sql, &params)
                .await
                .context("adding the hold")?;
            let (found, added, unmarked): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if found == 0 {
                bail!("{t} has no row with key {key}: nothing held");
            }
            println!(
                "{} on {t} key {key}{}",
                if added == 1 {
                    "hold added"
                } else {
                    "already held"
                },
                if unmarked == 1 {
                    " (un-marked: its pending purge keeps it)"
                } else {
                    ""
                }
            );
        }
        HoldsAction::Release { table, key, all } => {
            let t = parse(&table)?;
            let schema = t.schema_or_public();
            if !holds::exists(&client, schema, &t.name).await? {
                println!("0 hold(s) released: {t} has none");
                return Ok(ExitCode::SUCCESS);
            }
            let q = holds::qualified(schema, &t.name);
            let n = if all {
                client.execute(&format!("DELETE FROM {q}"), &[]).await?
            } else {
                let Some(key) = key else {
                    bail!("name the row with --key, or release every hold with --all")
                };
                let pk = holds::primary_key(&client, schema, &t.name).await?;
                let values = key_values(&key, pk.len())?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                client
                    .execute(
                        &format!(
                            "DELETE FROM {q} WHERE hold_key = {}",
                            holds::key_of_values(&pk)
                        ),
                        &params,
                    )
                    .await?
            };
            println!("{n} hold(s) released on {t}: the next run may archive and purge those rows");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exact text of each value of a JSON-array key (a number keeps its
/// digits: `1250.00` stays `1250.00`), checked against the primary key's
/// column count.
fn key_values(key: &str, columns: usize) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(columns > 0, "the table has no primary key");
    let values = cdc_retrieve::parse_key_arg(key)?;
    anyhow::ensure!(
        values.len() == columns,
        "--key {key:?} has {} value(s); the primary key has {columns} column(s)",
        values.len()
    );
    values
        .into_iter()
        .map(|v| match v {
            cdc_changefeed::Value::String(s) => Ok(s),
            cdc_changefeed::Value::Null => bail!("a primary-key value is never null"),
            other => Ok(other.to_json_text()),
        })
        .collect()
}
