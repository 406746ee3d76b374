//! The binary's exit codes, one list for every subcommand (scripts and
//! schedulers branch on them; the README's table is this enum).

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done, nothing left over.
    Success = 0,
    /// Failed: an error message says why (a retry may or may not help).
    Failure = 1,
    /// `run`: partial. Nothing unsafe happened; rows left over (not yet
    /// archived, changed, interrupted) are handled by a later run.
    Partial = 3,
    /// `retrieve`: nothing matched.
    NoMatch = 4,
    /// `restore`: some rows were not written because the table holds a
    /// conflicting row (listed on stderr; `--skip-existing` accepts that).
    NotRestored = 5,
    /// `sink`: a partition was stopped (offset gap, chain ahead, broken
    /// chain); the others were archived. The log says which and why.
    PartitionStopped = 6,
    /// `checkpoints verify` / `checkpoints list --strict`: the archive has
    /// findings (printed); `checkpoints show`: no such checkpoint.
    Findings = 7,
    /// `retrieve`: the answer may be incomplete: partitions whose
    /// checkpoint chain does not read were skipped (named on stderr; their
    /// `checkpoints list` findings say why).
    Incomplete = 8,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented() {
        let all = [
            Exit::Success,
            Exit::Failure,
            Exit::Partial,
            Exit::NoMatch,
            Exit::NotRestored,
            Exit::PartitionStopped,
            Exit::Findings,
            Exit::Incomplete,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|e| *e as u8).collect();
        assert_eq!(codes.len(), all.len());
        // 2 is clap's usage error.
        assert!(!codes.contains(&2));
        let readme = include_str!("../../../README.md");
        for e in all {
            assert!(
                readme.contains(&format!("| {} |", e as u8)),
                "exit code {} ({e:?}) is not in the README's table",
                e as u8
            );
        }
    }
}
