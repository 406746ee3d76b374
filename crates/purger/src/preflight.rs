//! The catalog checks that gate deletion: the foreign keys that reference
//! the table, and the table of holds.
//!
//! What it guarantees: a purge that would delete refuses to start when a
//! foreign key references the table `ON DELETE CASCADE`, `SET NULL` or
//! `SET DEFAULT` (deleting a parent would delete or change child rows that
//! were never archived) unless `allow_cascading_foreign_keys` is set (a dry
//! run reports them instead of refusing), and when a foreign key
//! references it from columns without a usable index (every delete would
//! scan the child table) unless
//! [`PurgeOptions::allow_unindexed_foreign_keys`], dry run or not.
//! `RESTRICT` / `NO ACTION` keys are only logged: the DELETE's guard keeps
//! the parents their child rows still reference. The holds table is made
//! ready (created if missing and the role may, except in a dry run, which
//! writes nothing), so that the DELETE's guard skips held rows.

use cdc_common::db::Dialect;
use tokio_postgres::Client;

use crate::{catalog, PurgeError, PurgeOptions, PurgerConfig};

/// Checks the foreign keys that reference `table` and makes its holds
/// table ready. Returns what the checks found (for the summary and the
/// DELETE's guard against referenced rows) and the holds table, if there
/// is one.
pub(crate) async fn check(
    client: &Client,
    dialect: Dialect,
    cfg: &PurgerConfig,
    opts: &PurgeOptions,
    table: &catalog::TableInfo,
) -> Result<(catalog::Preflight, Option<String>), PurgeError> {
    let qualified_name = catalog::qualified(&table.schema, &table.name);
    let preflight = catalog::preflight(client, &cfg.table).await?;
    // Cascading foreign keys first: they are about which rows are deleted
    // (rows never archived), not about speed.
    let cascading: Vec<String> = preflight
        .cascading()
        .map(catalog::ReferencingKey::describe)
        .collect();
    for fk in preflight.cascading() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            on_delete = %fk.on_delete, allowed = cfg.allow_cascading_foreign_keys,
            "foreign key ON DELETE {}: purging a parent row deletes or changes referencing rows that were never archived",
            fk.on_delete.to_uppercase());
    }
    // A dry run deletes nothing: it reports them (log, summary) instead.
    if !cascading.is_empty() && !cfg.allow_cascading_foreign_keys && !opts.dry_run {
        return Err(PurgeError::CascadingForeignKeys {
            table: qualified_name.clone(),
            constraints: cascading,
        });
    }
    let unindexed: Vec<String> = preflight
        .unindexed()
        .map(|fk| fk.create_index(dialect))
        .collect();
    for fk in preflight.unindexed() {
        tracing::warn!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            fix = %fk.create_index(dialect), "foreign key without a usable index: every delete scans the referencing table");
    }
    if !unindexed.is_empty() && !opts.allow_unindexed_foreign_keys {
        return Err(PurgeError::UnindexedForeignKeys {
            table: qualified_name.clone(),
            statements: unindexed,
        });
    }
    for fk in preflight.blocking() {
        tracing::info!(constraint = %fk.constraint, child = %format!("{}.{}", fk.child_schema, fk.child_table),
            on_delete = %fk.on_delete,
            "foreign key ON DELETE {}: rows its child rows still reference are kept (counted as referenced) and \
             purged by a later run once their children are gone", fk.on_delete.to_uppercase());
    }
    // Held rows stay (see `cdc_common::holds`): the holds table is made
    // ready here (a dry run, which writes nothing, uses it if it exists).
    let holds = cdc_common::holds::prepare(client, &table.schema, &table.name, !opts.dry_run)
        .await
        .map_err(|e| PurgeError::Config(e.to_string()))?
        .then(|| cdc_common::holds::qualified(&table.schema, &table.name));
    Ok((preflight, holds))
}
