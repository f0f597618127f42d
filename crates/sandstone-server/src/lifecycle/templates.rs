//! Templates in the object store (`serve --object-store`): each node
//! publishes the templates `sandstone setup` built on it, as checkpoints
//! named `tmpl-<id>` (the same chunks, encryption and verification as
//! volumes; chunks shared between templates are stored once), and fetches
//! a template another node announces and it lacks, so any node can run any
//! template without building it. A fetched template is restored beside the
//! others, verified whole, and put in place by one rename; placement sees
//! it at the node's next announcement.

use super::checkpoint::unavailable;
use super::{Lifecycle, Result, internal};
use sandstone_checkpoint::{CheckpointId, SandboxId};
use sandstone_volumes::BuiltTemplate;

fn store_id(t: BuiltTemplate) -> Result<SandboxId> {
    SandboxId::new(format!("tmpl-{}", t.id())).map_err(internal)
}

impl Lifecycle {
    /// Publishes each template built here that the store does not have
    /// yet; returns those now in the store (published before, or now).
    pub async fn publish_templates(&self) -> Result<Vec<BuiltTemplate>> {
        let c = self.checkpointer()?;
        let mut stored = Vec::new();
        for t in BuiltTemplate::ALL {
            let Some(dir) = self.storage.built_dir(t) else {
                continue;
            };
            let sid = store_id(t)?;
            let latest = c.store.latest(&sid).await.map_err(|e| {
                unavailable(&format!("list the checkpoints of template {}", t.id()), e)
            })?;
            if latest.is_none() {
                let id = CheckpointId::new(sid, 0, super::now_ms() as u64);
                let done = c
                    .store
                    .checkpoint(&dir, &id, None)
                    .await
                    .map_err(|e| unavailable(&format!("publish template {}", t.id()), e))?;
                tracing::info!(
                    template = t.id(),
                    uploaded = done.stats.bytes_uploaded,
                    "template published to the object store"
                );
            }
            stored.push(t);
        }
        Ok(stored)
    }

    /// Fetches template `t` from the store when this node lacks it and it
    /// was published: `true` when it is here now.
    pub async fn fetch_template(&self, t: BuiltTemplate) -> Result<bool> {
        if self.storage.built_dir(t).is_some() {
            return Ok(true);
        }
        let c = self.checkpointer()?;
        let Some(latest) =
            c.store.latest(&store_id(t)?).await.map_err(|e| {
                unavailable(&format!("list the checkpoints of template {}", t.id()), e)
            })?
        else {
            return Ok(false);
        };
        let staging = self.storage.template_staging(t).map_err(internal)?;
        let restored = c.store.restore(&latest, &staging).await;
        let restored = match restored {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(unavailable(&format!("fetch template {}", t.id()), e));
            }
        };
        let installed = tokio::task::block_in_place(|| self.storage.install_template(t, &staging))
            .map_err(internal)?;
        if installed {
            tracing::info!(template = t.id(), stats = ?restored.stats, "template fetched from the object store");
        }
        Ok(true)
    }
}
