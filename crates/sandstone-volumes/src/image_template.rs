//! Templates made from OCI images (`sandstone template import`): each
//! layer is unpacked once into `<data>/layers/<diff_id hex>/` and shared
//! by every template that uses it; a template is `<data>/templates/<id>/
//! image.json`, naming its layers (bottom first) and the image's run
//! settings. Its sandboxes see the layers as overlay lower dirs, each
//! through the same idmapped mount as any template.

use crate::{Error, Result, Storage, Template, TemplateKind, io};
use sandstone_oci::{Compression, Expected, Image, ImageConfig, Layer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageTemplate {
    /// The reference it was pulled by; none for an imported archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// 1 when made, one more with each update.
    #[serde(default = "first_version")]
    pub version: u32,
    /// `sha256:<hex>` diff ids, bottom layer first.
    pub layers: Vec<String>,
    /// The image's `Env` (before version 2 of this file: with the
    /// template's own after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The template's own variables (`KEY=VALUE`), over the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `Entrypoint` and `Cmd`, shown, never run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
}

fn first_version() -> u32 {
    1
}

/// What a template made from a pulled image adds to the image.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    pub reference: String,
    pub description: Option<String>,
    /// `KEY=VALUE`, after the image's own.
    pub env: Vec<String>,
    pub settings: crate::TemplateSettings,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub layers: usize,
    /// Layers already on this host (shared with another template).
    pub layers_reused: usize,
    pub bytes: u64,
}

/// The image a new version of a template is made from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// An image pulled into this OCI layout (see [`Storage::pull_dir`]).
    Pulled(&'a Path),
    /// The current version's image: only the settings change.
    Current,
}

const IMAGE_FILE: &str = "image.json";
/// Names the built-in templates use, which an import may not take.
const RESERVED: [&str; 4] = ["host", "debian", "default", "ubuntu"];

/// A template id a user may take: 1 to 64 of `[a-z0-9._-]`, starting
/// with a letter or digit, not a built-in's, nor the build cache's.
pub fn check_id(id: &str) -> Result<()> {
    check_name(id)?;
    if RESERVED.contains(&id) || id.starts_with(crate::BUILD_CACHE_PREFIX) {
        return Err(Error::TemplateExists(id.to_string()));
    }
    Ok(())
}

/// A template directory name: 1 to 64 of `[a-z0-9._-]`, starting with a
/// letter or digit.
pub(crate) fn check_name(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(Error::InvalidTemplateId(id.to_string()));
    }
    Ok(())
}

impl Storage {
    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.trim_start_matches("sha256:"))
    }

    /// Where uploads and unpacked archives are kept while an import runs:
    /// private, on the templates' file system.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("templates")
    }

    /// Imports the image archive `archive` (a tar, plain or gzipped, of an
    /// OCI layout or of what `docker save` wrote) as template `id`.
    pub fn import_archive(&self, id: &str, archive: &Path) -> Result<Imported> {
        check_id(id)?;
        let image = sandstone_oci::image::open_archive(archive, &self.scratch_dir())?;
        self.import(id, &image, None)
    }

    /// Imports the image pulled by `reference` into `dir` (an OCI layout
    /// that may leave out the layers [`Storage::has_layer`] accepts) as
    /// template `id`, with the caller's settings and environment (over
    /// the image's `Env`).
    pub fn import_pulled(&self, id: &str, dir: &Path, pulled: &Pulled) -> Result<Imported> {
        // The caller checked a user's id; the build cache pulls as its own.
        check_name(id)?;
        self.import(id, &sandstone_oci::image::read(dir)?, Some(pulled))
    }

    /// Whether the layer with uncompressed digest `diff_id` is unpacked
    /// on this host already.
    pub fn has_layer(&self, diff_id: &sandstone_oci::Digest) -> bool {
        self.layer_dir(&diff_id.to_string()).is_dir()
    }

    /// Where a pull of template `id` keeps its blobs: on the templates'
    /// file system, a dot-name the listing skips, kept after a failed
    /// pull so the next one resumes.
    pub fn pull_dir(&self, id: &str) -> PathBuf {
        self.root.join("templates").join(format!(".pull-{id}"))
    }

    /// Imports `image` as template `id`, which must not exist yet.
    fn import(&self, id: &str, image: &Image, pulled: Option<&Pulled>) -> Result<Imported> {
        // Not beside a removal, which could take a layer this import
        // found present.
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if self.root.join("templates").join(id).exists() {
            return Err(Error::TemplateExists(id.to_string()));
        }
        let (doc, done) = self.unpack_image(image, pulled, 1).inspect_err(|_| {
            // The layers it unpacked before it failed, unless another
            // template has them.
            let _ = self.collect_layers();
        })?;
        self.place(id, &doc, pulled.map(|p| &p.settings))?;
        Ok(done)
    }

    /// Makes a new version of image template `id` from `source`, with
    /// `pulled`'s settings: new sandboxes get it, while those made from
    /// the version before keep theirs, which stays (as `<id>@<version>`)
    /// until [`Storage::prune_template_versions`] finds it unused. The
    /// new version's number.
    pub fn update_image_template(
        &self,
        id: &str,
        source: Source<'_>,
        pulled: &Pulled,
    ) -> Result<(u32, Imported)> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.read_image_doc(id)?;
        let version = current.version + 1;
        let (doc, done) = match source {
            Source::Pulled(dir) => self
                .unpack_image(&sandstone_oci::image::read(dir)?, Some(pulled), version)
                .inspect_err(|_| {
                    let _ = self.collect_layers();
                })?,
            Source::Current => {
                let doc = ImageTemplate {
                    version,
                    description: pulled.description.clone(),
                    template_env: pulled.env.clone(),
                    ..current.clone()
                };
                let kept = Imported {
                    layers: doc.layers.len(),
                    layers_reused: doc.layers.len(),
                    bytes: 0,
                };
                (doc, kept)
            }
        };
        let templates = self.root.join("templates");
        let kept = templates.join(format!("{id}@{}", current.version));
        std::fs::rename(templates.join(id), &kept).map_err(io("keep the earlier version"))?;
        if let Err(e) = self.place(id, &doc, Some(&pulled.settings)) {
            // The earlier version stays the current one.
            let _ = std::fs::rename(&kept, templates.join(id));
            return Err(e);
        }
        Ok((version, done))
    }

    /// `image.json` of the current version of image template `id`.
    fn read_image_doc(&self, id: &str) -> Result<ImageTemplate> {
        let dir = self.root.join("templates").join(id);
        let file = dir.join(IMAGE_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.exists() || RESERVED.contains(&id) {
                    Error::NotAnImageTemplate(id.to_string())
                } else {
                    Error::UnknownTemplate(id.to_string())
                });
            }
            Err(e) => return Err(io(format!("read {}", file.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|e| Error::Io {
            what: format!("read {}", file.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Unpacks the layers of `image` this host lacks (as many at once as
    /// there are cores) beside the layer store, each renamed in whole, so
    /// a failure leaves no half layer; the template document of `version`.
    fn unpack_image(
        &self,
        image: &Image,
        pulled: Option<&Pulled>,
        version: u32,
    ) -> Result<(ImageTemplate, Imported)> {
        if image.layers.is_empty() {
            return Err(sandstone_oci::Error::NotAnImage("it has no layers".into()).into());
        }
        let layers_dir = self.root.join("layers");
        std::fs::create_dir_all(&layers_dir).map_err(io("create the layer store"))?;
        let missing: Vec<&Layer> = image
            .layers
            .iter()
            .filter(|l| !self.layer_dir(&l.diff_id.to_string()).exists())
            .collect();
        let mut done = Imported {
            layers: image.layers.len(),
            layers_reused: image.layers.len() - missing.len(),
            ..Imported::default()
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers.min(missing.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(layer) = missing.get(i) else {
                                return out;
                            };
                            out.push(self.unpack_layer(image, layer, &layers_dir));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(io("unpack a layer")(std::io::Error::other(
                            "a worker panicked",
                        )))]
                    })
                })
                .collect()
        });
        for r in results {
            done.bytes += r?;
        }
        let ImageConfig {
            env,
            working_dir,
            user,
            entrypoint,
            cmd,
            ..
        } = image.config.clone();
        if let Some(u) = user.as_deref().filter(|u| !u.is_empty()) {
            // Refused now rather than on each claim.
            let file = |name: &str| self.image_file(image, name);
            sandstone_runtime::account::resolve_in(&file("etc/passwd"), &file("etc/group"), u)
                .map_err(Error::UnknownUser)?;
        }
        let doc = ImageTemplate {
            image: pulled.map(|p| p.reference.clone()),
            description: pulled.and_then(|p| p.description.clone()),
            version,
            layers: image.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            env,
            template_env: pulled.map(|p| p.env.clone()).unwrap_or_default(),
            working_dir,
            user,
            entrypoint,
            cmd,
        };
        Ok((doc, done))
    }

    /// The text of file `path` as `image`'s layers (unpacked) stack it:
    /// the topmost layer's copy; empty when none has it, or the topmost
    /// mention is a whiteout or not a file.
    fn image_file(&self, image: &Image, path: &str) -> String {
        for layer in image.layers.iter().rev() {
            let p = self.layer_dir(&layer.diff_id.to_string()).join(path);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => return std::fs::read_to_string(&p).unwrap_or_default(),
                Ok(_) => return String::new(),
                Err(_) => continue,
            }
        }
        String::new()
    }

    /// Writes template `id` (`image.json`, and `template.json` when there
    /// are settings) beside the templates and renames it in whole.
    fn place(
        &self,
        id: &str,
        doc: &ImageTemplate,
        settings: Option<&crate::TemplateSettings>,
    ) -> Result<()> {
        let templates = self.root.join("templates");
        let staged = templates.join(format!(".import-{id}"));
        if staged.exists() {
            std::fs::remove_dir_all(&staged).map_err(io("remove an earlier import"))?;
        }
        let written = (|| {
            std::fs::create_dir(&staged).map_err(io("make the template's dir"))?;
            let text =
                serde_json::to_vec_pretty(doc).map_err(|e| io("write image.json")(e.into()))?;
            std::fs::write(staged.join(IMAGE_FILE), text).map_err(io("write image.json"))?;
            if let Some(settings) = settings {
                let text = serde_json::to_vec_pretty(settings)
                    .map_err(|e| io("write template.json")(e.into()))?;
                std::fs::write(staged.join("template.json"), text)
                    .map_err(io("write template.json"))?;
            }
            std::fs::rename(&staged, templates.join(id)).map_err(io("put the template in place"))
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
        written
    }

    /// Unpacks one layer into a staging dir beside the store and renames
    /// it in; the bytes of file data it holds.
    fn unpack_layer(&self, image: &Image, layer: &Layer, layers_dir: &Path) -> Result<u64> {
        let dest = self.layer_dir(&layer.diff_id.to_string());
        let hex = layer
            .diff_id
            .to_string()
            .trim_start_matches("sha256:")
            .to_string();
        let staged = tempfile::Builder::new()
            .prefix(&format!(".unpack-{hex}-"))
            .tempdir_in(layers_dir)
            .map_err(io("make a layer's staging dir"))?;
        let compression = Compression::from_media_type(&layer.media_type)?;
        let expected = Expected {
            digest: layer.digest,
            diff_id: Some(layer.diff_id),
        };
        let blob = image.open_layer(layer)?;
        let unpacked = sandstone_oci::unpack(blob, compression, &expected, staged.path())?;
        match std::fs::rename(staged.path(), &dest) {
            Ok(()) => {}
            // Another import put the same layer in place meanwhile.
            Err(_) if dest.exists() => {}
            Err(e) => return Err(io("put a layer in place")(e)),
        }
        Ok(unpacked.bytes)
    }

    /// Removes image template `id` (the caller made sure nothing uses it),
    /// every earlier version kept, and every layer no other template
    /// names; how many layers went. Built-in templates are refused.
    pub fn remove_image_template(&self, id: &str) -> Result<usize> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.root.join("templates").join(id);
        if !dir.join(IMAGE_FILE).exists() {
            return Err(if dir.exists() || RESERVED.contains(&id) {
                Error::NotAnImageTemplate(id.to_string())
            } else {
                Error::UnknownTemplate(id.to_string())
            });
        }
        self.remove_template_dir(id)?;
        for kept in self.kept_versions(id)? {
            self.remove_template_dir(&kept)?;
        }
        self.collect_layers()
    }

    /// Takes template `id` (made from an image, or built) out of the
    /// listing while what stands on it lives: its current version becomes
    /// a kept one (`<id>@<n>`), which [`Storage::prune_template_versions`]
    /// removes once unused.
    pub fn retire_template(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.template(id)?;
        let version = match t.version {
            Some(v) if t.id == id && t.kind.versioned() => v,
            _ => return Err(Error::NotAnImageTemplate(id.to_string())),
        };
        let templates = self.root.join("templates");
        std::fs::rename(
            templates.join(id),
            templates.join(format!("{id}@{version}")),
        )
        .map_err(io("retire the template"))
    }

    /// Removes the kept version `pinned` (`<id>@<n>`, unused), and the
    /// layers no template names any more; how many layers went.
    pub fn remove_kept_version(&self, pinned: &str) -> Result<usize> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if !pinned.contains('@') {
            return Err(Error::UnknownTemplate(pinned.to_string()));
        }
        self.remove_template_dir(pinned)?;
        self.collect_layers()
    }

    /// Removes the earlier versions of template `id` that `used` (pinned
    /// ids) does not name, and the layers only they had; how many layers
    /// went.
    pub fn prune_template_versions(
        &self,
        id: &str,
        used: &std::collections::HashSet<String>,
    ) -> Result<usize> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let mut pruned = false;
        for kept in self.kept_versions(id)? {
            if !used.contains(&kept) {
                self.remove_template_dir(&kept)?;
                pruned = true;
            }
        }
        if pruned { self.collect_layers() } else { Ok(0) }
    }

    /// The directory names (`<id>@<version>`) of the kept earlier
    /// versions of template `id`.
    pub(crate) fn kept_versions(&self, id: &str) -> Result<Vec<String>> {
        let prefix = format!("{id}@");
        Ok(std::fs::read_dir(self.root.join("templates"))
            .map_err(io("list templates"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect())
    }

    /// Renamed away first: gone at once; whatever the removal leaves
    /// after a crash is a dot-name the listing skips.
    pub(crate) fn remove_template_dir(&self, name: &str) -> Result<()> {
        let templates = self.root.join("templates");
        let doomed = templates.join(format!(".delete-{name}"));
        std::fs::rename(templates.join(name), &doomed).map_err(io("remove the template"))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove the template"))
    }

    /// Removes the layers no template version names; how many went.
    pub fn collect_unused_layers(&self) -> Result<usize> {
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        self.collect_layers()
    }

    /// [`Storage::collect_unused_layers`] for a caller that holds the
    /// images lock.
    fn collect_layers(&self) -> Result<usize> {
        let named: std::collections::HashSet<String> = self
            .image_templates()?
            .iter()
            .flat_map(|t| t.lower.iter())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let mut removed = 0;
        for e in std::fs::read_dir(self.root.join("layers"))
            .map_err(io("list layers"))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || named.contains(&name) {
                continue;
            }
            std::fs::remove_dir_all(e.path()).map_err(io(format!("remove layer {name}")))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The templates imported from images.
    pub(crate) fn image_templates(&self) -> Result<Vec<Template>> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(self.root.join("templates")).map_err(io("list templates"))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let file = dir.join(IMAGE_FILE);
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // `<id>@<version>`: an earlier version kept for its users.
            let (id, retained) = match name.split_once('@') {
                Some((id, _)) => (id.to_string(), true),
                None => (name, false),
            };
            let doc: ImageTemplate = serde_json::from_str(&text).map_err(|e| Error::Io {
                what: format!("read {}", file.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            // Topmost first, as overlay stacks them.
            let lower = doc.layers.iter().rev().map(|d| self.layer_dir(d)).collect();
            // The image's command is shown, never run: a sandbox runs what
            // it is asked to.
            let command: Vec<&str> = doc
                .entrypoint
                .iter()
                .chain(&doc.cmd)
                .map(String::as_str)
                .collect();
            let command = if command.is_empty() {
                String::new()
            } else {
                format!("; its command: {}", command.join(" "))
            };
            let description = match (&doc.description, &doc.image) {
                (Some(d), _) => d.clone(),
                (None, Some(r)) => format!("image {r}: {} layers{command}", doc.layers.len()),
                (None, None) => format!("image: {} layers{command}", doc.layers.len()),
            };
            let mut t = Template::with_settings(&id, &description, lower, vec![], &dir)?;
            t.kind = if id.starts_with(crate::BUILD_CACHE_PREFIX) {
                TemplateKind::BuildCache
            } else {
                TemplateKind::Image
            };
            t.image = doc.image;
            t.working_dir = doc.working_dir.filter(|d| !d.is_empty());
            t.user = doc.user.filter(|u| !u.is_empty());
            t.version = Some(doc.version);
            t.retained = retained;
            t.env = doc
                .env
                .iter()
                .chain(&doc.template_env)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(t);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
