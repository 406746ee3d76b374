//! `cdc-archiver changefeed decode` run as a process on the fixtures and on
//! a `kcat -C -J`-shaped dump.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn run_decode(input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdc-archiver"))
        .args(["changefeed", "decode"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cdc-archiver");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cockroachdb-changefeed");
    std::fs::read(dir.join(name)).unwrap()
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn decodes_every_fixture_line() {
    for (name, lines) in [
        ("01-wrapped-updated-diff.ndjson", 16),
        ("02-wrapped-default-delete.ndjson", 4),
        ("03-resolved.ndjson", 6),
        ("04-key-in-value-mvcc-timestamp.ndjson", 4),
        ("05-cdc-query-bare.ndjson", 10),
        ("06-duplicate-redelivery.ndjson", 12),
    ] {
        let out = run_decode(&fixture(name), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("decoded {lines} record(s), 0 failed")),
            "{name}: {stderr}"
        );
        assert_eq!(stdout_lines(&out).len(), lines, "{name}");
    }

    let out = run_decode(&fixture("01-wrapped-updated-diff.ndjson"), &[]);
    let lines = stdout_lines(&out);
    // Exact decimal text survives into the printed JSON.
    assert_eq!(
        lines[5],
        r#"{"type":"row","topic":"payments","partition":1,"offset":6,"key":["2025-06-11","f0e1d2c3-b4a5-4968-8776-655443322110"],"key_json":"[\"2025-06-11\", \"f0e1d2c3-b4a5-4968-8776-655443322110\"]","op":"insert","after":{"amount":-15.50,"archived":false,"booking_date":"2025-06-11","currency":"EUR","id":"f0e1d2c3-b4a5-4968-8776-655443322110","reference":"Refund for INV-2025-00042"},"before":null,"updated":"1749715231873209112.0000000002","mvcc_timestamp":null,"pg_xid":null,"pg_lsn":null,"envelope":"wrapped"}"#
    );
    assert!(lines[0].contains(r#""amount":1250.00"#), "{}", lines[0]);
    assert_eq!(
        lines[2],
        r#"{"type":"resolved","topic":"payments","partition":0,"offset":3,"resolved":"1749715200412345678.0000000000"}"#
    );
    let delete: serde_json::Value = serde_json::from_str(&lines[11]).unwrap();
    assert_eq!(delete["op"], "delete");
    assert_eq!(delete["after"], serde_json::Value::Null);
    assert_eq!(delete["before"]["archived"], true);
}

#[test]
fn bare_op_column_flags() {
    let input = fixture("05-cdc-query-bare.ndjson");
    let out = run_decode(&input, &["--op-column", "op"]);
    let first: serde_json::Value = serde_json::from_str(&stdout_lines(&out)[0]).unwrap();
    assert_eq!(
        (first["op"].as_str(), first["envelope"].as_str()),
        (Some("insert"), Some("bare"))
    );
    assert!(first["after"].get("op").is_none());

    // By default no field is taken for event_op(): `op` is a column.
    let out = run_decode(&input, &[]);
    assert!(out.status.success());
    let first: serde_json::Value = serde_json::from_str(&stdout_lines(&out)[0]).unwrap();
    assert_eq!(first["op"], "upsert");
    assert_eq!(first["after"]["op"], "insert");
}

#[test]
fn kcat_dump_with_bad_lines_keeps_going_and_fails() {
    let input = concat!(
        r#"{"topic":"payments","partition":2,"offset":5,"tstype":"create","ts":1749715262110,"broker":1,"key":"[\"2025-06-10\", \"8a1f5c3e-2b7d-4e41-9c0a-5d6e7f809a1b\"]","payload":"{\"after\": {\"amount\": 1E+2, \"id\": \"x\"}, \"before\": {\"amount\": 123456789012345678901234567, \"id\": \"x\"}, \"mvcc_timestamp\": \"1749715262104518993.0000000000\", \"updated\": \"1749715262104518993.0000000000\"}"}"#,
        "\n",
        "this is not json\n",
        r#"{"topic":"payments","partition":1,"offset":7,"tstype":"create","ts":1,"broker":1,"key":"[1]","payload":"{\"after\": 5}"}"#,
        "\n",
        "\n",
        r#"{"topic":"payments","partition":0,"offset":8,"tstype":"create","ts":1,"broker":1,"key":null,"payload":"{\"resolved\":\"1749715270961130755.0000000000\"}"}"#,
        "\n",
        r#"{"topic":"payments","partition":0,"offset":9,"tstype":"create","ts":1,"broker":1,"key":"[1]","payload":null}"#,
        "\n",
    );
    let out = run_decode(input.as_bytes(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(r#""after":{"amount":1E+2,"id":"x"},"before":{"amount":123456789012345678901234567,"id":"x"}"#), "{}", lines[0]);
    assert!(
        lines[0].contains(r#""op":"update""#) && lines[0].contains(r#""offset":5"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(r#"{"type":"resolved","topic":"payments","partition":0,"offset":8,"#),
        "{}",
        lines[1]
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: not a record line"), "{stderr}");
    assert!(
        stderr.contains(
            "line 3: cannot decode changefeed record at topic \"payments\" partition 1 offset 7"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6:") && stderr.contains("offset 9") && stderr.contains("tombstone"),
        "{stderr}"
    );
    assert!(stderr.contains("decoded 2 record(s), 3 failed"), "{stderr}");
}
