//! The collector: deletes packs no manifest names, without ever deleting
//! one a node may still name in a new manifest.
//!
//! Nodes trust their local index (a chunk it knows is not uploaded again),
//! so a pack may not simply go once no manifest names it: a node could be
//! writing a manifest that names it right now. Two rounds, a grace period
//! apart ([`Options::gc_grace`], the same on every node):
//!
//! 1. **Mark.** List every manifest and take the union of the packs they
//!    name; write a marker `gc/<ms>` listing the packs no manifest names
//!    that are older than the grace period. Every node reads new markers
//!    at the start of every checkpoint (before its walk decides which
//!    chunks are stored), and again just before its manifest is stored,
//!    and forgets those packs: from then on it
//!    uploads their chunks again, and a checkpoint whose manifest would
//!    name one fails (`Error::Collected`) instead.
//! 2. **Sweep**, a grace period later: list the manifests again and delete
//!    the marked packs still unnamed, with their indexes, then the marker.
//!
//! A node that did not sync for half a grace period or more (it was down,
//! or idle) may have missed a marker that is gone by now (the sweep judges
//! a marker's age by the collector's clock, which may run ahead of this
//! node's); at its next sync it forgets every pack the store no longer
//! has. So clocks may differ by up to half the grace period. Packs still partly named
//! stay whole. Rounds are idempotent: two nodes collecting at once only
//! write two markers.

use crate::pack::{INDEX_FOLDER, PackId};
use crate::{Checkpoints, Result, StoreError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

pub(crate) const GC_FOLDER: &str = "gc/";
const PACK_FOLDER: &str = "packs/";
const MANIFEST_FOLDER: &str = "manifests/";

/// What a round of the collector did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Manifests in the store, and the packs they name.
    pub manifests: u64,
    pub named_packs: u64,
    /// Packs in the store when the round began.
    pub packs: u64,
    /// Packs marked in this round, and deleted in it (marked a grace
    /// period before).
    pub marked: u64,
    pub deleted: u64,
}

impl Checkpoints {
    /// One round of the collector: sweeps the markers at least a grace
    /// period old, then marks the packs no manifest names, unless a marker
    /// is still waiting. Run it every grace period or so, from any node.
    pub async fn collect_garbage(&self) -> Result<GcStats> {
        let now = sandstone_api::timefmt::now_ms() as u64;
        let grace = self.inner.gc_grace_ms;
        let blobs = &self.inner.blobs;
        let markers = self.markers().await?;
        let named = self.named_packs().await?;
        let mut stats = GcStats {
            manifests: named.1,
            named_packs: named.0.len() as u64,
            ..GcStats::default()
        };
        let named = named.0;
        let mut packs: HashSet<PackId> = blobs
            .list(PACK_FOLDER)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(PACK_FOLDER)?.parse().ok())
            .collect();
        stats.packs = packs.len() as u64;

        let (due, waiting): (Vec<_>, Vec<_>) = markers
            .into_iter()
            .partition(|(ms, _)| now.saturating_sub(*ms) >= grace);
        if !due.is_empty() {
            let mut indexes: HashMap<PackId, Vec<String>> = HashMap::new();
            for key in blobs.list(INDEX_FOLDER).await? {
                if let Some((_, pack)) = PackId::from_index_key(&key) {
                    indexes.entry(pack).or_default().push(key);
                }
            }
            for (_, key) in &due {
                for pack in self.marker(key).await? {
                    if named.contains(&pack) {
                        continue; // named again since: a chunk of it was reused
                    }
                    blobs.delete(&pack.key()).await?;
                    for index in indexes.remove(&pack).unwrap_or_default() {
                        blobs.delete(&index).await?;
                    }
                    packs.remove(&pack);
                    stats.deleted += 1;
                }
                blobs.delete(key).await?;
            }
        }
        if waiting.is_empty() {
            let unnamed: Vec<String> = packs
                .iter()
                .filter(|p| !named.contains(p) && p.made_ms() + grace <= now)
                .map(|p| p.to_string())
                .collect();
            if !unnamed.is_empty() {
                stats.marked = unnamed.len() as u64;
                let key = format!("{GC_FOLDER}{now:016}");
                blobs.put(&key, Bytes::from(unnamed.join("\n"))).await?;
            }
        }
        tracing::info!(stats = ?stats, "garbage collected");
        Ok(stats)
    }

    /// Every manifest's packs, and how many manifests there are.
    async fn named_packs(&self) -> Result<(HashSet<PackId>, u64)> {
        let keys = self.inner.blobs.list(MANIFEST_FOLDER).await?;
        let mut named = HashSet::new();
        let mut manifests = 0;
        for key in keys {
            let Some(id) = crate::CheckpointId::from_any_key(&key) else {
                continue;
            };
            let located = match self.load(&id).await {
                Ok((_, located)) => located,
                // Deleted since it was listed.
                Err(crate::Error::NoSuchCheckpoint { .. }) => continue,
                Err(e) => return Err(e),
            };
            manifests += 1;
            named.extend(located.values().map(|at| at.pack));
        }
        Ok((named, manifests))
    }

    /// The markers in the store, as (when written, key).
    async fn markers(&self) -> Result<Vec<(u64, String)>> {
        Ok(self
            .inner
            .blobs
            .list(GC_FOLDER)
            .await?
            .into_iter()
            .filter_map(|k| Some((k.strip_prefix(GC_FOLDER)?.parse().ok()?, k)))
            .collect())
    }

    /// The packs a marker lists (none if it is gone).
    async fn marker(&self, key: &str) -> Result<Vec<PackId>> {
        let data = match self.inner.blobs.get(key).await {
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            r => r?,
        };
        Ok(String::from_utf8_lossy(&data)
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect())
    }

    /// A node's half: forgets the packs of markers it has not read yet;
    /// and when its last sync is half a grace period old or more (or this
    /// is its first), every pack it knows that the store no longer has. The
    /// packs forgotten stay forgotten (their indexes are not read again).
    pub(crate) async fn forget_collected(&self) -> Result<()> {
        let inner = &self.inner;
        let now = sandstone_api::timefmt::now_ms() as u64;
        let last = inner.last_sync_ms.load(Ordering::Relaxed);
        let mut gone: HashSet<PackId> = HashSet::new();
        for (_, key) in self.markers().await? {
            if inner
                .markers_read
                .lock()
                .expect("lock poisoned")
                .contains(&key)
            {
                continue;
            }
            gone.extend(self.marker(&key).await?);
            inner
                .markers_read
                .lock()
                .expect("lock poisoned")
                .insert(key);
        }
        // Half the grace, not all of it: the sweep judges a marker's age by
        // the collector's clock, which may run ahead of this node's.
        if last == 0 || now.saturating_sub(last) >= inner.gc_grace_ms / 2 {
            let stored: HashSet<PackId> = inner
                .blobs
                .list(PACK_FOLDER)
                .await?
                .iter()
                .filter_map(|k| k.strip_prefix(PACK_FOLDER)?.parse().ok())
                .collect();
            gone.extend(
                inner
                    .index
                    .packs()
                    .into_iter()
                    .filter(|p| !stored.contains(p)),
            );
        }
        if !gone.is_empty() {
            let index = inner.clone();
            let forget = gone.clone();
            crate::blocking(move || {
                index
                    .index
                    .forget_packs(&forget)
                    .map_err(crate::io("forget collected packs in the local index"))
            })
            .await?;
            inner.forgotten.lock().expect("lock poisoned").extend(gone);
        }
        inner.last_sync_ms.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the collector has marked `pack` (as far as this node has
    /// read).
    pub(crate) fn is_collected(&self, pack: &PackId) -> bool {
        self.inner
            .forgotten
            .lock()
            .expect("lock poisoned")
            .contains(pack)
    }
}
