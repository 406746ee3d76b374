//! One module per subcommand: argument structs and the glue from flags and
//! config to the library crates.

pub mod changefeed;
pub mod check;
pub mod checkpoints;
pub mod holds;
pub mod mark;
pub mod pg_changefeed;
pub mod purge;
pub mod retouch;
pub mod retrieve;
pub mod run;
pub mod sink;
