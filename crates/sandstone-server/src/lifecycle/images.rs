//! Templates made from OCI images: imported from an archive
//! (`POST /api/v1/templates/import`, `sandstone template import NAME FILE`)
//! or pulled from a registry (`POST /api/v1/templates` with
//! `spec.mainContainer.image`). Their layers are stored once each on this
//! node (`sandstone-volumes`'s `image_template`); new sandboxes may use the
//! template at once.

use super::{Error, Lifecycle, Result};
use sandstone_api::timefmt::now_ms;
use sandstone_registry::Reference;
use sandstone_volumes::{Imported, Pulled, TemplateKind};
use std::path::{Path, PathBuf};

/// Where a template being pulled is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetching the manifest and the blobs the host lacks.
    Pulling,
    /// Unpacking the fetched layers.
    Unpacking,
    /// Running the steps of a Sandstonefile.
    Building,
}

/// A template being pulled, as `GET /api/v1/templates/{id}` shows it.
#[derive(Debug, Clone)]
pub struct Creating {
    pub image: String,
    pub stage: Stage,
    /// Unix milliseconds.
    pub started_at: i64,
}

/// Takes a template off the being-made list however its making ends.
pub(super) struct Listed<'a>(&'a Lifecycle, String);

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

/// A user of a template version.
struct User {
    /// The sandbox, snapshot or template.
    name: String,
    /// The version it uses (pinned id).
    version: String,
}

/// An unpack's failure, as the API reports it.
fn unpack_error(e: sandstone_volumes::Error) -> Error {
    match e {
        sandstone_volumes::Error::Image(sandstone_oci::Error::DigestMismatch { .. }) => {
            Error::Unavailable(e.to_string())
        }
        sandstone_volumes::Error::Image(_) => {
            Error::Invalid(format!("invalid field `spec.mainContainer.image`: {e}"))
        }
        sandstone_volumes::Error::UnknownUser(_) => {
            Error::Invalid(format!("invalid field `spec.mainContainer.image`: {e}"))
        }
        sandstone_volumes::Error::TemplateExists(_) => Error::Conflict(e.to_string()),
        sandstone_volumes::Error::UnknownTemplate(t) => Error::not_found("template", &t),
        sandstone_volumes::Error::NotAnImageTemplate(_) => Error::Conflict(e.to_string()),
        other => super::internal(other),
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

    /// Lists template `id` as being made until the guard goes; refused
    /// while it is being made already.
    pub(super) fn list_creating(&self, id: &str, c: Creating) -> Result<Listed<'_>> {
        let mut list = self.creating_list();
        if list.contains_key(id) {
            return Err(Error::Conflict(format!("template {id} is being made")));
        }
        list.insert(id.to_string(), c);
        Ok(Listed(self, id.to_string()))
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
        sandstone_volumes::check_id(id)
            .map_err(|e| Error::Invalid(format!("invalid field `template_id`: {e}")))?;
        self.pull_as(id, pulled).await
    }

    /// [`Lifecycle::pull_template`] under an id the caller chose (the
    /// build cache's own, which users may not take).
    pub(super) async fn pull_as(
        &self,
        id: &str,
        pulled: Pulled,
    ) -> Result<sandstone_volumes::Template> {
        let image = pulled.reference.as_str();
        let reference: Reference = image.parse().map_err(pull_error)?;
        if self.storage.template(id).is_ok_and(|t| t.id == id) {
            return Err(Error::Conflict(format!("template {id} exists")));
        }
        let _listed = self.list_creating(
            id,
            Creating {
                image: image.to_string(),
                stage: Stage::Pulling,
                started_at: now_ms(),
            },
        )?;
        let dir = self.fetch(id, &reference).await?;
        let (storage, name) = (self.storage.clone(), id.to_string());
        let imported = tokio::task::spawn_blocking(move || {
            let done = storage.import_pulled(&name, &dir, &pulled);
            let _ = std::fs::remove_dir_all(&dir);
            done
        })
        .await
        .map_err(super::internal)?;
        imported.map_err(unpack_error)?;
        self.storage.template(id).map_err(super::internal)
    }

    /// Whether image `reference` names this daemon's own registry.
    pub fn is_own_image(&self, reference: &str) -> bool {
        reference
            .parse::<Reference>()
            .is_ok_and(|r| self.registry.is_own(&r.registry))
    }

    /// Fetches the blobs of `reference` this node lacks into template
    /// `id`'s pull directory, which it returns.
    async fn fetch(&self, id: &str, reference: &Reference) -> Result<PathBuf> {
        self.check_free_space()?;
        let dir = self.storage.pull_dir(id);
        if self.registry.is_own(&reference.registry) {
            return self.fetch_own(reference, dir).await;
        }
        let fetched = match self
            .puller
            .pull(reference, &dir, |d| self.storage.has_layer(d))
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
            image = %reference,
            layers = fetched.layers,
            present = fetched.layers_present,
            bytes = fetched.bytes_fetched,
            "pulled"
        );
        if let Some(c) = self.creating_list().get_mut(id) {
            c.stage = Stage::Unpacking;
        }
        Ok(dir)
    }

    /// An image pushed to this daemon's own registry, laid out in `dir`
    /// from its store (blobs linked, nothing sent over the network).
    async fn fetch_own(&self, reference: &Reference, dir: PathBuf) -> Result<PathBuf> {
        let store = self.registry.store.clone();
        let (name, wanted, to) = (
            reference.repository.clone(),
            reference.manifest(),
            dir.clone(),
        );
        let found = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&to);
            store.export(&name, &wanted, &to)
        })
        .await
        .map_err(super::internal)?
        .map_err(super::internal)?;
        if found.is_none() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(Error::Invalid(format!(
                "invalid field `spec.mainContainer.image`: {reference} was not pushed to this daemon's registry"
            )));
        }
        Ok(dir)
    }

    /// Makes a new version of image template `id`: pulled from `pulled`'s
    /// image, or, when that is the image it has (an imported template's
    /// own id, or the digest it was pulled by), the same layers with the
    /// new settings. New sandboxes get it; those already made, their
    /// snapshots and forks keep the version they were made from, which
    /// is removed (with the layers only it had) once nothing uses it.
    pub async fn update_template(
        &self,
        id: &str,
        pulled: Pulled,
    ) -> Result<sandstone_volumes::Template> {
        let current = self.template(id)?;
        let not_an_image = match current.kind {
            _ if current.id != id => Some("built in"),
            TemplateKind::Image => None,
            TemplateKind::BuiltIn | TemplateKind::BuildCache => Some("built in"),
            TemplateKind::Captured => {
                Some("captured from a sandbox (capture it again under a new name)")
            }
            TemplateKind::Built => Some("built from a Sandstonefile (build it again)"),
        };
        if let Some(what) = not_an_image {
            return Err(Error::Conflict(format!(
                "template {id} is {what}: it has no image to update"
            )));
        }
        let same_image = match &current.image {
            None => pulled.reference == id,
            Some(r) => *r == pulled.reference && r.contains("@sha256:"),
        };
        let _listed = self.list_creating(
            id,
            Creating {
                image: pulled.reference.clone(),
                stage: Stage::Pulling,
                started_at: now_ms(),
            },
        )?;
        let dir = if same_image {
            None
        } else {
            let reference: Reference = pulled.reference.parse().map_err(pull_error)?;
            Some(self.fetch(id, &reference).await?)
        };
        let (storage, name) = (self.storage.clone(), id.to_string());
        let updated = tokio::task::spawn_blocking(move || {
            let source = match &dir {
                Some(d) => sandstone_volumes::Source::Pulled(d),
                None => sandstone_volumes::Source::Current,
            };
            let done = storage.update_image_template(&name, source, &pulled);
            if let Some(d) = &dir {
                let _ = std::fs::remove_dir_all(d);
            }
            done
        })
        .await
        .map_err(super::internal)?;
        let (version, _) = updated.map_err(unpack_error)?;
        tracing::info!(template = id, version, "template updated");
        // Warm members hold the version before.
        self.drain_warm_template(id);
        self.prune_template_versions(id).await?;
        self.template(id)
    }

    /// Removes the earlier versions of template `id` that no sandbox,
    /// snapshot or captured template uses any more, and their layers.
    pub async fn prune_template_versions(&self, id: &str) -> Result<usize> {
        let used: std::collections::HashSet<String> = self
            .template_users(id)
            .await?
            .into_iter()
            .map(|u| u.version)
            .collect();
        let (storage, name) = (self.storage.clone(), id.to_string());
        tokio::task::spawn_blocking(move || storage.prune_template_versions(&name, &used))
            .await
            .map_err(super::internal)?
            .map_err(super::internal)
    }

    /// What uses a version of template `id`: sandboxes, snapshots and
    /// templates captured over it.
    async fn template_users(&self, id: &str) -> Result<Vec<User>> {
        let of_it = |pinned: &str| sandstone_volumes::template_base(pinned) == id;
        let mut users: Vec<User> = self
            .store
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|r| of_it(&r.template))
            .map(|r| User {
                name: r.id,
                version: r.template,
            })
            .collect();
        users.extend(
            self.store
                .list_snapshots(None)
                .await?
                .into_iter()
                .filter(|s| of_it(&s.template))
                .map(|s| User {
                    name: s.id,
                    version: s.template,
                }),
        );
        users.extend(
            self.storage
                .templates()
                .map_err(super::internal)?
                .into_iter()
                .filter_map(|t| {
                    let parent = t.parent.filter(|p| of_it(p))?;
                    Some(User {
                        name: t.id,
                        version: parent,
                    })
                }),
        );
        Ok(users)
    }

    /// Where an upload to import is written first.
    pub fn import_scratch(&self) -> PathBuf {
        self.storage.scratch_dir()
    }

    /// Deletes template `id` and the layers only it used; refused (naming
    /// them) while sandboxes, snapshots or captured templates use it,
    /// unless `force`d: then a template with versions is retired (no new
    /// sandbox gets it, and no listing shows it) while the versions in use
    /// stay for their users, until a prune finds them unused.
    pub async fn delete_template(&self, id: &str, force: bool) -> Result<usize> {
        let users: Vec<String> = self
            .template_users(id)
            .await?
            .into_iter()
            .map(|u| u.name)
            .collect();
        if !users.is_empty() && force {
            let storage = self.storage.clone();
            let name = id.to_string();
            tokio::task::spawn_blocking(move || storage.retire_template(&name))
                .await
                .map_err(super::internal)?
                .map_err(|e| match e {
                    sandstone_volumes::Error::UnknownTemplate(t) => {
                        Error::not_found("template", &t)
                    }
                    sandstone_volumes::Error::NotAnImageTemplate(_) => Error::Conflict(format!(
                        "template {id} has no versions to keep for its users: delete them first"
                    )),
                    other => super::internal(other),
                })?;
            tracing::warn!(
                template = id,
                users = users.len(),
                "template retired while in use"
            );
            self.drain_warm_template(id);
            return self.prune_template_versions(id).await;
        }
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
            let captured = storage.template(&name).is_ok_and(|t| {
                t.id == name && matches!(t.kind, TemplateKind::Captured | TemplateKind::Built)
            });
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
            sandstone_volumes::Error::InvalidTemplateId(_)
            | sandstone_volumes::Error::Image(_)
            | sandstone_volumes::Error::UnknownUser(_) => Error::Invalid(e.to_string()),
            sandstone_volumes::Error::TemplateExists(_) => Error::Conflict(e.to_string()),
            other => super::internal(other),
        })
    }
}
