//! SQL identifiers. Values are always bound as parameters; identifiers
//! cannot be, so they are quoted here and nowhere else.

use std::fmt;

/// An identifier that cannot be used at all (PostgreSQL and CockroachDB
/// reject NUL bytes inside quoted identifiers; an empty name is never meant).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SQL identifier {0:?}: identifiers must be non-empty and contain no NUL byte")]
pub struct InvalidIdent(pub String);

/// Quotes `name` as a SQL identifier: wraps it in double quotes and doubles
/// any embedded double quote, so that any string names exactly one object.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Checks that `name` can be used as an identifier at all.
pub fn validate_ident(name: &str) -> Result<(), InvalidIdent> {
    if name.is_empty() || name.contains('\0') {
        Err(InvalidIdent(name.to_owned()))
    } else {
        Ok(())
    }
}

/// A table name, optionally schema-qualified. Written `schema.table` in
/// configuration; a name that itself contains a dot must be given as
/// `{ schema = "...", name = "..." }` in TOML or with `"` quoting:
/// `"my.schema"."my.table"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName {
    /// Schema (PostgreSQL) or schema within the current database (CockroachDB).
    pub schema: Option<String>,
    /// The table's own name, unquoted.
    pub name: String,
}

impl TableName {
    /// The name a table gets where none is configured (its Kafka topic, its
    /// folder in the archive): the table's own name in schema `public` (as
    /// always), `schema.name` in any other, so that `a.t` and `b.t` never
    /// share a topic or an archive.
    pub fn default_archive_name(&self) -> String {
        match self.schema.as_deref() {
            None | Some("public") => self.name.clone(),
            Some(s) => format!("{s}.{}", self.name),
        }
    }

    /// Parses `table`, `schema.table` or the quoted forms `"a.b"."c"`.
    pub fn parse(text: &str) -> Result<Self, InvalidIdent> {
        let parts = split_qualified(text).ok_or_else(|| InvalidIdent(text.to_owned()))?;
        for p in &parts {
            validate_ident(p)?;
        }
        match parts.len() {
            1 => Ok(Self {
                schema: None,
                name: parts[0].clone(),
            }),
            2 => Ok(Self {
                schema: Some(parts[0].clone()),
                name: parts[1].clone(),
            }),
            _ => Err(InvalidIdent(text.to_owned())),
        }
    }

    /// The table's name as SQL, every part quoted.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// The schema to look the table up in the catalog (`public` by default).
    pub fn schema_or_public(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl TryFrom<String> for TableName {
    type Error = InvalidIdent;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TableName> for String {
    fn from(t: TableName) -> Self {
        match &t.schema {
            Some(s) => format!("{}.{}", quote_if_needed(s), quote_if_needed(&t.name)),
            None => quote_if_needed(&t.name),
        }
    }
}

fn quote_if_needed(part: &str) -> String {
    if part.contains('.') || part.contains('"') {
        quote_ident(part)
    } else {
        part.to_owned()
    }
}

/// Splits on dots outside double quotes; `""` inside quotes is one quote.
fn split_qualified(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if cur.is_empty() && !quoted_part => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        '"' => break,
                        other => cur.push(other),
                    }
                }
            }
            '.' => {
                parts.push(std::mem::take(&mut cur));
                quoted_part = false;
            }
            _ if quoted_part => return None,
            other => cur.push(other),
        }
    }
    parts.push(cur);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_names_keep_schemas_apart() {
        let name = |t: &str| TableName::parse(t).unwrap().default_archive_name();
        assert_eq!(name("payments"), "payments");
        assert_eq!(name("public.payments"), "payments");
        assert_eq!(name("billing.payments"), "billing.payments");
        assert_ne!(name("a.t"), name("b.t"));
    }

    #[test]
    fn quotes_hostile_names() {
        assert_eq!(quote_ident("payments"), "\"payments\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("Robert'); DROP TABLE x;--"),
            "\"Robert'); DROP TABLE x;--\""
        );
    }

    #[test]
    fn parses_qualified_names() {
        let t = TableName::parse("public.payments").unwrap();
        assert_eq!(t.schema.as_deref(), Some("public"));
        assert_eq!(t.quoted(), "\"public\".\"payments\"");
        let t = TableName::parse("\"my.schema\".\"Odd \"\"Name\"\"\"").unwrap();
        assert_eq!(t.schema.as_deref(), Some("my.schema"));
        assert_eq!(t.name, "Odd \"Name\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("").is_err());
        assert!(TableName::parse("a\0b").is_err());
    }

    proptest! {
        #[test]
        fn table_name_string_round_trips(schema in proptest::option::of("[^\\x00]{1,12}"), name in "[^\\x00]{1,12}") {
            let t = TableName { schema, name };
            let s: String = t.clone().into();
            prop_assert_eq!(TableName::parse(&s).unwrap(), t);
        }

        #[test]
        fn quoted_ident_has_balanced_quotes(name in "[^\\x00]{0,20}") {
            let q = quote_ident(&name);
            let inner = &q[1..q.len() - 1];
            prop_assert_eq!(inner.replace("\"\"", "\""), name);
        }
    }
}
