//! `--dry-run`: shows what a run would do (the SQL, the plan, the eligible
//! count, and the index to create when the plan is a full scan). Writes
//! nothing: the holds table is only looked for, never created.

use cdc_common::db::Dialect;

use crate::session::prepare;
use crate::{sql, DryRun, MarkError, MarkerConfig};

/// Shows what a run would do: the SQL, the plan, the eligible count, and
/// the index to create when the plan is a full scan. Writes nothing.
pub async fn dry_run(url: &str, cfg: &MarkerConfig) -> Result<DryRun, MarkError> {
    let (mut session, dialect, table, cutoff) = prepare(url, cfg, true).await?;
    let client = session.client().await?;
    let value = cutoff.value().to_owned();
    let limit = i64::from(cfg.batching.batch_size);
    let db = |context: &'static str| {
        move |source| MarkError::Db {
            context: context.into(),
            source,
        }
    };
    // The candidate read decides whether each batch scans the table; the
    // PostgreSQL batch statement is shown whole too (its lock and update
    // steps look rows up by key).
    let (candidate, whole) = match dialect {
        Dialect::Postgres => (table.pg_window(false), Some(table.pg_batch(false))),
        // The write's bounds come from the read; explain the read.
        Dialect::Cockroach => (table.crdb_window(false, cfg.crdb_read_as_of), None),
    };
    let explain = |sql: String| {
        let client = client.clone();
        let value = value.clone();
        async move {
            let rows = client
                .query(&format!("EXPLAIN {sql}"), &[&value, &limit])
                .await
                .map_err(db("EXPLAIN"))?;
            Ok::<_, MarkError>(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
    };
    let candidate_plan = explain(candidate).await?;
    let full_scan = sql::plan_has_full_scan(dialect, &candidate_plan, &table.archived);
    let mut plan = format!("-- candidate read:\n{candidate_plan}");
    if let Some(whole) = whole {
        plan.push_str(&format!(
            "\n-- whole batch statement:\n{}",
            explain(whole).await?
        ));
    }
    let eligible: i64 = client
        .query_one(
            &table.count_eligible(dialect, cfg.crdb_read_as_of),
            &[&value],
        )
        .await
        .map_err(db("counting eligible rows"))?
        .get(0);
    Ok(DryRun {
        table: cfg.table.to_string(),
        dialect,
        statements: table.batch_statements(dialect, cfg.crdb_read_as_of),
        cutoff_value: value,
        plan: plan.trim_end().to_owned(),
        eligible: eligible.max(0) as u64,
        full_scan,
        suggested_index: full_scan.then(|| table.suggested_index(dialect)),
    })
}
