//! Pieces every cdc-archiver stage shares: SQL identifier quoting, retry
//! policy and error classification, database connections and dialect
//! detection, the archive's object store, the shutdown signal, configuration
//! loading and telemetry.
//!
//! The guarantee kept here is a small but load-bearing one: an identifier
//! that reaches SQL text has always passed through [`ident::quote_ident`],
//! and every retry decision goes through [`retry::Retryable`], so a stage
//! never retries an error that cannot heal (a constraint violation, a
//! missing table) and never gives up on one that can (SQLSTATE 40001, a
//! dropped connection).

pub mod aimd;
pub mod batching;
pub mod config;
pub mod db;
pub mod holds;
pub mod ident;
pub mod pace;
pub mod progress;
pub mod retry;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
