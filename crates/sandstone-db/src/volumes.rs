//! Sandbox volumes (`/api/v1/sandboxvolumes`), their snapshots, and which
//! sandboxes mount them. The mounts are the source of truth for access
//! modes: a read-write mount of an `RWO` volume is recorded `exclusive`,
//! and a partial unique index lets only one such row exist per volume, so
//! two claims racing for one volume cannot both get it, on one node or on
//! several sharing a database.

use crate::Result;
use futures_util::future::BoxFuture;
use sandstone_api::volumes::AccessMode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: String,
    pub team_id: String,
    /// The API key that made it (empty for the daemon's own calls).
    pub created_by: String,
    pub access_mode: AccessMode,
    /// The disk cap, bytes.
    pub size_bytes: Option<i64>,
    pub default_uid: i64,
    pub default_gid: i64,
    /// The volume it was forked from.
    pub source_volume_id: Option<String>,
    /// The node whose storage pool holds it.
    pub node_id: String,
    /// Its ownership epoch: one more each time another node takes it over
    /// (its checkpoints are named by it, as a sandbox's are).
    pub epoch: i64,
    /// When it was last checkpointed to the object store.
    pub checkpointed_at: Option<i64>,
    /// Labels for the caller's bookkeeping (a Sandstone extension).
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSnapshotRow {
    pub id: String,
    pub volume_id: String,
    pub team_id: String,
    pub name: String,
    pub description: String,
    pub size_bytes: i64,
    pub created_at: i64,
}

/// A volume mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMountRow {
    pub volume_id: String,
    pub sandbox_id: String,
    pub mount_point: String,
    pub read_only: bool,
    /// A read-write mount of an `RWO` volume: no other may exist.
    pub exclusive: bool,
}

pub trait VolumeStore: Send + Sync {
    fn insert_volume<'a>(&'a self, v: &'a VolumeRow) -> BoxFuture<'a, Result<()>>;
    fn get_volume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VolumeRow>>>;
    /// A team's volumes, oldest first.
    fn list_volumes<'a>(&'a self, team: &'a str) -> BoxFuture<'a, Result<Vec<VolumeRow>>>;
    /// Removes a volume and its snapshots' rows, unless something mounts
    /// it: then nothing is removed and the mounts are returned.
    fn delete_volume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>>;
    fn insert_volume_snapshot<'a>(&'a self, s: &'a VolumeSnapshotRow) -> BoxFuture<'a, Result<()>>;
    fn get_volume_snapshot<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VolumeSnapshotRow>>>;
    /// A volume's snapshots, oldest first.
    fn list_volume_snapshots<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeSnapshotRow>>>;
    /// `false` when there was no such snapshot.
    fn delete_volume_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Records all of a sandbox's mounts, or none: `Err` holds the volume
    /// an exclusive mount of another sandbox already holds.
    fn claim_mounts<'a>(
        &'a self,
        mounts: &'a [VolumeMountRow],
    ) -> BoxFuture<'a, Result<std::result::Result<(), String>>>;
    /// Forgets a sandbox's mounts (it is deleted).
    fn release_mounts<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<()>>;
    fn volume_mounts<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>>;
    /// The mounts of every volume of `team`, in one query (a listing's).
    fn team_volume_mounts<'a>(
        &'a self,
        team: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VolumeMountRow>>>;
    /// Records a checkpoint taken at `at` under `epoch`, if the volume is
    /// still `node`'s at that epoch.
    fn set_volume_checkpointed<'a>(
        &'a self,
        id: &'a str,
        node: &'a str,
        epoch: i64,
        at: i64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Moves a volume from node `from` (at `epoch`) to node `to`, one epoch
    /// on; `false` when it is not `from`'s at `epoch` any more.
    fn move_volume<'a>(
        &'a self,
        id: &'a str,
        from: &'a str,
        epoch: i64,
        to: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}
