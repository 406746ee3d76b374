//! Smoke test: tokio-postgres against the stack's PostgreSQL: a logical
//! replication slot with wal2json sees an UPDATE made after it was created.

#[tokio::test]
async fn wal2json_slot_sees_an_update() {
    let client = cdc_tests::pg().await;
    let wal: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        wal, "logical",
        "the stack's PostgreSQL must run with wal_level=logical"
    );

    let table = cdc_tests::unique("smoke_pg");
    let slot = cdc_tests::unique("smoke_slot");
    let qt = cdc_common::ident::quote_ident(&table);
    client
        .batch_execute(&format!(
            "CREATE TABLE {qt} (id INT PRIMARY KEY, amount NUMERIC NOT NULL, archived BOOL NOT NULL DEFAULT false);
             INSERT INTO {qt} VALUES (1, 1250.00, false), (2, 99.95, false);"
        ))
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
            &[&slot],
        )
        .await
        .expect("create a wal2json slot (is postgresql-NN-wal2json installed?)");

    let result = async {
        client
            .execute(
                &format!("UPDATE {qt} SET archived = true WHERE id = $1"),
                &[&1i32],
            )
            .await?;
        let add_tables = format!("public.{table}");
        client
            .query(
                "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, \
                 'format-version', '2', 'include-xids', '1', 'add-tables', $2)",
                &[&slot, &add_tables],
            )
            .await
    }
    .await;
    // Slots pin WAL: always drop it, then check.
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    client
        .batch_execute(&format!("DROP TABLE {qt}"))
        .await
        .unwrap();

    let rows = result.expect("read changes");
    let changes: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    let updates: Vec<_> = changes.iter().filter(|c| c["action"] == "U").collect();
    assert_eq!(updates.len(), 1, "exactly one update in {changes:?}");
    let u = updates[0];
    assert_eq!(u["table"], table.as_str());
    let cols = u["columns"].as_array().unwrap();
    let find = |name: &str| cols.iter().find(|c| c["name"] == name).unwrap()["value"].clone();
    assert_eq!(find("id"), serde_json::json!(1));
    assert_eq!(find("archived"), serde_json::json!(true));
    assert!(
        changes.iter().any(|c| c["action"] == "B") && changes.iter().any(|c| c["action"] == "C")
    );
}
