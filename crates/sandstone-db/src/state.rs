//! A sandbox's state machine: its status and the operation in flight, with
//! the transitions each status allows. Stored as the TEXT the columns have
//! always held (so existing data directories open); a value this build does
//! not know is an [`Error::Corrupt`] when the row is read, never a silent
//! default.

use crate::Error;
use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life. The API shows [`SandboxStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// A runtime generation (PID 1, cgroup, mounts) serves requests.
    Running,
    /// Files and identity only; `resume` starts a new generation.
    Paused,
    /// Its init died; files are kept and `resume` starts it again.
    Failed,
    /// A delete started: recovery finishes it.
    Terminating,
    /// Its node's lease ran out while it ran (or had failed): what ran there
    /// is gone with the node. `resume` starts it from its last checkpoint
    /// (on the node that asks), or from its own files if its node returns
    /// first. Never resumed on its own: a caller must accept what is lost.
    Lost,
}

impl SandboxStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Running => "running",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Failed => "failed",
            SandboxStatus::Terminating => "terminating",
            SandboxStatus::Lost => "lost",
        }
    }

    /// Only a running sandbox has a generation to end.
    pub fn can_pause(self) -> bool {
        self == SandboxStatus::Running
    }

    /// A paused or failed sandbox has files and no runtime: a new
    /// generation can start on them (also what auto-resume does).
    pub fn can_resume(self) -> bool {
        matches!(
            self,
            SandboxStatus::Paused | SandboxStatus::Failed | SandboxStatus::Lost
        )
    }

    /// Whether the next call may resume it without being asked: not a lost
    /// one, whose caller must first accept going back to its checkpoint.
    pub fn can_auto_resume(self) -> bool {
        matches!(self, SandboxStatus::Paused | SandboxStatus::Failed)
    }

    /// Snapshots and forks copy the volume of a live (frozen for the
    /// copy) or paused sandbox; a failed one may hold a half-written state.
    pub fn can_snapshot(self) -> bool {
        matches!(self, SandboxStatus::Running | SandboxStatus::Paused)
    }

    /// Restoring replaces files under no running process.
    pub fn can_restore(self) -> bool {
        self == SandboxStatus::Paused
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "running" => SandboxStatus::Running,
            "paused" => SandboxStatus::Paused,
            "failed" => SandboxStatus::Failed,
            "terminating" => SandboxStatus::Terminating,
            "lost" => SandboxStatus::Lost,
            other => return Err(Error::Corrupt(format!("unknown sandbox status {other:?}"))),
        })
    }
}

/// A lifecycle operation that started and has not finished, recorded before
/// its first step a crash could interrupt: start-up recovery rolls it
/// forward or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingOp {
    Pause,
    Resume,
    Snapshot,
    Fork,
    Restore,
}

impl PendingOp {
    pub const fn as_str(self) -> &'static str {
        match self {
            PendingOp::Pause => "pause",
            PendingOp::Resume => "resume",
            PendingOp::Snapshot => "snapshot",
            PendingOp::Fork => "fork",
            PendingOp::Restore => "restore",
        }
    }
}

impl std::fmt::Display for PendingOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PendingOp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pause" => PendingOp::Pause,
            "resume" => PendingOp::Resume,
            "snapshot" => PendingOp::Snapshot,
            "fork" => PendingOp::Fork,
            "restore" => PendingOp::Restore,
            other => {
                return Err(Error::Corrupt(format!(
                    "unknown pending operation {other:?}"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_values_round_trip() {
        for s in [
            SandboxStatus::Running,
            SandboxStatus::Paused,
            SandboxStatus::Failed,
            SandboxStatus::Terminating,
            SandboxStatus::Lost,
        ] {
            assert_eq!(s.as_str().parse::<SandboxStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for op in [
            PendingOp::Pause,
            PendingOp::Resume,
            PendingOp::Snapshot,
            PendingOp::Fork,
            PendingOp::Restore,
        ] {
            assert_eq!(op.as_str().parse::<PendingOp>().unwrap(), op);
        }
        assert!(
            matches!("creating".parse::<SandboxStatus>(), Err(Error::Corrupt(m)) if m.contains("creating"))
        );
        assert!(matches!(
            "stop".parse::<PendingOp>(),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn transitions() {
        use SandboxStatus::*;
        assert!(Running.can_pause() && !Paused.can_pause() && !Failed.can_pause());
        assert!(Paused.can_resume() && Failed.can_resume() && !Running.can_resume());
        assert!(!Terminating.can_resume() && !Terminating.can_snapshot());
        assert!(Running.can_snapshot() && Paused.can_snapshot() && !Failed.can_snapshot());
        assert!(Paused.can_restore() && !Running.can_restore());
        assert!(Lost.can_resume() && !Lost.can_auto_resume() && !Lost.can_snapshot());
        assert!(Paused.can_auto_resume() && !Lost.can_restore());
    }
}
