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
