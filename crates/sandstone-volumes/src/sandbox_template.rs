//! Templates made from a sandbox (`POST /api/v1/templates/from-sandbox`):
//! the sandbox's volume captured read-only into the pool's `captures/`
//! (a btrfs snapshot, so O(1) whatever its size; a copy on the dir pool),
//! its `upper` layer stacked over the layers of the template the sandbox
//! was made from. The sandbox's layer is stored unshifted, like template
//! layers, so it is shown through the same idmapped mount. A template is
//! `<data>/templates/<id>/sandbox.json`, naming its parent and source.

use crate::image_template::check_name;
use crate::{Error, FileTemplate, Result, Storage, Template, TemplateKind, io};
use serde::{Deserialize, Serialize};

/// `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SandboxTemplate {
    /// The template the sandbox was made from: its layers go below.
    pub parent: String,
    /// The sandbox captured.
    pub sandbox: String,
    /// The `Idempotency-Key` of the request that captured it: a retry
    /// with the same key gets this template instead of a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

const SANDBOX_FILE: &str = "sandbox.json";

/// A template stacked on another.
enum Stacked {
    Captured(SandboxTemplate),
    Built(FileTemplate),
}

impl Stacked {
    fn parent(&self) -> &str {
        match self {
            Stacked::Captured(c) => &c.parent,
            Stacked::Built(b) => &b.parent,
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(file: &std::path::Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Io {
        what: format!("read {}", file.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

impl Storage {
    /// Captures sandbox `sandbox` (made from template `parent`) as template
    /// `id`. The caller keeps the sandbox still meanwhile (frozen or
    /// paused). On failure nothing is left.
    pub fn capture_template(
        &self,
        sandbox: &str,
        id: &str,
        parent: &str,
        idempotency_key: Option<&str>,
    ) -> Result<()> {
        // The caller checked a user's id; the build cache captures as its own.
        check_name(id)?;
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
            idempotency_key: idempotency_key.map(str::to_string),
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

    /// The templates stacked on others, given those: captured from
    /// sandboxes (each its own layer over its parent's) and built from
    /// Sandstonefiles (their last step's layers, with the settings the
    /// file gave). A parent may itself be stacked.
    pub(crate) fn sandbox_templates(&self, others: &[Template]) -> Result<Vec<Template>> {
        let dir = self.root.join("templates");
        let mut pending = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .map_err(io("list templates"))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let read = |file: &str| std::fs::read_to_string(entry.path().join(file)).ok();
            let doc = if let Some(text) = read(SANDBOX_FILE) {
                Stacked::Captured(parse(&entry.path().join(SANDBOX_FILE), &text)?)
            } else if let Some(text) = read(crate::file_template::BUILD_FILE) {
                Stacked::Built(parse(
                    &entry.path().join(crate::file_template::BUILD_FILE),
                    &text,
                )?)
            } else {
                continue;
            };
            pending.push((name, doc));
        }
        let mut out: Vec<Template> = Vec::new();
        // Parents first: as many passes as templates stack.
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (name, doc) in pending {
                let wanted = doc.parent();
                // Pinned to a version (`py@2`), or a plain id (templates
                // without versions, and captures made before versions
                // were recorded: the current one).
                let parent = others
                    .iter()
                    .chain(&out)
                    .find(|t| t.pinned() == wanted || (t.id == wanted && !t.retained))
                    .cloned();
                let Some(parent) = parent else {
                    rest.push((name, doc));
                    continue;
                };
                out.push(self.stacked(&dir, &name, doc, parent)?);
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

    /// Template `name` stacked over `parent` as `doc` says.
    fn stacked(
        &self,
        dir: &std::path::Path,
        name: &str,
        doc: Stacked,
        parent: Template,
    ) -> Result<Template> {
        let (id, retained) = match name.split_once('@') {
            Some((id, _)) => (id, true),
            None => (name, false),
        };
        let mut t = match &doc {
            Stacked::Captured(c) => {
                let mut lower = vec![self.pool.capture_dir(id).join("upper")];
                lower.extend(parent.lower.iter().cloned());
                let description = format!("from sandbox {} (over {})", c.sandbox, c.parent);
                Template::with_settings(
                    id,
                    &description,
                    lower,
                    parent.binds.clone(),
                    &dir.join(name),
                )?
            }
            Stacked::Built(b) => {
                let description = format!("built from a Sandstonefile over {}", b.from);
                Template::with_settings(
                    id,
                    &description,
                    parent.lower.clone(),
                    parent.binds.clone(),
                    &dir.join(name),
                )?
            }
        };
        t.env = parent.env.clone();
        t.working_dir = parent.working_dir.clone();
        t.user = parent.user.clone();
        t.retained = retained;
        match doc {
            Stacked::Captured(c) => {
                t.kind = if id.starts_with(crate::BUILD_CACHE_PREFIX) {
                    TemplateKind::BuildCache
                } else {
                    TemplateKind::Captured
                };
                t.parent = Some(c.parent);
            }
            Stacked::Built(b) => {
                t.kind = TemplateKind::Built;
                t.version = Some(b.version);
                t.env.extend(b.env.iter().filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                }));
                if b.working_dir.is_some() {
                    t.working_dir = b.working_dir;
                }
                if b.user.is_some() {
                    t.user = b.user;
                }
                t.parent = Some(b.parent);
            }
        }
        Ok(t)
    }

    /// Removes build-cache entry `id` (the caller made sure nothing
    /// stands on it).
    pub fn remove_build_cache_entry(&self, id: &str) -> Result<()> {
        if !id.starts_with(crate::BUILD_CACHE_PREFIX) {
            return Err(Error::UnknownTemplate(id.to_string()));
        }
        if self
            .root
            .join("templates")
            .join(id)
            .join(SANDBOX_FILE)
            .exists()
        {
            return self.remove_sandbox_template(id);
        }
        // A base image `FROM` pulled.
        self.remove_template_dir(id)
    }

    /// What template `id` was captured from, if it was.
    pub fn captured_from(&self, id: &str) -> Option<SandboxTemplate> {
        let file = self.root.join("templates").join(id).join(SANDBOX_FILE);
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
    }

    /// Removes template `id` captured from a sandbox (and its volume) or
    /// built from a Sandstonefile (and its kept versions); the caller made
    /// sure nothing uses it.
    pub fn remove_sandbox_template(&self, id: &str) -> Result<()> {
        let dir = self.root.join("templates").join(id);
        if dir.join(crate::file_template::BUILD_FILE).exists() {
            self.remove_template_dir(id)?;
            for kept in self.kept_versions(id)? {
                self.remove_template_dir(&kept)?;
            }
            return Ok(());
        }
        if !dir.join(SANDBOX_FILE).exists() {
            return Err(Error::UnknownTemplate(id.to_string()));
        }
        self.remove_template_dir(id)?;
        self.pool.remove_volume(&self.pool.capture_dir(id))
    }
}
