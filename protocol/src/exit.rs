//! The exit statuses a dataflow process ends with on purpose, which its supervisors
//! (`scripts/run_workers.sh`, systemd's `RestartPreventExitStatus`) read: both mean that a
//! restart would fail the same way, so the process stays stopped until an operator looks.

/// The cluster lost the progress chain to another cluster publishing into the same topics
/// (one `cluster.toml` started twice): restarting would only race it again.
pub const FENCED: i32 = 3;

/// The cluster refused to start because its memory is not safe to resume from: the progress
/// topic can delete records or already has, or events a resume needs are deleted. Restarting
/// would refuse again; the error says how to recover (docs/operations.md, "The progress topic").
pub const REFUSED: i32 = 4;

/// The configuration cannot work: it does not parse, or it disagrees with the brokers' topics
/// or with the settings the published epochs were counted with. `EX_CONFIG` of sysexits.h.
pub const CONFIG: i32 = 78;
