//! Templates made from OCI images (`sandstone template import`): each
//! layer is unpacked once into `<data>/layers/<diff_id hex>/` and shared
//! by every template that uses it; a template is `<data>/templates/<id>/
//! image.json`, naming its layers (bottom first) and the image's run
//! settings. Its sandboxes see the layers as overlay lower dirs, each
//! through the same idmapped mount as any template.

use crate::{Error, Result, Storage, Template, io};
use sandstone_oci::{Compression, Expected, ImageConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageTemplate {
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
        let unpacked = tempfile::Builder::new()
            .prefix(".archive-")
            .tempdir_in(self.scratch_dir())
            .map_err(io("make a dir for the archive"))?;
        sandstone_oci::image::unpack_archive(archive, unpacked.path())?;
        self.import_image(id, unpacked.path())
    }

    /// Imports the image in `dir` (an OCI layout, or what `docker save`
    /// wrote, unpacked) as template `id`, which must not exist yet.
    /// Layers this host has are not unpacked again; the others are
    /// unpacked beside the layer store and renamed in whole, so a failure
    /// leaves neither a half layer nor the template.
    pub fn import_image(&self, id: &str, dir: &Path) -> Result<Imported> {
        check_id(id)?;
        let tdir = self.root.join("templates").join(id);
        if tdir.exists() {
            return Err(Error::TemplateExists(id.to_string()));
        }
        let image = sandstone_oci::image::read(dir)?;
        if image.layers.is_empty() {
            return Err(sandstone_oci::Error::NotAnImage("it has no layers".into()).into());
        }
        let layers_dir = self.root.join("layers");
        std::fs::create_dir_all(&layers_dir).map_err(io("create the layer store"))?;
        let mut done = Imported {
            layers: image.layers.len(),
            ..Imported::default()
        };
        for layer in &image.layers {
            let diff_id = layer.diff_id.to_string();
            let dest = self.layer_dir(&diff_id);
            if dest.exists() {
                done.layers_reused += 1;
                continue;
            }
            let staged = layers_dir.join(format!(
                ".unpack-{}",
                dest.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ));
            if staged.exists() {
                std::fs::remove_dir_all(&staged).map_err(io("remove an earlier unpack"))?;
            }
            std::fs::create_dir(&staged).map_err(io("make a layer's staging dir"))?;
            let unpacked = std::fs::File::open(&layer.blob)
                .map_err(io(format!("open layer {}", layer.digest)))
                .and_then(|blob| {
                    let compression = Compression::from_media_type(&layer.media_type)?;
                    let expected = Expected {
                        digest: layer.digest,
                        diff_id: Some(layer.diff_id),
                    };
                    Ok(sandstone_oci::unpack(
                        std::io::BufReader::new(blob),
                        compression,
                        &expected,
                        &staged,
                    )?)
                });
            match unpacked {
                Ok(u) => done.bytes += u.bytes,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staged);
                    return Err(e);
                }
            }
            std::fs::rename(&staged, &dest).map_err(io("put a layer in place"))?;
        }
        let ImageConfig {
            env,
            working_dir,
            user,
            entrypoint,
            cmd,
            ..
        } = image.config;
        let doc = ImageTemplate {
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
        std::fs::rename(&staged, &tdir).map_err(io("put the template in place"))?;
        Ok(done)
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
            let description = format!("image: {} layers", doc.layers.len());
            let mut t = Template::with_settings(&id, &description, lower, vec![], &dir)?;
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
