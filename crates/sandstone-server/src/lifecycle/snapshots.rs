//! Snapshots, restore and fork: O(1) copies of a sandbox's volume on the
//! btrfs pool. A running source is frozen for the instant of the copy so the
//! copy is consistent; `/tmp` (a tmpfs) is never part of it.
//!
//! With an object store (`serve --object-store`) they outlive their node:
//! a snapshot is also checkpointed, under its own id (`snap-…`, epoch 0: a
//! snapshot is written once, by one node, so there is nothing to fence),
//! before the call returns — a snapshot the caller was told about survives
//! the node — with the source's last manifest as the baseline, so files
//! unchanged since the source's last checkpoint on this node are not read
//! again (a btrfs snapshot keeps inode numbers, sizes and times). A node
//! without the snapshot's copy restores from, or creates from, its
//! checkpoint, verified whole before it replaces anything. A fork, a new
//! paused sandbox, is checkpointed before the call returns, like a pause,
//! so a node that dies takes nothing with it. One machine with no object
//! store does none of this.

use super::checkpoint::{sandbox_id, unavailable};
use super::{Error, Result};
use super::{Lifecycle, config_of, internal, random_hex};
use sandstone_api::SandboxConfig;
use sandstone_api::timefmt::now_ms;
use sandstone_checkpoint::{CheckpointId, Manifest};
use sandstone_db::{PendingOp, SandboxRow, SandboxStatus, SnapshotRow};
use sandstone_runtime::fault;

impl Lifecycle {
    pub(super) fn disk_cap(
        &self,
        template: &str,
        res: Option<&sandstone_api::Resources>,
    ) -> Result<Option<u64>> {
        let t = self.template(template)?;
        self.disk_limit(&t, res)
    }

    /// Runs `copy` with the sandbox's processes frozen when it is running.
    pub(super) fn frozen<T>(&self, id: &str, copy: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(rt) = self.runtime(id) else {
            return copy();
        };
        // A freeze that did not complete in time must not leave it frozen.
        let result = rt
            .cgroup
            .set_frozen(true)
            .map_err(internal)
            .and_then(|()| copy());
        if let Err(e) = rt.cgroup.set_frozen(false) {
            tracing::error!(sandbox = %id, error = %e, "could not thaw after a snapshot");
        }
        result
    }

    /// Captures sandbox `id`'s files (running: frozen for the moment it
    /// takes, as a snapshot is; or paused) as template `template`, whose
    /// sandboxes start with them over the sandbox's own template. O(1) on
    /// the btrfs pool. A retry with the `idempotency_key` of the capture
    /// that made `template` from `id` gets that template again.
    pub async fn capture_template(
        &self,
        id: &str,
        template: &str,
        idempotency_key: Option<&str>,
    ) -> Result<sandstone_volumes::Template> {
        sandstone_volumes::check_id(template)
            .map_err(|e| Error::Invalid(format!("invalid field `template_id`: {e}")))?;
        if let Some(key) = idempotency_key
            && let Some(done) = self.storage.captured_from(template)
            && done.idempotency_key.as_deref() == Some(key)
        {
            if done.sandbox != id {
                return Err(Error::Conflict(format!(
                    "Idempotency-Key {key:?} made template {template} from sandbox {}, not {id}",
                    done.sandbox
                )));
            }
            return self.storage.template(template).map_err(internal);
        }
        self.capture_as(id, template, idempotency_key).await
    }

    /// [`Lifecycle::capture_template`] under an id the caller chose (the
    /// build cache's own, which users may not take).
    pub(super) async fn capture_as(
        &self,
        id: &str,
        template: &str,
        idempotency_key: Option<&str>,
    ) -> Result<sandstone_volumes::Template> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        Self::source(row.status, id)?;
        self.source_volume(&row).await?;
        tokio::task::block_in_place(|| {
            self.frozen(id, || {
                self.storage
                    .capture_template(id, template, &row.template, idempotency_key)
                    .map_err(|e| match e {
                        sandstone_volumes::Error::TemplateExists(_) => {
                            Error::Conflict(e.to_string())
                        }
                        sandstone_volumes::Error::InvalidTemplateId(_) => {
                            Error::Invalid(format!("invalid field `template_id`: {e}"))
                        }
                        other => internal(other),
                    })
            })
        })?;
        self.storage.template(template).map_err(internal)
    }

    /// A paused source taken over from a dead node and not resumed since
    /// has no volume here yet: its checkpoint is fetched first (nothing to
    /// do when the volume is here, or without an object store).
    async fn source_volume(&self, row: &SandboxRow) -> Result<()> {
        if self.checkpoints.is_none() {
            return Ok(());
        }
        let disk = self.disk_cap(&row.template, config_of(row).resources.as_ref())?;
        self.materialise(row, disk).await
    }

    fn source(status: SandboxStatus, id: &str) -> Result<()> {
        if status.can_snapshot() {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "sandbox {id} is {status}; snapshots need a running or paused sandbox"
        )))
    }

    pub async fn snapshot(
        &self,
        id: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<SnapshotRow> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        Self::source(row.status, id)?;
        self.source_volume(&row).await?;
        let snap = SnapshotRow {
            id: format!("snap-{}", random_hex(8)),
            sandbox_id: id.to_string(),
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            created_at: now_ms(),
            expires_at: None,
            template: row.template.clone(),
            team_id: row.team_id.clone(),
        };
        let fence = row.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Snapshot))
            .await?;
        let copied = tokio::task::block_in_place(|| {
            self.frozen(id, || {
                self.storage
                    .snapshot_sandbox(id, &snap.id)
                    .map_err(internal)
            })
        });
        fault::crash("snapshot.after_copy");
        let recorded = async {
            copied?;
            self.checkpoint_snapshot(id, &snap.id).await?;
            self.store.insert_snapshot(&snap).await.map_err(Error::from)
        }
        .await;
        if recorded.is_err() {
            let _ = self.storage.remove_snapshot(&snap.id);
            self.forget_checkpoints(&snap.id).await;
        }
        self.store.set_pending(&fence, None).await?;
        recorded.map(|()| snap)
    }

    /// Uploads snapshot `snap` of sandbox `source` (nothing to do without
    /// an object store).
    async fn checkpoint_snapshot(&self, source: &str, snap: &str) -> Result<()> {
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let tree = self.storage.pool.snapshot_dir(snap);
        let ckpt = CheckpointId::new(sandbox_id(snap)?, 0, super::now_ms() as u64);
        let done = c
            .store
            .checkpoint(&tree, &ckpt, c.previous(source).as_ref())
            .await
            .map_err(|e| unavailable(&format!("snapshot of sandbox {source} not taken"), e))?;
        tracing::info!(sandbox = %source, snapshot = %snap, uploaded = done.stats.bytes_uploaded, read = done.stats.bytes_read, "snapshot checkpointed");
        Ok(())
    }

    /// The checkpoint of snapshot `snap`, for a node that does not hold
    /// its copy.
    async fn snapshot_checkpoint(&self, snap: &str) -> Result<CheckpointId> {
        let c = self.checkpointer()?;
        c.store
            .latest(&sandbox_id(snap)?)
            .await
            .map_err(|e| unavailable(&format!("list the checkpoints of snapshot {snap}"), e))?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "snapshot {snap} is not on this node and has no checkpoint in the object \
                     store (it was taken before there was one, or its node has not uploaded it)"
                ))
            })
    }

    /// Whether this node must fetch snapshot `snap` from the object store:
    /// it has one and no copy of the snapshot. Without an object store the
    /// local copy is used as ever (and its absence is the copy's error).
    fn snapshot_elsewhere(&self, snap: &str) -> bool {
        self.checkpoints.is_some() && !self.storage.pool.snapshot_dir(snap).exists()
    }

    /// A new volume for sandbox `id` from snapshot `snap`: a copy of the
    /// local snapshot, or its checkpoint restored.
    pub(super) async fn volume_from_snapshot(
        &self,
        snap: &str,
        id: &str,
        disk: Option<u64>,
    ) -> Result<()> {
        if !self.snapshot_elsewhere(snap) {
            // A copy with the dir driver can take a while: off the async workers.
            return tokio::task::block_in_place(|| {
                self.storage.sandbox_from_snapshot(snap, id, disk)
            })
            .map(drop)
            .map_err(internal);
        }
        let ckpt = self.snapshot_checkpoint(snap).await?;
        self.volume_from_checkpoint(id, &ckpt, disk).await
    }

    pub async fn delete_snapshot(&self, snap: &str) -> Result<()> {
        self.store
            .get_snapshot(snap)
            .await
            .map_err(|_| Error::not_found("snapshot", snap))?;
        self.store.delete_snapshot(snap).await?;
        self.forget_checkpoints(snap).await;
        self.storage.remove_snapshot(snap).map_err(internal)
    }

    /// Replaces a paused sandbox's files with a snapshot's.
    pub async fn restore(&self, id: &str, snap: &str) -> Result<SandboxRow> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        // Another team's snapshot is one that does not exist.
        self.store
            .get_snapshot(snap)
            .await
            .ok()
            .filter(|s| s.team_id == row.team_id)
            .ok_or_else(|| Error::not_found("snapshot", snap))?;
        if !row.status.can_restore() {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}: pause it before restoring a snapshot onto it",
                row.status
            )));
        }
        if self.holds_memory(id) {
            return Err(Error::Conflict(format!(
                "sandbox {id} is paused with its memory, and its processes have its files open: resume it and pause it without memory first"
            )));
        }
        let disk = self.disk_cap(&row.template, config_of(&row).resources.as_ref())?;
        // Fetched before anything changes: a snapshot missing from the
        // store is refused with the sandbox as it was.
        let remote = match self.snapshot_elsewhere(snap) {
            true => Some(self.snapshot_checkpoint(snap).await?),
            false => None,
        };
        let fence = row.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Restore))
            .await?;
        let restored = match &remote {
            Some(ckpt) => self.restore_from_checkpoint(id, ckpt, disk).await,
            None => tokio::task::block_in_place(|| self.storage.restore_sandbox(id, snap, disk))
                .map_err(internal)
                .map(|()| None),
        };
        self.store.set_pending(&fence, None).await?;
        let baseline = restored?;
        self.checkpoint_restored(&row, snap, baseline).await?;
        self.row(id).await
    }

    /// Replaces sandbox `id`'s volume (if this node has one) with
    /// checkpoint `ckpt`, restored into a staged volume and verified
    /// before the swap; on failure the old volume is untouched. Returns
    /// the restore's baseline manifest.
    async fn restore_from_checkpoint(
        &self,
        id: &str,
        ckpt: &CheckpointId,
        disk: Option<u64>,
    ) -> Result<Option<Manifest>> {
        let staged = tokio::task::block_in_place(|| self.storage.stage_restore(id, disk))
            .map_err(internal)?;
        let filled = self.fill_volume(id, ckpt, &staged).await;
        let swapped = filled.and_then(|r| {
            tokio::task::block_in_place(|| self.storage.swap_in_restore(id))
                .map_err(internal)
                .map(|()| r)
        });
        match swapped {
            Ok(r) => Ok(Some(r.baseline)),
            Err(e) => {
                if let Err(e) = self.storage.discard_restore(id) {
                    tracing::warn!(sandbox = %id, error = %e, "a failed restore's staged volume left behind");
                }
                Err(e)
            }
        }
    }

    /// After a restore: a paused sandbox has a checkpoint of its files as
    /// they are, so the restored ones are uploaded (only what the store
    /// lacks: the snapshot's chunks are there). The baseline is the
    /// restore's manifest, or the snapshot's (a btrfs copy of it keeps its
    /// inode numbers and times), so unchanged files are not read again.
    async fn checkpoint_restored(
        &self,
        row: &SandboxRow,
        snap: &str,
        baseline: Option<Manifest>,
    ) -> Result<()> {
        let id = row.id.as_str();
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let baseline = match baseline {
            Some(m) => Some(m),
            None => match c.store.latest(&sandbox_id(snap)?).await {
                Ok(Some(ckpt)) => c.store.manifest(&ckpt).await.ok(),
                _ => None,
            },
        };
        if let Some(m) = baseline {
            c.remember(id, m);
        }
        self.checkpoint_paused(row).await.map_err(|e| {
            Error::Unavailable(format!(
                "sandbox {id} was restored from snapshot {snap} on this node, but its checkpoint failed \
                 (losing this node would lose the restore): {e}"
            ))
        })
    }

    /// A new paused sandbox sharing the source's files copy-on-write. It
    /// gets no processes and no credentials of the source: only files.
    pub async fn fork(
        &self,
        id: &str,
        ttl: Option<u64>,
        hard_ttl: Option<u64>,
    ) -> Result<SandboxRow> {
        let _guard = self.lock(id).await;
        let src = self.row(id).await?;
        Self::source(src.status, id)?;
        self.source_volume(&src).await?;
        let mut config: SandboxConfig = config_of(&src);
        // Volumes are not the sandbox's files: a fork starts without them
        // (an RWO volume could not be mounted twice anyway).
        config.mounts.clear();
        config.ttl = ttl.or(config.ttl);
        config.hard_ttl = hard_ttl.or(config.hard_ttl);
        let disk = self.disk_cap(&src.template, config.resources.as_ref())?;
        let slot = self.take_slot()?;
        let new_id = format!("sb-{}", random_hex(8));
        let fence = src.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Fork))
            .await?;
        let copied = tokio::task::block_in_place(|| {
            self.frozen(id, || {
                self.storage
                    .fork_sandbox(id, &new_id, disk)
                    .map_err(internal)
            })
        });
        fault::crash("fork.after_copy");
        let now = now_ms();
        let row = SandboxRow {
            id: new_id.clone(),
            template: src.template.clone(),
            status: SandboxStatus::Paused,
            config: serde_json::to_value(&config).map_err(internal)?,
            slot,
            pid: None,
            generation: 0,
            created_at: now,
            updated_at: now,
            pending_op: None,
            status_reason: None,
            node_id: Some(self.node.clone()),
            epoch: 0,
            checkpointed_at: None,
            team_id: src.team_id.clone(),
        };
        let recorded = match copied {
            // Its configuration names its parent's receiver: the secret
            // goes with it, before the row makes it visible.
            Ok(_) => match self.webhooks.copy_secret(id, &new_id).await {
                Ok(()) => self.store.insert_sandbox(&row).await.map_err(Error::from),
                Err(e) => Err(internal(e)),
            },
            Err(e) => Err(e),
        };
        self.store.set_pending(&fence, None).await?;
        if let Err(e) = recorded {
            let _ = self.storage.remove_sandbox(&new_id);
            self.free_slot(slot);
            return Err(e);
        }
        if let Err(e) = self.checkpoint_fork(id, &row).await {
            // A fork that could not be made durable is not made: a paused
            // sandbox always has its checkpoint.
            let _ = self.store.delete_sandbox(&row.fence()).await;
            let _ = self.storage.remove_sandbox(&new_id);
            self.forget_checkpoints(&new_id).await;
            self.free_slot(slot);
            return Err(e);
        }
        Ok(row)
    }

    /// Checkpoints `fork` of `src` (nothing to do without an object
    /// store), with the source's last manifest as its baseline: a btrfs
    /// copy keeps inode numbers and times, so unchanged files are not read.
    async fn checkpoint_fork(&self, src: &str, fork: &SandboxRow) -> Result<()> {
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        if let Some(m) = c.previous(src) {
            c.remember(&fork.id, m);
        }
        self.checkpoint_paused(fork).await
    }
}
