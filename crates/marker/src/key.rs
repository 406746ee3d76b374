//! Primary-key values carried from one batch to the next without knowing
//! their types: the binary wire bytes read from a key column are bound back
//! unchanged as the parameter compared with that same column. The round
//! trip is exact for every type (no text formatting of floats, timestamps
//! or collations in between), and a type mismatch is refused, not coerced.

use std::error::Error;

use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// One key column's value, in the server's binary encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawKeyPart {
    ty: Type,
    bytes: Vec<u8>,
}

/// A whole primary-key value, in key-column order.
pub type Key = Vec<RawKeyPart>;

impl RawKeyPart {
    /// A value of type `ty` in its binary encoding.
    pub fn new(ty: Type, bytes: Vec<u8>) -> Self {
        Self { ty, bytes }
    }
}

impl<'a> FromSql<'a> for RawKeyPart {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self {
            ty: ty.clone(),
            bytes: raw.to_vec(),
        })
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for RawKeyPart {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty != self.ty {
            return Err(format!("key value of type {} cannot be bound as {ty}", self.ty).into());
        }
        out.extend_from_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Reads `n` key columns starting at column 0 of `row`.
pub fn key_from_row(row: &tokio_postgres::Row, n: usize) -> Result<Key, tokio_postgres::Error> {
    (0..n).map(|i| row.try_get::<_, RawKeyPart>(i)).collect()
}
