//! Templates imported from OCI images (`POST /api/v1/templates/import`,
//! `sandstone template import NAME FILE`): the archive is unpacked and its
//! layers stored once each on this node (`sandstone-volumes`'s
//! `image_template`); new sandboxes may use the template at once.

use super::{Error, Lifecycle, Result};
use sandstone_volumes::Imported;
use std::path::{Path, PathBuf};

impl Lifecycle {
    /// Where an upload to import is written first.
    pub fn import_scratch(&self) -> PathBuf {
        self.storage.scratch_dir()
    }

    /// Deletes image template `id` and the layers only it used; refused
    /// (naming them) while sandboxes or snapshots use it.
    pub async fn delete_template(&self, id: &str) -> Result<usize> {
        let users: Vec<String> = self
            .store
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|r| r.template == id)
            .map(|r| r.id)
            .chain(
                self.store
                    .list_snapshots(None)
                    .await?
                    .into_iter()
                    .filter(|s| s.template == id)
                    .map(|s| s.id),
            )
            .collect();
        if !users.is_empty() {
            let shown: Vec<&str> = users.iter().take(5).map(String::as_str).collect();
            return Err(Error::Conflict(format!(
                "template {id} is used by {} sandbox(es) and snapshot(s): {}{}; delete them first",
                users.len(),
                shown.join(", "),
                if users.len() > 5 { ", …" } else { "" }
            )));
        }
        self.drain_warm_template(id);
        let (storage, name) = (self.storage.clone(), id.to_string());
        let removed = tokio::task::spawn_blocking(move || storage.remove_image_template(&name))
            .await
            .map_err(super::internal)?;
        // A member the refill made meanwhile has lost its layers.
        self.drain_warm_template(id);
        removed.map_err(|e| match e {
            sandstone_volumes::Error::UnknownTemplate(t) => Error::not_found("template", &t),
            sandstone_volumes::Error::NotAnImageTemplate(_) => Error::Conflict(e.to_string()),
            other => super::internal(other),
        })
    }

    /// Imports the image archive at `archive` as template `id`.
    pub async fn import_template(&self, id: &str, archive: &Path) -> Result<Imported> {
        let (storage, id, archive) = (self.storage.clone(), id.to_string(), archive.to_path_buf());
        let imported = tokio::task::spawn_blocking(move || storage.import_archive(&id, &archive))
            .await
            .map_err(super::internal)?;
        imported.map_err(|e| match e {
            sandstone_volumes::Error::InvalidTemplateId(_) | sandstone_volumes::Error::Image(_) => {
                Error::Invalid(e.to_string())
            }
            sandstone_volumes::Error::TemplateExists(_) => Error::Conflict(e.to_string()),
            other => super::internal(other),
        })
    }
}
