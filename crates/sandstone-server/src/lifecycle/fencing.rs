//! What a node does about its sandboxes when its lease lapses and after
//! ([`crate::lease`] explains the lease): it freezes every sandbox it runs
//! the moment the hold runs out, and once a renewal succeeds it keeps only
//! what is still its own, stopping (and, for what moved away, setting
//! aside) the rest before it serves anything again.

use super::Lifecycle;
use sandstone_db::SandboxStatus;
use std::collections::HashMap;

/// Retained copies a node keeps (see [`Lifecycle::set_aside`]): each is a
/// whole volume on the pool, so few; the most recently set aside win.
const MAX_RETAINED: usize = 8;

impl Lifecycle {
    /// Freezes every sandbox this node runs once its lease has lapsed
    /// (another node may soon start any of them from a checkpoint). Frozen,
    /// not killed: when the renewal comes back and they are still this
    /// node's, [`Lifecycle::reconcile`] thaws them.
    pub async fn fence_check(&self) {
        let mut frozen = self.fenced.lock().await;
        if !*frozen && self.lease.lapse() {
            tracing::error!(
                "this node's lease has lapsed: its sandboxes are frozen and their calls refused until it is renewed"
            );
            tokio::task::block_in_place(|| self.freeze_all());
            *frozen = true;
        }
    }

    fn freeze_all(&self) {
        let runtimes: Vec<(String, super::Runtime)> = self
            .runtimes
            .read()
            .expect("lock poisoned: a holder panicked")
            .iter()
            .map(|(id, rt)| (id.clone(), rt.clone()))
            .collect();
        for (id, rt) in runtimes {
            if let Err(e) = rt.cgroup.set_frozen(true) {
                // Killing is the safe fallback: two copies must never run.
                tracing::error!(sandbox = %id, error = %e, "cannot freeze a sandbox after a lease lapse; stopping it");
                let cgroup = self.take_cgroup(&id);
                self.stop_runtime(&id, &cgroup);
            }
        }
    }

    /// After a lapse, with the lease renewed: keeps (and thaws) each
    /// runtime whose row still says this node runs it, or was marked lost
    /// and taken by nobody since; stops the others, removing the files of
    /// those another node took. Then it removes the volumes of the paused
    /// ones that moved away while it was out.
    pub async fn reconcile(&self) -> sandstone_db::Result<()> {
        // Not while the watcher freezes: what it froze is thawed here.
        let mut frozen = self.fenced.lock().await;
        let rows = self.store.node_sandboxes(&self.node).await?;
        let mine: HashMap<&str, &sandstone_db::SandboxRow> =
            rows.iter().map(|r| (r.id.as_str(), r)).collect();
        // Held with their memory: another node that took one resumes its
        // files, so what is frozen here is of no use any more.
        let held: Vec<String> = crate::lock(&self.held).keys().cloned().collect();
        for id in held
            .into_iter()
            .filter(|id| !mine.contains_key(id.as_str()))
        {
            let _guard = self.lock(&id).await;
            let cgroup = self.take_cgroup(&id);
            tokio::task::block_in_place(|| self.stop_runtime(&id, &cgroup));
            tracing::warn!(sandbox = %id, "its held memory dropped: another node took it while this node's lease had lapsed");
        }
        for id in self.running_ids() {
            let _guard = self.lock(&id).await;
            let row = mine.get(id.as_str());
            if let Some(r) = row
                && self.still_runs(r).await
            {
                if let Some(rt) = self.runtime(&id)
                    && let Err(e) = rt.cgroup.set_frozen(false)
                {
                    tracing::error!(sandbox = %id, error = %e, "cannot thaw a sandbox after a lease lapse");
                }
                continue;
            }
            let cgroup = self.take_cgroup(&id);
            tokio::task::block_in_place(|| self.stop_runtime(&id, &cgroup));
            self.activity
                .lock()
                .expect("lock poisoned: a holder panicked")
                .remove(&id);
            if row.is_none() {
                tracing::warn!(sandbox = %id, "stopped: another node took it while this node's lease had lapsed");
                self.set_aside(&id);
            }
        }
        self.remove_moved(&rows).await;
        *frozen = false;
        self.lease.checked();
        Ok(())
    }

    /// Whether this node's runtime of `row` (a row of this node's) may go
    /// on: it still says running, or it was marked lost and nobody took it
    /// since, so this node takes it back under the new epoch.
    async fn still_runs(&self, row: &sandstone_db::SandboxRow) -> bool {
        match row.status {
            SandboxStatus::Running => true,
            SandboxStatus::Lost => {
                let Some(rt) = self.runtime(&row.id) else {
                    return false;
                };
                match self
                    .store
                    .set_running(&row.fence(), rt.pid as i64, row.generation)
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(sandbox = %row.id, "marked lost while this node's lease had lapsed; nobody took it, so it runs on here");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %row.id, error = %e, "marked lost while this node's lease had lapsed; stopped");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// Sets aside this node's volumes of sandboxes that now belong to
    /// another node (taken over, or moved away by a drain), given this
    /// node's rows.
    /// Only those: a volume with no row at all may be a create in flight
    /// or a warm-pool member (the start-up sweep handles the rest).
    pub async fn remove_moved(&self, mine: &[sandstone_db::SandboxRow]) -> usize {
        let mine: std::collections::HashSet<&str> = mine.iter().map(|r| r.id.as_str()).collect();
        let mut removed = 0;
        for id in self.storage.volume_ids("sandboxes") {
            if id.contains('.') || mine.contains(id.as_str()) || self.runs(&id) {
                continue;
            }
            match self.store.sandbox_node(&id).await {
                Ok(Some(owner)) if owner != self.node => {}
                _ => continue,
            }
            let _guard = self.lock(&id).await;
            if self.set_aside(&id) {
                removed += 1;
            }
        }
        removed
    }

    /// Takes the volume of sandbox `id`, which is not this node's any
    /// more, out of use: kept aside as a retained copy when there is an
    /// object store to bring it up to date from, else removed. Whether it
    /// went.
    pub(super) fn set_aside(&self, id: &str) -> bool {
        let gone = tokio::task::block_in_place(|| match self.checkpoints {
            Some(_) => self.storage.retain_sandbox(id),
            None => self.storage.remove_sandbox(id),
        });
        match gone {
            Ok(()) => {
                tracing::info!(sandbox = %id, retained = self.checkpoints.is_some(), "set aside this node's copy of a sandbox another node owns now");
                true
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "copy of a sandbox that moved away left behind");
                false
            }
        }
    }

    /// Keeps the [`MAX_RETAINED`] most recent retained copies of sandboxes
    /// other nodes own, and removes the rest: older ones, and copies of
    /// sandboxes deleted since or back on this node. A copy whose owner
    /// cannot be read now is kept for the next round.
    pub async fn prune_retained(&self) {
        for (n, id) in self.storage.retained_ids().into_iter().enumerate() {
            let (keep, ours) = match self.store.sandbox_node(&id).await {
                Ok(Some(owner)) => (owner != self.node && n < MAX_RETAINED, owner == self.node),
                Ok(None) => (false, false),
                Err(_) => continue,
            };
            if keep {
                continue;
            }
            // Its manifest here described the copy (the hint of a restore
            // over it); a sandbox this node runs again keeps its own.
            if let (Some(c), false) = (&self.checkpoints, ours) {
                c.forget(&id);
            }
            match tokio::task::block_in_place(|| self.storage.remove_retained(&id)) {
                Ok(()) => tracing::debug!(sandbox = %id, "retained copy removed"),
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "retained copy left behind"),
            }
        }
    }
}
