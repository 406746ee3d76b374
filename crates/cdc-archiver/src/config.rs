//! The config file as a whole. Each stage reads its own section
//! (`[pg_changefeed]`, `[sink]`, `[[marker]]`, `[purger]`, `[run]`,
//! `[storage]`); `database_url`, `brokers` and `storage` may be written
//! once at the top. This module only checks the top level, so that a
//! misspelt section is an error instead of silently ignored settings.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The local stack's database, the default everywhere.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:54329/postgres";

/// Top-level keys shared by the sections.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Shared {
    /// Database URL for every stage.
    pub database_url: Option<String>,
    /// Kafka bootstrap servers for every stage.
    pub brokers: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only the key names matter: each section is read by its stage.
struct TopLevel {
    database_url: Option<String>,
    brokers: Option<String>,
    storage: Option<toml::Value>,
    pg_changefeed: Option<toml::Value>,
    sink: Option<toml::Value>,
    marker: Option<toml::Value>,
    purger: Option<toml::Value>,
    run: Option<toml::Value>,
}

/// Fails with the file and the unknown key when the top level has a key
/// no stage reads.
pub fn check_top_level(file: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = file else { return Ok(()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str::<TopLevel>(&text).with_context(|| {
        format!(
            "config file {}: the top level may hold database_url, brokers and the sections \
             [storage], [pg_changefeed], [sink], [[marker]], [purger], [run]",
            path.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn file(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config")).join(name)
    }

    /// The shipped example and docker configs load with every stage's own
    /// (strict) config type, so a documented key that no stage reads fails
    /// here instead of in an operator's hands.
    #[test]
    fn shipped_configs_load_in_every_stage() {
        for name in ["example.toml", "docker.toml"] {
            let f = file(name);
            let f = Some(f.as_path());
            check_top_level(f).unwrap();
            let markers: Vec<cdc_marker::MarkerConfig> =
                cdc_common::config::load_section_list(f, "marker", &[]).unwrap();
            assert_eq!(markers[0].table.to_string(), "public.payments", "{name}");
            assert!(markers[0].cutoff.is_some());
            let purger = cdc_purger::PurgerConfig::load(f, &serde_json::json!({})).unwrap();
            assert_eq!(purger.table.name, "payments");
            let _: cdc_common::storage::StorageConfig =
                cdc_common::config::load_section(f, "storage", &[]).unwrap();
            let run: cdc_run::RunConfig = cdc_common::config::load_section(f, "run", &[]).unwrap();
            assert_eq!(run.wait_timeout, std::time::Duration::from_secs(600));
        }
        let f = file("example.toml");
        let pg: cdc_pg_changefeed::PgChangefeedConfig = cdc_common::config::load_section(
            Some(&f),
            "pg_changefeed",
            &["database_url", "brokers"],
        )
        .unwrap();
        assert_eq!(pg.tables[0].filter_column.as_deref(), Some("archived"));
    }

    #[test]
    fn a_misspelt_section_is_named() {
        let dir = std::env::temp_dir().join(format!("cdc-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[purgr]\ntable = \"t\"\n").unwrap();
        let err = format!("{:#}", check_top_level(Some(&f)).unwrap_err());
        assert!(err.contains("purgr") && err.contains("[purger]"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
