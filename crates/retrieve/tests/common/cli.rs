//! The `cdc-archiver` binary, run against a test archive.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::archive::Archive;

/// The binary, built once for these tests (a no-op when it is up to date).
pub fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "cdc-archiver",
                "--bin",
                "cdc-archiver",
            ])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p cdc-archiver failed");
        let target =
            std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), Into::into);
        target.join("debug/cdc-archiver")
    })
}

/// `cdc-archiver retrieve --table <table> --archive-url <archive> <args>`.
pub fn retrieve(archive: &Archive, args: &[&str]) -> Output {
    Command::new(binary())
        .args(["--log-level", "warn", "retrieve", "--table", &archive.table])
        .arg("--archive-url")
        .arg(format!("file://{}", archive.dir.path().display()))
        .args(args)
        .output()
        .expect("running cdc-archiver")
}
