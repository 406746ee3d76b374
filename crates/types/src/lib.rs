//! The vocabulary every crate of cdc-archiver shares about a change: its
//! HLC timestamp ([`Hlc`]), its column values with their exact text
//! ([`Value`], [`Row`]), what it did to its row ([`Op`]) and where it came
//! from ([`RecordMeta`]). Pure: no I/O,
//! only serde. The changefeed decoder produces these values; checkpoints,
//! segments and every reader use them without depending on the decoder.
//!
//! Layout:
//! - `hlc`: CockroachDB's hybrid-logical-clock timestamp, printed back byte
//!   for byte.
//! - `value`: column values that keep their exact JSON text.
//! - `op`: insert, update, delete, upsert.
//! - `meta`: where a change came from ([`RecordMeta`]), declared once.

mod hlc;
mod meta;
mod op;
mod value;

pub use hlc::{Hlc, ParseHlcError};
pub use meta::RecordMeta;
pub use op::Op;
pub use value::{Row, Value};
