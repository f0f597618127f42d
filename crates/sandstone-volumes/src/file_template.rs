//! Templates built from a Sandstonefile (`sandstone template build`): the
//! build's last step (a [`TemplateKind::BuildCache`] template, see
//! `sandstone-server`'s `lifecycle::build`) with the settings the file gave
//! (`ENV`, `WORKDIR`, `USER`). `<data>/templates/<id>/build.json`; a
//! rebuild makes a new version, the one before kept as `<id>@<n>` while
//! sandboxes made from it live, like an image template's.
//!
//! [`TemplateKind::BuildCache`]: crate::TemplateKind::BuildCache

use crate::image_template::check_name;
use crate::{Error, Result, Storage, io};
use serde::{Deserialize, Serialize};

pub(crate) const BUILD_FILE: &str = "build.json";

/// `build.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileTemplate {
    /// The template its files are (pinned): the last step's result, or
    /// the `FROM` template when no step made files.
    pub parent: String,
    /// What the file's `FROM` named.
    pub from: String,
    pub version: u32,
    /// `KEY=VALUE`, over the parent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Storage {
    /// Puts built template `id` in place as `doc` (whose `version` this
    /// sets): version 1, or, when `id` was built before, the next, the
    /// earlier one kept as `<id>@<n>`. Another kind of template by that
    /// name is [`Error::TemplateExists`]. The new version's number.
    pub fn place_built_template(&self, id: &str, mut doc: FileTemplate) -> Result<u32> {
        check_name(id)?;
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let templates = self.root.join("templates");
        let current = templates.join(id);
        let before: Option<FileTemplate> = match std::fs::read_to_string(current.join(BUILD_FILE)) {
            Ok(text) => Some(serde_json::from_str(&text).map_err(|e| Error::Io {
                what: format!("read {}", current.join(BUILD_FILE).display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?),
            Err(_) if current.exists() => return Err(Error::TemplateExists(id.to_string())),
            Err(_) => None,
        };
        doc.version = before.as_ref().map_or(1, |b| b.version + 1);
        let staged = templates.join(format!(".build-{id}"));
        if staged.exists() {
            std::fs::remove_dir_all(&staged).map_err(io("remove an earlier build"))?;
        }
        std::fs::create_dir(&staged).map_err(io("make the template's dir"))?;
        let text = serde_json::to_vec_pretty(&doc).map_err(|e| io("write build.json")(e.into()))?;
        if let Err(e) = std::fs::write(staged.join(BUILD_FILE), text) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(io("write build.json")(e));
        }
        if let Some(b) = &before {
            let kept = templates.join(format!("{id}@{}", b.version));
            std::fs::rename(&current, &kept).map_err(io("keep the earlier version"))?;
            if let Err(e) = std::fs::rename(&staged, &current) {
                let _ = std::fs::rename(&kept, &current);
                let _ = std::fs::remove_dir_all(&staged);
                return Err(io("put the template in place")(e));
            }
        } else {
            std::fs::rename(&staged, &current).map_err(io("put the template in place"))?;
        }
        Ok(doc.version)
    }
}
