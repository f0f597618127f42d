//! Templates made from OCI images: imported from an archive
//! (`POST /api/v1/templates/import`, `sandstone template import NAME FILE`)
//! or pulled from a registry (`POST /api/v1/templates` with
//! `spec.mainContainer.image`). Their layers are stored once each on this
//! node (`sandstone-volumes`'s `image_template`); new sandboxes may use the
//! template at once.

use super::{Error, Lifecycle, Result};
use sandstone_api::timefmt::now_ms;
use sandstone_registry::Reference;
use sandstone_volumes::{Imported, Pulled};
use std::path::{Path, PathBuf};

/// Where a template being pulled is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetching the manifest and the blobs the host lacks.
    Pulling,
    /// Unpacking the fetched layers.
    Unpacking,
}

/// A template being pulled, as `GET /api/v1/templates/{id}` shows it.
#[derive(Debug, Clone)]
pub struct Creating {
    pub image: String,
    pub stage: Stage,
    /// Unix milliseconds.
    pub started_at: i64,
}

/// Takes a template off the being-pulled list however the pull ends.
struct Listed<'a>(&'a Lifecycle, String);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.0.creating_list().remove(&self.1);
    }
}

/// A pull's failure, as the API reports it: what is wrong with the image
/// the caller named is theirs to fix (400 naming the field); a registry
/// that cannot be reached or serves corrupt blobs is not.
fn pull_error(e: sandstone_registry::Error) -> Error {
    use sandstone_registry::Error as R;
    match e {
        R::Reference { .. } | R::NotFound { .. } | R::Unauthorized { .. } => {
            Error::Invalid(format!("invalid field `spec.mainContainer.image`: {e}"))
        }
        R::Image(sandstone_oci::Error::DigestMismatch { .. }) => Error::Unavailable(e.to_string()),
        R::Image(_) => Error::Invalid(format!("invalid field `spec.mainContainer.image`: {e}")),
        R::Http { .. } | R::Status { .. } | R::Oversized { .. } => {
            Error::Unavailable(e.to_string())
        }
        R::AuthFile { .. } | R::Io { .. } => super::internal(e),
    }
}

impl Lifecycle {
    fn creating_list(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Creating>> {
        self.creating
            .lock()
            .expect("lock poisoned: a holder panicked")
    }

    /// Template `id` if it is being pulled now.
    pub fn creating(&self, id: &str) -> Option<Creating> {
        self.creating_list().get(id).cloned()
    }

    /// Pulls `image` from its registry and makes it template `id`, which
    /// exists once this returns. Layers this node has are not fetched
    /// again; a failure leaves no template, and the blobs fetched so far
    /// for the next try.
    pub async fn pull_template(
        &self,
        id: &str,
        pulled: Pulled,
    ) -> Result<sandstone_volumes::Template> {
        let image = pulled.reference.as_str();
        sandstone_volumes::check_id(id)
            .map_err(|e| Error::Invalid(format!("invalid field `template_id`: {e}")))?;
        let reference: Reference = image.parse().map_err(pull_error)?;
        if self.storage.template(id).is_ok_and(|t| t.id == id) {
            return Err(Error::Conflict(format!("template {id} exists")));
        }
        {
            let mut list = self.creating_list();
            if list.contains_key(id) {
                return Err(Error::Conflict(format!("template {id} is being pulled")));
            }
            list.insert(
                id.to_string(),
                Creating {
                    image: image.to_string(),
                    stage: Stage::Pulling,
                    started_at: now_ms(),
                },
            );
        }
        let _listed = Listed(self, id.to_string());
        self.check_free_space()?;
        let dir = self.storage.pull_dir(id);
        let fetched = match self
            .puller
            .pull(&reference, &dir, |d| self.storage.has_layer(d))
            .await
        {
            Ok(f) => f,
            Err(e) => {
                // What was fetched is kept for a retry only when the
                // registry could not be reached or answered oddly; an
                // image that cannot be used goes at once.
                if !matches!(
                    e,
                    sandstone_registry::Error::Http { .. }
                        | sandstone_registry::Error::Status { .. }
                ) {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                }
                return Err(pull_error(e));
            }
        };
        tracing::info!(
            template = id,
            image,
            layers = fetched.layers,
            present = fetched.layers_present,
            bytes = fetched.bytes_fetched,
            "pulled"
        );
        if let Some(c) = self.creating_list().get_mut(id) {
            c.stage = Stage::Unpacking;
        }
        let (storage, name) = (self.storage.clone(), id.to_string());
        let imported = tokio::task::spawn_blocking(move || {
            let done = storage.import_pulled(&name, &dir, &pulled);
            let _ = std::fs::remove_dir_all(&dir);
            done
        })
        .await
        .map_err(super::internal)?;
        imported.map_err(|e| match e {
            sandstone_volumes::Error::Image(sandstone_oci::Error::DigestMismatch { .. }) => {
                Error::Unavailable(e.to_string())
            }
            sandstone_volumes::Error::Image(_) => {
                Error::Invalid(format!("invalid field `spec.mainContainer.image`: {e}"))
            }
            sandstone_volumes::Error::TemplateExists(_) => Error::Conflict(e.to_string()),
            other => super::internal(other),
        })?;
        self.storage.template(id).map_err(super::internal)
    }

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
            .chain(
                // Templates captured from its sandboxes stack on its layers.
                self.storage
                    .templates()
                    .map_err(super::internal)?
                    .into_iter()
                    .filter(|t| t.parent.as_deref() == Some(id))
                    .map(|t| t.id),
            )
            .collect();
        if !users.is_empty() {
            let shown: Vec<&str> = users.iter().take(5).map(String::as_str).collect();
            return Err(Error::Conflict(format!(
                "template {id} is used by {} sandbox(es), snapshot(s) and template(s): {}{}; delete them first",
                users.len(),
                shown.join(", "),
                if users.len() > 5 { ", …" } else { "" }
            )));
        }
        self.drain_warm_template(id);
        let (storage, name) = (self.storage.clone(), id.to_string());
        let removed = tokio::task::spawn_blocking(move || {
            let captured = storage
                .template(&name)
                .is_ok_and(|t| t.id == name && t.parent.is_some());
            if captured {
                storage.remove_sandbox_template(&name).map(|()| 0)
            } else {
                storage.remove_image_template(&name)
            }
        })
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
