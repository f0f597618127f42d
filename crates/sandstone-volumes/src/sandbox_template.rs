//! Templates made from a sandbox (`POST /api/v1/templates/from-sandbox`):
//! the sandbox's volume captured read-only into the pool's `captures/`
//! (a btrfs snapshot, so O(1) whatever its size; a copy on the dir pool),
//! its `upper` layer stacked over the layers of the template the sandbox
//! was made from. The sandbox's layer is stored unshifted, like template
//! layers, so it is shown through the same idmapped mount. A template is
//! `<data>/templates/<id>/sandbox.json`, naming its parent and source.

use crate::{Error, Result, Storage, Template, check_id, io};
use serde::{Deserialize, Serialize};

/// `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SandboxTemplate {
    /// The template the sandbox was made from: its layers go below.
    pub parent: String,
    /// The sandbox captured.
    pub sandbox: String,
}

const SANDBOX_FILE: &str = "sandbox.json";

impl Storage {
    /// Captures sandbox `sandbox` (made from template `parent`) as template
    /// `id`. The caller keeps the sandbox still meanwhile (frozen or
    /// paused). On failure nothing is left.
    pub fn capture_template(&self, sandbox: &str, id: &str, parent: &str) -> Result<()> {
        check_id(id)?;
        let templates = self.root.join("templates");
        let tdir = templates.join(id);
        if tdir.exists() {
            return Err(Error::TemplateExists(id.to_string()));
        }
        let volume = self.pool.capture_dir(id);
        // What a crash left of an earlier capture under this name.
        self.pool.remove_volume(&volume)?;
        self.pool
            .copy_volume(&self.pool.sandbox_dir(sandbox), &volume, true, None)?;
        let doc = SandboxTemplate {
            parent: parent.to_string(),
            sandbox: sandbox.to_string(),
        };
        let staged = templates.join(format!(".capture-{id}"));
        let placed = (|| {
            if staged.exists() {
                std::fs::remove_dir_all(&staged).map_err(io("remove an earlier capture"))?;
            }
            std::fs::create_dir(&staged).map_err(io("make the template's dir"))?;
            let text =
                serde_json::to_vec_pretty(&doc).map_err(|e| io("write sandbox.json")(e.into()))?;
            std::fs::write(staged.join(SANDBOX_FILE), text).map_err(io("write sandbox.json"))?;
            std::fs::rename(&staged, &tdir).map_err(io("put the template in place"))
        })();
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
            let _ = self.pool.remove_volume(&volume);
        }
        placed
    }

    /// The templates captured from sandboxes, given the others: each over
    /// its parent's layers (a parent may itself be captured).
    pub(crate) fn sandbox_templates(&self, others: &[Template]) -> Result<Vec<Template>> {
        let dir = self.root.join("templates");
        let mut pending = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .map_err(io("list templates"))?
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join(SANDBOX_FILE);
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            let doc: SandboxTemplate = serde_json::from_str(&text).map_err(|e| Error::Io {
                what: format!("read {}", file.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            pending.push((id, doc));
        }
        let mut out: Vec<Template> = Vec::new();
        // Parents first: as many passes as captures nest.
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (id, doc) in pending {
                // Pinned to a version (`py@2`), or a plain id (captures of
                // templates without versions, and those made before
                // versions were recorded: the current one).
                let parent = others
                    .iter()
                    .chain(&out)
                    .find(|t| t.pinned() == doc.parent || (t.id == doc.parent && !t.retained))
                    .cloned();
                let Some(parent) = parent else {
                    rest.push((id, doc));
                    continue;
                };
                let mut lower = vec![self.pool.capture_dir(&id).join("upper")];
                lower.extend(parent.lower.iter().cloned());
                let description = format!("from sandbox {} (over {})", doc.sandbox, doc.parent);
                let mut t = Template::with_settings(
                    &id,
                    &description,
                    lower,
                    parent.binds.clone(),
                    &dir.join(&id),
                )?;
                t.env = parent.env.clone();
                t.working_dir = parent.working_dir.clone();
                t.user = parent.user.clone();
                t.parent = Some(doc.parent);
                out.push(t);
            }
            if rest.len() == before {
                // A parent that is gone: those templates cannot be used.
                break;
            }
            pending = rest;
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes template `id` captured from a sandbox (the caller made sure
    /// nothing uses it) and its volume.
    pub fn remove_sandbox_template(&self, id: &str) -> Result<()> {
        let dir = self.root.join("templates").join(id);
        if !dir.join(SANDBOX_FILE).exists() {
            return Err(Error::UnknownTemplate(id.to_string()));
        }
        // Renamed away first: gone at once; a crash leaves a dot-name the
        // listing skips.
        let doomed = self.root.join("templates").join(format!(".delete-{id}"));
        std::fs::rename(&dir, &doomed).map_err(io("remove the template"))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove the template"))?;
        self.pool.remove_volume(&self.pool.capture_dir(id))
    }
}
