//! Configuration loading: one TOML file, overridden by `CDC_ARCHIVER_*`
//! environment variables (`__` separates nesting levels, e.g.
//! `CDC_ARCHIVER_STORAGE__URL`), overridden in turn by command-line flags
//! that each command merges in itself.
//!
//! Every config struct denies unknown fields, so a typo is an error that
//! names the field instead of a silently ignored setting.

use std::path::Path;

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{de::DeserializeOwned, Serialize};

/// The environment prefix for overrides.
pub const ENV_PREFIX: &str = "CDC_ARCHIVER_";

/// A configuration that could not be loaded. The message names the field
/// (as a dotted path) and what was expected; fixing the file is the only
/// cure, so this is never retryable.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {message}")]
pub struct ConfigError {
    /// Human-readable, field-naming message.
    pub message: String,
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        let mut parts = Vec::new();
        for err in e {
            let path = if err.path.is_empty() {
                "(top level)".to_owned()
            } else {
                err.path.join(".")
            };
            let origin = err
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref().map(|s| format!(" (from {s})")))
                .unwrap_or_default();
            parts.push(format!("field `{path}`{origin}: {}", err.kind));
        }
        ConfigError {
            message: parts.join("; "),
        }
    }
}

/// Builds the layered configuration: defaults, then the file (if any),
/// then the environment. Callers may `.merge()` flag overrides on top
/// before extracting.
pub fn figment<T: Serialize + Default>(file: Option<&Path>) -> Figment {
    let mut f = Figment::from(Serialized::defaults(T::default()));
    if let Some(p) = file {
        f = f.merge(Toml::file_exact(p));
    }
    f.merge(Env::prefixed(ENV_PREFIX).split("__"))
}

/// Loads `T` from defaults, the file and the environment.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    if let Some(p) = file {
        if !p.exists() {
            return Err(ConfigError {
                message: format!("config file {} does not exist", p.display()),
            });
        }
    }
    Ok(figment::<T>(file).extract()?)
}

/// Keys that may be written once at the top of the file and are then
/// inherited by every section that has a field of that name (a section's
/// own value wins).
pub const SHARED_KEYS: &[&str] = &["database_url", "brokers", "storage"];

fn base(file: Option<&Path>) -> Result<Figment, ConfigError> {
    if let Some(p) = file {
        if !p.exists() {
            return Err(ConfigError {
                message: format!("config file {} does not exist", p.display()),
            });
        }
    }
    let mut f = Figment::new();
    if let Some(p) = file {
        f = f.merge(Toml::file_exact(p));
    }
    Ok(f.merge(Env::prefixed(ENV_PREFIX).split("__")))
}

fn with_shared(base: &Figment, shared: &[&str], section: Figment) -> Figment {
    let mut f = Figment::new();
    for key in shared {
        if let Ok(v) = base.find_value(key) {
            f = f.merge(Serialized::default(key, v));
        }
    }
    f.merge(section)
}

fn in_section(name: &str, e: figment::Error) -> ConfigError {
    let e = ConfigError::from(e);
    ConfigError {
        message: e
            .message
            .replace("field `(top level)`", &format!("section `{name}`"))
            .replace("field `", &format!("field `{name}.")),
    }
}

/// Loads the `[name]` section of a multi-section config file as `T`
/// (missing section: `T`'s defaults). `shared` names the top-level keys
/// (from [`SHARED_KEYS`]) that `T` has and inherits.
pub fn load_section<T: DeserializeOwned>(
    file: Option<&Path>,
    name: &str,
    shared: &[&str],
) -> Result<T, ConfigError> {
    let base = base(file)?;
    let f = with_shared(&base, shared, base.focus(name));
    f.extract().map_err(|e| in_section(name, e))
}

/// [`load_section`], then `overrides` on top (command-line flags: serialize
/// only the fields that were given).
pub fn load_section_with<T: DeserializeOwned, O: Serialize>(
    file: Option<&Path>,
    name: &str,
    shared: &[&str],
    overrides: &O,
) -> Result<T, ConfigError> {
    let base = base(file)?;
    let f = with_shared(&base, shared, base.focus(name)).merge(Serialized::defaults(overrides));
    f.extract().map_err(|e| in_section(name, e))
}

/// Loads the `[[name]]` array of tables of a multi-section config file,
/// each element inheriting the `shared` top-level keys.
pub fn load_section_list<T: DeserializeOwned>(
    file: Option<&Path>,
    name: &str,
    shared: &[&str],
) -> Result<Vec<T>, ConfigError> {
    let base = base(file)?;
    let items: Vec<figment::value::Value> = match base.find_value(name) {
        Ok(v) => v.deserialize().map_err(|e| in_section(name, e))?,
        Err(_) => return Ok(Vec::new()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let section = Figment::from(Serialized::defaults(item));
            with_shared(&base, shared, section)
                .extract()
                .map_err(|e| in_section(&format!("{name}[{i}]"), e))
        })
        .collect()
}

/// The last field of a config struct that embeds another with
/// `#[serde(flatten)]` (serde's `deny_unknown_fields` does not work with
/// `flatten`): it receives every key no other field took, and refuses the
/// first one, so a typo still fails the load and names the key. Write it
/// as `#[serde(flatten, skip_serializing)] unknown: UnknownFields`, after
/// every other field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnknownFields;

impl<'de> serde::Deserialize<'de> for UnknownFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> serde::de::Visitor<'de> for Refuse {
            type Value = UnknownFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no further fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UnknownFields, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format!(
                        "unknown field `{key}`: not a setting of this section (check the spelling against the README's configuration reference)"
                    ))),
                    None => Ok(UnknownFields),
                }
            }
        }
        d.deserialize_map(Refuse)
    }
}

/// Extracts `T` from a prepared figment, mapping errors to field names.
pub fn extract<T: DeserializeOwned>(f: &Figment) -> Result<T, ConfigError> {
    Ok(f.extract()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        batch_size: u32,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Section {
        database_url: String,
        batch_size: u32,
    }

    #[test]
    fn sections_inherit_shared_keys_and_name_their_fields() {
        let dir = std::env::temp_dir().join(format!("cdc-cfg-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "database_url = \"postgres://top\"\n[purger]\nbatch_size = 3\n[[marker]]\nbatch_size = 1\n[[marker]]\ndatabase_url = \"postgres://own\"\n",
        )
        .unwrap();
        let p: Section = load_section(Some(&file), "purger", &["database_url"]).unwrap();
        assert_eq!(
            p,
            Section {
                database_url: "postgres://top".into(),
                batch_size: 3
            }
        );
        let m: Vec<Section> = load_section_list(Some(&file), "marker", &["database_url"]).unwrap();
        assert_eq!(m[0].database_url, "postgres://top");
        assert_eq!(m[1].database_url, "postgres://own");
        std::fs::write(&file, "[purger]\nbatch_sise = 3\n").unwrap();
        let err = load_section::<Section>(Some(&file), "purger", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("purger.") && err.contains("batch_sise"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_field_is_named() {
        let dir = std::env::temp_dir().join(format!("cdc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[inner]\nbatch_sise = 5\n").unwrap();
        let err = load::<Outer>(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("batch_sise") && err.contains("inner"), "{err}");
        std::fs::write(&file, "[inner]\nbatch_size = \"many\"\n").unwrap();
        let err = load::<Outer>(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("inner.batch_size"), "{err}");
        std::fs::write(&file, "[inner]\nbatch_size = 7\n").unwrap();
        assert_eq!(load::<Outer>(Some(&file)).unwrap().inner.batch_size, 7);
        let _ = std::fs::remove_dir_all(dir);
    }
}
