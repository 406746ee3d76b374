//! Verification after the purge: every partition's checkpoint chain is
//! read back and must be contiguous; rows still marked in the table are
//! counted, apart from those child rows still reference (kept on purpose,
//! re-touched for a later run) and from the table's holds. Problems are
//! collected in words, not raised.

use cdc_common::storage::ArchiveStore;

use crate::{TablePlan, VerifyReport};

pub(crate) async fn verify(
    store: &ArchiveStore,
    plan: &TablePlan,
    archive_table: &str,
    blocking: &[cdc_purger::catalog::ReferencingKey],
) -> VerifyReport {
    let mut v = VerifyReport {
        chains_ok: true,
        referenced_by: blocking
            .iter()
            .map(|fk| format!("{}.{}", fk.child_schema, fk.child_table))
            .collect(),
        ..Default::default()
    };
    match cdc_checkpoint::partitions(store, archive_table).await {
        Ok(parts) => {
            v.partitions = parts.len();
            for p in parts {
                if let Err(e) = cdc_checkpoint::read_chain(store, archive_table, p).await {
                    v.chains_ok = false;
                    v.problems.push(format!("partition {p}: {e}"));
                }
            }
        }
        Err(e) => {
            v.chains_ok = false;
            v.problems.push(format!("cannot list partitions: {e}"));
        }
    }
    // Rows child rows still reference are kept on purpose (re-touched, a
    // later run purges them): counted apart, not as work left undone.
    let referenced = if blocking.is_empty() {
        "false".to_owned()
    } else {
        blocking
            .iter()
            .map(cdc_purger::catalog::ReferencingKey::exists)
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let sql = format!(
        "SELECT count(*) FILTER (WHERE NOT ({referenced})), count(*) FILTER (WHERE {referenced}) \
         FROM {} AS t WHERE t.{}",
        plan.marker.table.quoted(),
        cdc_common::ident::quote_ident(&plan.marker.archived_column)
    );
    match cdc_common::db::connect(&plan.database_url, "cdc-archiver-run-verify").await {
        Ok(client) => match client.query_one(&sql, &[]).await {
            Ok(row) => {
                v.rows_still_marked = row.get::<_, i64>(0).max(0) as u64;
                v.rows_referenced = row.get::<_, i64>(1).max(0) as u64;
                let (schema, table) = (
                    plan.marker.table.schema_or_public(),
                    &plan.marker.table.name,
                );
                match cdc_common::holds::exists(&client, schema, table).await {
                    Ok(true) => {
                        let sql = format!(
                            "SELECT count(*) FROM {}",
                            cdc_common::holds::qualified(schema, table)
                        );
                        match client.query_one(&sql, &[]).await {
                            Ok(r) => v.rows_held = r.get::<_, i64>(0).max(0) as u64,
                            Err(e) => v.problems.push(format!("counting holds: {e}")),
                        }
                    }
                    Ok(false) => {}
                    Err(e) => v.problems.push(format!("looking for holds: {e}")),
                }
            }
            Err(e) => v.problems.push(format!("counting rows still marked: {e}")),
        },
        Err(e) => v.problems.push(format!("cannot connect to verify: {e}")),
    }
    v
}
