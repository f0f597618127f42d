//! Sandbox volumes (`/api/v1/sandboxvolumes`): workspaces that outlive,
//! detach from and move between sandboxes. Each is a pool volume of its
//! own (`<pool>/volumes/<id>`, its files at its root; a btrfs subvolume
//! with a qgroup cap on the btrfs pool), stored unshifted like a sandbox's
//! own volume, so that it mounts into any sandbox through that sandbox's id
//! map. Snapshots (`<pool>/volume-snapshots/<id>`), forks and restores are
//! subvolume snapshots: O(1) on btrfs, a copy with the `dir` driver.

use crate::{Result, Storage, io};
use std::path::PathBuf;

/// Who owns a new volume's root (ids as the sandboxes that mount it see
/// them; on disk they are the same, the volume being unshifted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Storage {
    pub fn user_volume_dir(&self, id: &str) -> PathBuf {
        self.pool.user_volume_dir(id)
    }

    /// Where the file helper of volume `id` listens (a directory only
    /// host root may enter).
    pub fn user_volume_socket(&self, id: &str) -> PathBuf {
        self.root.join("volume-files").join(format!("{id}.sock"))
    }

    /// Ids of the volumes on this pool (without the ones a restore set
    /// aside).
    pub fn user_volume_ids(&self) -> Vec<String> {
        self.pool
            .volumes("volumes")
            .into_iter()
            .filter(|n| !n.contains('.'))
            .collect()
    }

    pub fn user_volume_snapshot_ids(&self) -> Vec<String> {
        self.pool.volumes("volume-snapshots")
    }

    /// An empty volume capped at `limit` bytes (where the pool caps), its
    /// root owned by `owner`.
    pub fn create_user_volume(&self, id: &str, limit: Option<u64>, owner: Owner) -> Result<()> {
        let dir = self.pool.user_volume_dir(id);
        self.pool.create_volume(&dir, limit)?;
        let owned = std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            })
            .map_err(io("own a new volume"));
        if let Err(e) = owned {
            let _ = self.pool.remove_volume(&dir);
            return Err(e);
        }
        Ok(())
    }

    /// A new volume holding snapshot `snap`'s files.
    pub fn user_volume_from_snapshot(
        &self,
        snap: &str,
        id: &str,
        limit: Option<u64>,
    ) -> Result<()> {
        let from = self.pool.user_volume_snapshot_dir(snap);
        self.pool
            .copy_volume(&from, &self.pool.user_volume_dir(id), false, limit)
    }

    /// A new volume sharing `src`'s files copy-on-write.
    pub fn fork_user_volume(&self, src: &str, id: &str, limit: Option<u64>) -> Result<()> {
        let from = self.pool.user_volume_dir(src);
        self.pool
            .copy_volume(&from, &self.pool.user_volume_dir(id), false, limit)
    }

    /// A read-only snapshot of volume `id`.
    pub fn snapshot_user_volume(&self, id: &str, snap: &str) -> Result<()> {
        self.pool.copy_volume(
            &self.pool.user_volume_dir(id),
            &self.pool.user_volume_snapshot_dir(snap),
            true,
            None,
        )
    }

    /// Replaces volume `id`'s files with snapshot `snap`'s: a copy is made
    /// beside it and swapped in by rename (a crash mid-way is finished or
    /// undone at the next [`Storage::open`]).
    pub fn restore_user_volume(&self, id: &str, snap: &str, limit: Option<u64>) -> Result<()> {
        let live = self.pool.user_volume_dir(id);
        let staged = live.with_file_name(format!("{id}{}", crate::RESTORING));
        self.pool.remove_volume(&staged)?;
        self.pool.copy_volume(
            &self.pool.user_volume_snapshot_dir(snap),
            &staged,
            false,
            limit,
        )?;
        self.swap_in(&live)
    }

    pub fn remove_user_volume(&self, id: &str) -> Result<()> {
        self.pool.remove_volume(&self.pool.user_volume_dir(id))
    }

    pub fn remove_user_volume_snapshot(&self, snap: &str) -> Result<()> {
        self.pool
            .remove_volume(&self.pool.user_volume_snapshot_dir(snap))
    }

    /// Bytes volume `id` holds.
    pub fn user_volume_usage(&self, id: &str) -> u64 {
        self.pool.usage(&self.pool.user_volume_dir(id))
    }
}
