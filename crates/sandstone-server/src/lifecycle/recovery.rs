//! Start-up recovery: re-adopt sandboxes that kept running while the daemon
//! was down, finish or undo operations a crash interrupted, and remove
//! volumes and snapshots that no row owns (an interrupted create or copy).

use super::{Lifecycle, Runtime};
use sandstone_db::{PendingOp, SandboxRow, SandboxStatus};
use sandstone_runtime::cgroup::Cgroup;
use std::collections::{BTreeSet, HashSet};

impl Lifecycle {
    async fn alive(&self, id: &str) -> bool {
        super::ping(&self.storage.paths(id).socket)
            .await
            .unwrap_or(false)
    }

    pub async fn adopt(&self) -> anyhow::Result<()> {
        // Rows from before nodes existed are this data directory's own.
        let adopted = self.store.adopt_unowned(&self.node).await?;
        if adopted > 0 {
            tracing::info!(count = adopted, node = %self.node, "sandboxes from before nodes now belong to this node");
        }
        // Only this node's rows: the others' sandboxes run elsewhere, and
        // volumes here that no row of this node names (a sandbox that
        // moved away) are orphans.
        let rows = self.store.node_sandboxes(&self.node).await?;
        for row in &rows {
            match self.recover(row).await {
                // Marked lost (or taken) by another node while this one was
                // out, between the read and the write: not ours to run.
                Err(e)
                    if matches!(
                        e.downcast_ref::<sandstone_db::Error>(),
                        Some(sandstone_db::Error::Fenced { .. })
                    ) =>
                {
                    tracing::warn!(sandbox = %row.id, error = %e, "not re-adopted");
                    self.stop_runtime(&row.id, &self.cgroups.existing(&row.id));
                }
                other => other?,
            }
        }
        self.sweep_orphans(&rows).await;
        Ok(())
    }

    async fn recover(&self, row: &SandboxRow) -> anyhow::Result<()> {
        let id = row.id.as_str();
        let pending = row.pending_op;
        if row.status == SandboxStatus::Terminating {
            tracing::info!(sandbox = %id, "finishing an interrupted delete");
            return self.delete(id).await.map_err(anyhow::Error::from);
        }
        // Lost: this node was gone long enough for the others to give it
        // up, and none has taken it since. It is still this node's (under
        // the new epoch): what still runs is re-adopted, as if running.
        let running = matches!(row.status, SandboxStatus::Running | SandboxStatus::Lost);
        // Per operation a crash interrupted: whether a runtime may still be
        // there, and whether a live one is kept (re-adopted) or stopped. No
        // `_` arm: a new operation must decide here.
        let (was_running, keep_alive) = match pending {
            None => (running, true),
            // It may have launched the new generation before the crash.
            Some(PendingOp::Resume) => (true, true),
            // The generation was being ended: finish ending it.
            Some(PendingOp::Pause) => (running, false),
            // Copies leave the source as it was (a running one perhaps
            // still frozen, thawed below); restore only runs on a paused one.
            Some(PendingOp::Snapshot | PendingOp::Fork | PendingOp::Restore) => (running, true),
        };
        let cgroup = self.cgroups.existing(id);
        if let (SandboxStatus::Paused, None, Some(pid)) = (row.status, pending, row.pid) {
            return self.hold_again(row, pid as i32, cgroup).await;
        }
        if was_running && keep_alive {
            // An interrupted snapshot or fork may have left it frozen (and
            // a frozen init cannot answer the ping).
            let _ = cgroup.set_frozen(false);
        }
        if was_running && keep_alive && self.alive(id).await {
            let runtime = Runtime::new(
                id,
                row.pid.unwrap_or(0) as i32,
                super::config_of(row).env_vars,
                self.storage.paths(id).socket,
                cgroup,
            );
            let generation = if running {
                row.generation
            } else {
                row.generation + 1
            };
            self.store
                .set_running(&row.fence(), runtime.pid as i64, generation)
                .await?;
            if let Some(n) = &self.network {
                let policy = self.effective_policy(row).unwrap_or_default();
                n.register(row.slot, id, &policy)
                    .map_err(anyhow::Error::from)?;
            }
            self.adopt_runtime(id, runtime);
            tracing::info!(sandbox = %id, "re-adopted running sandbox");
            return Ok(());
        }
        if was_running || pending.is_some() {
            // Its runtime is gone (or was being stopped): the files are the
            // sandbox, so it is paused, not lost.
            self.stop_runtime(id, &cgroup);
            if row.status != SandboxStatus::Paused {
                tracing::warn!(sandbox = %id, pending = ?pending, "runtime gone after restart; sandbox paused");
                if self.checkpoints.is_some() {
                    // Its files may be newer than its last checkpoint: no
                    // other node may take it over from that one. It is
                    // checkpointed again once the node serves
                    // (`checkpoint_unsaved`).
                    self.store.set_checkpointed(&row.fence(), None).await?;
                    self.unsaved
                        .lock()
                        .expect("lock poisoned: a holder panicked")
                        .push(id.to_string());
                }
            }
            self.store
                .set_status(&row.fence(), SandboxStatus::Paused, None)
                .await?;
        }
        if pending.is_some() {
            self.store.set_pending(&row.fence(), None).await?;
        }
        Ok(())
    }

    /// A sandbox paused with its memory before the restart: held again
    /// while its init (`pid`) is still in its cgroup, frozen; else (the
    /// host restarted, say) plainly paused, its files being all there is.
    async fn hold_again(&self, row: &SandboxRow, pid: i32, cgroup: Cgroup) -> anyhow::Result<()> {
        let id = row.id.as_str();
        if cgroup.pids().contains(&pid) && cgroup.set_frozen(true).is_ok() {
            if let Some(n) = &self.network {
                let policy = self.effective_policy(row).unwrap_or_default();
                n.register(row.slot, id, &policy)
                    .map_err(anyhow::Error::from)?;
            }
            let runtime = Runtime::new(
                id,
                pid,
                super::config_of(row).env_vars,
                self.storage.paths(id).socket,
                cgroup,
            );
            let held = super::Held {
                runtime,
                watched: false,
            };
            crate::lock(&self.held).insert(id.to_string(), held);
            tracing::info!(sandbox = %id, "re-adopted a sandbox paused with its memory");
            return Ok(());
        }
        tracing::warn!(sandbox = %id, "its memory is gone after the restart; sandbox paused with its files");
        self.stop_runtime(id, &cgroup);
        self.store
            .set_status(&row.fence(), SandboxStatus::Paused, None)
            .await?;
        Ok(())
    }

    /// Removes every sandbox no row of this node owns: an interrupted
    /// create, or a warm-pool member of a run that crashed; the volume of
    /// one that moved to another node is set aside instead. Each is found by any trace
    /// of it (volume, cgroup, runtime directory), so a runtime whose volume
    /// is already gone is stopped too.
    pub(super) async fn sweep_orphans(&self, rows: &[SandboxRow]) {
        let owned: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let traces: BTreeSet<String> = self
            .storage
            .volume_ids("sandboxes")
            .into_iter()
            .chain(self.cgroups.children())
            .chain(self.storage.run_ids())
            .filter(|id| id.starts_with("sb-") && !id.contains('.'))
            .collect();
        for id in traces.iter().filter(|id| !owned.contains(id.as_str())) {
            self.stop_runtime(id, &self.cgroups.existing(id));
            // A sandbox that moved to another node while this one was out.
            if self.checkpoints.is_some()
                && matches!(self.store.sandbox_node(id).await, Ok(Some(owner)) if owner != self.node)
                && self.storage.paths(id).data.exists()
                && self.set_aside(id)
            {
                continue;
            }
            tracing::info!(sandbox = %id, "removing a sandbox no row owns");
            if let Err(e) = self.storage.remove_sandbox(id) {
                tracing::warn!(sandbox = %id, error = %e, "files of an unowned sandbox left behind");
            }
        }
        let snaps: HashSet<String> = match self.store.list_snapshots(None).await {
            Ok(s) => s.into_iter().map(|s| s.id).collect(),
            Err(_) => return,
        };
        for id in self.storage.volume_ids("snapshots") {
            if !snaps.contains(&id) {
                tracing::warn!(snapshot = %id, "removing a snapshot no row owns");
                let _ = self.storage.remove_snapshot(&id);
            }
        }
    }
}
