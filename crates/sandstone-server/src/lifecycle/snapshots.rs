//! Snapshots, restore and fork: O(1) copies of a sandbox's volume on the
//! btrfs pool. A running source is frozen for the instant of the copy so the
//! copy is consistent; `/tmp` (a tmpfs) is never part of it.

use super::{Error, Result};
use super::{Lifecycle, config_of, internal, random_hex};
use sandstone_api::SandboxConfig;
use sandstone_api::timefmt::now_ms;
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
        let snap = SnapshotRow {
            id: format!("snap-{}", random_hex(8)),
            sandbox_id: id.to_string(),
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            created_at: now_ms(),
            expires_at: None,
            template: row.template.clone(),
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
        let recorded = match copied {
            Ok(()) => self.store.insert_snapshot(&snap).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if recorded.is_err() {
            let _ = self.storage.remove_snapshot(&snap.id);
        }
        self.store.set_pending(&fence, None).await?;
        recorded.map(|()| snap)
    }

    pub async fn delete_snapshot(&self, snap: &str) -> Result<()> {
        self.store
            .get_snapshot(snap)
            .await
            .map_err(|_| Error::not_found("snapshot", snap))?;
        self.store.delete_snapshot(snap).await?;
        self.storage.remove_snapshot(snap).map_err(internal)
    }

    /// Replaces a paused sandbox's files with a snapshot's.
    pub async fn restore(&self, id: &str, snap: &str) -> Result<SandboxRow> {
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        self.store
            .get_snapshot(snap)
            .await
            .map_err(|_| Error::not_found("snapshot", snap))?;
        if !row.status.can_restore() {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}: pause it before restoring a snapshot onto it",
                row.status
            )));
        }
        let disk = self.disk_cap(&row.template, config_of(&row).resources.as_ref())?;
        let fence = row.fence();
        self.store
            .set_pending(&fence, Some(PendingOp::Restore))
            .await?;
        let restored = tokio::task::block_in_place(|| self.storage.restore_sandbox(id, snap, disk));
        self.store.set_pending(&fence, None).await?;
        restored.map_err(internal)?;
        self.row(id).await
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
        let mut config: SandboxConfig = config_of(&src);
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
        };
        let recorded = match copied {
            Ok(_) => self.store.insert_sandbox(&row).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        self.store.set_pending(&fence, None).await?;
        if let Err(e) = recorded {
            let _ = self.storage.remove_sandbox(&new_id);
            self.free_slot(slot);
            return Err(e);
        }
        Ok(row)
    }
}
