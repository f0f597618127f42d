//! Sandbox volumes: made, forked, snapshotted, restored and deleted on this
//! node's pool (`sandstone_volumes::sandbox_volume`), recorded in the
//! database (`sandstone_db::volumes`), bound into sandboxes at start (the
//! claim's `mounts`, kept in the sandbox's configuration), and their files
//! served without a sandbox by a file helper per volume
//! (`sandstone-init volume-files`, chrooted into it).
//!
//! Access modes are enforced where mounts are recorded: `claim_mounts`
//! keeps every mount of a sandbox or none, and one exclusive (read-write
//! `RWO`) mount per volume. A volume is deleted only while nothing mounts
//! it, and restored only while nothing mounts it read-write.

use super::{Error, Lifecycle, Result, internal, now_ms, random_hex};
use sandstone_api::volumes::{AccessMode, VolumeBind, VolumeMountSpec};
use sandstone_db::volumes::{VolumeMountRow, VolumeRow, VolumeSnapshotRow};
use sandstone_init::proto::VolumeHelperSpec;
use sandstone_runtime::BindMount;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A file helper unused this long is stopped (the next call starts one).
const HELPER_IDLE: Duration = Duration::from_secs(60);
/// How long a helper may take to say it listens.
const HELPER_START: Duration = Duration::from_secs(10);

/// What a new volume is made with.
pub struct NewVolume {
    pub team: String,
    pub created_by: String,
    pub access_mode: AccessMode,
    pub size_bytes: Option<u64>,
    pub owner: sandstone_volumes::Owner,
    /// Start from this volume snapshot's files.
    pub snapshot: Option<String>,
    /// Fork this volume's files (copy-on-write).
    pub source: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The running file helpers, by volume.
#[derive(Default)]
pub struct VolumeHelpers {
    running: std::sync::Mutex<HashMap<String, Helper>>,
}

struct Helper {
    child: std::process::Child,
    socket: PathBuf,
    last_used: Instant,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Lifecycle {
    /// A volume of `team`, or 404 (another team's looks missing).
    pub async fn volume(&self, id: &str, team: &str) -> Result<VolumeRow> {
        self.volumes
            .get_volume(id)
            .await?
            .filter(|v| v.team_id == team)
            .ok_or_else(|| Error::not_found("sandbox volume", id))
    }

    /// A volume this node's pool holds (its files are here, fetched from
    /// its latest checkpoint when it was taken over from another node), or
    /// 409.
    async fn local_volume(&self, id: &str, team: &str) -> Result<VolumeRow> {
        let v = self.volume(id, team).await?;
        if v.node_id != self.node {
            return Err(Error::Conflict(format!(
                "sandbox volume {id} is on node {}: call that node",
                v.node_id
            )));
        }
        if !self.storage.user_volume_dir(id).exists() {
            self.materialise_volume(&v).await?;
        }
        Ok(v)
    }

    /// Makes volume `v`'s files here from its latest checkpoint (it was
    /// taken over from a node that died), then publishes them again under
    /// this node's epoch, so the store refuses what the old owner may
    /// still write. Nothing is left behind when it fails.
    async fn materialise_volume(&self, v: &VolumeRow) -> Result<()> {
        let c = self.checkpointer().map_err(|_| {
            Error::Conflict(format!(
                "sandbox volume {} has no files on this node and there is no object store to fetch them from",
                v.id
            ))
        })?;
        let key = super::checkpoint::sandbox_id(&v.id)?;
        let latest = c
            .store
            .latest(&key)
            .await
            .map_err(|e| {
                super::checkpoint::unavailable(&format!("list the checkpoints of {}", v.id), e)
            })?
            .ok_or_else(|| Error::Conflict(format!("sandbox volume {} has no checkpoint", v.id)))?;
        let owner = sandstone_volumes::Owner {
            uid: v.default_uid as u32,
            gid: v.default_gid as u32,
        };
        let limit = v.size_bytes.map(|b| b as u64);
        tokio::task::block_in_place(|| self.storage.create_user_volume(&v.id, limit, owner))
            .map_err(internal)?;
        let dir = self.storage.user_volume_dir(&v.id);
        let filled = match self.fill_volume(&v.id, &latest, &dir).await {
            Ok(r) => {
                c.remember(&v.id, r.baseline);
                if latest.epoch < v.epoch as u64 {
                    self.upload_tree(&v.id, v.epoch, &dir).await.map(drop)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if filled.is_err() {
            let _ = self.storage.remove_user_volume(&v.id);
            c.forget(&v.id);
        }
        filled
    }

    /// Takes volume `id` over from node `from`, whose lease ran out, by
    /// compare-and-set on its node and epoch; its files come from its
    /// latest checkpoint at first use here. `false` when it is not `from`'s
    /// (any more), or has no checkpoint to come from.
    pub async fn take_over_volume(&self, id: &str, from: &str) -> Result<bool> {
        let Some(c) = &self.checkpoints else {
            return Ok(false);
        };
        let Some(v) = self.volumes.get_volume(id).await? else {
            return Ok(false);
        };
        if v.node_id != from {
            return Ok(false);
        }
        let key = super::checkpoint::sandbox_id(id)?;
        let has_checkpoint = c
            .store
            .latest(&key)
            .await
            .map_err(|e| {
                super::checkpoint::unavailable(&format!("list the checkpoints of {id}"), e)
            })?
            .is_some();
        if !has_checkpoint
            || !self
                .volumes
                .move_volume(id, from, v.epoch, &self.node)
                .await?
        {
            return Ok(false);
        }
        tracing::info!(volume = %id, from = %from, "took over a sandbox volume of a node whose lease ran out");
        Ok(true)
    }

    /// `POST …/checkpoint`: volume `id` to the object store now.
    pub async fn checkpoint_volume(&self, id: &str, team: &str) -> Result<i64> {
        self.checkpointer()?;
        let v = self.local_volume(id, team).await?;
        self.checkpoint_volume_row(&v).await
    }

    /// Checkpoints `v` from an O(1) snapshot of it, so that writers go on
    /// meanwhile (crash-consistent, as a running sandbox's checkpoint is);
    /// returns when it was taken.
    async fn checkpoint_volume_row(&self, v: &VolumeRow) -> Result<i64> {
        let snap = format!("ckpt-{}-{}", v.id, random_hex(4));
        tokio::task::block_in_place(|| self.storage.snapshot_user_volume(&v.id, &snap))
            .map_err(internal)?;
        let tree = self.storage.pool.user_volume_snapshot_dir(&snap);
        let uploaded = self.upload_tree(&v.id, v.epoch, &tree).await;
        if let Err(e) = self.storage.remove_user_volume_snapshot(&snap) {
            tracing::warn!(snapshot = %snap, error = %e, "a volume checkpoint's snapshot left behind");
        }
        let (at, _) = uploaded?;
        if !self
            .volumes
            .set_volume_checkpointed(&v.id, &self.node, v.epoch, at)
            .await?
        {
            return Err(Error::Conflict(format!(
                "sandbox volume {} moved to another node meanwhile",
                v.id
            )));
        }
        Ok(at)
    }

    /// After sandbox `row` paused or was deleted: the volumes it wrote, to
    /// the object store (nothing without one).
    pub(super) async fn checkpoint_volumes_of(
        &self,
        mounts: &[VolumeBind],
        team: &str,
    ) -> Result<()> {
        if self.checkpoints.is_none() {
            return Ok(());
        }
        for m in mounts.iter().filter(|m| !m.read_only) {
            let v = self.local_volume(&m.sandboxvolume_id, team).await?;
            self.checkpoint_volume_row(&v).await?;
        }
        Ok(())
    }

    /// Every volume of this node's to the object store (the interval
    /// checkpointer's round); failures are logged.
    pub(super) async fn checkpoint_local_volumes(&self) {
        for id in self.storage.user_volume_ids() {
            let v = match self.volumes.get_volume(&id).await {
                Ok(Some(v)) if v.node_id == self.node => v,
                _ => continue,
            };
            if let Err(e) = self.checkpoint_volume_row(&v).await {
                tracing::warn!(volume = %id, error = %e, "interval checkpoint of a volume failed");
            }
        }
    }

    /// A new volume's cap from its `size` (`10Gi`, bytes), fitted to the
    /// pool where caps hold; the sandbox default without one.
    pub fn volume_cap(&self, size: Option<&str>) -> Result<Option<u64>> {
        use crate::limits::{DEFAULT_DISK, MIN_DISK, parse_memory};
        let max = match self.storage.pool.driver {
            sandstone_volumes::Driver::Btrfs => {
                Some(self.storage.pool.space().map_err(internal)?.max_cap())
            }
            sandstone_volumes::Driver::Dir => None,
        };
        let Some(size) = size else {
            return Ok(Some(
                max.map_or(DEFAULT_DISK, |m| DEFAULT_DISK.min(m / 2).max(MIN_DISK)),
            ));
        };
        let bytes = parse_memory(size)
            .filter(|b| *b >= MIN_DISK)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "invalid field `size`: {size:?} is not a size of at least 64Mi like 10Gi"
                ))
            })?;
        match max {
            Some(m) if bytes > m => Err(Error::Invalid(format!(
                "invalid field `size`: {size:?} is more than the storage pool allows ({} MiB)",
                m >> 20
            ))),
            _ => Ok(Some(bytes)),
        }
    }

    pub async fn create_volume(&self, new: NewVolume) -> Result<VolumeRow> {
        self.check_free_space()?;
        let id = format!("vol-{}", random_hex(8));
        let limit = new.size_bytes;
        if let Some(s) = &new.source {
            self.local_volume(s, &new.team).await?;
        }
        let snapshot = match &new.snapshot {
            Some(s) => Some(self.volume_snapshot(s, &new.team).await?),
            None => None,
        };
        let made = tokio::task::block_in_place(|| match (&new.source, &snapshot) {
            (Some(src), _) => self.storage.fork_user_volume(src, &id, limit),
            (None, Some(snap)) => self.storage.user_volume_from_snapshot(&snap.id, &id, limit),
            (None, None) => self.storage.create_user_volume(&id, limit, new.owner),
        });
        made.map_err(internal)?;
        let now = now_ms();
        let row = VolumeRow {
            id: id.clone(),
            team_id: new.team,
            created_by: new.created_by,
            access_mode: new.access_mode,
            size_bytes: limit.map(|b| b as i64),
            default_uid: new.owner.uid.into(),
            default_gid: new.owner.gid.into(),
            source_volume_id: new.source,
            node_id: self.node.clone(),
            epoch: 0,
            checkpointed_at: None,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
        };
        if let Err(e) = self.volumes.insert_volume(&row).await {
            let _ = self.storage.remove_user_volume(&id);
            return Err(e.into());
        }
        Ok(row)
    }

    /// Deletes a volume and its snapshots; 409 naming the sandboxes while
    /// any mounts it.
    pub async fn delete_volume(&self, id: &str, team: &str) -> Result<()> {
        let v = self.local_volume(id, team).await?;
        let snapshots = self.volumes.list_volume_snapshots(id).await?;
        let held = self.volumes.delete_volume(id).await?;
        if !held.is_empty() {
            return Err(Error::Conflict(format!(
                "sandbox volume {id} is mounted by {}: delete those sandboxes first",
                sandboxes_of(&held)
            )));
        }
        self.stop_volume_helper(&v.id);
        self.forget_checkpoints(id).await;
        // The rows are gone: what is left on disk is swept at the next
        // start if this fails.
        tokio::task::block_in_place(|| {
            for s in &snapshots {
                self.storage
                    .remove_user_volume_snapshot(&s.id)
                    .map_err(internal)?;
            }
            self.storage.remove_user_volume(id).map_err(internal)
        })
    }

    pub async fn snapshot_volume(
        &self,
        id: &str,
        team: &str,
        name: String,
        description: String,
    ) -> Result<VolumeSnapshotRow> {
        let v = self.local_volume(id, team).await?;
        self.check_free_space()?;
        let snap = format!("vs-{}", random_hex(8));
        tokio::task::block_in_place(|| self.storage.snapshot_user_volume(id, &snap))
            .map_err(internal)?;
        // The snapshot holds what its volume is charged for as of the
        // snapshot's commit; the snapshot itself is charged for nothing
        // (simple quotas charge an extent to the volume that wrote it).
        let size = self.storage.user_volume_usage(id);
        let row = VolumeSnapshotRow {
            id: snap.clone(),
            volume_id: v.id,
            team_id: v.team_id,
            name,
            description,
            size_bytes: size as i64,
            created_at: now_ms(),
        };
        if let Err(e) = self.volumes.insert_volume_snapshot(&row).await {
            let _ = self.storage.remove_user_volume_snapshot(&snap);
            return Err(e.into());
        }
        Ok(row)
    }

    /// A snapshot of one of `team`'s volumes, or 404.
    pub async fn volume_snapshot(&self, snap: &str, team: &str) -> Result<VolumeSnapshotRow> {
        self.volumes
            .get_volume_snapshot(snap)
            .await?
            .filter(|s| s.team_id == team)
            .ok_or_else(|| Error::not_found("volume snapshot", snap))
    }

    pub async fn delete_volume_snapshot(&self, id: &str, snap: &str, team: &str) -> Result<()> {
        let s = self.volume_snapshot(snap, team).await?;
        if s.volume_id != id {
            return Err(Error::not_found("volume snapshot", snap));
        }
        self.local_volume(id, team).await?;
        self.volumes.delete_volume_snapshot(snap).await?;
        tokio::task::block_in_place(|| self.storage.remove_user_volume_snapshot(snap))
            .map_err(internal)
    }

    /// Puts snapshot `snap`'s files in place of volume `id`'s; 409 while a
    /// sandbox mounts it read-write (one mounting it read-only sees the
    /// restored files from its next start).
    pub async fn restore_volume(&self, id: &str, snap: &str, team: &str) -> Result<()> {
        let v = self.local_volume(id, team).await?;
        let s = self.volume_snapshot(snap, team).await?;
        if s.volume_id != id {
            return Err(Error::not_found("volume snapshot", snap));
        }
        let writers: Vec<VolumeMountRow> = self
            .volumes
            .volume_mounts(id)
            .await?
            .into_iter()
            .filter(|m| !m.read_only)
            .collect();
        if !writers.is_empty() {
            return Err(Error::Conflict(format!(
                "sandbox volume {id} is mounted read-write by {}",
                sandboxes_of(&writers)
            )));
        }
        // Its helper is chrooted into the files being replaced.
        self.stop_volume_helper(id);
        let limit = v.size_bytes.map(|b| b as u64);
        tokio::task::block_in_place(|| self.storage.restore_user_volume(id, snap, limit))
            .map_err(internal)
    }

    /// Records `binds` as sandbox `id`'s mounts (all, or none), each
    /// checked: at a mount point the template `declared` (when it declares
    /// any), a volume of `team`'s on this node whose access mode allows
    /// another mount. Returns them with their read-only flags (the
    /// volume's `ROX`, or the declaration's `readOnly`).
    pub(super) async fn reserve_mounts(
        &self,
        id: &str,
        binds: &[VolumeBind],
        team: &str,
        declared: &[VolumeMountSpec],
    ) -> Result<Vec<VolumeBind>> {
        let mut rows = Vec::with_capacity(binds.len());
        let mut out = Vec::with_capacity(binds.len());
        for (i, b) in binds.iter().enumerate() {
            let declaration = declared.iter().find(|d| d.mount_path == b.mount_point);
            if !declared.is_empty() && declaration.is_none() {
                let paths: Vec<&str> = declared.iter().map(|d| d.mount_path.as_str()).collect();
                return Err(Error::Invalid(format!(
                    "invalid field `mounts[{i}].mount_point`: the template takes volumes at {} only",
                    paths.join(", ")
                )));
            }
            let v = self.local_volume(&b.sandboxvolume_id, team).await?;
            let read_only = v.access_mode.read_only() || declaration.is_some_and(|d| d.read_only);
            rows.push(VolumeMountRow {
                volume_id: v.id.clone(),
                sandbox_id: id.to_string(),
                mount_point: b.mount_point.clone(),
                read_only,
                // A read-only mount of an RWO volume leaves it to its writer.
                exclusive: v.access_mode.exclusive() && !read_only,
            });
            out.push(VolumeBind {
                read_only,
                ..b.clone()
            });
        }
        if let Err(volume) = self.volumes.claim_mounts(&rows).await? {
            let holders: Vec<VolumeMountRow> = self
                .volumes
                .volume_mounts(&volume)
                .await?
                .into_iter()
                .filter(|m| m.exclusive)
                .collect();
            return Err(Error::Conflict(format!(
                "sandbox volume {volume} is RWO and already mounted read-write by {}",
                sandboxes_of(&holders)
            )));
        }
        Ok(out)
    }

    /// How a sandbox's spawn binds a volume: through the sandbox's id map,
    /// as its workspace is.
    pub(super) fn volume_bind(&self, b: &VolumeBind) -> BindMount {
        BindMount {
            source: self.storage.user_volume_dir(&b.sandboxvolume_id),
            target: b.mount_point.clone(),
            read_only: b.read_only,
            idmap: true,
        }
    }

    /// The socket of volume `id`'s file helper, started if it is not
    /// running.
    pub async fn volume_files(
        &self,
        id: &str,
        team: &str,
    ) -> Result<crate::initclient::InitSocket> {
        let v = self.local_volume(id, team).await?;
        if let Some(h) = crate::lock(&self.volume_helpers.running).get_mut(id)
            && matches!(h.child.try_wait(), Ok(None))
        {
            h.last_used = Instant::now();
            return Ok(crate::initclient::InitSocket::new(h.socket.clone()));
        }
        let spec = VolumeHelperSpec {
            root: self.storage.user_volume_dir(id),
            socket: self.storage.user_volume_socket(id),
            uid: v.default_uid as u32,
            gid: v.default_gid as u32,
        };
        let init_bin = self.init_bin.clone();
        let helper = tokio::task::spawn_blocking(move || start_helper(&init_bin, spec))
            .await
            .map_err(internal)??;
        let socket = helper.socket.clone();
        // Another call may have started one meanwhile: the newer replaces
        // it (the older is stopped as it drops).
        crate::lock(&self.volume_helpers.running).insert(id.to_string(), helper);
        Ok(crate::initclient::InitSocket::new(socket))
    }

    pub(super) fn stop_volume_helper(&self, id: &str) {
        let gone = crate::lock(&self.volume_helpers.running).remove(id);
        tokio::task::block_in_place(|| drop(gone));
    }

    /// Stops the file helpers unused for [`HELPER_IDLE`], now and then.
    pub fn spawn_volume_helper_reaper(self: &std::sync::Arc<Self>) {
        let lc = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HELPER_IDLE / 4).await;
                let Some(lc) = lc.upgrade() else { return };
                let idle: Vec<Helper> = {
                    let mut running = crate::lock(&lc.volume_helpers.running);
                    let ids: Vec<String> = running
                        .iter()
                        .filter(|(_, h)| h.last_used.elapsed() > HELPER_IDLE)
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.iter().filter_map(|id| running.remove(id)).collect()
                };
                if !idle.is_empty() {
                    let _ = tokio::task::spawn_blocking(move || drop(idle)).await;
                }
            }
        });
    }

    /// Removes volumes and volume snapshots on this node's pool that no
    /// row names (a deletion that failed half-way, a crash), and copies of
    /// volumes another node took over while this one was gone.
    pub async fn sweep_volumes(&self) -> Result<()> {
        let on_disk = self.storage.user_volume_ids();
        for id in on_disk {
            let row = self.volumes.get_volume(&id).await?;
            if row.as_ref().is_none_or(|v| v.node_id != self.node) {
                tracing::info!(volume = %id, "removing a sandbox volume no record names here");
                self.storage.remove_user_volume(&id).map_err(internal)?;
            }
        }
        for snap in self.storage.user_volume_snapshot_ids() {
            if self.volumes.get_volume_snapshot(&snap).await?.is_none() {
                tracing::info!(snapshot = %snap, "removing a volume snapshot no record names");
                self.storage
                    .remove_user_volume_snapshot(&snap)
                    .map_err(internal)?;
            }
        }
        Ok(())
    }
}

/// Starts `init volume-files` for `spec` and waits until it listens.
fn start_helper(init_bin: &std::path::Path, spec: VolumeHelperSpec) -> Result<Helper> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(init_bin)
        .arg("volume-files")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("start the volume's file helper: {e}")))?;
    let input = serde_json::to_vec(&spec).map_err(internal)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).map_err(internal)?;
    }
    let mut helper = Helper {
        child,
        socket: spec.socket,
        last_used: Instant::now(),
    };
    let stdout = helper.child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(HELPER_START) {
        Ok(line) if line.trim() == "ready" => Ok(helper),
        _ => {
            let _ = helper.child.kill();
            let mut why = String::new();
            if let Some(mut e) = helper.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            Err(internal(format!(
                "the volume's file helper did not start: {}",
                why.trim()
            )))
        }
    }
}

/// "sb-1, sb-2": the sandboxes holding `mounts`.
fn sandboxes_of(mounts: &[VolumeMountRow]) -> String {
    let mut ids: Vec<&str> = mounts.iter().map(|m| m.sandbox_id.as_str()).collect();
    ids.dedup();
    ids.join(", ")
}
