//! Workspaces in object storage (`serve --object-store`): a sandbox's
//! volume (its overlay upper dir and `/workspace`) is checkpointed with
//! `sandstone-checkpoint` when it pauses — before the row says `paused`,
//! so a paused sandbox always has a complete checkpoint and losing its node
//! loses nothing — and on demand while it runs (frozen for an O(1)
//! snapshot, uploaded from the snapshot). A node that has no volume for a
//! sandbox it now owns materialises the latest checkpoint before starting
//! it; a paused sandbox of a node whose lease ran out is taken over by the
//! node a call reaches.
//!
//! Checkpoint ids: the sandbox's ownership epoch (its fencing number, see
//! [`crate::lease`]), then the time in milliseconds, so the newest
//! checkpoint sorts last and nothing an old owner writes after losing the
//! sandbox is ever taken for the latest. A node that starts a sandbox from
//! a checkpoint of an older epoch publishes it again under its own epoch
//! (only a manifest: every chunk is there), so the old owner's late writes
//! are refused by the store too.

use super::{Error, Lifecycle, Result, internal};
use sandstone_checkpoint::{
    CheckpointId, CheckpointStats, Checkpoints, Manifest, RestoreStats, Restored, SandboxId,
};
use sandstone_db::{SandboxRow, SandboxStatus};
use std::collections::HashMap;
use std::sync::Mutex;

/// The object store, and each sandbox's last manifest on this node (so the
/// next checkpoint reads only files that changed).
pub struct Checkpointer {
    pub(super) store: Checkpoints,
    previous: Mutex<HashMap<String, Manifest>>,
}

impl Checkpointer {
    pub fn new(store: Checkpoints) -> Checkpointer {
        Checkpointer {
            store,
            previous: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn previous(&self, id: &str) -> Option<Manifest> {
        self.previous
            .lock()
            .expect("lock poisoned: a holder panicked")
            .get(id)
            .cloned()
    }

    /// Drops sandbox `id`'s manifest: it is deleted, or its copy here is.
    pub(super) fn forget(&self, id: &str) {
        self.previous
            .lock()
            .expect("lock poisoned: a holder panicked")
            .remove(id);
    }

    pub(super) fn remember(&self, id: &str, manifest: Manifest) {
        self.previous
            .lock()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), manifest);
    }
}

/// Checkpoints kept per sandbox: the newest, and the one before it.
const KEEP_GENERATIONS: usize = 2;

/// What [`Lifecycle::take_over`] did.
#[derive(Debug, PartialEq)]
pub enum Takeover {
    /// The sandbox is this node's now.
    Taken,
    /// Not taken: it is lost, and only a resume moves it. Its row can be
    /// read here; anything that needs it running says it is lost.
    Lost,
    /// Not taken: it still runs on its node as far as anyone knows, has no
    /// checkpoint, or another node won.
    No,
}

/// Why a call would take a sandbox over from a node whose lease ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Any call but the two below: a paused sandbox with a checkpoint
    /// moves; nothing else does.
    Serve,
    /// `resume`: a lost sandbox moves too, to start from its checkpoint.
    Resume,
    /// `DELETE`: anything moves, checkpoint or not: the caller gives up
    /// whatever only the dead node has.
    Delete,
}

/// A checkpoint taken.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Taken {
    pub sandbox_id: String,
    pub generation: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub stats: Stats,
}

/// What a checkpoint read and sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub files: u64,
    /// Files whose contents were not read again (unchanged since the last
    /// checkpoint on this node).
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Chunks the store already had.
    pub chunks_reused: u64,
}

impl From<&CheckpointStats> for Stats {
    fn from(s: &CheckpointStats) -> Stats {
        Stats {
            files: s.files,
            files_unchanged: s.files_unchanged,
            bytes_read: s.bytes_read,
            chunks_uploaded: s.chunks_uploaded,
            bytes_uploaded: s.bytes_uploaded,
            chunks_reused: s.chunks_reused,
        }
    }
}

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

pub(super) fn sandbox_id(id: &str) -> Result<SandboxId> {
    SandboxId::new(id).map_err(|e| Error::Invalid(e.to_string()))
}

impl Lifecycle {
    pub(super) fn checkpointer(&self) -> Result<&Checkpointer> {
        self.checkpoints.as_ref().ok_or_else(|| {
            Error::Conflict("this node has no object store (serve --object-store)".into())
        })
    }

    /// Checkpoints the tree at `tree` (the volume of sandbox `row`, or a
    /// snapshot of it) under the sandbox's epoch, and records when.
    async fn checkpoint_tree(&self, row: &SandboxRow, tree: &std::path::Path) -> Result<Taken> {
        let (created_at, stats) = self.upload_tree(&row.id, row.epoch, tree).await?;
        self.store
            .set_checkpointed(&row.fence(), Some(created_at))
            .await?;
        Ok(Taken {
            sandbox_id: row.id.clone(),
            generation: created_at as u64,
            created_at,
            stats,
        })
    }

    /// Checkpoints the tree at `tree` as `id` (a sandbox's or a sandbox
    /// volume's) under ownership `epoch`; returns when, and what it took.
    pub(super) async fn upload_tree(
        &self,
        id: &str,
        epoch: i64,
        tree: &std::path::Path,
    ) -> Result<(i64, Stats)> {
        let c = self.checkpointer()?;
        if !self.lease.holds() {
            return Err(Error::Unavailable(format!(
                "{id} is not checkpointed: this node's lease has lapsed"
            )));
        }
        let created_at = super::now_ms();
        let ckpt = CheckpointId::new(sandbox_id(id)?, epoch as u64, created_at as u64);
        let previous = c.previous(id);
        let done = c
            .store
            .checkpoint(tree, &ckpt, previous.as_ref())
            .await
            .map_err(|e| unavailable(&format!("checkpoint of {id}"), e))?;
        let stats = Stats::from(&done.stats);
        c.remember(id, done.manifest);
        // Older generations only keep packs from the collector; the one
        // before stays for a restore that read it just now.
        if let Err(e) = c.store.prune(&ckpt.sandbox, KEEP_GENERATIONS).await {
            tracing::warn!(object = %id, error = %e, "older checkpoints left in the object store");
        }
        tracing::info!(object = %id, uploaded = done.stats.bytes_uploaded, read = done.stats.bytes_read, "checkpointed");
        Ok((created_at, stats))
    }

    /// After a pause stopped the runtime: the volume as it is now. A node
    /// without an object store has nothing to do.
    pub(super) async fn checkpoint_paused(&self, row: &SandboxRow) -> Result<()> {
        if self.checkpoints.is_none() {
            return Ok(());
        }
        let tree = self.storage.paths(&row.id).data;
        self.checkpoint_tree(row, &tree).await.map(drop)
    }

    /// `POST …/checkpoint`: a paused sandbox's volume as it is; a running
    /// one frozen just long enough for an O(1) snapshot (a copy on the dir
    /// pool), uploaded from the snapshot while it runs on.
    pub async fn checkpoint(&self, id: &str) -> Result<Taken> {
        self.checkpointer()?;
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        match row.status {
            SandboxStatus::Paused => {
                let tree = self.storage.paths(id).data;
                self.checkpoint_tree(&row, &tree).await
            }
            SandboxStatus::Running => {
                let snap = format!("ckpt-{id}-{}", super::random_hex(4));
                tokio::task::block_in_place(|| {
                    self.frozen(id, || {
                        self.storage.snapshot_sandbox(id, &snap).map_err(internal)
                    })
                })?;
                let tree = self.storage.pool.snapshot_dir(&snap);
                let taken = self.checkpoint_tree(&row, &tree).await;
                if let Err(e) = self.storage.remove_snapshot(&snap) {
                    tracing::warn!(snapshot = %snap, error = %e, "checkpoint's snapshot left behind");
                }
                taken
            }
            other => Err(Error::Conflict(format!(
                "sandbox {id} is {other}; only a running or paused sandbox can be checkpointed"
            ))),
        }
    }

    /// Checkpoints every sandbox this node runs, every `every`, until the
    /// daemon stops (`serve --checkpoint-interval`): one at a time, so the
    /// uploads never take more than one core and one connection's worth.
    pub fn spawn_checkpointer(self: &std::sync::Arc<Self>, every: std::time::Duration) {
        let lc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                for id in lc.running_ids() {
                    if !lc.lease.holds() {
                        break;
                    }
                    match lc.checkpoint(&id).await {
                        Ok(t) => {
                            tracing::debug!(sandbox = %id, uploaded = t.stats.bytes_uploaded, "interval checkpoint")
                        }
                        // Paused or deleted since the list was taken.
                        Err(Error::Conflict(_) | Error::NotFound { .. }) => {}
                        Err(e) => {
                            tracing::warn!(sandbox = %id, error = %e, "interval checkpoint failed")
                        }
                    }
                }
                if lc.lease.holds() {
                    lc.checkpoint_local_volumes().await;
                }
            }
        });
    }

    /// Checkpoints, in the background, the sandboxes start-up recovery
    /// paused because their runtime was gone (see `recover`): until then
    /// they stay on this node, since their files may be newer than their
    /// last checkpoint.
    pub fn checkpoint_unsaved(self: &std::sync::Arc<Self>) {
        let ids = std::mem::take(
            &mut *self
                .unsaved
                .lock()
                .expect("lock poisoned: a holder panicked"),
        );
        if ids.is_empty() {
            return;
        }
        let lc = self.clone();
        tokio::spawn(async move {
            for id in ids {
                match lc.checkpoint(&id).await {
                    Ok(t) => {
                        tracing::info!(sandbox = %id, uploaded = t.stats.bytes_uploaded, "checkpointed after recovery")
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "not checkpointed after recovery; it stays on this node until its next pause")
                    }
                }
            }
        });
    }

    /// Makes sandbox `id`'s volume from its latest checkpoint when this
    /// node has none (it was made or last ran on another node). Nothing is
    /// left behind when it fails: a missing or corrupt chunk is found
    /// before the files are moved into the new volume, which is then
    /// removed.
    pub(super) async fn materialise(&self, row: &SandboxRow, disk: Option<u64>) -> Result<()> {
        let id = row.id.as_str();
        let paths = self.storage.paths(id);
        if paths.data.exists() {
            if !paths.data.join(STAGING).exists() {
                return Ok(());
            }
            // A restore a crash interrupted (its staging dir goes last):
            // what was moved in may be partial, so start again.
            tokio::task::block_in_place(|| self.storage.remove_sandbox(id)).map_err(internal)?;
        }
        let c = self.checkpointer().map_err(|_| {
            Error::Conflict(format!(
                "sandbox {id} has no volume on this node and there is no object store to fetch it from"
            ))
        })?;
        let sandbox = sandbox_id(id)?;
        let latest = c
            .store
            .latest(&sandbox)
            .await
            .map_err(|e| unavailable(&format!("list the checkpoints of sandbox {id}"), e))?
            .ok_or_else(|| {
                Error::Conflict(format!("sandbox {id} has no checkpoint to resume from"))
            })?;
        if !self.restore_over_retained(id, &latest, disk).await {
            self.volume_from_checkpoint(id, &latest, disk).await?;
        }
        if latest.epoch < row.epoch as u64 {
            // Published again under this owner's epoch (the baseline just
            // remembered makes it a manifest, no file is read again): from
            // now on the store refuses what the old owner may still write.
            self.checkpoint_tree(row, &paths.data).await?;
        }
        Ok(())
    }

    /// Makes sandbox `id`'s volume from checkpoint `ckpt` by bringing the
    /// copy this node retained when the sandbox moved away up to date (only
    /// what differs is written), then swapping it in. Whether it did: if
    /// there is no copy, or anything fails, the copy is dropped and the
    /// caller restores in full.
    async fn restore_over_retained(
        &self,
        id: &str,
        ckpt: &CheckpointId,
        disk: Option<u64>,
    ) -> bool {
        let Some(c) = &self.checkpoints else {
            return false;
        };
        let staged = match tokio::task::block_in_place(|| self.storage.stage_retained(id, disk)) {
            Ok(Some(staged)) => staged,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "retained copy not used");
                let _ = self.storage.discard_restore(id);
                return false;
            }
        };
        let hint = c.previous(id);
        let done = match c.store.restore_over(ckpt, &staged, hint.as_ref()).await {
            Ok(r) => tokio::task::block_in_place(|| self.storage.swap_in_restore(id))
                .map(|()| r)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(r) => {
                log_restore(id, &r.stats);
                c.remember(id, r.baseline);
                true
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "restore over the retained copy failed; restoring in full");
                let _ = self.storage.discard_restore(id);
                false
            }
        }
    }

    /// Makes sandbox `id`'s volume (there is none) from checkpoint `ckpt`
    /// (its own, or a snapshot's); removed again if that fails.
    pub(super) async fn volume_from_checkpoint(
        &self,
        id: &str,
        ckpt: &CheckpointId,
        disk: Option<u64>,
    ) -> Result<()> {
        let c = self.checkpointer()?;
        let made = tokio::task::block_in_place(|| self.storage.create_sandbox(id, disk))
            .map_err(internal)?;
        match self.fill_volume(id, ckpt, &made.data).await {
            Ok(r) => {
                c.remember(id, r.baseline);
                Ok(())
            }
            Err(e) => {
                let _ = self.storage.remove_sandbox(id);
                Err(e)
            }
        }
    }

    /// Restores checkpoint `ckpt` into `volume`, a new, empty volume for
    /// sandbox `id`, through a staging dir inside it: every chunk is
    /// verified before anything is moved into place. On failure the caller
    /// removes the volume.
    pub(super) async fn fill_volume(
        &self,
        id: &str,
        ckpt: &CheckpointId,
        volume: &std::path::Path,
    ) -> Result<Restored> {
        let c = self.checkpointer()?;
        let staging = volume.join(STAGING);
        let restored = c
            .store
            .restore(ckpt, &staging)
            .await
            .map_err(|e| unavailable(&format!("restore sandbox {id} from {ckpt}"), e))?;
        tokio::task::block_in_place(|| move_into_volume(&staging, volume))?;
        log_restore(id, &restored.stats);
        Ok(restored)
    }

    /// Takes sandbox `id` over from node `from`, whose lease has run out,
    /// by compare-and-set on its node and epoch, with a slot of this
    /// node's, as `intent` allows: a paused one with a checkpoint on any
    /// call; a lost one only to resume it (from a checkpoint: one without
    /// is a 409, since its own node, if it returns, still has everything it
    /// ran); anything to delete it.
    pub async fn take_over(&self, id: &str, from: &str, intent: Intent) -> Result<Takeover> {
        let Some(c) = &self.checkpoints else {
            return Ok(Takeover::No);
        };
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        if row.node_id.as_deref() != Some(from) {
            return Ok(Takeover::No);
        }
        let needs_checkpoint = match (row.status, intent) {
            (_, Intent::Delete) => false,
            // Only with a checkpoint of its files as they are (its pause's).
            (SandboxStatus::Paused, _) if row.checkpointed_at.is_some() => true,
            (SandboxStatus::Lost, Intent::Resume) => true,
            (SandboxStatus::Lost, Intent::Serve) => return Ok(Takeover::Lost),
            _ => return Ok(Takeover::No),
        };
        if needs_checkpoint {
            let has_checkpoint = c
                .store
                .latest(&sandbox_id(id)?)
                .await
                .map_err(|e| unavailable(&format!("list the checkpoints of sandbox {id}"), e))?
                .is_some();
            match (has_checkpoint, row.status) {
                (true, _) => {}
                (false, SandboxStatus::Lost) => {
                    return Err(Error::Conflict(format!(
                        "sandbox {id} was lost with node {from} and has no checkpoint: its files \
                         exist only there. Bring that node back to resume it, or delete it"
                    )));
                }
                (false, _) => return Ok(Takeover::No),
            }
        }
        let slot = self.take_slot()?;
        let taken = self
            .store
            .move_sandbox(&row.fence(), &self.node, slot)
            .await;
        if !matches!(taken, Ok(true)) {
            self.free_slot(slot);
        }
        if !taken? {
            return Ok(Takeover::No);
        }
        tracing::info!(sandbox = %id, from = %from, status = %row.status, "took over a sandbox of a node whose lease ran out");
        // Its volumes were on that node too (claims go where their volumes
        // are): they come along, from their checkpoints.
        for m in super::config_of(&row).mounts {
            if let Err(e) = self.take_over_volume(&m.sandboxvolume_id, from).await {
                tracing::warn!(sandbox = %id, volume = %m.sandboxvolume_id, error = %e, "its volume was not taken over");
            }
        }
        Ok(Takeover::Taken)
    }

    /// One round of the object store's collector (see
    /// `sandstone_checkpoint::gc`); a failure is logged and the next round
    /// tries again.
    pub async fn collect_garbage(&self) {
        let Some(c) = &self.checkpoints else {
            return;
        };
        match c.store.collect_garbage().await {
            Ok(s) => tracing::info!(
                manifests = s.manifests,
                packs = s.packs,
                marked = s.marked,
                deleted = s.deleted,
                "object store collected"
            ),
            Err(e) => tracing::warn!(error = %e, "object store collection failed"),
        }
    }

    /// Removes the checkpoints kept as `id` (a sandbox's or a sandbox
    /// volume's, after its delete). Best effort: what stays costs storage,
    /// never correctness.
    pub(super) async fn forget_checkpoints(&self, id: &str) {
        let Some(c) = &self.checkpoints else {
            return;
        };
        c.forget(id);
        let Ok(sandbox) = SandboxId::new(id) else {
            return;
        };
        match c.store.list(&sandbox).await {
            Ok(all) => {
                for ckpt in all {
                    if let Err(e) = c.store.delete(&ckpt).await {
                        tracing::warn!(sandbox = %id, error = %e, "checkpoint left in the object store");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "checkpoints left in the object store")
            }
        }
    }
}

/// Where a restore lands inside the new volume before its entries are
/// moved into place; removed last, so while it exists the volume is not
/// whole.
const STAGING: &str = ".restore";

fn log_restore(id: &str, s: &RestoreStats) {
    tracing::info!(sandbox = %id, stats = ?s, "materialised from its checkpoint");
}

/// Moves the restored tree's entries (`upper`, `work`, `workspace`) into
/// the new volume, replacing the empty ones it was made with. Renames
/// within one file system: the tree was verified whole before this.
fn move_into_volume(staging: &std::path::Path, volume: &std::path::Path) -> Result<()> {
    let entries = std::fs::read_dir(staging).map_err(internal)?;
    for entry in entries {
        let entry = entry.map_err(internal)?;
        let to = volume.join(entry.file_name());
        if to.is_dir() {
            std::fs::remove_dir(&to).map_err(internal)?;
        }
        std::fs::rename(entry.path(), &to).map_err(internal)?;
    }
    std::fs::remove_dir(staging).map_err(internal)
}
