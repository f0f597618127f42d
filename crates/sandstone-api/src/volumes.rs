//! Sandbox volumes (Sandbox0's 2026-07 `/api/v1/sandboxvolumes` and the
//! claim's `mounts`): workspaces that outlive and move between sandboxes.

use serde::{Deserialize, Serialize};

/// How many sandboxes may mount a volume, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessMode {
    /// One read-write mount at a time.
    #[default]
    #[serde(rename = "RWO")]
    ReadWriteOnce,
    /// Read-only mounts, as many as wanted.
    #[serde(rename = "ROX")]
    ReadOnlyMany,
    /// Read-write mounts, as many as wanted: writers share the files with
    /// no locking of Sandstone's (the user's to coordinate).
    #[serde(rename = "RWX")]
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "RWO",
            AccessMode::ReadOnlyMany => "ROX",
            AccessMode::ReadWriteMany => "RWX",
        }
    }

    /// Whether a sandbox mounts it read-only.
    pub fn read_only(self) -> bool {
        self == AccessMode::ReadOnlyMany
    }

    /// Whether a read-write mount excludes every other.
    pub fn exclusive(self) -> bool {
        self == AccessMode::ReadWriteOnce
    }
}

impl std::str::FromStr for AccessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AccessMode, String> {
        match s {
            "RWO" => Ok(AccessMode::ReadWriteOnce),
            "ROX" => Ok(AccessMode::ReadOnlyMany),
            "RWX" => Ok(AccessMode::ReadWriteMany),
            other => Err(format!("access mode {other:?}: one of RWO, ROX, RWX")),
        }
    }
}

/// `POST /api/v1/sandboxvolumes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxVolumeRequest {
    /// Start from this volume snapshot's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Only `s0fs` (the default; a pool volume here) is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Owner of the volume's root and of files written through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_posix_uid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_posix_gid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
    /// Sandstone extension: the disk cap (`10Gi`, `512Mi`, bytes); the
    /// default is the sandbox default disk cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Sandstone extension: labels for the caller's bookkeeping, listed
    /// with the volume and filterable (`GET
    /// /sandboxvolumes?metadata.<key>=<value>`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/sandboxvolumes/{id}/fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkVolumeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_posix_uid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_posix_gid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
}

/// A volume (Sandbox0's `SandboxVolume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxVolume {
    pub id: String,
    pub team_id: String,
    /// The API key that made it.
    pub user_id: String,
    pub source_volume_id: Option<String>,
    pub default_posix_uid: Option<i64>,
    pub default_posix_gid: Option<i64>,
    pub access_mode: AccessMode,
    pub backend: String,
    /// Bytes it holds now.
    pub metered_storage_bytes: Option<i64>,
    pub storage_observed_at: Option<String>,
    /// Sandstone extension: its disk cap in bytes (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Sandstone extension: the sandboxes that mount it now.
    #[serde(default)]
    pub mounted_by: Vec<String>,
    /// Sandstone extension: its labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/sandboxvolumes/{id}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeSnapshotRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A volume's snapshot (Sandbox0's volume `Snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    pub id: String,
    pub volume_id: String,
    pub name: String,
    pub description: String,
    pub size_bytes: i64,
    pub created_at: String,
}

/// One of a claim's `mounts`: a volume bound at a path in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMount {
    pub sandboxvolume_id: String,
    pub mount_point: String,
}

/// A volume bound into a sandbox, as its configuration keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeBind {
    pub sandboxvolume_id: String,
    pub mount_point: String,
    /// From the volume's access mode (`ROX`), when it was bound.
    #[serde(default)]
    pub read_only: bool,
}

/// A mount point a template declares (Sandbox0's `VolumeMountSpec`):
/// when a template declares any, claims bind volumes there and nowhere
/// else, read-only where it says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMountSpec {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Longest mount point.
pub const MAX_MOUNT_POINT: usize = 256;

/// Why `p` cannot be a mount point, if it cannot: it must be absolute and
/// normal (no `.`, `..`, empty or trailing component), at most
/// [`MAX_MOUNT_POINT`] bytes, and not under /proc, /sys or /dev (the
/// kernel's and the runtime's).
pub fn mount_point_problem(p: &str) -> Option<&'static str> {
    let normal = p.starts_with('/')
        && p.len() > 1
        && p.len() <= MAX_MOUNT_POINT
        && !p.ends_with('/')
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return Some("not an absolute, normal path below / of at most 256 bytes");
    }
    let first = p[1..].split('/').next().unwrap_or_default();
    if matches!(first, "proc" | "sys" | "dev") {
        return Some("under /proc, /sys or /dev, which are the kernel's and the runtime's");
    }
    None
}

/// Where a claim's mount stands (Sandbox0's `MountStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountState {
    Pending,
    Mounting,
    Mounted,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountStatus {
    pub sandboxvolume_id: String,
    pub mount_point: String,
    pub state: MountState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted_duration_sec: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// `PUT …/files/archive`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveImport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}
