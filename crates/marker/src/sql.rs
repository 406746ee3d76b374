//! The SQL text the marker sends, per dialect. Identifiers always pass
//! through `quote_ident`; values are always parameters:
//!
//! - `$1` the cutoff (text, cast on the server: `$1::text::interval` or
//!   `$1::text::timestamptz`), `$2` the batch limit (int8),
//! - then the keyset cursor (one parameter per key column), then (CockroachDB
//!   write only) the window's upper key.
//!
//! A held row ([`cdc_common::holds`]) is never eligible: the condition
//! every writing statement re-checks includes `NOT EXISTS` against the
//! table's holds table.
//!
//! The operator's extra predicate is the one piece of SQL text taken from
//! configuration as is (trusted, like a cron job's WHERE clause); it is
//! always wrapped in parentheses so it cannot change the precedence of the
//! conditions around it.

use cdc_common::db::Dialect;
use cdc_common::ident::quote_ident;

use crate::config::CrdbReadAsOf;

/// Everything the SQL depends on, resolved against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSql {
    /// Schema as found in the catalog.
    pub schema: String,
    /// Table as found in the catalog.
    pub table: String,
    /// Primary-key columns in key order.
    pub keys: Vec<String>,
    /// The boolean column flipped to true.
    pub archived: String,
    /// The cutoff column.
    pub cutoff_column: String,
    /// `true`: `older_than` (interval); `false`: `before` (instant).
    pub cutoff_is_interval: bool,
    /// Operator-trusted extra condition.
    pub predicate: Option<String>,
    /// The table's holds table exists: a held row is not eligible
    /// ([`cdc_common::holds`]).
    pub holds: bool,
}

impl TableSql {
    /// `"schema"."table"`: always qualified, so that a CTE name can never
    /// shadow the table.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    fn key_list(&self, prefix: &str) -> String {
        self.keys
            .iter()
            .map(|k| format!("{prefix}{}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_list_desc(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{} DESC", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `$first, $first+1, ...` for one key.
    fn params(&self, first: usize) -> String {
        (0..self.keys.len())
            .map(|i| format!("${}", first + i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The eligibility condition, re-checked at write time by every
    /// statement that writes.
    pub fn condition(&self) -> String {
        let cutoff = if self.cutoff_is_interval {
            "now() - $1::text::interval"
        } else {
            "$1::text::timestamptz"
        };
        let mut c = format!(
            "NOT {arch} AND {col} < {cutoff}",
            arch = quote_ident(&self.archived),
            col = quote_ident(&self.cutoff_column)
        );
        if let Some(p) = &self.predicate {
            c.push_str(&format!(" AND ({p})"));
        }
        if self.holds {
            c.push_str(" AND ");
            c.push_str(&cdc_common::holds::not_held(
                &self.schema,
                &self.table,
                &self.keys,
            ));
        }
        c
    }

    fn cursor(&self, with_cursor: bool) -> String {
        if with_cursor {
            format!("({}) > ({}) AND ", self.key_list(""), self.params(3))
        } else {
            String::new()
        }
    }

    /// Number of parameters after `$1` and `$2` taken by a cursor.
    pub fn key_len(&self) -> usize {
        self.keys.len()
    }

    /// PostgreSQL: one statement per batch. It reads the next `$2`
    /// eligible keys after the cursor without locking (`cdc_win`), locks
    /// those it can without waiting (`SKIP LOCKED`: a foreground writer
    /// holding a row is never waited on; `NO KEY UPDATE`, the lock the
    /// UPDATE takes anyway, so foreign-key checks of inserts into child
    /// tables are not blocked either), re-checks the condition and
    /// flips them, then returns every window key with whether it was
    /// marked. The caller keeps the keys that were not marked aside for a
    /// revisit (or, past a bound, does not advance beyond the first), so
    /// rows skipped because they were locked are not lost.
    pub fn pg_batch(&self, with_cursor: bool) -> String {
        let t = self.qualified();
        let keys = self.key_list("");
        let cond = self.condition();
        let first = quote_ident(&self.keys[0]);
        let join = self
            .keys
            .iter()
            .map(|k| format!("cdc_upd.{q} = cdc_win.{q}", q = quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "WITH cdc_win AS ({window}), cdc_lck AS (\
             SELECT {keys} FROM {t} WHERE ({keys}) IN (SELECT {keys} FROM cdc_win) AND {cond} \
             FOR NO KEY UPDATE SKIP LOCKED\
             ), cdc_upd AS (\
             UPDATE {t} SET {arch} = true WHERE ({keys}) IN (SELECT {keys} FROM cdc_lck) AND {cond} \
             RETURNING {keys}\
             ) \
             SELECT {win_keys}, cdc_upd.{first} IS NOT NULL AS cdc_marked \
             FROM cdc_win LEFT JOIN cdc_upd ON {join} ORDER BY {win_keys}",
            window = self.pg_window(with_cursor),
            arch = quote_ident(&self.archived),
            win_keys = self.key_list("cdc_win."),
        )
    }

    /// `($2, $3), ($4, $5), ...`: `n` keys after the cutoff parameter.
    fn key_tuples(&self, n: usize) -> String {
        let k = self.keys.len();
        (0..n)
            .map(|i| format!("({})", self.params(2 + i * k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// PostgreSQL: revisits keys that were locked during the walk. `$1` is
    /// the cutoff, then `n` keys. Returns the keys marked.
    pub fn pg_revisit(&self, n: usize) -> String {
        let t = self.qualified();
        let keys = self.key_list("");
        let cond = self.condition();
        let tuples = self.key_tuples(n);
        format!(
            "WITH cdc_lck AS (\
             SELECT {keys} FROM {t} WHERE ({keys}) IN ({tuples}) AND {cond} FOR NO KEY UPDATE SKIP LOCKED\
             ) \
             UPDATE {t} SET {arch} = true WHERE ({keys}) IN (SELECT {keys} FROM cdc_lck) AND {cond} \
             RETURNING {keys}",
            arch = quote_ident(&self.archived),
        )
    }

    /// PostgreSQL: how many of `n` keys are still eligible (a plain read).
    pub fn pg_still_eligible(&self, n: usize) -> String {
        let tuples = self.key_tuples(n);
        format!(
            "SELECT count(*) FROM {t} WHERE ({keys}) IN ({tuples}) AND {cond}",
            t = self.qualified(),
            keys = self.key_list(""),
            cond = self.condition()
        )
    }

    /// CockroachDB, step 1: read the next `$2` candidate keys in the past
    /// (no contention with writers, no retries).
    pub fn crdb_window(&self, with_cursor: bool, as_of: CrdbReadAsOf) -> String {
        let aost = match as_of {
            CrdbReadAsOf::FollowerRead => " AS OF SYSTEM TIME follower_read_timestamp()",
            CrdbReadAsOf::TenSecondsAgo => " AS OF SYSTEM TIME '-10s'",
            CrdbReadAsOf::Current => "",
        };
        self.window(with_cursor, aost)
    }

    /// PostgreSQL: the candidate read of [`Self::pg_batch`] on its own
    /// (what `--dry-run` checks for a full scan).
    pub fn pg_window(&self, with_cursor: bool) -> String {
        self.window(with_cursor, "")
    }

    /// The next `$2` eligible keys after the cursor, in key order.
    fn window(&self, with_cursor: bool, aost: &str) -> String {
        let keys = self.key_list("");
        format!(
            "SELECT {keys} FROM {t}{aost} WHERE {cursor}{cond} ORDER BY {keys} LIMIT $2",
            t = self.qualified(),
            cursor = self.cursor(with_cursor),
            cond = self.condition()
        )
    }

    /// CockroachDB, step 2: one implicit transaction that marks the
    /// eligible rows in `(cursor, window end]` (re-checking the condition
    /// now), at most `$2` of them. It returns ONE row (the last key marked
    /// and the count), so the result stays far below the server's 16KiB
    /// auto-retry buffer whatever the batch size: CockroachDB retries its
    /// own serialization conflicts without the client seeing them.
    pub fn crdb_write(&self, with_cursor: bool) -> String {
        let keys = self.key_list("");
        let upper = self.params(3 + if with_cursor { self.keys.len() } else { 0 });
        format!(
            "WITH cdc_upd AS (\
             UPDATE {t} SET {arch} = true WHERE {cursor}({keys}) <= ({upper}) AND {cond} \
             ORDER BY {keys} LIMIT $2 RETURNING {keys}\
             ) \
             SELECT {keys}, count(*) OVER () AS cdc_marked FROM cdc_upd ORDER BY {desc} LIMIT 1",
            t = self.qualified(),
            arch = quote_ident(&self.archived),
            cursor = self.cursor(with_cursor),
            cond = self.condition(),
            desc = self.key_list_desc(),
        )
    }

    /// Eligible rows now (CockroachDB: in the past, like the window read).
    pub fn count_eligible(&self, dialect: Dialect, as_of: CrdbReadAsOf) -> String {
        let aost = match (dialect, as_of) {
            (Dialect::Cockroach, CrdbReadAsOf::FollowerRead) => {
                " AS OF SYSTEM TIME follower_read_timestamp()"
            }
            (Dialect::Cockroach, CrdbReadAsOf::TenSecondsAgo) => " AS OF SYSTEM TIME '-10s'",
            _ => "",
        };
        format!(
            "SELECT count(*) FROM {}{aost} WHERE {}",
            self.qualified(),
            self.condition()
        )
    }

    /// The statements that run every batch, as shown by `--dry-run`.
    pub fn batch_statements(&self, dialect: Dialect, as_of: CrdbReadAsOf) -> Vec<String> {
        match dialect {
            Dialect::Postgres => vec![self.pg_batch(true)],
            Dialect::Cockroach => vec![self.crdb_window(true, as_of), self.crdb_write(true)],
        }
    }

    /// The index that turns the candidate read into a short range scan:
    /// the primary key in order, only over rows not yet archived, with the
    /// cutoff column stored so the filter needs no table lookup.
    pub fn suggested_index(&self, dialect: Dialect) -> String {
        let mut name = format!("{}_cdc_mark_idx", self.table);
        while name.len() > 63 {
            // PostgreSQL truncates longer names silently; do it visibly and
            // on a character boundary.
            let mut cut = 63;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
        }
        let include = if self.keys.contains(&self.cutoff_column) {
            String::new()
        } else {
            let word = if dialect == Dialect::Cockroach {
                "STORING"
            } else {
                "INCLUDE"
            };
            format!(" {word} ({})", quote_ident(&self.cutoff_column))
        };
        let concurrently = if dialect == Dialect::Postgres {
            " CONCURRENTLY"
        } else {
            ""
        };
        format!(
            "CREATE INDEX{concurrently} {} ON {} ({}){include} WHERE NOT {};",
            quote_ident(&name),
            self.qualified(),
            self.key_list(""),
            quote_ident(&self.archived)
        )
    }
}

/// Whether an EXPLAIN output shows a full scan of the marked table: on
/// PostgreSQL a sequential scan, or an index walk that filters the
/// archived flag row by row (`Filter: (NOT archived)`: no index serves
/// the "not yet archived" predicate, so finding the few rows left reads
/// the table; which of the two the planner picks depends on its
/// statistics); on CockroachDB a `FULL SCAN`. A scan of the holds table
/// does not count: the hold check reads it once per statement (`NOT
/// EXISTS (SELECT 1 FROM holds)`, see [`cdc_common::holds::not_held_in`]),
/// and it is small.
pub fn plan_has_full_scan(dialect: Dialect, plan: &str, archived: &str) -> bool {
    let holds = |line: &str| line.contains("holds:");
    match dialect {
        Dialect::Postgres => {
            let filters_flag = |l: &str| {
                l.trim_start().starts_with("Filter:")
                    && (l.contains(&format!("NOT {archived})"))
                        || l.contains(&format!("NOT \"{archived}\")"))
                        || l.contains(&format!("NOT {}", quote_ident(archived))))
            };
            let mut node = "";
            plan.lines().any(|l| {
                if l.contains("Scan") && !l.trim_start().starts_with("Filter:") {
                    node = l;
                }
                (l.contains("Seq Scan on ") && !holds(l)) || (filters_flag(l) && !holds(node))
            })
        }
        Dialect::Cockroach => {
            // `table: <name>@<index>` comes before its `spans:` line.
            let mut table = "";
            plan.lines().any(|l| {
                if l.trim_start().starts_with("table:") {
                    table = l;
                }
                l.contains("FULL SCAN") && !holds(table) && !holds(l)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(keys: &[&str]) -> TableSql {
        TableSql {
            schema: "public".into(),
            table: "orders".into(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            archived: "archived".into(),
            cutoff_column: "created_at".into(),
            cutoff_is_interval: true,
            predicate: None,
            holds: false,
        }
    }

    #[test]
    fn held_rows_are_never_eligible() {
        let s = TableSql {
            holds: true,
            ..sample(&["region", "id"])
        };
        let held = "(NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.orders\") \
             OR NOT EXISTS (SELECT 1 FROM \"cdc_archiver\".\"holds:public.orders\" AS cdc_hold \
                    WHERE cdc_hold.hold_key = jsonb_build_array(\"public\".\"orders\".\"region\", \
                    \"public\".\"orders\".\"id\")::text))";
        assert!(s.condition().ends_with(held), "{}", s.condition());
        // Every statement that writes re-checks it.
        for sql in [s.pg_batch(true), s.pg_revisit(2), s.crdb_write(true)] {
            assert!(sql.matches(held).count() >= 1, "{sql}");
        }
        assert!(!sample(&["id"]).condition().contains("cdc_hold"));
    }

    #[test]
    fn crdb_window_reads_in_the_past() {
        let s = sample(&["region", "id"]);
        assert_eq!(
            s.crdb_window(true, CrdbReadAsOf::FollowerRead),
            "SELECT \"region\", \"id\" FROM \"public\".\"orders\" AS OF SYSTEM TIME follower_read_timestamp() \
             WHERE (\"region\", \"id\") > ($3, $4) AND NOT \"archived\" AND \"created_at\" < now() - $1::text::interval \
             ORDER BY \"region\", \"id\" LIMIT $2"
        );
        assert_eq!(
            s.crdb_window(false, CrdbReadAsOf::TenSecondsAgo),
            "SELECT \"region\", \"id\" FROM \"public\".\"orders\" AS OF SYSTEM TIME '-10s' \
             WHERE NOT \"archived\" AND \"created_at\" < now() - $1::text::interval \
             ORDER BY \"region\", \"id\" LIMIT $2"
        );
        assert!(!s
            .crdb_window(false, CrdbReadAsOf::Current)
            .contains("AS OF"));
    }

    #[test]
    fn crdb_write_rechecks_and_returns_one_row() {
        let mut s = sample(&["region", "id"]);
        s.predicate = Some("tenant <> 4 OR x".into());
        s.cutoff_is_interval = false;
        assert_eq!(
            s.crdb_write(true),
            "WITH cdc_upd AS (UPDATE \"public\".\"orders\" SET \"archived\" = true \
             WHERE (\"region\", \"id\") > ($3, $4) AND (\"region\", \"id\") <= ($5, $6) \
             AND NOT \"archived\" AND \"created_at\" < $1::text::timestamptz AND (tenant <> 4 OR x) \
             ORDER BY \"region\", \"id\" LIMIT $2 RETURNING \"region\", \"id\") \
             SELECT \"region\", \"id\", count(*) OVER () AS cdc_marked FROM cdc_upd \
             ORDER BY \"region\" DESC, \"id\" DESC LIMIT 1"
        );
        let first = s.crdb_write(false);
        assert!(
            first.contains("WHERE (\"region\", \"id\") <= ($3, $4) AND NOT"),
            "{first}"
        );
        assert!(!first.contains("$5"), "{first}");
        // The write never reads in the past: it must see current data.
        assert!(!first.contains("AS OF SYSTEM TIME"));
    }

    #[test]
    fn hostile_identifiers_are_quoted() {
        let s = TableSql {
            schema: "My Schema".into(),
            table: "t\"; DROP TABLE x; --".into(),
            keys: vec!["Key \"1\"".into()],
            archived: "Is Archived".into(),
            cutoff_column: "when".into(),
            cutoff_is_interval: true,
            predicate: None,
            holds: true,
        };
        let sql = s.pg_batch(true);
        assert!(
            sql.contains("\"My Schema\".\"t\"\"; DROP TABLE x; --\""),
            "{sql}"
        );
        assert!(sql.contains("(\"Key \"\"1\"\"\") > ($3)"), "{sql}");
        assert!(sql.contains("SET \"Is Archived\" = true"), "{sql}");
        assert!(sql.contains("FOR NO KEY UPDATE SKIP LOCKED"), "{sql}");
        let idx = s.suggested_index(Dialect::Postgres);
        assert_eq!(
            idx,
            "CREATE INDEX CONCURRENTLY \"t\"\"; DROP TABLE x; --_cdc_mark_idx\" ON \"My Schema\".\"t\"\"; DROP TABLE x; --\" \
             (\"Key \"\"1\"\"\") INCLUDE (\"when\") WHERE NOT \"Is Archived\";"
        );
    }

    #[test]
    fn suggested_indexes_per_dialect() {
        let s = sample(&["id"]);
        assert_eq!(
            s.suggested_index(Dialect::Cockroach),
            "CREATE INDEX \"orders_cdc_mark_idx\" ON \"public\".\"orders\" (\"id\") STORING (\"created_at\") WHERE NOT \"archived\";"
        );
        let s = sample(&["created_at", "id"]);
        assert_eq!(
            s.suggested_index(Dialect::Postgres),
            "CREATE INDEX CONCURRENTLY \"orders_cdc_mark_idx\" ON \"public\".\"orders\" (\"created_at\", \"id\") WHERE NOT \"archived\";"
        );
        let mut long = sample(&["id"]);
        long.table = "é".repeat(40);
        let idx = long.suggested_index(Dialect::Postgres);
        let name = idx.split('"').nth(1).unwrap();
        assert!(name.len() <= 63, "{name}");
    }

    #[test]
    fn revisit_numbers_parameters_per_key() {
        let s = sample(&["a", "b"]);
        let sql = s.pg_revisit(2);
        assert!(sql.contains("IN (($2, $3), ($4, $5))"), "{sql}");
        assert!(!sql.contains("$6"));
        assert!(s.pg_still_eligible(1).contains("IN (($2, $3))"));
    }

    #[test]
    fn full_scan_detection() {
        assert!(plan_has_full_scan(
            Dialect::Postgres,
            "Limit\n  ->  Sort\n        ->  Seq Scan on orders",
            "archived"
        ));
        assert!(!plan_has_full_scan(
            Dialect::Postgres,
            "Index Scan using orders_pkey on orders",
            "archived"
        ));
        // The primary key walked, the flag filtered row by row: the planner's
        // other way of reading the whole table.
        assert!(plan_has_full_scan(
            Dialect::Postgres,
            "Limit\n  ->  Index Scan using orders_pkey on orders\n        Filter: ((NOT archived) AND (created_at < now()))",
            "archived"
        ));
        // The partial index serves the flag: only the cutoff is filtered.
        assert!(!plan_has_full_scan(
            Dialect::Postgres,
            "Limit\n  ->  Index Scan using orders_cdc_mark_idx on orders\n        Filter: (created_at < now())",
            "archived"
        ));
        assert!(plan_has_full_scan(
            Dialect::Cockroach,
            "• scan\n  table: orders@orders_pkey\n  spans: FULL SCAN",
            "archived"
        ));
        assert!(!plan_has_full_scan(
            Dialect::Cockroach,
            "spans: [/1 - /500]",
            "archived"
        ));
        // The hold check's once-per-statement read of the holds table.
        assert!(!plan_has_full_scan(
            Dialect::Postgres,
            "Limit\n  InitPlan 1\n    ->  Seq Scan on \"holds:public.orders\"\n  ->  Index Scan using orders_pkey on orders",
            "archived"
        ));
        assert!(plan_has_full_scan(
            Dialect::Postgres,
            "InitPlan 1\n  ->  Seq Scan on \"holds:public.orders\"\n->  Seq Scan on orders",
            "archived"
        ));
        assert!(!plan_has_full_scan(
            Dialect::Cockroach,
            "• scan\n  table: holds:public.orders@holds:public.orders_pkey\n  spans: FULL SCAN\n• scan\n  table: orders@orders_pkey\n  spans: [/1 - /500]",
            "archived"
        ));
        assert!(plan_has_full_scan(
            Dialect::Cockroach,
            "• scan\n  table: holds:public.orders@holds:public.orders_pkey\n  spans: FULL SCAN\n• scan\n  table: orders@orders_pkey\n  spans: FULL SCAN",
            "archived"
        ));
    }
}
