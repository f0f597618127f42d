//! Templates made from OCI images (`sandstone template import`): each
//! layer is unpacked once into `<data>/layers/<diff_id hex>/` and shared
//! by every template that uses it; a template is `<data>/templates/<id>/
//! image.json`, naming its layers (bottom first) and the image's run
//! settings. Its sandboxes see the layers as overlay lower dirs, each
//! through the same idmapped mount as any template.

use crate::{Error, Result, Storage, Template, io};
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
    /// `sha256:<hex>` diff ids, bottom layer first.
    pub layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
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

const IMAGE_FILE: &str = "image.json";
/// Names the built-in templates use, which an import may not take.
const RESERVED: [&str; 4] = ["host", "debian", "default", "ubuntu"];

/// A template id an import may take: 1 to 64 of `[a-z0-9._-]`, starting
/// with a letter or digit, not a built-in's.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(Error::InvalidTemplateId(id.to_string()));
    }
    if RESERVED.contains(&id) {
        return Err(Error::TemplateExists(id.to_string()));
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
        check_id(id)?;
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

    /// Imports `image` as template `id`, which must not exist yet. Layers
    /// this host has are not unpacked again; the others are unpacked (as
    /// many at once as there are cores) beside the layer store and renamed
    /// in whole, so a failure leaves neither a half layer nor the template.
    fn import(&self, id: &str, image: &Image, pulled: Option<&Pulled>) -> Result<Imported> {
        // Not beside a removal, which could take a layer this import
        // found present.
        let _one_at_a_time = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let tdir = self.root.join("templates").join(id);
        if tdir.exists() {
            return Err(Error::TemplateExists(id.to_string()));
        }
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
        let mut env = env;
        env.extend(pulled.iter().flat_map(|p| p.env.iter().cloned()));
        let doc = ImageTemplate {
            image: pulled.map(|p| p.reference.clone()),
            description: pulled.and_then(|p| p.description.clone()),
            layers: image.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            env,
            working_dir,
            user,
            entrypoint,
            cmd,
        };
        let staged = self.root.join("templates").join(format!(".import-{id}"));
        if staged.exists() {
            std::fs::remove_dir_all(&staged).map_err(io("remove an earlier import"))?;
        }
        std::fs::create_dir(&staged).map_err(io("make the template's dir"))?;
        let text = serde_json::to_vec_pretty(&doc).map_err(|e| io("write image.json")(e.into()))?;
        std::fs::write(staged.join(IMAGE_FILE), text).map_err(io("write image.json"))?;
        if let Some(p) = pulled {
            let text = serde_json::to_vec_pretty(&p.settings)
                .map_err(|e| io("write template.json")(e.into()))?;
            std::fs::write(staged.join("template.json"), text)
                .map_err(io("write template.json"))?;
        }
        std::fs::rename(&staged, &tdir).map_err(io("put the template in place"))?;
        Ok(done)
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

    /// Removes image template `id` (the caller made sure nothing uses it)
    /// and every layer no other image template names; how many layers
    /// went. Built-in templates are refused.
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
        // Renamed away first: it is gone at once, whatever the removal
        // below leaves after a crash is a dot-name the listing skips.
        let doomed = self.root.join("templates").join(format!(".delete-{id}"));
        std::fs::rename(&dir, &doomed).map_err(io("remove the template"))?;
        std::fs::remove_dir_all(&doomed).map_err(io("remove the template"))?;
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
            let id = entry.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                continue;
            }
            let doc: ImageTemplate = serde_json::from_str(&text).map_err(|e| Error::Io {
                what: format!("read {}", file.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            // Topmost first, as overlay stacks them.
            let lower = doc.layers.iter().rev().map(|d| self.layer_dir(d)).collect();
            let description = match (&doc.description, &doc.image) {
                (Some(d), _) => d.clone(),
                (None, Some(r)) => format!("image {r}: {} layers", doc.layers.len()),
                (None, None) => format!("image: {} layers", doc.layers.len()),
            };
            let mut t = Template::with_settings(&id, &description, lower, vec![], &dir)?;
            t.image = doc.image;
            t.env = doc
                .env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(t);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
