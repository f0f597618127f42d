//! Reading an image out of a directory laid out the way OCI tools write
//! one (`oci-layout`, `index.json`, `blobs/sha256/…`) or the way `docker
//! save` does (`manifest.json` naming a config and layer files): its
//! config and its layers, bottom first, for this machine's architecture.
//! An archive of either ([`open_archive`]) is read in place when it is a
//! plain tar (its entries indexed, each blob read from its offset), and
//! unpacked into a scratch directory first when it is gzipped.

use crate::{Digest, Error, Result, io};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image ready to unpack.
pub struct Image {
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    source: Arc<Source>,
}

impl Image {
    /// A reader of `layer`'s blob.
    pub fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send>> {
        self.source.open(&layer.blob)
    }
}

/// Where an image's files are: a directory, or a plain tar whose regular
/// files were indexed (name, offset, size). A scratch directory an
/// archive was unpacked into goes with it.
enum Source {
    Dir {
        path: PathBuf,
        /// Kept for its drop, which removes it.
        _scratch: Option<tempfile::TempDir>,
    },
    Tar(PathBuf, HashMap<String, (u64, u64)>),
}

impl Source {
    fn is_file(&self, name: &str) -> bool {
        match self {
            Source::Dir { path, .. } => {
                std::fs::symlink_metadata(path.join(name)).is_ok_and(|m| m.is_file())
            }
            Source::Tar(_, entries) => entries.contains_key(name),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let what = || format!("open {name} in the image");
        match self {
            Source::Dir { path, .. } => Ok(Box::new(
                std::fs::File::open(path.join(name)).map_err(io(what()))?,
            )),
            Source::Tar(file, entries) => {
                let &(offset, size) = entries
                    .get(name)
                    .ok_or_else(|| Error::NotAnImage(format!("{name} is missing")))?;
                let mut f = std::fs::File::open(file).map_err(io(what()))?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .map_err(io(what()))?;
                Ok(Box::new(std::io::BufReader::new(f.take(size))))
            }
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(name)?
            .read_to_end(&mut data)
            .map_err(io(format!("read {name} in the image")))?;
        Ok(data)
    }
}

/// One layer: where its blob is (a name in the image), and what it must be.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: String,
    pub media_type: String,
    pub digest: Digest,
    /// From the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// The parts of an image's config that apply to a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub architecture: String,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// An OCI content descriptor: what an index or a manifest points at.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// The entry of an index for linux on this machine's architecture (an
/// entry naming no platform fits any).
pub fn choose_platform(manifests: &[Descriptor]) -> Result<&Descriptor> {
    let arch = this_architecture();
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| {
            let others: Vec<String> = manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            Error::WrongArchitecture {
                want: format!("linux/{arch}"),
                have: others.join(", "),
            }
        })
}

#[derive(Deserialize)]
struct IndexDoc {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ManifestDoc {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// `docker save`'s `manifest.json`: one entry per image.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    layers: Vec<String>,
}

/// The architecture images name for this machine.
pub fn this_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Reads the image in `dir` (an OCI layout, or what `docker save` wrote).
pub fn read(dir: &Path) -> Result<Image> {
    read_source(Source::Dir {
        path: dir.to_path_buf(),
        _scratch: None,
    })
}

/// Opens an image archive: a tar (plain or gzipped) of an OCI layout or of
/// what `docker save` wrote. A plain one is read where it is; a gzipped
/// one is unpacked into a directory made in `scratch` (removed with the
/// image).
pub fn open_archive(file: &Path, scratch: &Path) -> Result<Image> {
    let mut f = std::fs::File::open(file).map_err(io(format!("open {file:?}")))?;
    let mut magic = [0u8; 2];
    let gz =
        f.read(&mut magic).map_err(io(format!("read {file:?}")))? == 2 && magic == [0x1f, 0x8b];
    if gz {
        let dir = tempfile::Builder::new()
            .prefix(".archive-")
            .tempdir_in(scratch)
            .map_err(io("make a dir for the archive"))?;
        unpack_archive(file, dir.path())?;
        return read_source(Source::Dir {
            path: dir.path().to_path_buf(),
            _scratch: Some(dir),
        });
    }
    f.rewind().map_err(io(format!("read {file:?}")))?;
    let mut archive = tar::Archive::new(f);
    let mut entries = HashMap::new();
    // Seeking past each file's data: only the headers are read.
    for e in archive.entries_with_seek().map_err(not_tar)? {
        let e = e.map_err(not_tar)?;
        if matches!(
            e.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            let name = String::from_utf8_lossy(&e.path_bytes())
                .trim_start_matches("./")
                .to_string();
            entries.insert(name, (e.raw_file_position(), e.size()));
        }
    }
    read_source(Source::Tar(file.to_path_buf(), entries))
}

fn not_tar(e: std::io::Error) -> Error {
    Error::NotAnImage(format!("the archive is not a tar (plain or gzipped): {e}"))
}

fn read_source(source: Source) -> Result<Image> {
    let source = Arc::new(source);
    let (config, layers) = if source.is_file("index.json") {
        read_layout(&source)?
    } else if source.is_file("manifest.json") {
        read_saved(&source)?
    } else {
        return Err(Error::NotAnImage(
            "neither index.json (an OCI layout) nor manifest.json (docker save) is there".into(),
        ));
    };
    assemble(config, layers, source)
}

fn json<T: serde::de::DeserializeOwned>(source: &Source, name: &str, what: &str) -> Result<T> {
    let data = source.read(name)?;
    serde_json::from_slice(&data).map_err(|e| Error::NotAnImage(format!("{what}: {e}")))
}

/// A blob of the layout, by digest: its name in the image.
fn blob_name(digest: &str) -> Result<(String, Digest)> {
    let d: Digest = digest.parse()?;
    let name = format!(
        "blobs/sha256/{}",
        d.to_string().trim_start_matches("sha256:")
    );
    Ok((name, d))
}

/// A blob the layout must hold.
fn blob(source: &Source, digest: &str) -> Result<(String, Digest)> {
    let (name, d) = blob_name(digest)?;
    if !source.is_file(&name) {
        return Err(Error::NotAnImage(format!("blob {d} is missing")));
    }
    Ok((name, d))
}

/// Reads a blob the image names by digest, checked against it.
fn checked_json<T: serde::de::DeserializeOwned>(
    source: &Source,
    digest: &str,
    what: &str,
) -> Result<T> {
    let (name, want) = blob(source, digest)?;
    let data = source.read(&name)?;
    let got = Digest::of(&data);
    if got != want {
        return Err(Error::DigestMismatch {
            what: "a manifest or config blob's digest",
            expected: want,
            actual: got,
        });
    }
    serde_json::from_slice(&data).map_err(|e| Error::NotAnImage(format!("{what}: {e}")))
}

/// A layer found: (blob name, blob digest), media type.
type Found = ((String, Digest), String);

fn read_layout(source: &Source) -> Result<(ConfigDoc, Vec<Found>)> {
    let mut index: IndexDoc = json(source, "index.json", "index.json")?;
    // Indexes may nest (an image index inside the layout's index).
    for _ in 0..4 {
        let chosen = choose_platform(&index.manifests)?;
        if chosen.media_type == INDEX || chosen.media_type == DOCKER_LIST {
            index = checked_json(source, &chosen.digest, "a nested index")?;
            continue;
        }
        let manifest: ManifestDoc = checked_json(source, &chosen.digest, "the image manifest")?;
        let config: ConfigDoc = checked_json(source, &manifest.config.digest, "the image config")?;
        // A layer's blob may be absent: a pull leaves out the layers the
        // host has unpacked already. Reading one that is missing fails.
        let layers = manifest
            .layers
            .iter()
            .map(|l| Ok((blob_name(&l.digest)?, l.media_type.clone())))
            .collect::<Result<Vec<_>>>()?;
        return Ok((config, layers));
    }
    Err(Error::NotAnImage("indexes nest too deep".into()))
}

fn read_saved(source: &Source) -> Result<(ConfigDoc, Vec<Found>)> {
    let saved: Vec<SavedImage> = json(source, "manifest.json", "manifest.json")?;
    let [image] = <[SavedImage; 1]>::try_from(saved).map_err(|v| {
        Error::NotAnImage(format!("manifest.json lists {} images, not one", v.len()))
    })?;
    let inside = |name: &str| -> Result<String> {
        let rel = Path::new(name);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::NotAnImage(format!(
                "{name:?} is outside the archive"
            )));
        }
        Ok(name.trim_start_matches("./").to_string())
    };
    let config: ConfigDoc = json(source, &inside(&image.config)?, "the image config")?;
    let layers = image
        .layers
        .iter()
        .map(|name| {
            let name = inside(name)?;
            let digest = crate::digest::Hashing::new(source.open(&name)?)
                .finish()
                .map_err(io(format!("read layer {name}")))?;
            // Saved layers are plain tars, whatever their name says.
            Ok((
                (name, digest),
                "application/vnd.oci.image.layer.v1.tar".to_string(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((config, layers))
}

/// Pairs each layer with its `diff_id` and picks out the config's run
/// settings; an image for another architecture is refused.
fn assemble(config: ConfigDoc, layers: Vec<Found>, source: Arc<Source>) -> Result<Image> {
    let arch = this_architecture();
    if !config.architecture.is_empty() && config.architecture != arch {
        return Err(Error::WrongArchitecture {
            want: format!("linux/{arch}"),
            have: format!("linux/{}", config.architecture),
        });
    }
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(Error::NotAnImage(format!(
            "{} layers but {} diff_ids",
            layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let layers = layers
        .into_iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(((blob, digest), media_type), diff_id)| {
            Ok(Layer {
                blob,
                media_type,
                digest,
                diff_id: diff_id.parse()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let run = config.config.unwrap_or_default();
    Ok(Image {
        config: ImageConfig {
            architecture: config.architecture,
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
        },
        layers,
        source,
    })
}

/// Unpacks an image archive (a tar of an OCI layout, or of what `docker
/// save` wrote; gzip-compressed or not), or any such tar (a build's
/// context), into `dest`, an empty directory: only plain files and
/// directories, every name inside.
pub fn unpack_archive(file: &Path, dest: &Path) -> Result<()> {
    let mut f = std::fs::File::open(file).map_err(io(format!("open {file:?}")))?;
    let mut magic = [0u8; 2];
    let gz = std::io::Read::read(&mut f, &mut magic).map_err(io(format!("read {file:?}")))? == 2
        && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(file).map_err(io(format!("open {file:?}")))?;
    let reader: Box<dyn std::io::Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    let mut files = 0u64;
    for entry in archive.entries().map_err(not_tar)? {
        let mut e = entry.map_err(not_tar)?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let rel = Path::new(name.trim_start_matches("./"));
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            if rel.as_os_str().is_empty() || name == "./" {
                continue;
            }
            return Err(Error::NotAnImage(format!(
                "{name:?} is outside the archive"
            )));
        }
        let path = dest.join(rel);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&path).map_err(io(format!("unpack {name:?}")))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(format!("unpack {name:?}")))?;
                }
                let mut out =
                    std::fs::File::create(&path).map_err(io(format!("unpack {name:?}")))?;
                std::io::copy(&mut e, &mut out).map_err(io(format!("unpack {name:?}")))?;
                files += 1;
            }
            // Symlinks (old docker saves link repeated layers) and the
            // rest are not followed.
            _ => {}
        }
    }
    if files == 0 {
        return Err(Error::NotAnImage("the archive holds no files".into()));
    }
    Ok(())
}
