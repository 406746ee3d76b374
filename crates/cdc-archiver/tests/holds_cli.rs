//! `cdc-archiver holds` as an operator uses it: a hold added by key keeps
//! the row out of `mark`, `list` shows it, `release` lets it go.

use std::process::Command;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
        .args(args)
        .env("CDC_PG_URL", cdc_tests::pg_url())
        .output()
        .expect("run cdc-archiver");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_held_row_is_not_marked_until_released() {
    let pg = cdc_tests::pg().await;
    let t = cdc_tests::unique("holds_cli");
    let qt = cdc_common::ident::quote_ident(&t);
    pg.batch_execute(&format!(
        "CREATE TABLE {qt} (region text, id int, created date NOT NULL, archived bool NOT NULL DEFAULT false,
                            PRIMARY KEY (region, id));
         INSERT INTO {qt} (region, id, created) SELECT 'eu', g, current_date - 100 FROM generate_series(1, 10) g;"
    ))
    .await
    .unwrap();
    let table = format!("public.{t}");
    let (ok, out, err) = cli(&[
        "holds",
        "add",
        "--table",
        &table,
        "--key",
        r#"["eu", 5]"#,
        "--reason",
        "legal: case 42",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&["holds", "list", "--table", &table, "--json"]);
    assert!(ok);
    let holds: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(holds.len(), 1, "{out}");
    assert_eq!(holds[0]["key"], r#"["eu", 5]"#);
    assert_eq!(holds[0]["reason"], "legal: case 42");

    let mark = |_: ()| {
        cli(&[
            "mark",
            "--table",
            &table,
            "--cutoff-column",
            "created",
            "--older-than",
            "30 days",
        ])
    };
    let (ok, out, err) = mark(());
    assert!(ok, "{out}{err}");
    let marked: Vec<i32> = pg
        .query(
            &format!("SELECT id FROM {qt} WHERE archived ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(marked, vec![1, 2, 3, 4, 6, 7, 8, 9, 10], "row 5 is held");

    let (ok, out, err) = cli(&[
        "holds",
        "release",
        "--table",
        &table,
        "--key",
        r#"["eu", 5]"#,
    ]);
    assert!(ok && out.starts_with("1 hold(s) released"), "{out}{err}");
    let (ok, out, err) = mark(());
    assert!(ok, "{out}{err}");
    let left: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM {qt} WHERE NOT archived"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    pg.batch_execute(&format!(
        "DROP TABLE {qt}; DROP TABLE {}",
        cdc_common::holds::qualified("public", &t)
    ))
    .await
    .unwrap();
}
